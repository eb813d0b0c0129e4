"""The p10/p50/p90 LightGBM boosters of one metric: parameters, training, raw predictions.

Targets are the change from the last value in scale units, divided by the typical change at
that horizon (`_horizon_scale`) so a leaf mixing near and far horizons suits each of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import polars as pl

from models.compact import compact_model_text
from models.features import FeatureSpec, feature_matrix
from models.forecaster.config import QUANTILES, Adjustments, ForecastConfig

if TYPE_CHECKING:
    from models.forecaster.forest import Forest


@dataclass
class QuantileBoosters:
    """p10, p50 and p90 boosters of the change in scale units, divided by `horizon_scale`.

    `horizon_scale[h - 1]` is the typical |change| h steps ahead in the training rows: a
    read-only float64 array (a day's reach has 288 steps; as Python floats they took more
    memory than the reach's forests' leaves).
    """

    boosters: tuple[lgb.Booster, lgb.Booster, lgb.Booster] | tuple[Forest, Forest, Forest]
    horizon_scale: np.ndarray

    def __post_init__(self) -> None:
        scale = np.array(self.horizon_scale, dtype=np.float64)
        scale.flags.writeable = False
        self.horizon_scale = scale

    def fingerprint(self) -> str:
        """Identity of the boosters' content: equal for copies loaded apart (the global
        model's boosters arrive once per client it serves), computed once per object."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            texts = [_stored(booster).model_to_string() for booster in self.boosters]
            cached = self.__dict__["_fingerprint"] = _digest(self.horizon_scale, texts)
        return cached

    def model_texts(self) -> list[str]:
        """The p10, p50 and p90 boosters as compact LightGBM model text (`models.compact`)."""
        return [
            compact_model_text(_stored(booster).model_to_string(num_iteration=-1))
            for booster in self.boosters
        ]

    @classmethod
    def from_model_texts(
        cls, texts: Sequence[str], horizon_scale: Sequence[float], forests: bool = False
    ) -> QuantileBoosters:
        """Boosters rebuilt from `model_texts`, as `lightgbm.Booster`s or, with `forests`,
        as the `Forest`s prediction scores with (a fifth of the memory, no per-call set-up;
        they cannot be stored again). Their fingerprint is that text's, so copies read from
        the same files group together without serialising the boosters again."""
        if forests:
            # Imported here: numba costs every command that never loads a model 0.3 s.
            from models.forecaster.forest import Forest

            trees = tuple(Forest.from_model_text(text) for text in texts)
            rebuilt = cls((trees[0], trees[1], trees[2]), np.asarray(horizon_scale))
        else:
            p10, p50, p90 = (lgb.Booster(model_str=text) for text in texts)
            rebuilt = cls((p10, p50, p90), np.asarray(horizon_scale))
        rebuilt.__dict__["_fingerprint"] = _digest(rebuilt.horizon_scale, texts)
        return rebuilt


def _stored(booster: lgb.Booster | Forest) -> lgb.Booster:
    if not isinstance(booster, lgb.Booster):
        raise TypeError(
            "a model loaded for prediction (as forests) keeps no model text: "
            "load it with forests=False to store it again"
        )
    return booster


def _digest(horizon_scale: np.ndarray, texts: Iterable[str]) -> str:
    digest = hashlib.sha256(horizon_scale.tobytes())
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()


def _lgb_params(config: ForecastConfig) -> dict[str, object]:
    return {
        "objective": "quantile",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "max_bin": config.max_bin,
        "feature_fraction": config.feature_fraction,
        "lambda_l2": config.lambda_l2,
        "num_threads": 1,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def _train_boosters(
    train: pl.DataFrame,
    spec: FeatureSpec,
    config: ForecastConfig,
    adjustments: Adjustments,
    last_step: int | None = None,
) -> QuantileBoosters:
    """Three quantile boosters on one shared, binned Dataset, for steps up to `last_step`
    (the horizon by default)."""
    weight = None
    if adjustments.recent_since is not None and adjustments.recent_weight != 1.0:
        recent = (train.get_column("target_ts") >= adjustments.recent_since).to_numpy()
        weight = np.where(recent, adjustments.recent_weight, 1.0)
    horizons = train.get_column("horizon").to_numpy()
    target = train.get_column("target").to_numpy()
    horizon_scale = _horizon_scale(horizons, target, last_step or config.horizon_steps)
    params = _lgb_params(config)
    dataset = lgb.Dataset(
        feature_matrix(train, spec),
        label=target / horizon_scale[horizons - 1],
        weight=weight,
        feature_name=list(spec.feature_names),
        params=params,
        free_raw_data=False,
    )

    # The tails are recalibrated anyway, so they get fewer, larger steps than the median.
    tail_rate = config.learning_rate * config.n_estimators / config.tail_estimators
    tail_params = {"learning_rate": min(tail_rate, 1.0)}
    # keep_training_booster: by default lgb.train rebuilds every booster from its own model
    # text (a round trip exact to the bit, about 3 ms a booster, 36 a client); the boosters
    # only ever predict and are stored as model text, so the fitted ones serve as they are.
    boosters = [
        lgb.train(
            {**params, "alpha": q, **({} if q == 0.5 else tail_params)},
            dataset,
            num_boost_round=config.n_estimators if q == 0.5 else config.tail_estimators,
            keep_training_booster=True,
        )
        for q in QUANTILES
    ]
    return QuantileBoosters((boosters[0], boosters[1], boosters[2]), horizon_scale)


def _horizon_scale(horizons: np.ndarray, target: np.ndarray, horizon_steps: int) -> np.ndarray:
    """Typical |change| per horizon step: a power law a * h^b fitted to per-step means.

    Dividing targets by it puts all horizons on one footing, so a leaf mixing near and far
    horizons still predicts sensibly for each. A power law keeps it smooth when some
    steps have few training rows.
    """
    steps = np.arange(1, horizon_steps + 1)
    sums = np.bincount(horizons - 1, weights=np.abs(target), minlength=horizon_steps)
    counts = np.bincount(horizons - 1, minlength=horizon_steps)
    ok = (counts > 0) & (sums > 0)
    if ok.sum() == 0:
        return np.ones(horizon_steps)
    means = sums[ok] / counts[ok]
    if ok.sum() == 1:
        return np.full(horizon_steps, means[0])
    slope, intercept = np.polyfit(np.log(steps[ok]), np.log(means), 1, w=np.sqrt(counts[ok]))
    return np.exp(intercept + slope * np.log(steps))


def _raw_quantiles(
    model: QuantileBoosters,
    rows: pl.DataFrame,
    spec: FeatureSpec,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """Predicted change (scale units) per row as an (n, 3) array, sorted so it never crosses
    (`matrix`: the rows' `feature_matrix` when already built)."""
    if rows.height == 0:
        return np.zeros((0, 3))
    if matrix is None:
        matrix = feature_matrix(rows, spec)
    return _raw_of_matrix(model, matrix, rows.get_column("horizon").to_numpy())


def _raw_of_matrix(model: QuantileBoosters, matrix: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """`_raw_quantiles` of model input rows at `horizons` (at least one row)."""
    raw = np.column_stack([b.predict(matrix, num_threads=1) for b in model.boosters])
    return np.sort(raw * model.horizon_scale[horizons - 1, None], axis=1)
