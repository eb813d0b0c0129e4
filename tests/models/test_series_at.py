"""Features at just the steps rows read (`build_series_at`) against the whole-series build
(`build_series`), and the latest forecasts built on them against the per-origin path, bit for
bit, on seeded synthetic clients with holes, calendar events, attributes and a sparse client."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import pytest

from core.vocabulary import METRICS
from models.features import assemble_rows, build_series, make_feature_spec, regular_grid, to_long
from models.forecaster import (
    ForecastConfig,
    fit_client_forecaster,
    fit_global_forecaster,
    forecast_latest,
    forecast_origins,
)
from models.series_at import build_series_at
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
FREQ = 300
CONFIG = ForecastConfig(n_estimators=15, tail_estimators=8, max_train_rows=800, max_eval_rows=600)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(8, 9, END, seed=11)


@pytest.fixture(scope="module")
def usage(batch) -> pl.DataFrame:
    """The batch with what real histories have: missing buckets (here and there, and a
    whole hour), a metric one client never reports, a client whose history ends earlier."""
    rows = batch.rows.with_row_index("_i")
    holes = (pl.col("_i") % 97 == 5) | ((pl.col("_i") > 400) & (pl.col("_i") < 412))
    rows = rows.filter(~holes).drop("_i")
    rows = rows.with_columns(
        pl.when(pl.col("client_id") == "c0001")
        .then(None)
        .otherwise(pl.col("io_ops"))
        .alias("io_ops")
    )
    return rows.filter(
        (pl.col("client_id") != "c0003") | (pl.col("ts") < END.replace(hour=0, day=18))
    )


def _clients(batch) -> pl.DataFrame:
    """Attributes of all clients but one (a client without any is served all the same)."""
    return batch.clients.filter(pl.col("client_id") != "c0006").drop("attributes")


def _pairs(grid: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """Per client: its last step and 40 recent origins over the horizon, and an origin
    near its start (lags and seasons reaching before the series)."""
    bounds = (
        grid.filter(pl.col("requests").is_not_null())
        .group_by("client_id")
        .agg(pl.col("step").min().alias("lo"), pl.col("step").max().alias("hi"))
    )
    origins = bounds.select(
        "client_id",
        pl.concat_list(
            pl.col("lo") + 3, pl.int_ranges(pl.col("hi") - 80, pl.col("hi") + 1, 2)
        ).alias("step"),
    ).explode("step")
    ahead = pl.DataFrame({"horizon": np.arange(1, horizon + 1, dtype=np.int32)})
    return origins.join(ahead, how="cross")


@pytest.mark.parametrize("horizon", [12, 300])
def test_features_at_the_steps_read_equal_the_whole_series_bit_for_bit(batch, usage, horizon):
    clients = _clients(batch)
    spec = make_feature_spec(FREQ, horizon, 9 * 288, clients, batch.calendar, METRICS)
    assert spec.seasons == (288, 2016) and spec.profile_days > 1 and spec.cross_metrics
    grid = regular_grid(usage, FREQ, METRICS, extend_steps=horizon, missing_as=0.0)
    long = to_long(grid, METRICS)
    scales = long.group_by("client_id", "metric").agg(
        (pl.col("value").abs().mean() + 0.5).alias("scale")
    )
    pairs = _pairs(grid, horizon)

    at = build_series_at(grid, METRICS, pairs, spec, scales, batch.calendar, clients)
    whole = build_series(long, spec, scales, batch.calendar, clients)

    keys = ["client_id", "metric", "step"]
    read = whole.join(at.select("client_id", "step").unique(), on=["client_id", "step"], how="semi")
    assert at.columns == whole.columns and at.schema == whole.schema
    assert at.sort(keys).equals(read.sort(keys))
    # Every origin and every target inside the grid is there, and nothing else.
    targets = pairs.select("client_id", (pl.col("step") + pl.col("horizon")).alias("step"))
    wanted = pl.concat([pairs.select("client_id", "step"), targets]).unique()
    assert at.height == whole.join(wanted, on=["client_id", "step"], how="semi").height
    assert assemble_rows(at, pairs, spec).equals(assemble_rows(whole, pairs, spec))


def test_features_at_an_origin_do_not_look_past_it(batch, usage):
    """Changing every value after an origin changes none of that origin's features."""
    spec = make_feature_spec(FREQ, 12, 9 * 288, None, batch.calendar, METRICS)
    grid = regular_grid(usage, FREQ, METRICS, extend_steps=12, missing_as=0.0)
    scales = to_long(grid, METRICS).group_by("client_id", "metric").agg(pl.lit(2.0).alias("scale"))
    pairs = _pairs(grid, 12)
    origin = pairs.group_by("client_id").agg((pl.col("step").max() - 30).alias("origin"))
    later = pl.col("step") > pl.col("origin")
    changed = (
        grid.join(origin, on="client_id", how="left", maintain_order="left")
        .with_columns(pl.when(later).then(pl.col(m) * 3 + 1).otherwise(pl.col(m)) for m in METRICS)
        .drop("origin")
    )
    assert not changed.equals(grid)

    def at_origin(frame: pl.DataFrame) -> pl.DataFrame:
        built = build_series_at(frame, METRICS, pairs, spec, scales, batch.calendar)
        return built.join(
            origin, left_on=["client_id", "step"], right_on=["client_id", "origin"]
        ).sort("client_id", "metric")

    assert at_origin(grid).height == 8 * len(METRICS)
    assert at_origin(changed).equals(at_origin(grid))


def test_latest_forecasts_equal_the_per_origin_path_bit_for_bit(batch, usage):
    """Own models of regular, bursty and late clients and global-model views of the sparse
    one, of one the global model never saw and of one without attributes, forecast
    together, equal each client's `forecast_origins` at its last bucket (the whole-series
    features of before)."""
    attributes = {r["client_id"]: r for r in _clients(batch).iter_rows(named=True)}
    histories = {
        c: usage.filter(pl.col("client_id") == c) for c in ("c0000", "c0002", "c0003", "c0005")
    }
    forecasters = {
        c: fit_client_forecaster(h, CONFIG, batch.calendar, attributes[c])
        for c, h in histories.items()
    }
    model = fit_global_forecaster(usage, _clients(batch), batch.calendar, CONFIG, serve=["c0004"])
    for client in ("c0004", "c0007", "c0006"):
        histories[client] = usage.filter(pl.col("client_id") == client)
        forecasters[client] = model.for_client(client, attributes.get(client), "test")
    assert (
        forecasters["c0006"].client is None
        and forecasters["c0007"].models["requests"].scale is None
    )

    together = forecast_latest(forecasters, histories, batch.calendar)
    assert forecast_latest(forecasters, histories, batch.calendar, clients_per_pass=2).equals(
        together
    )

    alone = pl.concat(
        forecast_origins(f, histories[c], [histories[c].get_column("ts").max()], batch.calendar)
        for c, f in forecasters.items()
    ).sort("client_id", "origin", "metric", "horizon")
    assert together.get_column("client_id").n_unique() == 7
    assert together.equals(alone)
