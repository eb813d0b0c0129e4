"""Forecaster configuration: `ForecastConfig`, scoring `Adjustments`, quantile levels.

`QUANTILES` (p10/p50/p90) is owned by `models.scoring`, which scores at those levels;
`WAREHOUSE_METRICS` is the warehouse's metric vocabulary (`core.vocabulary.METRICS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from core.vocabulary import METRICS
from models.config_checks import check_at_least_one, check_freq_seconds
from models.features import DAY_SECONDS
from models.scoring import QUANTILES

WAREHOUSE_METRICS: tuple[str, ...] = METRICS

_MIN_HORIZON_SECONDS = 600  # 10 minutes: a 1-minute series forecast past one cycle
_MAX_HORIZON_SECONDS = 48 * 3_600


@dataclass(frozen=True)
class ForecastConfig:
    """How forecasters are built: horizon, LightGBM hyper-parameters, slices and budgets.

    `metrics` None means the warehouse metrics present in the history; set it to model other
    numeric columns (e.g. a bare trace in a backtest).
    """

    freq_seconds: int = 300
    horizon_steps: int = 12  # forecast at every step: what the planner reads
    metrics: tuple[str, ...] | None = None
    # How far a profile reaches. Past `horizon_steps` a second set of boosters per metric
    # forecasts every `profile_stride` steps (`reach_steps`): a day of 5-minute steps at
    # every step would cost 24 times the rows at prediction, and trained together with the
    # near steps they would dilute the near horizon's training rows and calibration.
    # 0 (or not past the horizon): the profile is the horizon.
    profile_steps: int = 0
    profile_stride: int = 6
    # LightGBM: small trees, few rounds, one thread per booster (callers parallelise
    # clients). Measured on a 2-core machine: ~0.47 s CPU per 14-day, 6-metric client.
    n_estimators: int = 30  # rounds of the p50 booster
    tail_estimators: int = 10  # rounds of p10/p90: conformal calibration corrects them anyway
    learning_rate: float = 0.15
    num_leaves: int = 15
    min_data_in_leaf: int = 30
    max_bin: int = 63
    feature_fraction: float = 0.5  # also regularises: series features are highly redundant
    lambda_l2: float = 1.0
    # Sampled training rows per metric (origin, horizon pairs): the main cost lever.
    max_train_rows: int = 3_000
    reach_train_rows: int = 1_500  # the same for a profile's reach (see `profile_steps`)
    max_eval_rows: int = 1_500  # per client and slice, for calibration and holdout
    # Slices at the end of the history: each min(days, fraction of history), never under
    # one horizon plus a margin so every horizon step is calibrated and evaluated.
    holdout_days: float = 1.0
    calibration_days: float = 1.0
    slice_fraction: float = 0.25
    # The p10-p90 interval aims a point above 80 %: on real traces the calibration windows
    # understate the spread that follows them by about that much.
    coverage_target: float = 0.81
    horizon_buckets: int = 4  # shrink and interval offsets are fitted per bucket
    # At prediction, intervals also follow the model's own errors over the last
    # `recalibration_days` (at this weight): calibration alone lags a change in volatility.
    recalibration_days: float = 0.5
    recalibration_weight: float = 0.75
    cross_metric_features: bool = True  # the client's other metrics' recent change
    # When a client's own model would starve, and how the global model samples clients.
    min_history_days: float = 2.0
    min_nonzero_share: float = 0.05
    global_rows_per_client: int = 300
    seed: int = 7

    def __post_init__(self) -> None:
        check_freq_seconds(self.freq_seconds)
        seconds = self.horizon_steps * self.freq_seconds
        if not _MIN_HORIZON_SECONDS <= seconds <= _MAX_HORIZON_SECONDS:
            low = math.ceil(_MIN_HORIZON_SECONDS / self.freq_seconds)
            high = _MAX_HORIZON_SECONDS // self.freq_seconds
            raise ValueError(
                f"horizon_steps={self.horizon_steps} at {self.freq_seconds} s covers"
                f" {seconds / 3600:g} h; it must cover 10 min to 48 h, i.e. {low}..{high} steps"
            )
        if self.profile_steps > self.horizon_steps:
            reach = self.profile_steps * self.freq_seconds
            if reach > _MAX_HORIZON_SECONDS:
                raise ValueError(
                    f"profile_steps={self.profile_steps} at {self.freq_seconds} s covers"
                    f" {reach / 3600:g} h; a profile reaches at most 48 h"
                )
        if not 0 < self.coverage_target < 1:
            raise ValueError(f"coverage_target must be in (0, 1), got {self.coverage_target}")
        check_at_least_one(
            n_estimators=self.n_estimators,
            tail_estimators=self.tail_estimators,
            max_train_rows=self.max_train_rows,
        )
        check_at_least_one(
            reach_train_rows=self.reach_train_rows, profile_stride=self.profile_stride
        )

    @property
    def steps_per_day(self) -> int:
        return max(1, round(DAY_SECONDS / self.freq_seconds))

    @property
    def reach_steps(self) -> tuple[int, ...]:
        """The steps past the horizon a profile is forecast at: every `profile_stride`
        steps, and `profile_steps` itself (none when the profile is the horizon)."""
        if self.profile_steps <= self.horizon_steps:
            return ()
        stride = range(
            self.horizon_steps + self.profile_stride, self.profile_steps, self.profile_stride
        )
        return (*stride, self.profile_steps)


@dataclass(frozen=True)
class Adjustments:
    """Feedback from scoring applied to the next fit.

    `bias` adds a constant (metric units) to a metric's p10/p50/p90; `recent_weight` is the
    sample weight of training rows whose target time is at or after `recent_since`.
    """

    bias: dict[str, float] = field(default_factory=dict)
    recent_since: datetime | None = None
    recent_weight: float = 1.0


__all__ = ["QUANTILES", "WAREHOUSE_METRICS", "Adjustments", "ForecastConfig"]
