"""The newsvendor rule on exceedance probabilities: the ONE owner of the warm-pool threshold.

Keep instance k warm when P(need >= k) x cold-start penalty >= (1 - P) x idle cost, i.e. when
P(need >= k) >= 1 / (1 + R) with R = cold penalty / idle cost of one instance. Planner and
replay both decide through `critical_probability`, `warm_count` and `warm_counts`; the
expectations price a decision (cold starts left, idle instances kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl


def critical_probability(cost_ratio: float) -> float:
    """The newsvendor threshold 1 / (1 + R), R = cold-start penalty / idle cost of one instance."""
    if not cost_ratio >= 0.0:
        raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio}")
    return _critical(cost_ratio)


def _critical(cost_ratio: Any) -> Any:
    """1 / (1 + R) of a number or of a polars expression (per-row R), unchecked."""
    return 1.0 / (1.0 + cost_ratio)


def warm_count(p_exceed: Sequence[float] | np.ndarray, cost_ratio: float) -> int:
    """Instances to keep warm: the largest k with P(need >= k) >= 1 / (1 + R), else 0.

    p_exceed[k - 1] is P(need >= k) for k = 1..K.
    """
    meets = np.flatnonzero(
        np.asarray(p_exceed, dtype=np.float64) >= critical_probability(cost_ratio)
    )
    return int(meets[-1] + 1) if meets.size else 0


def warm_counts(p_exceed: pl.DataFrame, cost_ratio: float | pl.Expr) -> pl.DataFrame:
    """`warm_count` for every (client_id, origin, ts, horizon) of a p_exceed frame.

    `cost_ratio` is a number, or an expression over p_exceed's columns for a per-row R
    (a memory-aware R: the same penalty over a bigger container's idle cost is smaller).
    """
    ratio = cost_ratio if isinstance(cost_ratio, pl.Expr) else pl.lit(float(cost_ratio))
    keys = ["client_id", "origin", "ts", "horizon"]
    return (
        p_exceed.with_columns(_threshold=_critical(ratio))
        .group_by(keys, maintain_order=True)
        .agg(
            warm=pl.col("level")
            .filter(pl.col("p_exceed") >= pl.col("_threshold"))
            .max()
            .fill_null(0)
            .cast(pl.Int32)
        )
    )


def expected_cold_starts(p_exceed: Sequence[float] | np.ndarray, warm: int) -> float:
    """E[max(0, need - warm)] = sum over k > warm of P(need >= k), truncated at level K."""
    p = np.asarray(p_exceed, dtype=np.float64)
    return float(p[max(warm, 0) :].sum())


def expected_idle(p_exceed: Sequence[float] | np.ndarray, warm: int) -> float:
    """E[max(0, warm - need)] = sum over k <= warm of P(need < k) (warm at most K)."""
    p = np.asarray(p_exceed, dtype=np.float64)
    return float((1.0 - p[: max(warm, 0)]).sum())
