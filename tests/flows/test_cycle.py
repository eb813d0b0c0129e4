"""prewarm-cycle end to end on real runtimes: the fixed point, the chained order, a crash
(kill -9) healed by the next cycle, overlap refused, and the pool's runtime kept.

Forecasts are written by hand (the layers below are tested elsewhere), so the pool each
cycle must hold is known: "busy" certainly needs 3 instances, "maybe" 1 with P 0.5,
"idle" nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
from prefect import get_client
from prefect import runtime as prefect_runtime
from prefect.states import Cancelling

import flows.cycle as cycle_module
from core.times import utc_now
from flows.cycle import CycleBusy, prewarm_cycle
from flows.ingest import ingest_usage
from flows.runtime import open_pool_runtime
from flows.settings import Settings
from provisioning.apply import release_all
from provisioning.runtime.base import LABEL_MANAGED
from provisioning.runtime.process_records import MemberRecords, records_dir
from provisioning.runtime.select import docker_unavailable_reason
from warehouse.db import connect, fetch_frame, fetch_value
from warehouse.predictions import write_predictions

STEP = timedelta(minutes=5)
NEEDS = {"busy": (3, 1.0), "maybe": (1, 0.5), "idle": (0, 0.0)}  # instances, P(level <= n)


def _big_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inventory the tests' pools never fill (placement is tested elsewhere)."""
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "big"\ncpu_cores = 1000\nmemory_mb = 10000000\n')
    monkeypatch.setenv("PREWARM_INVENTORY_PATH", str(inventory))


def _now_grid() -> datetime:
    now = utc_now()
    return now - timedelta(minutes=now.minute % 5, seconds=now.second, microseconds=now.microsecond)


