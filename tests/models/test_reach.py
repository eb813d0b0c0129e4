"""A profile's reach past the horizon: far boosters on real (small) fits of seeded synthetic
clients and of two hand-made daily patterns, and the profile windows found on them."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from models.forecaster import (
    ClientForecaster,
    ForecastConfig,
    fit_client_forecaster,
    fit_global_forecaster,
    forecast_latest,
)
from models.prediction import predict_clients
from models.profile import busy_thresholds, idle_floors
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)
# Small and quick: these tests check behaviour, not accuracy.
NEAR = ForecastConfig(n_estimators=15, tail_estimators=8, max_train_rows=800, max_eval_rows=600)
REACH = ForecastConfig(
    n_estimators=15,
    tail_estimators=8,
    max_train_rows=800,
    max_eval_rows=600,
    reach_train_rows=600,
    profile_steps=288,  # a day of 5-minute buckets
    profile_stride=6,  # every half hour past the hour
)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(3, 5, END, seed=7)


@pytest.fixture(scope="module")
def history(batch) -> pl.DataFrame:
    return batch.rows.filter(pl.col("client_id") == "c0000")  # a regular client, 5 days


@pytest.fixture(scope="module")
def reached(batch, history) -> ClientForecaster:
    return fit_client_forecaster(history, REACH, batch.calendar)


def test_the_reach_runs_every_stride_from_past_the_horizon_to_a_day():
    assert REACH.reach_steps[:3] == (18, 24, 30)
    assert REACH.reach_steps[-1] == 288 and len(REACH.reach_steps) == 46
    assert ForecastConfig(profile_steps=100, profile_stride=25).reach_steps == (37, 62, 87, 100)
    assert NEAR.reach_steps == () and ForecastConfig(profile_steps=12).reach_steps == ()
    with pytest.raises(ValueError, match="at most 48 h"):
        ForecastConfig(profile_steps=577)


def test_the_horizon_forecast_is_the_same_with_or_without_a_reach(batch, history, reached):
    near = fit_client_forecaster(history, NEAR, batch.calendar)
    assert near.reach is None
    assert reached.predict(history, batch.calendar).equals(near.predict(history, batch.calendar))
    assert reached.holdout == near.holdout  # the planner's horizon is judged as before


def test_forecast_latest_adds_the_reach_of_every_metric(batch, history, reached):
    forecast = forecast_latest({"c0000": reached}, {"c0000": history}, batch.calendar)
    steps = list(range(1, 13)) + list(REACH.reach_steps)
    last = history.get_column("ts").max()
    for (metric,), rows in forecast.partition_by("metric", as_dict=True).items():
        assert rows.get_column("horizon").to_list() == steps, metric
        assert rows.get_column("ts").to_list() == [last + STEP * h for h in steps]
    assert forecast.filter(
        (pl.col("p10") > pl.col("p50")) | (pl.col("p50") > pl.col("p90"))
    ).is_empty()
    assert set(reached.reach or {}) == set(reached.metrics)
    calibration = (reached.reach or {})["requests"].calibration
    assert (calibration.first_step, calibration.horizon_steps) == (18, 288)
    report = (reached.reach_holdout or {})["requests"]
    assert report["n_points"] and report["wmape"] is not None and report["coverage_80"] is not None


def test_a_history_too_short_for_a_day_ahead_gets_no_reach(batch, history):
    short = history.filter(pl.col("ts") >= END - timedelta(days=2.5))
    fitted = fit_client_forecaster(short, REACH, batch.calendar)
    assert fitted.reach is None
    forecast = forecast_latest({"c0000": fitted}, {"c0000": short}, batch.calendar)
    assert forecast.get_column("horizon").max() == 12


def test_a_model_pickled_before_the_reach_existed_forecasts_its_horizon(batch, history, reached):
    old = pickle.loads(pickle.dumps(reached))
    del old.__dict__["reach"], old.__dict__["reach_holdout"]
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.reach is None
    forecast = forecast_latest({"c0000": loaded}, {"c0000": history}, batch.calendar)
    assert forecast.get_column("horizon").max() == 12


def test_the_global_model_reaches_for_the_clients_it_serves(batch):
    newbie = batch.rows.filter(
        (pl.col("client_id") == "c0001") & (pl.col("ts") >= END - timedelta(days=1))
    )
    usage = pl.concat([batch.rows.filter(pl.col("client_id") != "c0001"), newbie])
    model = fit_global_forecaster(usage, batch.clients, batch.calendar, REACH, serve=["c0001"])
    served = model.for_client("c0001")
    assert served.reach is not None and set(served.reach) == set(served.metrics)
    forecast = forecast_latest({"c0001": served}, {"c0001": newbie}, batch.calendar)
    assert forecast.get_column("horizon").max() == 288


def _daily(client_id: str, busy_from: int, busy_hours: int, days: int = 5) -> pl.DataFrame:
    """Requests of 30 a bucket from `busy_from` (UTC hour) for `busy_hours`, else 2, with a
    little noise; one call in flight at all times (concurrency 1)."""
    ts = [END - timedelta(days=days) + STEP * i for i in range(days * 288)]
    hours = np.array([(t.hour - busy_from) % 24 for t in ts])
    noise = np.random.default_rng(len(client_id)).normal(0.0, 0.5, len(ts))
    requests = np.where(hours < busy_hours, 30.0, 2.0) + noise
    return pl.DataFrame(
        {
            "client_id": client_id,
            "ts": ts,
            "requests": np.maximum(requests, 0.0),
            "concurrency": 1.0,
        }
    )


def test_two_daily_patterns_get_their_own_windows_at_their_busy_crossings():
    histories = {"morning": _daily("morning", 6, 4, 14), "evening": _daily("evening", 15, 8, 14)}
    forecasters = {cid: (fit_client_forecaster(h, REACH), "1") for cid, h in histories.items()}
    predicted = predict_clients(histories, pl.DataFrame(), forecasters, 300, END)
    assert predicted is not None
    (morning,), (evening,) = (
        predicted.profiles.filter(pl.col("client_id") == cid).to_dicts()
        for cid in ("morning", "evening")
    )
    # Each the next day's busy spell where its pattern puts it (END is midnight), to within
    # one step of the forecast past the horizon (half an hour).
    close = timedelta(minutes=30)
    for window, start, hours in ((morning, 6, 4), (evening, 15, 8)):
        assert abs(window["window_start"] - (END + timedelta(hours=start))) <= close
        assert abs(window["window_end"] - (END + timedelta(hours=start + hours))) <= close
    thresholds = busy_thresholds(idle_floors(pl.concat(list(histories.values())), 300))
    for window in (morning, evening):
        cid = window["client_id"]
        (threshold,) = thresholds.filter(
            (pl.col("client_id") == cid) & (pl.col("metric") == "requests")
        )["threshold"]
        steps = predicted.forecasts.filter(
            (pl.col("client_id") == cid) & (pl.col("metric") == "requests")
        )
        assert steps.get_column("ts").max() >= END + timedelta(hours=23)  # a day ahead
        busy = dict(steps.select("ts", pl.col("p50") > threshold).iter_rows())
        # The forecast steps either side of each edge are on either side of the threshold.
        start, end = window["window_start"], window["window_end"]
        assert busy[max(t for t in busy if t < start)] is False
        assert busy[min(t for t in busy if t >= start)] is True
        assert busy[max(t for t in busy if t < end)] is True
        assert busy[min(t for t in busy if t >= end)] is False
