"""The replay's policies by name, and the baselines: what production platforms keep warm.

Every policy sets warm[m], the instances alive at the start of minute m, from need in
minutes < m only (except the oracle):

- `none` (warm = 0), `fixed_keepalive_K` (warm[m] = max need over the previous K minutes),
  `oracle` (warm = need: zero cold starts and zero idle, a sanity row);
- `hybrid_histogram`: the policy of "Serverless in the Wild" (Shahrad et al., USENIX ATC
  2020), per function and online (`warm_hybrid_histogram`);
- `prewarm@R`: prewarm at cost ratio R (`simulation.prewarm_policy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BASELINES: tuple[str, ...] = (
    "none",
    "fixed_keepalive_10",
    "fixed_keepalive_20",
    "hybrid_histogram",
    "oracle",
)
# From well below keep-alive 10's idle to twice it on the Azure sample; dense around
# 30..1000, where the curve passes hybrid_histogram's idle, half of it and a third of it.
DEFAULT_RATIOS: tuple[float, ...] = (
    3.0,
    10.0,
    30.0,
    50.0,
    70.0,
    100.0,
    200.0,
    300.0,
    500.0,
    700.0,
    1000.0,
    3000.0,
)
REFERENCE_POLICY = "fixed_keepalive_10"
PREWARM_PREFIX = "prewarm@"

# The hybrid histogram policy's constants, as published.
HISTOGRAM_RANGE = 240  # 1-minute bins for idle times 1..240; longer ones are out of range
HISTOGRAM_MIN_SAMPLES = 5
HISTOGRAM_CV_THRESHOLD = 2
HISTOGRAM_HEAD_PERCENT = 5
HISTOGRAM_TAIL_PERCENT = 99
HISTOGRAM_MARGIN_PERCENT = 10  # prewarm 10% early (x 0.9), keep alive 10% longer (x 1.1)
FALLBACK_KEEPALIVE = 240


# --- policy names -------------------------------------------------------------------------


def policy_name(ratio: float) -> str:
    """prewarm@R, R written compactly (100, 0.5)."""
    return f"{PREWARM_PREFIX}{ratio:g}"


def prewarm_ratio(name: str) -> float:
    """R of a policy named prewarm@R (a ValueError unless R is a positive number)."""
    text = name.removeprefix(PREWARM_PREFIX)
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"policy {name!r}: R must be a number (prewarm@100)") from None
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"policy {name!r}: R must be a positive number")
    return ratio


def resolve_policies(
    policies: Sequence[str] | None, default_ratios: Sequence[float] = DEFAULT_RATIOS
) -> tuple[list[str], list[float]]:
    """Baseline names and prewarm ratios from a list like ['none', 'prewarm@100', 'oracle'].

    None or 'all' means every baseline and prewarm at the default ratios; 'prewarm' alone
    means the default ratios. Items may hold comma-separated lists (a CLI's `a,b,c`).
    """
    items = [p.strip() for item in (policies or ["all"]) for p in item.split(",") if p.strip()]
    baselines: list[str] = []
    ratios: list[float] = []
    for item in items:
        if item == "all":
            baselines.extend(BASELINES)
            ratios.extend(default_ratios)
        elif item == "prewarm":
            ratios.extend(default_ratios)
        elif item in BASELINES:
            baselines.append(item)
        elif item.startswith(PREWARM_PREFIX):
            ratios.append(prewarm_ratio(item))
        else:
            known = ", ".join([*BASELINES, "prewarm", "prewarm@R", "all"])
            raise ValueError(f"unknown policy {item!r}; known: {known}")
    return list(dict.fromkeys(baselines)), sorted(set(ratios))


# --- baseline policies --------------------------------------------------------------------


def baseline_warm(name: str, need: np.ndarray) -> np.ndarray:
    """warm of one baseline policy by name."""
    if name == "none":
        return warm_none(need)
    if name == "oracle":
        return warm_oracle(need)
    if name == "hybrid_histogram":
        return warm_hybrid_histogram(need)
    if name.startswith("fixed_keepalive_"):
        return warm_fixed_keepalive(need, int(name.removeprefix("fixed_keepalive_")))
    raise ValueError(f"unknown baseline policy {name!r}")


def warm_none(need: np.ndarray) -> np.ndarray:
    """Nothing is ever kept warm: every needed instance is a cold start."""
    return np.zeros_like(need)


def warm_oracle(need: np.ndarray) -> np.ndarray:
    """Exactly what is needed (sees the future: a sanity row, not a policy)."""
    return need.copy()


def warm_fixed_keepalive(need: np.ndarray, minutes: int) -> np.ndarray:
    """warm[m] = max(need[m - minutes .. m - 1]): instances live `minutes` after last use."""
    if minutes < 1:
        raise ValueError(f"keep-alive minutes must be >= 1, got {minutes}")
    functions, total = need.shape
    # padded[:, j] is need[:, j - minutes]; window m covers need[m - minutes .. m - 1]
    padded = np.concatenate([np.zeros((functions, minutes), need.dtype), need[:, :-1]], axis=1)
    if total == 0:
        return np.zeros_like(need)
    return sliding_window_view(padded, minutes, axis=1).max(axis=2)


def warm_hybrid_histogram(need: np.ndarray) -> np.ndarray:
    """Shahrad et al.'s hybrid histogram policy, per function and online.

    After each minute t with invocations the policy decides the minutes t+1 up to the
    next minute with invocations (which decides again): a pre-warm/keep-alive window from
    the idle-time histogram when it is representative, else a 240-minute keep-alive.
    """
    warm = np.zeros_like(need)
    fallback = warm_fixed_keepalive(need, FALLBACK_KEEPALIVE)
    for f in range(need.shape[0]):
        _hybrid_one(need[f], fallback[f], warm[f])
    return warm


def _hybrid_one(need: np.ndarray, fallback: np.ndarray, out: np.ndarray) -> None:
    """Fill one function's warm row in place."""
    active = np.flatnonzero(need > 0)
    histogram = _IdleHistogram()
    last = need.size - 1
    for i, t in enumerate(active):
        if i:
            histogram.add(int(t - active[i - 1]))
        until = int(active[i + 1]) if i + 1 < active.size else last
        if until <= t:
            continue
        window = histogram.window()
        if window is None:
            out[t + 1 : until + 1] = fallback[t + 1 : until + 1]
            continue
        prewarm, keep_alive = window
        first = t + prewarm + 1
        # min() of a numpy integer and an int: mypy would join them to a bare comparable.
        final = cast("np.signedinteger | int", min(t + prewarm + keep_alive, until))
        if first <= final:
            out[first : final + 1] = need[t]


@dataclass
class _IdleHistogram:
    """Idle times between minutes with invocations: 1-minute bins 1..240 and an OOR count.

    Exact integer arithmetic throughout: in floating point 1.1 x 50 is 55.00000000000001,
    whose ceiling is 56, not the 55 the policy means (likewise p99 = 90, 100, 110, ...).
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_RANGE + 1, np.int64))
    in_range: int = 0
    out_of_range: int = 0
    sum_squares: int = 0  # sum over bins of count^2, for the coefficient of variation

    def add(self, idle: int) -> None:
        if idle > HISTOGRAM_RANGE:
            self.out_of_range += 1
            return
        self.sum_squares += 2 * int(self.counts[idle]) + 1  # (c + 1)^2 - c^2
        self.counts[idle] += 1
        self.in_range += 1

    def representative(self) -> bool:
        """Enough samples, mostly in range, and a peaked histogram (CV >= 2)."""
        n = self.in_range + self.out_of_range
        if n < HISTOGRAM_MIN_SAMPLES or 2 * self.out_of_range > n or self.in_range == 0:
            return False
        # Over the 240 bins CV^2 = var / mean^2 = 240 x sum_squares / in_range^2 - 1, so
        # CV >= 2 <=> 240 x sum_squares >= 5 x in_range^2: integers, exact at the boundary.
        threshold = HISTOGRAM_CV_THRESHOLD**2 + 1
        return HISTOGRAM_RANGE * self.sum_squares >= threshold * self.in_range**2

    def percentile(self, percent: int) -> int:
        """Nearest rank: the smallest idle time whose cumulative share reaches percent %."""
        cumulative = np.cumsum(self.counts[1:])
        return int(np.argmax(100 * cumulative >= percent * self.in_range)) + 1

    def window(self) -> tuple[int, int] | None:
        """(pre-warm, keep-alive) in minutes, or None for the fixed keep-alive fallback."""
        if not self.representative():
            return None
        head = self.percentile(HISTOGRAM_HEAD_PERCENT)
        tail = self.percentile(HISTOGRAM_TAIL_PERCENT)
        prewarm = head * (100 - HISTOGRAM_MARGIN_PERCENT) // 100
        keep_until = -(-tail * (100 + HISTOGRAM_MARGIN_PERCENT) // 100)  # ceil
        return prewarm, keep_until - prewarm
