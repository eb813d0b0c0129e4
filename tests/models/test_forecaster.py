"""Per-client and global forecasters on seeded synthetic clients: shape, order, feedback."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from core.vocabulary import METRICS
from models.forecaster import (
    HOLDOUT_KEYS,
    Adjustments,
    ClientForecaster,
    ForecastConfig,
    fit_client_forecaster,
    fit_global_forecaster,
    forecast_latest,
    forecast_origins,
    needs_fallback,
)
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
# Small and quick: these tests check behaviour, not accuracy.
CONFIG = ForecastConfig(n_estimators=15, tail_estimators=8, max_train_rows=800, max_eval_rows=600)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(8, 5, END, seed=7)


@pytest.fixture(scope="module")
def regular(batch) -> tuple[str, pl.DataFrame, dict]:
    """A regular client that has the whole window."""
    for row in batch.clients.iter_rows(named=True):
        if json.loads(row["attributes"])["archetype"] == "regular":
            history = batch.rows.filter(pl.col("client_id") == row["client_id"])
            return row["client_id"], history, row
    raise AssertionError("no regular client in the batch")


@pytest.fixture(scope="module")
def fitted(batch, regular) -> ClientForecaster:
    _, history, client = regular
    return fit_client_forecaster(history, CONFIG, batch.calendar, client)


def test_config_validates_the_horizon():
    assert ForecastConfig(horizon_steps=12).horizon_steps == 12
    assert ForecastConfig(horizon_steps=576).horizon_steps == 576  # 48 h
    assert ForecastConfig(freq_seconds=3600, horizon_steps=1).horizon_steps == 1
    assert ForecastConfig(freq_seconds=60, horizon_steps=15).horizon_steps == 15  # 15 min
    with pytest.raises(ValueError, match="10 min to 48 h"):
        ForecastConfig(horizon_steps=1)  # 5 minutes
    with pytest.raises(ValueError, match="10 min to 48 h"):
        ForecastConfig(horizon_steps=577)


def test_config_rejects_a_bad_grid_step_and_empty_budgets():
    with pytest.raises(ValueError, match=r"^freq_seconds must be >= 1, got 0$"):
        ForecastConfig(freq_seconds=0)
    message = r"^n_estimators, tail_estimators and max_train_rows must be >= 1$"
    for field in ("n_estimators", "tail_estimators", "max_train_rows"):
        with pytest.raises(ValueError, match=message):
            ForecastConfig(**{field: 0})


def test_forecast_has_the_contract_columns_and_horizon_arithmetic(batch, regular, fitted):
    client_id, history, _ = regular
    # Other clients in the history are ignored.
    forecast = fitted.predict(batch.rows, batch.calendar)
    assert forecast.schema == pl.Schema(
        {
            "client_id": pl.String,
            "metric": pl.String,
            "origin": pl.Datetime("us"),
            "ts": pl.Datetime("us"),
            "horizon": pl.Int32,
            "p10": pl.Float64,
            "p50": pl.Float64,
            "p90": pl.Float64,
        }
    )
    assert fitted.metrics == list(METRICS)
    assert forecast.height == len(METRICS) * CONFIG.horizon_steps
    assert forecast.get_column("client_id").unique().to_list() == [client_id]
    last = history.get_column("ts").max()
    assert forecast.get_column("origin").unique().to_list() == [last]
    expected_ts = [last + timedelta(seconds=300 * h) for h in forecast.get_column("horizon")]
    assert forecast.get_column("ts").to_list() == expected_ts
    assert forecast.equals(forecast.sort("metric", "horizon"))
    assert forecast.get_column("horizon").to_list()[:12] == list(range(1, 13))


def test_shorter_horizon_and_too_long_horizon(regular, fitted, batch):
    _, history, _ = regular
    assert fitted.predict(history, batch.calendar, horizon_steps=3).height == len(METRICS) * 3
    with pytest.raises(ValueError, match="trained horizon"):
        fitted.predict(history, batch.calendar, horizon_steps=13)


def test_quantiles_never_cross_and_are_never_negative(regular, fitted, batch):
    _, history, _ = regular
    last = history.get_column("ts").max()
    origins = [last - timedelta(minutes=5 * k) for k in range(0, 288, 7)]
    forecasts = forecast_origins(fitted, history, origins, batch.calendar)
    assert forecasts.get_column("origin").n_unique() == len(origins)
    p10, p50, p90 = (forecasts.get_column(c).to_numpy() for c in ("p10", "p50", "p90"))
    assert np.all(p10 >= 0)
    assert np.all(p10 <= p50)
    assert np.all(p50 <= p90)
    assert np.mean(p90 > p10) > 0.5  # intervals are not collapsed


def test_holdout_scores_every_metric_against_baselines(fitted):
    assert fitted.fallback is None
    assert set(fitted.holdout) == set(fitted.metrics)
    for scores in fitted.holdout.values():
        assert tuple(scores) == HOLDOUT_KEYS
        assert scores["n_points"] > 0
        assert 0.0 <= scores["coverage_80"] <= 1.0
        assert scores["pinball"] == pytest.approx(
            np.mean([scores["pinball_p10"], scores["pinball_p50"], scores["pinball_p90"]])
        )
        assert scores["naive_wmape"] is not None
        assert scores["seasonal_naive_day_wmape"] is not None
        assert scores["seasonal_naive_week_wmape"] is None  # five days of history


def test_default_adjustments_change_nothing(batch, regular, fitted):
    _, history, client = regular
    again = fit_client_forecaster(history, CONFIG, batch.calendar, client, Adjustments())
    assert again.predict(history, batch.calendar).equals(fitted.predict(history, batch.calendar))


def test_bias_shifts_all_three_quantiles(batch, regular, fitted):
    _, history, client = regular
    shifted = fit_client_forecaster(
        history, CONFIG, batch.calendar, client, Adjustments(bias={"memory_mb": 500.0})
    )
    before = fitted.predict(history, batch.calendar).filter(pl.col("metric") == "memory_mb")
    after = shifted.predict(history, batch.calendar).filter(pl.col("metric") == "memory_mb")
    for column in ("p10", "p50", "p90"):
        delta = after.get_column(column).to_numpy() - before.get_column(column).to_numpy()
        assert delta == pytest.approx(np.full(len(delta), 500.0))
    untouched = fitted.predict(history, batch.calendar).filter(pl.col("metric") == "requests")
    assert (
        shifted.predict(history, batch.calendar)
        .filter(pl.col("metric") == "requests")
        .equals(untouched)
    )


def test_recent_weight_changes_the_fit(batch, regular, fitted):
    _, history, client = regular
    since = history.get_column("ts").max() - timedelta(days=2)
    weighted = fit_client_forecaster(
        history, CONFIG, batch.calendar, client, Adjustments(recent_since=since, recent_weight=8.0)
    )
    before = fitted.predict(history, batch.calendar).get_column("p50").to_numpy()
    after = weighted.predict(history, batch.calendar).get_column("p50").to_numpy()
    assert np.abs(after - before).max() > 1e-6


def test_forecaster_survives_pickle(regular, fitted, batch):
    _, history, _ = regular
    restored = pickle.loads(pickle.dumps(fitted))
    assert restored.predict(history, batch.calendar).equals(fitted.predict(history, batch.calendar))


def test_a_metric_without_values_is_not_modelled(batch, regular):
    _, history, client = regular
    no_io = history.with_columns(pl.lit(None, dtype=pl.Float64).alias("io_ops")).drop("net_mbps")
    model = fit_client_forecaster(no_io, CONFIG, batch.calendar, client)
    assert model.metrics == ["requests", "concurrency", "cpu_cores", "memory_mb"]
    assert set(model.predict(no_io).get_column("metric")) == set(model.metrics)


def test_one_day_client_gets_the_global_fallback(batch, regular):
    client_id, history, client = regular
    newcomer = history.filter(
        pl.col("ts") > history.get_column("ts").max() - timedelta(days=1)
    ).with_columns(pl.lit("newcomer").alias("client_id"))
    reason = needs_fallback(newcomer, CONFIG)
    assert reason is not None and "too little history" in reason
    assert needs_fallback(history, CONFIG) is None

    usage = pl.concat([batch.rows, newcomer])
    clients = pl.concat(
        [
            batch.clients,
            batch.clients.filter(pl.col("client_id") == client_id).with_columns(
                pl.lit("newcomer").alias("client_id")
            ),
        ]
    )
    model = fit_global_forecaster(usage, clients, batch.calendar, CONFIG)
    assert model.client_states["newcomer"].reason == reason

    served = model.for_client("newcomer")
    assert served.fallback == reason
    forecast = served.predict(newcomer, batch.calendar)
    assert forecast.height == len(METRICS) * CONFIG.horizon_steps
    assert (forecast.get_column("p10") <= forecast.get_column("p50")).all()
    assert (forecast.get_column("p50") <= forecast.get_column("p90")).all()
    # A client the global model never saw still gets forecasts, scaled by its own history.
    stranger = newcomer.with_columns(pl.lit("stranger").alias("client_id"))
    unseen = model.for_client("stranger", {"tier": "free", "region": "us-east"})
    assert unseen.fallback is not None
    assert unseen.predict(stranger, batch.calendar).height == len(METRICS) * 12
    assert pickle.loads(pickle.dumps(served)).predict(newcomer, batch.calendar).equals(forecast)


def test_sparse_history_needs_the_fallback():
    ts = [END - timedelta(minutes=5 * i) for i in range(288 * 4)]
    requests = [1.0 if i % 50 == 0 else 0.0 for i in range(len(ts))]  # 2 % non-zero
    history = pl.DataFrame({"client_id": "s", "ts": ts, "requests": requests})
    reason = needs_fallback(history, CONFIG)
    assert reason is not None and reason.startswith("too sparse")


def test_fit_refuses_a_history_with_several_clients(batch):
    with pytest.raises(ValueError, match="exactly one client"):
        fit_client_forecaster(batch.rows, CONFIG, batch.calendar)


def test_global_model_keeps_state_only_for_the_clients_it_serves(batch, regular):
    client_id, history, _ = regular
    newcomer = history.filter(
        pl.col("ts") > history.get_column("ts").max() - timedelta(days=1)
    ).with_columns(pl.lit("newcomer").alias("client_id"))
    usage = pl.concat([batch.rows, newcomer])
    everyone = fit_global_forecaster(usage, batch.clients, batch.calendar, CONFIG)
    only = fit_global_forecaster(usage, batch.clients, batch.calendar, CONFIG, serve={"newcomer"})
    assert set(only.client_states) == {"newcomer"}
    assert set(everyone.client_states) == set(usage.get_column("client_id").unique())
    # The other clients still train the shared boosters and the pooled calibration.
    for metric in everyone.metrics:
        assert only.calibrations[metric] == everyone.calibrations[metric]
    assert only.client_states["newcomer"].scales == everyone.client_states["newcomer"].scales
    a = only.for_client("newcomer").predict(newcomer, batch.calendar)
    b = everyone.for_client("newcomer").predict(newcomer, batch.calendar)
    assert a.equals(b)


def test_forecasting_many_clients_at_once_equals_one_by_one(batch, regular, fitted):
    """Own models and global-model views (each loaded apart, as from the registry) forecast
    together exactly as each would alone."""
    client_id, history, _ = regular
    usage = batch.rows
    others = [c for c in usage.get_column("client_id").unique().sort().to_list() if c != client_id]
    model = fit_global_forecaster(usage, batch.clients, batch.calendar, CONFIG, serve=others[:3])
    attributes = {r["client_id"]: r for r in batch.clients.iter_rows(named=True)}
    forecasters = {client_id: fitted}
    for other in others[:3]:
        # A registry load gives every client its own copy of the shared boosters.
        view = model.for_client(other, attributes[other], "test")
        forecasters[other] = pickle.loads(pickle.dumps(view))
    histories = {c: usage.filter(pl.col("client_id") == c) for c in forecasters}
    histories[others[0]] = histories[others[0]].head(-7)  # one client ends earlier

    together = forecast_latest(forecasters, histories, batch.calendar)

    alone = pl.concat(
        [f.predict(histories[c], batch.calendar) for c, f in forecasters.items()]
    ).sort("client_id", "origin", "metric", "horizon")
    assert together.height == alone.height > 0
    assert together.get_column("client_id").n_unique() == 4
    for column in ("client_id", "metric", "origin", "ts", "horizon"):
        assert together.get_column(column).to_list() == alone.get_column(column).to_list()
    for column in ("p10", "p50", "p90"):
        np.testing.assert_allclose(together[column].to_numpy(), alone[column].to_numpy(), rtol=1e-9)


def test_own_models_of_clients_with_other_attributes_forecast_together_as_alone(batch, regular):
    """Each own model learns the vocabulary of its own client's attributes, so the specs of
    two clients of another tier or region differ; prediction builds their features in one
    pass all the same (same shape), giving each the codes its model learnt."""
    client_id, history, client = regular
    rows = {r["client_id"]: r for r in batch.clients.iter_rows(named=True)}
    other = next(
        c
        for c, r in sorted(rows.items())
        if c != client_id and (r["tier"], r["region"]) != (client["tier"], client["region"])
    )
    usage = batch.rows
    histories = {c: usage.filter(pl.col("client_id") == c) for c in (client_id, other)}
    forecasters = {
        c: fit_client_forecaster(histories[c], CONFIG, batch.calendar, rows[c]) for c in histories
    }
    specs = [f.feature_spec for f in forecasters.values()]
    assert specs[0] != specs[1] and specs[0].shape == specs[1].shape

    together = forecast_latest(forecasters, histories, batch.calendar)

    alone = pl.concat(
        [f.predict(histories[c], batch.calendar) for c, f in forecasters.items()]
    ).sort("client_id", "origin", "metric", "horizon")
    assert together.height == alone.height > 0
    for column in ("client_id", "metric", "horizon"):
        assert together.get_column(column).to_list() == alone.get_column(column).to_list()
    for column in ("p10", "p50", "p90"):
        np.testing.assert_allclose(together[column].to_numpy(), alone[column].to_numpy(), rtol=1e-9)
