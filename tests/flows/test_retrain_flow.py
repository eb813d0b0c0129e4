"""retrain-drifted end to end: a poor rating retrains a client once per cooldown and only on
new data; versions say why they were trained; a subset retrain keeps the shared exceedance
model; what clients report with feedback becomes training labels."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

import flows.train as train_module
from core.errors import PrewarmError
from core.times import utc_now
from flows.ingest import ingest_usage
from flows.scoring import score_outcomes
from flows.settings import Settings
from flows.train import train_flow
from models.registry import load_forecaster
from warehouse.db import connect
from warehouse.feedback import record_feedback

STEP = timedelta(minutes=5)
HOUR = timedelta(hours=1)
# Data that ends a few hours before the wall clock: ratings of its windows are recent
# enough to weigh in the next training (models.feedback.LOOKBACK is measured from now).
END = utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)


@pytest.fixture
def settings(prefect_harness, data_dir, monkeypatch) -> Settings:
    monkeypatch.setenv("PREWARM_RUNTIME", "process")
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    return Settings()


def _ingest(folder: Path, start: datetime, buckets: int, skip: range = range(0)) -> None:
    """Usage of clients a and b from `start`: a daily wave with seeded noise (b twice a's)."""
    rng = np.random.default_rng(int(start.timestamp()))
    lines = ["client_id,ts,requests,concurrency"]
    for i in range(buckets):
        ts = start + STEP * i
        wave = 3.0 + 2.0 * math.sin(2 * math.pi * (ts.hour * 60 + ts.minute) / 1440)
        for client, scale in (("a", 1.0), ("b", 2.0)):
            if i in skip and client == "a":
                continue
            need = max(0.0, scale * wave + rng.normal(0, 0.4))
            lines.append(f"{client},{ts:%Y-%m-%dT%H:%M:%S}Z,{need * 20:.3f},{need:.3f}")
    path = folder / f"usage-{start:%Y%m%d%H%M}.csv"
    path.write_text("\n".join(lines) + "\n")
    ingest_usage(source="events", path=path)


@pytest.fixture
def trained(settings, tmp_path) -> Settings:
    """Clients a and b, 4 days each, trained once on the schedule."""
    _ingest(tmp_path, END - timedelta(days=4), 4 * 288)
    summary = train_flow(settings)(client_ids=None)
    assert sorted((r.client_id, r.version) for r in summary.registrations) == [
        ("a", "1"),
        ("b", "1"),
    ]
    return settings


def _mlflow(settings: Settings) -> MlflowClient:
    uri = settings.mlflow_tracking_uri
    return MlflowClient(uri, registry_uri=uri)


def _versions(settings: Settings, client_id: str) -> list[str]:
    found = _mlflow(settings).search_model_versions(f"name = 'forecaster-{client_id}'")
    return sorted(str(v.version) for v in found)


def _model_runs(settings: Settings) -> list[tuple]:
    with connect(settings.warehouse_path, read_only=True) as con:
        return con.execute(
            "SELECT client_id, model_version, trigger, weighting FROM model_runs ORDER BY 1, 2"
        ).fetchall()


def test_a_poor_rating_retrains_the_client_once_per_cooldown(trained, tmp_path):
    rated = END - 2 * HOUR
    record_feedback(trained.warehouse_path, "a", rated, rated + HOUR, 1, None, "way off")
    runs = []
    for hour in range(3):  # three cycles, an hour of new usage before each
        _ingest(tmp_path, END + hour * HOUR, 12)
        runs.append(score_outcomes())
    assert [run.retrained for run in runs] == [{"a": "2"}, {}, {}]
    assert all("feedback" in run.drifted["a"] for run in runs)
    assert runs[1].waiting["a"].startswith("cooldown until ")
    assert _versions(trained, "a") == ["1", "2"] and _versions(trained, "b") == ["1"]
    # Why version 2 exists, on the version and in model_runs: the rating (a miss share of
    # 0.75) weighs the rows since the rated window 1 + 4 x 0.75 = 4 times.
    weighting = f"recent x4.0 since {rated:%Y-%m-%dT%H:%M}"
    tags = _mlflow(trained).get_model_version("forecaster-a", "2").tags
    assert (tags["trigger"], tags["weighting"]) == ("feedback", weighting)
    first = _mlflow(trained).get_model_version("forecaster-a", "1").tags
    assert (first["trigger"], first["weighting"]) == ("schedule", "none")
    assert _model_runs(trained) == [
        ("a", "1", "schedule", "none"),
        ("a", "2", "feedback", weighting),
        ("b", "1", "schedule", "none"),
    ]


def test_without_new_usage_no_retrain_even_past_the_cooldown(
    trained, tmp_path, monkeypatch, run_cli
):
    monkeypatch.setenv("PREWARM_RETRAIN_COOLDOWN", "1s")
    record_feedback(trained.warehouse_path, "a", END - HOUR, END, 2, None, None)
    trained_until = f"{END - STEP:%Y-%m-%dT%H:%M}"
    for _ in range(2):
        run = score_outcomes()
        assert run.retrained == {}
        assert run.waiting == {"a": f"no new data since {trained_until}"}
    code, out, _ = run_cli("score")
    assert code == 0
    assert "drift a: feedback: 1 recent rating(s) at or below 2 (lowest 2)" in out
    assert f"not retrained: no new data since {trained_until}" in out
    assert "Pool corrections" not in out and "scaled up" not in out
    code, out, _ = run_cli("retrain")
    assert code == 0 and f"skipped: no new data since {trained_until}" in out
    _ingest(tmp_path, END, 12)
    assert score_outcomes().retrained == {"a": "2"}
    # The cooldown is long over by the next cycle, but nothing new has arrived.
    run = score_outcomes()
    assert run.retrained == {}
    assert run.waiting["a"] == f"no new data since {END + 11 * STEP:%Y-%m-%dT%H:%M}"
    assert _versions(trained, "a") == ["1", "2"]


def test_a_subset_retrain_keeps_the_shared_exceedance_model(trained, monkeypatch):
    registry = _mlflow(trained)
    for client in ("a", "b"):  # whatever the promotion gate said, both have a champion
        registry.set_registered_model_alias(f"forecaster-{client}", "champion", "1")
    fitted_on: list[set[str]] = []
    real_fit = train_module.fit_exceedance_model

    def recording_fit(usage, *args, **kwargs):
        fitted_on.append(set(usage.get_column("client_id").unique()))
        return real_fit(usage, *args, **kwargs)

    monkeypatch.setattr(train_module, "fit_exceedance_model", recording_fit)
    summary = train_flow(trained)(client_ids=["a"], trigger="drift")
    # b's champion holds the model fitted on the whole group: a's new version gets it.
    assert summary.exceedance_sources == {300: "reused from forecaster-b v1"}
    assert fitted_on == []
    shared = load_forecaster("b", trained.mlflow_tracking_uri)[0].exceedance
    retrained = load_forecaster("a", trained.mlflow_tracking_uri, alias="challenger")[0]
    assert retrained.exceedance.booster.model_to_string() == shared.booster.model_to_string()
    # Without a champion to take it from, it is fitted on the whole group, not on a alone.
    for client in ("a", "b"):
        registry.delete_registered_model_alias(f"forecaster-{client}", "champion")
    summary = train_flow(trained)(client_ids=["a"], trigger="drift")
    assert summary.exceedance_sources == {300: "fitted on the whole group (2 clients)"}
    assert fitted_on == [{"a", "b"}]


def test_reported_actuals_label_what_usage_lost(settings, tmp_path, monkeypatch):
    start = END - timedelta(days=3)
    lost = range(600, 606)  # half an hour of a's usage never arrived
    _ingest(tmp_path, start, 3 * 288, skip=lost)
    first_lost = start + STEP * lost.start
    # a reports what it needed from 10 minutes before the loss to its end: 7 instances.
    record_feedback(
        settings.warehouse_path,
        "a",
        first_lost - 2 * STEP,
        first_lost + 6 * STEP,
        2,
        {"concurrency": 7.0},
        None,
    )
    seen: list[pl.DataFrame] = []

    def capture(group, *args, **kwargs):
        seen.append(group)
        return {}  # nothing to train: what the fit would see is all this test asks

    monkeypatch.setattr(train_module, "_submit_group", capture)
    train_flow(settings)(client_ids=None, trigger="manual")
    (group,) = seen
    window = group.filter(
        (pl.col("client_id") == "a")
        & pl.col("ts").is_between(first_lost - 3 * STEP, first_lost + 6 * STEP)
    ).sort("ts")
    concurrency = window.get_column("concurrency").to_list()
    requests = window.get_column("requests").to_list()
    # Measured buckets keep their values (before and at the start of the window), the lost
    # six take the reported 7; requests were not reported, so they stay unknown there.
    assert len(concurrency) == 10
    assert concurrency[3:9] == [7.0] * 6
    assert all(value != 7.0 for value in concurrency[:3] + concurrency[9:])
    assert requests[3:9] == [None] * 6 and None not in requests[:3]
    assert group.filter(pl.col("client_id") == "b").height == 3 * 288


def test_an_unknown_trigger_is_refused(settings):
    with pytest.raises(PrewarmError, match="'nightly' is not one of schedule, drift"):
        train_flow(settings)(client_ids=None, trigger="nightly")
