"""Models as compact files (models.compact, models.forecaster.artifact,
models.exceedance.artifact): real fits of seeded synthetic clients at the flows' defaults
round-trip to bit-identical forecasts, in a fraction of the pickle's bytes."""

from __future__ import annotations

import gzip
import json
import pickle
from datetime import datetime, timedelta

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from models.compact import compact_model_text, pack, unpack
from models.exceedance import (
    ExceedanceConfig,
    exceedance_from_bytes,
    exceedance_to_bytes,
    fit_exceedance_model,
)
from models.forecaster import (
    ClientForecaster,
    ForecastConfig,
    fit_client_forecaster,
    fit_global_forecaster,
    forecast_latest,
    forecaster_from_bytes,
    forecaster_to_bytes,
)
from models.forecaster.forest import Forest
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
# What the flows train with by default: a 1-hour horizon, a day's reach every half hour.
DEFAULTS = ForecastConfig(profile_steps=288, profile_stride=6)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(4, 14, END, seed=7)


@pytest.fixture(scope="module")
def history(batch) -> pl.DataFrame:
    return batch.rows.filter(pl.col("client_id") == "c0000")


@pytest.fixture(scope="module")
def client(batch) -> dict:
    return batch.clients.filter(pl.col("client_id") == "c0000").row(0, named=True)


@pytest.fixture(scope="module")
def fitted(batch, history, client) -> ClientForecaster:
    return fit_client_forecaster(history, DEFAULTS, batch.calendar, client)


def test_a_realistic_forecaster_file_is_a_fraction_of_its_pickle(fitted):
    assert fitted.reach is not None and len(fitted.models) == 6  # six metrics, a day's reach
    stored = forecaster_to_bytes(fitted)
    pickled = pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(stored) < 250_000 < 700_000 < len(pickled)
    # gzip-compressed JSON: readable without this code, and nothing in it can run.
    document = json.loads(gzip.decompress(stored))
    assert document["format"] == "prewarm.forecaster/1"
    assert set(document["models"]) == set(fitted.metrics)
    assert document["models"]["requests"]["boosters"][1].startswith("tree\nversion=v4\n")


def test_a_stored_forecaster_forecasts_bit_for_bit_as_the_fitted_one(fitted, history, batch):
    loaded = forecaster_from_bytes(forecaster_to_bytes(fitted))
    assert loaded.config == fitted.config and loaded.feature_spec == fitted.feature_spec
    assert loaded.trained_until == fitted.trained_until
    assert loaded.holdout == fitted.holdout and loaded.reach_holdout == fitted.reach_holdout
    assert loaded.exceedance is None
    # Over the horizon, then past it to a day (the reach): every quantile exactly equal.
    assert_frame_equal(
        loaded.predict(history, batch.calendar),
        fitted.predict(history, batch.calendar),
        check_exact=True,
    )
    together = forecast_latest({"c0000": fitted}, {"c0000": history}, batch.calendar)
    assert together.get_column("horizon").max() == 288
    assert_frame_equal(
        forecast_latest({"c0000": loaded}, {"c0000": history}, batch.calendar),
        together,
        check_exact=True,
    )
    # Stored again, it gives the same bytes: nothing is lost or reordered on the way.
    assert forecaster_to_bytes(loaded) == forecaster_to_bytes(fitted)


def test_a_forecaster_read_as_forests_forecasts_bit_for_bit_and_is_not_stored_again(
    fitted, history, batch
):
    stored = forecaster_to_bytes(fitted)
    forests = forecaster_from_bytes(stored, forests=True)
    assert isinstance(forests.models["requests"].boosters.boosters[1], Forest)
    assert_frame_equal(
        forests.predict(history, batch.calendar),
        fitted.predict(history, batch.calendar),
        check_exact=True,
    )
    assert_frame_equal(
        forecast_latest({"c0000": forests}, {"c0000": history}, batch.calendar),
        forecast_latest({"c0000": fitted}, {"c0000": history}, batch.calendar),
        check_exact=True,
    )
    # Its identity is the stored text's: it groups with copies read as boosters.
    booster_copy = forecaster_from_bytes(stored)
    assert (
        forests.models["requests"].boosters.fingerprint()
        == booster_copy.models["requests"].boosters.fingerprint()
    )
    with pytest.raises(TypeError, match="keeps no model text"):
        forecaster_to_bytes(forests)


def test_global_model_views_stored_apart_still_forecast_together(batch):
    short = batch.rows.filter(
        pl.col("client_id").is_in(["c0001", "c0002"]) & (pl.col("ts") >= END - timedelta(days=1))
    )
    usage = pl.concat([batch.rows.filter(~pl.col("client_id").is_in(["c0001", "c0002"])), short])
    model = fit_global_forecaster(
        usage, batch.clients, batch.calendar, DEFAULTS, serve=["c0001", "c0002"]
    )
    views = {cid: model.for_client(cid) for cid in ("c0001", "c0002")}
    loaded = {cid: forecaster_from_bytes(forecaster_to_bytes(v)) for cid, v in views.items()}
    histories = {cid: short.filter(pl.col("client_id") == cid) for cid in views}
    # Copies read apart share the global boosters' identity: scored in one call, as before.
    assert (
        loaded["c0001"].models["requests"].boosters.fingerprint()
        == loaded["c0002"].models["requests"].boosters.fingerprint()
    )
    assert_frame_equal(
        forecast_latest(loaded, histories, batch.calendar),
        forecast_latest(views, histories, batch.calendar),
        check_exact=True,
    )


def test_a_stored_exceedance_model_scores_bit_for_bit_as_the_fitted_one(batch):
    usage = batch.rows.select("client_id", "ts", "concurrency").drop_nulls()
    fitted = fit_exceedance_model(
        usage, ExceedanceConfig(freq_seconds=300, horizon_steps=12, max_level=8, max_rows=20_000)
    )
    stored = exceedance_to_bytes(fitted)
    loaded = exceedance_from_bytes(stored)
    assert len(stored) < len(pickle.dumps(fitted)) / 3
    assert loaded.config == fitted.config and loaded.training_rows == fitted.training_rows
    assert_frame_equal(loaded.predict(usage), fitted.predict(usage), check_exact=True)


def test_compact_model_text_keeps_exactly_what_prediction_reads(fitted):
    booster = fitted.models["requests"].boosters.boosters[1]
    full = booster.model_to_string()
    compact = compact_model_text(full)
    assert len(compact) < 0.7 * len(full)
    for dropped in ("split_gain=", "internal_value=", "leaf_count=", "parameters:", "tree_sizes="):
        assert dropped in full and dropped not in compact
    rows = np.random.default_rng(0).normal(0.0, 3.0, size=(5_000, booster.num_feature()))
    rows[rows > 4.0] = np.nan  # missing values take the trees' default branches
    reloaded = lgb.Booster(model_str=compact)
    assert np.array_equal(reloaded.predict(rows), booster.predict(rows))
    with pytest.raises(ValueError, match="not a LightGBM model text"):
        compact_model_text("tree\nversion=v4\n")


def test_a_file_of_another_kind_is_refused():
    stored = pack({"config": {}}, "prewarm.exceedance/1")
    assert unpack(stored, "prewarm.exceedance/1") == {
        "format": "prewarm.exceedance/1",
        "config": {},
    }
    with pytest.raises(ValueError, match="expected a 'prewarm.forecaster/1' document"):
        forecaster_from_bytes(stored)