def _events(path: Path, start: datetime, buckets: int, need: dict[str, float]) -> Path:
    lines = ["client_id,ts,requests,concurrency"]
    for i in range(buckets):
        ts = start + STEP * i
        for client, value in need.items():
            lines.append(f"{client},{ts:%Y-%m-%dT%H:%M:%S}Z,{value * 10:.1f},{value:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _forecasts(settings: Settings, origin: datetime, clients: dict[str, tuple[int, float]]) -> None:
    """Exceedance and concurrency quantiles from `origin` for 3 hours, by hand."""
    rows, exceed = [], []
    for client, (need, p) in clients.items():
        for h in range(1, 37):
            ts = origin + STEP * h
            rows.append(
                (client, "concurrency", origin, ts, h, float(need), float(need), float(need))
            )
            for level in range(1, 9):
                exceed.append((client, origin, ts, h, level, p if level <= max(need, 1) else 0.0))
    stamp = utc_now()
    forecasts = pl.DataFrame(
        rows,
        schema=["client_id", "metric", "origin", "ts", "horizon", "p10", "p50", "p90"],
        orient="row",
    ).with_columns(
        pl.lit("forecaster-x").alias("model_name"),
        pl.lit("1").alias("model_version"),
        pl.lit(stamp).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")),
        pl.col("horizon").cast(pl.Int32),
    )
    exceedance = pl.DataFrame(
        exceed, schema=["client_id", "origin", "ts", "horizon", "level", "p_exceed"], orient="row"
    ).with_columns(
        pl.lit("1").alias("model_version"),
        pl.lit(stamp).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")),
    )
    write_predictions(settings.warehouse_path, forecasts, pl.DataFrame(), exceedance)


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def world(request, prefect_harness, data_dir, tmp_path, monkeypatch):
    """A warehouse of three event-log clients ending an hour ago, hand forecasts from then,
    a unique pool on the chosen runtime; everything released afterwards."""
    if request.param == "docker" and (reason := docker_unavailable_reason(timeout_s=2.0)):
        pytest.skip(f"needs a Docker daemon: {reason}")
    monkeypatch.setenv("PREWARM_RUNTIME", request.param)
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    _big_host(tmp_path, monkeypatch)
    end = _now_grid() - timedelta(hours=1)
    history = _events(
        tmp_path / "history.csv", end - timedelta(days=1), 288, {c: 0.0 for c in NEEDS}
    )
    ingest_usage(source="events", path=history)
    settings = Settings()
    _forecasts(settings, end - STEP, NEEDS)
    yield settings
    release_all(open_pool_runtime(settings), settings.pool_scope)


def _pool(settings: Settings) -> dict[str, int]:
    members = open_pool_runtime(settings).list({LABEL_MANAGED: "1", **settings.pool_scope})
    counts: dict[str, int] = {}
    for member in members:
        counts[member.client_id] = counts.get(member.client_id, 0) + 1
    return counts


def test_with_no_new_data_the_second_cycle_does_nothing(world):
    first = prewarm_cycle()
    pool = _pool(world)
    assert pool["busy"] == 3 and "idle" not in pool
    assert first.actions["create"] == sum(pool.values()) and first.actions["release"] == 0

    second = prewarm_cycle()

    assert second.watermark == first.watermark
    assert second.predicted is False  # no new data, no new model: forecasts are current
    assert second.actions == dict.fromkeys(second.actions, 0)
    assert second.failed_actions == 0 and _pool(world) == pool
    with connect(world.warehouse_path, read_only=True) as con:
        cycles = fetch_frame(
            con, "SELECT seq, status, creates, releases FROM v_cycles ORDER BY seq"
        )
        churn = fetch_value(con, "SELECT sum(churn) FROM v_churn")
        plans = fetch_frame(con, "SELECT seq, cycle_id FROM plans ORDER BY seq")
    assert cycles.get_column("status").to_list() == ["done", "done"]
    assert cycles.get_column("creates").to_list() == [sum(pool.values()), 0]
    assert churn == sum(pool.values())  # the first cycle's creates, nothing since
    assert plans.get_column("seq").to_list() == [1, 2]  # ordered by sequence, not data time


def test_a_cycle_ingests_predicts_plans_and_applies_on_one_watermark(world, tmp_path):
    """The chained order: this cycle's plan starts after this cycle's data and its
    expected end, and its pool is applied after its plan was recorded."""
    spool = tmp_path / "spool"
    spool.mkdir()
    start = _now_grid() - timedelta(hours=1)
    _events(spool / "a.csv", start, 6, {"busy": 3.0, "maybe": 0.0, "idle": 0.0})

    summary = prewarm_cycle(feed=f"spool:{spool}")

    watermark = datetime.fromisoformat(summary.watermark)
    assert watermark == start + 5 * STEP and summary.ingested_rows == 18
    clock, first_window = (datetime.fromisoformat(t) for t in (summary.clock, summary.first_window))
    assert first_window >= clock + timedelta(seconds=summary.lead_s)  # never a begun window
    assert first_window - (clock + timedelta(seconds=summary.lead_s)) < STEP
    with connect(world.warehouse_path, read_only=True) as con:
        loaded = fetch_value(
            con, "SELECT max(finished_at) FROM ingest_batches WHERE status = 'loaded'"
        )
        planned = fetch_value(
            con, "SELECT created_at FROM plans WHERE plan_id = ?", [summary.plan_id]
        )
        applied = fetch_value(
            con, "SELECT min(happened_at) FROM pool_events WHERE plan_id = ?", [summary.plan_id]
        )
        cycle = fetch_frame(con, "SELECT * FROM cycles WHERE cycle_id = ?", [summary.cycle_id])
    assert planned == clock  # plans are made on the cycle's clock
    assert loaded <= applied  # ingested before applied, within the same cycle
    assert cycle.item(0, "watermark") == watermark and cycle.item(0, "status") == "done"
    assert summary.actions["create"] >= 3
    # The next cycle takes no file twice.
    again = prewarm_cycle()
    assert again.ingested_rows == 0 and again.watermark == summary.watermark


def test_a_cycle_cancelled_during_prediction_stops_before_its_plan(world, monkeypatch):
    """Under `prewarm up` a cancel cannot kill the cycle (it shares the server's process):
    the cycle asks before planning and stops there, nothing planned or applied."""
    predict = cycle_module.predict_and_write

    def cancelled_meanwhile(settings: Settings, client_ids: list[str] | None) -> object:
        predicted = predict(settings, client_ids)
        with get_client(sync_client=True) as client:  # what the UI's Cancel does
            client.set_flow_run_state(UUID(prefect_runtime.flow_run.id), Cancelling())
        return predicted

    monkeypatch.setattr(cycle_module, "predict_and_write", cancelled_meanwhile)
    summary = prewarm_cycle()

    assert summary.cancelled_before == "plan" and summary.predicted
    assert summary.plan_id is None and summary.actions == dict.fromkeys(summary.actions, 0)
    assert _pool(world) == {}
    with connect(world.warehouse_path, read_only=True) as con:
        cycle = fetch_frame(con, "SELECT status, error, predicted FROM cycles")
        plans = fetch_value(con, "SELECT count(*) FROM plans")
    assert cycle.rows() == [
        ("cancelled", "cancelled before plan: no plan recorded or applied", True)
    ]
    assert plans == 0

    monkeypatch.setattr(cycle_module, "predict_and_write", predict)
    after = prewarm_cycle()  # the next cycle is not held back by the cancelled one
    assert after.cancelled_before is None and after.actions["create"] == sum(_pool(world).values())
    assert sum(_pool(world).values()) >= 3


def test_overlapping_cycles_are_refused_at_once(world):
    lock = world.data_dir / "cycle.lock"
    world.data_dir.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("pid 12345 since a moment ago")
        handle.flush()
        with pytest.raises(CycleBusy, match="Another cycle is running"):
            prewarm_cycle()
    assert prewarm_cycle().actions["create"] > 0  # free again: the next one runs


def test_the_pools_runtime_is_kept_a_different_choice_is_refused(world, monkeypatch):
    prewarm_cycle()
    other = "docker" if world.runtime == "process" else "process"
    monkeypatch.setenv("PREWARM_RUNTIME", other)
    with pytest.raises(Exception, match=f"lives on {world.runtime}"):
        prewarm_cycle()
    monkeypatch.setenv("PREWARM_RUNTIME", "auto")
    assert prewarm_cycle().runtime == world.runtime  # auto follows the recorded runtime


def test_cycle_json_has_the_documented_keys(world, run_cli, tmp_path):
    out = tmp_path / "cycle.json"
    code, stdout, _ = run_cli("cycle", "--json", str(out))
    assert code == 0, stdout
    summary = json.loads(out.read_text())
    assert {"watermark", "seconds", "actions", "lag_s"} <= set(summary)
    assert {"create", "release", "pause", "unpause"} <= set(summary["actions"])
    assert summary["actions"]["create"] > 0 and summary["seconds"] > 0
    assert "Lag" in stdout and "runtime actions" in stdout


@pytest.mark.parametrize("runtime", ["process"])
def test_a_cycle_killed_mid_apply_is_healed_by_the_next(
    prefect_harness, data_dir, tmp_path, monkeypatch, runtime
):
    """kill -9 while members are being created: the next cycle marks the dead one failed,
    takes no spool file twice and leaves no worker that no record owns."""
    monkeypatch.setenv("PREWARM_RUNTIME", runtime)
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    _big_host(tmp_path, monkeypatch)
    clients = {f"c{i}": (8, 1.0) for i in range(6)}  # 48 members: long enough to kill inside
    end = _now_grid() - timedelta(hours=1)
    ingest_usage(
        source="events",
        path=_events(
            tmp_path / "history.csv", end - timedelta(days=1), 288, dict.fromkeys(clients, 0.0)
        ),
    )
    settings = Settings()
    _forecasts(settings, end - STEP, clients)
    spool = tmp_path / "spool"
    spool.mkdir()
    _events(spool / "a.csv", end, 3, dict.fromkeys(clients, 1.0))
    _events(spool / "b.csv", end + 3 * STEP, 3, dict.fromkeys(clients, 1.0))
    state = settings.data_dir / "process-pool.json"
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "cycle", "--feed", f"spool:{spool}"],
        env=dict(os.environ),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if len(MemberRecords(records_dir(state)).read_all()) >= 5:
                break
            time.sleep(0.01)
        assert child.poll() is None, "the cycle ended before it could be killed mid-apply"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
        healed = prewarm_cycle()
        runtime_ = open_pool_runtime(settings)
        listed = {m.id for m in runtime_.list({LABEL_MANAGED: "1", **settings.pool_scope})}
        with connect(settings.warehouse_path, read_only=True) as con:
            statuses = [
                r[0] for r in con.execute("SELECT status FROM cycles ORDER BY seq").fetchall()
            ]
            taken = con.execute("SELECT path, count(*) FROM feed_files GROUP BY 1").fetchall()
            rows = fetch_value(con, "SELECT count(*) FROM usage WHERE ts >= ?", [end])
            recorded = {
                r[0]
                for r in con.execute(
                    "SELECT member_id FROM pool_members WHERE released_at IS NULL"
                ).fetchall()
            }
        assert statuses == ["failed", "done"]
        assert sorted(n for _, n in taken) == [1, 1]  # each file taken exactly once
        assert rows == 6 * 6  # both files' buckets, never twice
        assert healed.ingested_rows == 0
        assert runtime_.strays() == {}  # no worker that no record owns
        assert listed == recorded and sum(_pool(settings).values()) == 48
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        release_all(open_pool_runtime(settings), settings.pool_scope)
