"""reconcile-pools end to end: real warehouse, real pools (processes), real retraining."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.ingest import ingest_usage
from flows.predict import predict_profiles
from flows.provision import open_runtime, provision_pools
from flows.reconcile import reconcile_pools
from flows.settings import Settings
from flows.train import train_flow
from provisioning.apply import release_all
from warehouse.db import connect, fetch_frame, fetch_value
from warehouse.predictions import write_predictions

END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)


@pytest.fixture
def settings(prefect_harness, data_dir, monkeypatch) -> Settings:
    monkeypatch.setenv("PREWARM_RUNTIME", "process")
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    settings = Settings()
    yield settings
    release_all(open_runtime(settings), settings.pool_scope)


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
        rows, schema=["client_id", "metric", "origin", "ts", "horizon", "p10", "p50", "p90"],
        orient="row",
    ).with_columns(
        pl.lit("forecaster-x").alias("model_name"), pl.lit("1").alias("model_version"),
        pl.lit(datetime(2026, 1, 1)).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")), pl.col("horizon").cast(pl.Int32),
    )  # fmt: skip


def test_reconciliation_rows_cold_starts_and_reactive_scale_up(settings, tmp_path):
    # Client "flat" needs exactly 2 instances every bucket for 2 days.
    start = END - timedelta(days=2)
    ingest_usage(
        source="events", path=_events(tmp_path / "a.csv", "flat", start, 576, lambda i, t: 2.0)
    )
    write_predictions(settings.warehouse_path, _forecast("flat", END - STEP, 2.0), pl.DataFrame())
    provision_pools()  # plans 2 warm instances from END + buffer on
    # The next hour arrives: need 2, then 5 in its last bucket (a surprise burst).
    later = _events(tmp_path / "b.csv", "flat", END, 12, lambda i, t: 5.0 if i == 11 else 2.0)
    ingest_usage(source="events", path=later)
    summary = reconcile_pools(retrain=False)
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con,
            "SELECT window_start, actual, predicted_p50, covered, cold_starts,"
            " reactive_cold_starts, action FROM reconciliations"
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
    assert summary.buckets == 12
    # The safety net: 5 needed now, the plan holds 2 -> 3 more active at once.
    assert summary.scaled_up == {"flat": 3}
    members = open_runtime(settings).list({"prewarm.managed": "1", **settings.pool_scope})
    assert len([m for m in members if m.client_id == "flat"]) == 5
    assert rows["action"].to_list()[-1] == "scale-up"
    # A second reconcile finds nothing new and changes nothing.
    again = reconcile_pools(retrain=False)
    assert again.buckets == 0 and again.actions == {}


def test_drift_retrains_exactly_the_drifted_clients(settings):
    ingest_usage(source="synthetic", clients=2, days=10, seed=5, end=END)
    first = train_flow(settings)(client_ids=None)
    assert {r.version for r in first.registrations} == {"1"}
    # c0001's last 30 windows missed the band; c0000's were fine.
    rows = []
    for client, covered in (("c0000", True), ("c0001", False)):
        for i in range(30):
            ts = END - STEP * (30 - i)
            rows.append((client, ts, ts + STEP, "requests", 1.0, 2.0, 3.0, 2.0, 0.0, covered, 0.1))
    frame = pl.DataFrame(
        rows,
        schema=["client_id", "window_start", "window_end", "metric", "predicted_p10",
                "predicted_p50", "predicted_p90", "actual", "error", "covered", "pinball"],
        orient="row",
    ).with_columns(pl.lit(datetime(2026, 1, 19)).alias("reconciled_at"))  # fmt: skip
    with connect(settings.warehouse_path) as con:
        con.register("seed", frame.to_arrow())
        con.execute(f"INSERT INTO reconciliations ({', '.join(frame.columns)}) SELECT * FROM seed")
    summary = reconcile_pools()
    assert set(summary.drifted) == {"c0001"}
    assert "coverage 0.00" in summary.drifted["c0001"]
    assert set(summary.retrained) == {"c0001"}
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


def _wmape(path: Path, since: datetime) -> float:
    with connect(path, read_only=True) as con:
        value = fetch_value(
            con,
            "SELECT sum(abs(actual - predicted_p50)) / sum(abs(actual)) FROM reconciliations"
            " WHERE metric = 'concurrency' AND window_start >= ?",
            [since],
        )
    return float(value)


def test_a_step_up_recovers_after_one_reconcile_retrain_cycle(settings, tmp_path, monkeypatch):
    """Demand triples at STEP_AT. Forecasts made before it miss badly; after one reconcile
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
    first = reconcile_pools()  # the hour after the step: drift -> retrain
    assert first.drifted and "step" in first.retrained
    error_before = _wmape(settings.warehouse_path, step_at)
    predict_profiles()  # forecasts from the retrained model
    recovered_at = step_at + timedelta(hours=1)
    next_hour = _events(tmp_path / "next.csv", "step", recovered_at, 12, level)
    ingest_usage(source="events", path=next_hour)
    reconcile_pools(retrain=False)
    error_after = _wmape(settings.warehouse_path, recovered_at)
    assert error_before > 0.3  # forecasts at the old level: about 2/3 off
    assert error_after <= error_before / 3
