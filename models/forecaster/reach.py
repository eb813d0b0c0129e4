"""A profile's reach past the horizon: boosters of its own for the steps
`ForecastConfig.reach_steps` (every `profile_stride` steps up to `profile_steps`), fitted on
the near boosters' time slices.

Apart from the near boosters because the planner reads the near steps (every bucket of the
horizon): trained together, a day of far steps would take most of the near steps' training
rows and calibration points (measured: a 24-hour model's first hour lost 9 % of its wMAPE
and 8 points of coverage).

Calibration and holdout pairs are chosen by their *target* time in the slice: a far pair's
origin lies up to a day before its target, so pairs chosen by origin would leave a one-day
slice almost empty. The boosters never saw a target past the training slice, so the holdout
stays honest. The far intervals keep their fitted calibration at prediction: recalibrating
them on recent errors, as the near ones are, would score a day of old origins every run.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from models.features import FeatureSpec, assemble_rows
from models.forecaster.calibration import MetricModel
from models.forecaster.config import Adjustments, ForecastConfig
from models.forecaster.holdout import fit_metrics
from models.forecaster.slicing import _sample_pairs, _target_pairs


def can_reach(train_steps: int, config: ForecastConfig) -> bool:
    """Whether a training slice of `train_steps` buckets carries far boosters: its farthest
    step needs a day of origins before the slice ends."""
    return bool(config.reach_steps) and train_steps >= config.profile_steps + config.steps_per_day


def reach_span(config: ForecastConfig) -> tuple[int, int]:
    """(first, last) of the reach's steps: what its calibration buckets split."""
    return config.reach_steps[0], config.reach_steps[-1]


def reach_pairs(
    bounds: pl.DataFrame,
    cuts: tuple[int, int, int],
    rows_per_client: int,
    config: ForecastConfig,
    judged: bool = True,
) -> pl.DataFrame:
    """Far (origin, horizon) pairs: sampled training pairs whose targets precede the
    calibration slice, and calibration and (when `judged`) holdout pairs by target (parts
    train, cal, holdout as the near pairs).

    `bounds` has client_id, lo, hi (each client's first and last step); `cuts` are the
    calibration start, holdout start and last step.
    """
    cal_start, holdout_start, last = cuts
    steps = config.reach_steps
    train_bounds = bounds.with_columns(pl.min_horizontal("hi", cal_start - 1).alias("hi"))
    pairs = [
        _sample_pairs(train_bounds, None, None, rows_per_client, config, "train", steps),
        _target_pairs(bounds, cal_start, holdout_start - 1, steps, config, "cal"),
    ]
    if judged:
        pairs.append(_target_pairs(bounds, holdout_start, last, steps, config, "holdout"))
    return pl.concat(pairs)


def fit_reach(
    series: pl.DataFrame,
    bounds: pl.DataFrame,
    cuts: tuple[int, int, int],
    spec: FeatureSpec,
    config: ForecastConfig,
    adjustments: Adjustments,
    scales: dict[str, float],
    values: dict[str, np.ndarray],
) -> tuple[dict[str, MetricModel], dict[str, dict[str, float | None]]]:
    """One client's far boosters per metric of `scales`, calibrated, with their holdout
    reports (`series`: that client's `build_series`; `values`: its grid values per metric)."""
    pairs = reach_pairs(bounds, cuts, config.reach_train_rows, config)
    rows = assemble_rows(series, pairs, spec).filter(pl.col("target").is_not_null())
    first = int(bounds.get_column("lo")[0])
    return fit_metrics(rows, scales, spec, config, adjustments, values, first, reach_span(config))
