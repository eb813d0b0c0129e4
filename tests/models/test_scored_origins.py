"""Recent origins remembered between prediction runs (`ScoredOrigins`): a run scores only the
origins that came in since the last, its forecasts stay those of scoring every origin (bit
for bit on a first run, within the rounding of rolling sums after), memory stays within the
recalibration window, a registered model loaded again keeps its origins without being kept
in memory, and nothing is remembered that could drift."""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from models.features import step_of
from models.forecaster import (
    ForecastConfig,
    fit_client_forecaster,
    fit_global_forecaster,
    forecast_latest,
)
from models.forecaster.artifact import forecaster_from_bytes, forecaster_to_bytes
from models.forecaster.calibration import Outcomes, RecentErrors
from models.forecaster.prediction import _recent_origins
from models.forecaster.scored_origins import ScoredOrigins
from warehouse.sources.synthetic import generate_synthetic

END = datetime(2026, 1, 19)
FREQ = 300
CONFIG = ForecastConfig(n_estimators=15, tail_estimators=8, max_train_rows=800, max_eval_rows=600)


@pytest.fixture(scope="module")
def batch():
    return generate_synthetic(5, 9, END, seed=23)


@pytest.fixture(scope="module")
def fitted(batch):
    """Two clients' own forecasters and a global-model client that joined after training
    (its scales measured on each run's history)."""
    usage = batch.rows
    clients = batch.clients.drop("attributes")
    attributes = {r["client_id"]: r for r in clients.iter_rows(named=True)}
    forecasters = {
        c: fit_client_forecaster(
            usage.filter(pl.col("client_id") == c), CONFIG, batch.calendar, attributes[c]
        )
        for c in ("c0000", "c0001")
    }
    trained = usage.filter(pl.col("client_id") != "c0004")
    model = fit_global_forecaster(trained, clients, batch.calendar, CONFIG, serve=["c0002"])
    forecasters["c0004"] = model.for_client("c0004", attributes["c0004"], "test")
    assert forecasters["c0004"].models["requests"].scale is None
    return forecasters


def _histories(batch, forecasters, back: int) -> dict[str, pl.DataFrame]:
    """Each client's history up to `back` buckets before the batch's end."""
    cut = batch.rows.filter(pl.col("ts") <= END - timedelta(seconds=FREQ * (back + 1)))
    return {c: cut.filter(pl.col("client_id") == c) for c in forecasters}


def _last_step(history: pl.DataFrame) -> int:
    return int(history.select(step_of(pl.col("ts").max(), FREQ)).item())


def test_a_first_run_forecasts_bit_for_bit_as_scoring_every_origin(batch, fitted):
    histories = _histories(batch, fitted, back=20)
    scored = ScoredOrigins()
    assert forecast_latest(fitted, histories, batch.calendar, scored=scored).equals(
        forecast_latest(fitted, histories, batch.calendar)
    )
    assert len(scored) == 2  # the own models' clients, not the global model's newcomer


def test_later_runs_score_only_the_origins_that_came_in(batch, fitted):
    scored = ScoredOrigins()
    own = fitted["c0000"]
    seen: set[int] = set()
    for back in range(20, 11, -1):
        histories = _histories(batch, fitted, back)
        recent = _recent_origins([_last_step(histories["c0000"])], own.config)
        # What has not been scored yet is what this run scores: the definition of the window.
        assert scored.unscored(own, recent) == [o for o in recent if o not in seen]
        forecast_latest(fitted, histories, batch.calendar, scored=scored)
        seen |= set(recent)
        assert scored.unscored(own, recent) == []
    stride = recent[1] - recent[0]
    assert stride > 1
    # On the stride's fixed grid, the 8 runs after the first scored only the newest origins,
    # one every `stride` steps, never a whole window of another phase.
    assert len(seen) - len(recent) <= math.ceil((20 - 12) / stride)
    assert all(o % stride == 0 for o in seen)
    later = [
        _recent_origins([_last_step(_histories(batch, fitted, back)["c0000"])], own.config)
        for back in (11, 10)
    ]
    assert [len(scored.unscored(own, origins)) for origins in later] in ([1, 1], [0, 1], [1, 0])
    assert set(later[1]) - set(later[0]) <= {later[1][-1]}


