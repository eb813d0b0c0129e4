"""Boosters as forests (models.forecaster.forest): real LightGBM fits with the forecaster's
parameters score bit for bit as the boosters they were read from, on inputs that take every
branch of LightGBM's walk (NaN, exact and near zeros, values on the thresholds)."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from models.compact import compact_model_text
from models.forecaster import ForecastConfig
from models.forecaster.forest import Forest
from models.forecaster.training import _lgb_params

COLUMNS = 12


def _inputs(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.normal(size=(rows, COLUMNS))
    x[rng.random(x.shape) < 0.08] = np.nan
    x[rng.random(x.shape) < 0.10] = 0.0
    x[rng.random(x.shape) < 0.02] = 1e-40  # within LightGBM's zero threshold
    x[rng.random(x.shape) < 0.02] = -3e-36
    return x


def _fit(alpha: float, rounds: int, zero_as_missing: bool = False, **extra: object) -> lgb.Booster:
    rng = np.random.default_rng(int(alpha * 100) + rounds)
    x = _inputs(rng, 4000)
    y = np.nan_to_num(x[:, 0]) * 2 + np.where(np.isnan(x[:, 1]), 3.0, 0.0) + rng.normal(size=4000)
    params = {
        **_lgb_params(ForecastConfig()),
        "alpha": alpha,
        "zero_as_missing": zero_as_missing,
        **extra,
    }
    return lgb.train(params, lgb.Dataset(x, y, params=params), num_boost_round=rounds)


@pytest.mark.parametrize(
    ("alpha", "rounds", "zero_as_missing"),
    [(0.5, 30, False), (0.1, 10, False), (0.9, 10, True)],
)
def test_a_forest_scores_bit_for_bit_as_its_booster(alpha, rounds, zero_as_missing):
    booster = _fit(alpha, rounds, zero_as_missing)
    rows = _inputs(np.random.default_rng(99), 5000)
    forest = Forest.from_model_text(booster.model_to_string())
    # Values exactly on the thresholds go left, as in LightGBM.
    on_threshold = np.tile(rows[:1], (len(forest.threshold), 1))
    on_threshold[np.arange(len(forest.threshold)), forest.feature] = forest.threshold
    for x in (rows, on_threshold, rows[:1], rows.astype(np.float32)):
        expected = booster.predict(x, num_threads=1)
        assert np.array_equal(forest.predict(x), expected)
    # Read from the compact text the registry stores: the same.
    compact = Forest.from_model_text(compact_model_text(booster.model_to_string()))
    assert np.array_equal(compact.predict(rows), booster.predict(rows, num_threads=1))
    assert len(forest.roots) == rounds
    # Missing values really took default branches: NaN rows score apart from zero rows.
    nan_row, zero_row = np.full((1, COLUMNS), np.nan), np.zeros((1, COLUMNS))
    assert forest.predict(nan_row)[0] == booster.predict(nan_row)[0]
    assert forest.predict(zero_row)[0] == booster.predict(zero_row)[0]


def test_trees_of_a_single_leaf_score_their_constant():
    # min_data_in_leaf above the rows: no split is possible, every tree is one leaf.
    booster = _fit(0.5, 5, min_data_in_leaf=10_000, min_data_in_bin=1)
    forest = Forest.from_model_text(booster.model_to_string())
    assert len(forest.feature) == 0 and np.all(forest.roots < 0)
    rows = _inputs(np.random.default_rng(3), 50)
    expected = booster.predict(rows, num_threads=1)
    assert np.array_equal(forest.predict(rows), expected)
    assert np.unique(expected).size == 1


def test_a_forest_is_a_fraction_of_its_boosters_memory():
    forest = Forest.from_model_text(_fit(0.5, 30).model_to_string())
    # 30 trees of at most 15 leaves: 14 bytes per node (threshold 8, two 2-byte children,
    # a 1-byte column and decision), 8 per leaf, 2 per root.
    assert forest.nbytes <= 30 * (14 * 14 + 15 * 8 + 2)
    assert (forest.left.dtype, forest.feature.dtype) == (np.int16, np.uint8)


def test_a_forest_past_16_bit_indices_keeps_them_in_32():
    # 40 trees of up to 1,000 leaves: more than 32,768 leaves in all.
    booster = _fit(0.5, 40, num_leaves=1000, min_data_in_leaf=1, min_data_in_bin=1)
    forest = Forest.from_model_text(booster.model_to_string())
    assert len(forest.leaf_value) > 2**15
    assert forest.left.dtype == forest.right.dtype == forest.roots.dtype == np.int32
    rows = _inputs(np.random.default_rng(8), 3000)
    assert np.array_equal(forest.predict(rows), booster.predict(rows, num_threads=1))


def test_a_forest_refuses_what_it_cannot_score():
    booster = _fit(0.5, 3)
    forest = Forest.from_model_text(booster.model_to_string())
    with pytest.raises(ValueError, match="expects 12 input columns, got shape \\(4, 11\\)"):
        forest.predict(np.zeros((4, 11)))
    with pytest.raises(ValueError, match="not a LightGBM model text"):
        Forest.from_model_text("hello")
    text = booster.model_to_string()
    truncated = text[: text.index("leaf_value=")] + text[text.index("end of trees") :]
    with pytest.raises(ValueError, match="do not add up"):
        Forest.from_model_text(truncated)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, size=(2000, 2)).astype(np.float64)
    y = x[:, 0] * 3 + rng.normal(size=2000)
    params = {"objective": "quantile", "verbosity": -1, "min_data_per_group": 5, "cat_smooth": 1}
    categorical = lgb.train(params, lgb.Dataset(x, y, categorical_feature=[0]), 5)
    with pytest.raises(ValueError, match="categorical splits"):
        Forest.from_model_text(categorical.model_to_string())
