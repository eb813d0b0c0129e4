"""score-outcomes end to end: real warehouse, real pools (processes, never touched by
scoring), real retraining."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.ingest import ingest_usage
from flows.predict import predict_profiles
from flows.provision import provision_pools
from flows.runtime import open_pool_runtime
from flows.scoring import score_outcomes
from flows.settings import Settings
from flows.train import train_flow
from provisioning.apply import release_all
from warehouse.db import connect, fetch_frame, fetch_value
from warehouse.feedback import record_feedback
from warehouse.predictions import write_predictions

END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)


@pytest.fixture
def settings(prefect_harness, data_dir, monkeypatch) -> Settings:
    monkeypatch.setenv("PREWARM_RUNTIME", "process")
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    settings = Settings()
    yield settings
    release_all(open_pool_runtime(settings), settings.pool_scope)


def _events(path: Path, client: str, start: datetime, buckets: int, level) -> Path:
    """A usage log of 5-minute intervals: requests and concurrency from `level(i, ts)`."""
    lines = ["client_id,ts,requests,concurrency"]
    for i in range(buckets):
        ts = start + STEP * i
        value = level(i, ts)
        lines.append(f"{client},{ts:%Y-%m-%dT%H:%M:%S}Z,{value * 20:.3f},{value:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _forecast(client: str, origin: datetime, need: float, buckets: int = 12) -> pl.DataFrame:
    rows = [
        (client, "concurrency", origin, origin + STEP * h, h, need, need, need)
        for h in range(1, buckets + 1)
    ]
    return pl.DataFrame(
        rows,
        schema=["client_id", "metric", "origin", "ts", "horizon", "p10", "p50", "p90"],
        orient="row",
    ).with_columns(
        pl.lit("forecaster-x").alias("model_name"),
        pl.lit("1").alias("model_version"),
        pl.lit(datetime(2026, 1, 1)).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")),
        pl.col("horizon").cast(pl.Int32),
    )


def _members(settings: Settings) -> list[str]:
    members = open_pool_runtime(settings).list({"prewarm.managed": "1", **settings.pool_scope})
    return sorted(m.id for m in members)


def test_score_rows_and_cold_starts_leave_the_pool_alone(settings, tmp_path):
    # Client "flat" needs exactly 2 instances every bucket for 2 days.
    start = END - timedelta(days=2)
    ingest_usage(
        source="events", path=_events(tmp_path / "a.csv", "flat", start, 576, lambda i, t: 2.0)
    )
    write_predictions(settings.warehouse_path, _forecast("flat", END - STEP, 2.0), pl.DataFrame())
    provision_pools()  # plans 2 warm instances from END + buffer on
    planned = _members(settings)
    assert len(planned) == 2
    # The next hour arrives: need 2, then 5 in its last bucket (a surprise burst).
    later = _events(tmp_path / "b.csv", "flat", END, 12, lambda i, t: 5.0 if i == 11 else 2.0)
    ingest_usage(source="events", path=later)
    summary = score_outcomes(retrain=False)
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con,
            "SELECT window_start, actual, predicted_p50, covered, cold_starts,"
            " reactive_cold_starts, action FROM forecast_scores"
            " WHERE metric = 'concurrency' ORDER BY window_start",
        )
    assert rows.height == 12  # the 12-step forecast from END - 5 min covers END .. END + 55 min
    assert rows["predicted_p50"].to_list() == [2.0] * 12
    assert rows["covered"].to_list() == [True] * 11 + [False]
    # A plan made at END warms capacity from its first window, one tick later (the buffer:
    # activation time + one tick): the END bucket had none (2 cold starts), the next ten had
    # 2 warm (none cold), and the burst to 5 left 3 cold. A reactive policy holding the
    # previous bucket's need only pays for the burst.
    assert rows["cold_starts"].to_list() == [2.0] + [0.0] * 10 + [3.0]
    assert rows["reactive_cold_starts"].to_list() == [0.0] * 11 + [3.0]
    assert summary.buckets == 12 and summary.cold_starts == 5.0
    # Scoring only: the burst is provisioning's to answer, the pool is as the plan left it.
    assert _members(settings) == planned
    assert rows["action"].to_list() == [None] * 12
    assert not summary.drifted and summary.retraining is None
    # A second scoring finds nothing new.
    again = score_outcomes(retrain=False)
    assert again.buckets == 0 and _members(settings) == planned


def test_feedback_actuals_are_scored_where_usage_has_none(settings, tmp_path, run_cli):
    start = END - timedelta(days=1)
    ingest_usage(
        source="events", path=_events(tmp_path / "a.csv", "gap", start, 288, lambda i, t: 2.0)
    )
    write_predictions(settings.warehouse_path, _forecast("gap", END - STEP, 2.0), pl.DataFrame())
    # The next hour arrives with END + 15 .. 25 min lost on the way.
    hour = _events(tmp_path / "b.csv", "gap", END, 12, lambda i, t: 2.0)
    lines = hour.read_text().splitlines()
    hour.write_text("\n".join(lines[:4] + lines[7:]) + "\n")
    ingest_usage(source="events", path=hour)
    first = score_outcomes(retrain=False)
    assert first.buckets == 9  # the three lost buckets have nothing to be scored against
    # The client reports what it really needed over END + 15 .. 35 min: 5 instances.
    record_feedback(
        settings.warehouse_path,
        "gap",
        END + 3 * STEP,
        END + 7 * STEP,
        4,
        {"concurrency": 5.0},
        None,
    )
    second = score_outcomes(retrain=False)
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = con.execute(
            "SELECT window_start, actual, error, covered, cold_starts FROM forecast_scores"
            " WHERE scored_at = (SELECT max(scored_at) FROM forecast_scores)"
            " ORDER BY window_start"
        ).fetchall()
        measured = fetch_value(
            con,
            "SELECT list(actual ORDER BY window_start) FROM forecast_scores"
            " WHERE window_start >= ? AND window_start < ?",
            [END + 6 * STEP, END + 7 * STEP],
        )
    # The lost buckets are scored against the reported 5 (error 5 - 2, outside the band, and
    # with no plan, 5 cold starts); END + 30 min was measured (2) and stays as scored.
    assert second.buckets == 3
    assert rows == [(END + i * STEP, 5.0, 3.0, False, 5.0) for i in (3, 4, 5)]
    assert measured == [2.0]
    # Nothing new; through `prewarm reconcile`, the old name operators' scripts still call.
    code, out, err = run_cli("reconcile", "--no-retrain")
    assert code == 0 and "Scored 0 buckets (0 rows)" in out
    assert "`prewarm reconcile` is now `prewarm score`" in err.splitlines()


def _seed_misses(path: Path, client_ids: tuple[str, ...], missed: str) -> None:
    """30 scored windows before END for each client; `missed` is outside the band."""
    rows = []
    for client in client_ids:
        for i in range(30):
            ts = END - STEP * (30 - i)
            covered = client != missed
            rows.append((client, ts, ts + STEP, "requests", 1.0, 2.0, 3.0, 2.0, 0.0, covered, 0.1))
    frame = pl.DataFrame(
        rows,
        schema=[
            "client_id",
            "window_start",
            "window_end",
            "metric",
            "predicted_p10",
            "predicted_p50",
            "predicted_p90",
            "actual",
            "error",
            "covered",
            "pinball",
        ],
        orient="row",
    ).with_columns(pl.lit(datetime(2026, 1, 19)).alias("scored_at"))
    with connect(path) as con:
        con.register("seed", frame.to_arrow())
        con.execute(f"INSERT INTO forecast_scores ({', '.join(frame.columns)}) SELECT * FROM seed")


def _drift_events(path: Path) -> list[tuple]:
    with connect(path, read_only=True) as con:
        return con.execute(
            "SELECT client_id, retrained, model_version FROM drift_events ORDER BY detected_at"
        ).fetchall()


def test_drift_is_recorded_once_per_episode(settings):
    ingest_usage(source="synthetic", clients=2, days=3, seed=5, end=END)
    _seed_misses(settings.warehouse_path, ("c0000", "c0001"), missed="c0001")
    for _ in range(3):
        summary = score_outcomes(retrain=False)
        assert set(summary.drifted) == {"c0001"}
        assert summary.waiting == {"c0001": "retraining off"}
    # Until c0001 is trained, the episode stays open: one row, however many cycles see it.
    assert _drift_events(settings.warehouse_path) == [("c0001", False, None)]


def test_drift_retrains_exactly_the_drifted_clients_once(settings, tmp_path):
    ingest_usage(source="synthetic", clients=2, days=10, seed=5, end=END)
    first = train_flow(settings)(client_ids=None)
    assert {r.version for r in first.registrations} == {"1"}
    _seed_misses(settings.warehouse_path, ("c0000", "c0001"), missed="c0001")
    for client in ("c0000", "c0001"):  # new data since the training
        ingest_usage(
            source="events",
            path=_events(tmp_path / f"{client}.csv", client, END, 12, lambda i, t: 3.0),
        )
    summary = score_outcomes()
    assert set(summary.drifted) == {"c0001"}
    assert "coverage 0.00" in summary.drifted["c0001"]
    assert summary.retrained == {"c0001": "2"}
    (retrained,) = summary.retraining.retrained
    assert (retrained.client_id, retrained.trigger, retrained.version) == ("c0001", "drift", "2")
    with connect(settings.warehouse_path, read_only=True) as con:
        versions = dict(
            con.execute(
                "SELECT client_id, max(model_version) FROM model_runs GROUP BY 1"
            ).fetchall()
        )
        event = con.execute(
            "SELECT client_id, retrained, model_version, reason FROM drift_events"
        ).fetchall()
    assert versions == {"c0000": "1", "c0001": "2"}
    assert event == [("c0001", True, "2", summary.drifted["c0001"])]
    # The windows judged still hold the old model's misses: the drift is seen again and
    # opens a new episode, but the client was just retrained: it waits out the cooldown.
    for _ in range(2):
        again = score_outcomes()
        assert set(again.drifted) == {"c0001"} and again.retrained == {}
        assert again.waiting["c0001"].startswith("cooldown until ")
    assert _drift_events(settings.warehouse_path) == [("c0001", True, "2"), ("c0001", False, None)]


def _wmape(path: Path, since: datetime) -> float:
    with connect(path, read_only=True) as con:
        value = fetch_value(
            con,
            "SELECT sum(abs(actual - predicted_p50)) / sum(abs(actual)) FROM forecast_scores"
            " WHERE metric = 'concurrency' AND window_start >= ?",
            [since],
        )
    return float(value)


def test_a_step_up_recovers_after_one_score_retrain_cycle(settings, tmp_path, monkeypatch):
    """Demand triples at STEP_AT. Forecasts made before it miss badly; after one scoring
    finds the drift and retrains, the next hour's forecasts are at least 3x more accurate."""
    monkeypatch.setenv("PREWARM_DRIFT_MIN_WINDOWS", "12")  # judge after one hour
    step_at = END - timedelta(hours=2)
    start = END - timedelta(days=8)

    def level(i: int, ts: datetime) -> float:
        daily = 4.0 + 2.0 * math.sin(2 * math.pi * (ts.hour * 60 + ts.minute) / 1440)
        return daily * (3.0 if ts >= step_at else 1.0)

    before = _events(tmp_path / "before.csv", "step", start, int((step_at - start) / STEP), level)
    ingest_usage(source="events", path=before)
    train_flow(settings)(client_ids=["step"])
    predict_profiles()  # forecasts from just before the step
    after = _events(tmp_path / "after.csv", "step", step_at, 12, level)
    ingest_usage(source="events", path=after)
    first = score_outcomes()  # the hour after the step: drift -> retrain
    assert first.drifted and "step" in first.retrained
    error_before = _wmape(settings.warehouse_path, step_at)
    predict_profiles()  # forecasts from the retrained model
    recovered_at = step_at + timedelta(hours=1)
    next_hour = _events(tmp_path / "next.csv", "step", recovered_at, 12, level)
    ingest_usage(source="events", path=next_hour)
    score_outcomes(retrain=False)
    error_after = _wmape(settings.warehouse_path, recovered_at)
    assert error_before > 0.3  # forecasts at the old level: about 2/3 off
    assert error_after <= error_before / 3