def test_recent_origins_lie_on_a_grid_fixed_in_absolute_steps():
    config = CONFIG
    runs = [_recent_origins([step], config) for step in range(10_000, 10_010)]
    stride = runs[0][1] - runs[0][0]
    assert stride == 3  # 0.5 day of 5-minute buckets, 12 steps each, over 600 rows
    for step, origins in zip(range(10_000, 10_010), runs, strict=True):
        assert all(o % stride == 0 for o in origins)
        assert origins == sorted(origins)
        # The newest origin's targets are all known at the run's step; the oldest's still
        # reach into the window (144 steps before it).
        assert step - config.horizon_steps - stride < origins[-1] <= step - config.horizon_steps
        assert origins[0] >= step - 144 - config.horizon_steps + 1
        assert origins[0] - stride < step - 144 - config.horizon_steps + 1
    for before, after in zip(runs, runs[1:], strict=False):
        assert len(set(after) - set(before)) <= 1  # one step later: at most one new origin


def test_remembered_origins_forecast_as_scoring_every_origin(batch, fitted):
    scored = ScoredOrigins()
    for back in range(20, 9, -1):
        histories = _histories(batch, fitted, back)
        kept = forecast_latest(fitted, histories, batch.calendar, scored=scored)
        every = forecast_latest(fitted, histories, batch.calendar)
        assert kept.select("client_id", "metric", "ts").equals(
            every.select("client_id", "metric", "ts")
        )
        a, b = (f.select("p10", "p50", "p90").to_numpy() for f in (kept, every))
        # Only the last bits of remembered origins' features differ (their history window
        # started earlier); through recalibration they move a forecast by far less than 1 %.
        assert np.allclose(a, b, rtol=1e-2, atol=1e-9)
        assert (a == b).all(axis=1).mean() >= 0.9


def test_a_new_model_of_the_client_starts_afresh(batch, fitted):
    scored = ScoredOrigins()
    histories = _histories(batch, fitted, back=20)
    forecast_latest(fitted, histories, batch.calendar, scored=scored)
    own = fitted["c0000"]
    recent = _recent_origins([_last_step(histories["c0000"])], own.config)
    assert scored.unscored(own, recent) == []
    retrained = fit_client_forecaster(
        batch.rows.filter(pl.col("client_id") == "c0000"), CONFIG, batch.calendar
    )
    assert scored.unscored(retrained, recent) == recent


def _loaded(forecaster, version: str):
    """`forecaster` as the registry's loader gives it back: read from its file, with the
    version it was read from."""
    loaded = forecaster_from_bytes(forecaster_to_bytes(forecaster))
    loaded.registered_version = version
    return loaded


def test_a_registered_model_loaded_again_keeps_its_origins_without_being_kept(batch, fitted):
    """Prediction's model cache holds fewer clients than it predicts: a client past it loads
    its model every run. Its scored origins are the version's, not the loaded object's."""
    scored = ScoredOrigins()
    first = _loaded(fitted["c0000"], "3")
    histories = _histories(batch, fitted, back=20)
    forecast_latest({"c0000": first}, histories, batch.calendar, scored=scored)
    recent = _recent_origins([_last_step(histories["c0000"])], first.config)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # the entry does not keep the model in memory

    again = _loaded(fitted["c0000"], "3")
    assert scored.unscored(again, recent) == []
    later = _histories(batch, fitted, back=17)
    newer = _recent_origins([_last_step(later["c0000"])], again.config)
    kept = forecast_latest({"c0000": again}, later, batch.calendar, scored=scored)
    every = forecast_latest({"c0000": _loaded(fitted["c0000"], "3")}, later, batch.calendar)
    a, b = (f.select("p10", "p50", "p90").to_numpy() for f in (kept, every))
    assert np.allclose(a, b, rtol=1e-2, atol=1e-9)
    assert scored.unscored(again, newer) == []
    # Another version of the same client's model starts afresh.
    assert scored.unscored(_loaded(fitted["c0000"], "4"), newer) == newer
    assert scored.unscored(replace(again, registered_version=None), newer) == newer


