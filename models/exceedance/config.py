"""What the exceedance model learns and how: `ExceedanceConfig` and its LightGBM defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from models.config_checks import check_at_least_one, check_freq_seconds


def _default_lgb_params() -> dict[str, Any]:
    return {
        "learning_rate": 0.1,
        "num_leaves": 31,
        "max_bin": 63,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
    }


@dataclass(frozen=True)
class ExceedanceConfig:
    """What to learn (grid, horizons, levels) and how (LightGBM, training-row sampling).

    Trailing windows are fixed in wall-clock time (10 minutes, 1 hour, 1 day) and converted
    to steps of `freq_seconds`, so one config shape serves 1-minute and 5-minute series.
    `negative_keep` is the share of label-0 rows kept for training (1.0 keeps all).
    `gap_memory` is how many of the most recent idle gaps feed the gap percentiles and the
    empirical hazard (recent gaps follow a client's current rhythm better than all of them).
    `num_threads` serves training and scoring: one thread by default, because rows are
    capped at `max_rows` (seconds on one core) and OpenMP threads that share cores with
    concurrent tasks slowed training twentyfold in a measured run.
    """

    freq_seconds: int
    horizon_steps: int = 1
    max_level: int = 8
    lgb_params: dict[str, Any] = field(default_factory=_default_lgb_params)
    num_boost_round: int = 100
    origin_stride: int = 1
    max_rows: int = 500_000
    negative_keep: float = 0.25
    gap_memory: int = 32
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_freq_seconds(self.freq_seconds)
        if self.horizon_steps < 1 or self.max_level < 1:
            raise ValueError(
                f"horizon_steps and max_level must be >= 1, "
                f"got {self.horizon_steps} and {self.max_level}"
            )
        check_at_least_one(
            origin_stride=self.origin_stride,
            max_rows=self.max_rows,
            gap_memory=self.gap_memory,
            num_threads=self.num_threads,
        )
        if not 0.0 < self.negative_keep <= 1.0:
            raise ValueError(f"negative_keep must be in (0, 1], got {self.negative_keep}")

    def window_steps(self, seconds: int) -> int:
        """A wall-clock window in whole steps (at least one)."""
        return max(1, math.ceil(seconds / self.freq_seconds))

    @property
    def short_steps(self) -> int:
        return self.window_steps(600)

    @property
    def mid_steps(self) -> int:
        return self.window_steps(3_600)

    @property
    def long_steps(self) -> int:
        return self.window_steps(4 * 3_600)

    @property
    def day_steps(self) -> int:
        return self.window_steps(86_400)