def test_a_client_whose_scales_are_measured_each_run_is_never_remembered(batch, fitted):
    scored = ScoredOrigins()
    newcomer = fitted["c0004"]
    for back in (20, 17):
        histories = _histories(batch, fitted, back)
        forecast_latest(fitted, histories, batch.calendar, scored=scored)
    recent = _recent_origins([_last_step(histories["c0004"])], newcomer.config)
    assert scored.unscored(newcomer, recent) == recent
    assert len(scored) == 2


def test_memory_stays_within_the_recalibration_window(batch, fitted):
    scored = ScoredOrigins()
    own = fitted["c0001"]
    for back in range(40, -1, -4):
        histories = _histories(batch, fitted, back)
        forecast_latest(fitted, histories, batch.calendar, scored=scored)
    recent = _recent_origins([_last_step(histories["c0001"])], own.config)
    entry = scored._clients["c0001"]
    assert min(entry.origins) >= recent[0]
    assert len(entry.origins) <= recent[-1] - recent[0] + 1
    for metric, errors in entry.errors.items():
        assert errors.step.min() >= recent[0], metric
        # one row per (origin, horizon): none counted twice
        pairs = set(zip(errors.step.tolist(), errors.known_at.tolist(), strict=True))
        assert len(pairs) == len(errors.step), metric
        # kept small: 24 bytes a row (two int32 steps, two float64 errors)
        assert errors.step.dtype == errors.known_at.dtype == np.int32, metric
        assert sum(a.nbytes for a in vars(errors).values()) == 24 * len(errors.step)


def test_an_origin_scored_again_replaces_its_remembered_rows(fitted):
    """A run that fails before marking its origins scores them again in the next run: their
    rows must not be counted twice."""
    scored = ScoredOrigins()
    own = fitted["c0000"]

    def rows(origins: list[int], value: float) -> Outcomes:
        steps = np.repeat(np.asarray(origins, dtype=np.int64), 2)
        return Outcomes(
            np.full((len(steps), 3), value), np.tile([1, 2], len(origins)), steps, steps * 0.0
        )

    first = scored.errors(own, "requests", rows([10, 12], 1.0), wanted=[10, 12])
    assert len(first.step) == 4
    again = scored.errors(own, "requests", rows([12, 14], 2.0), wanted=[10, 12, 14])
    assert sorted(again.step.tolist()) == [10, 10, 12, 12, 14, 14]
    # the origin scored again has the errors of its second scoring, not the first
    second = RecentErrors.of(own.models["requests"], rows([12], 2.0))
    np.testing.assert_array_equal(again.low[again.step == 12], second.low)
    assert not np.array_equal(again.low[again.step == 12], first.low[first.step == 12])
    later = scored.errors(own, "requests", rows([16], 3.0), wanted=[14, 16])
    assert sorted(later.step.tolist()) == [14, 14, 16, 16]


def test_steps_past_int32_are_kept_as_they_are(fitted):
    # One-second buckets after 2038: a step no longer fits 32 bits and is not narrowed.
    scored = ScoredOrigins()
    own = fitted["c0000"]
    late = 2**31 + 5
    steps = np.asarray([late, late], dtype=np.int64)
    fresh = Outcomes(np.full((2, 3), 1.0), np.asarray([1, 2]), steps, steps * 0.0)
    errors = scored.errors(own, "requests", fresh, wanted=[late])
    kept = scored._clients["c0000"].errors["requests"]
    assert kept.step.dtype == np.int64 and kept.step.tolist() == [late, late]
    assert errors.known_at.tolist() == [late + 1, late + 2]


def test_past_max_clients_later_clients_are_scored_in_full_every_run(batch, fitted):
    scored = ScoredOrigins(max_clients=1)
    for back in range(20, 14, -1):
        histories = _histories(batch, fitted, back)
        kept = forecast_latest(fitted, histories, batch.calendar, scored=scored)
        assert np.allclose(
            kept.select("p10", "p50", "p90").to_numpy(),
            forecast_latest(fitted, histories, batch.calendar)
            .select("p10", "p50", "p90")
            .to_numpy(),
            rtol=1e-2,
            atol=1e-9,
        )
    assert len(scored) == 1
    first, second = fitted["c0000"], fitted["c0001"]
    recent = _recent_origins([_last_step(histories["c0000"])], first.config)
    assert scored.unscored(first, recent) == []  # the first client met is kept
    assert scored.unscored(second, recent) == recent  # the other is not remembered
