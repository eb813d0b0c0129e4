"""The replay's accounting: cold starts and idle memory of a policy's warm pool.

Per function f and minute m (exact, as "Serverless in the Wild" counts them):
cold[m] = max(0, need[m] - warm[m]); idle = max(0, warm[m] - need[m]) x memory
(MB-minutes). The first `warmup` minutes are history only: metrics cover the rest.
"""

from __future__ import annotations

import math

import numpy as np

from simulation.trace import Trace


def replay_metrics(trace: Trace, warm: np.ndarray, warmup: int) -> dict[str, float]:
    """Cold starts and idle memory of one policy over the minutes after `warmup`.

    p75_function_cold_pct and zero_cold_share are over functions with at least one
    invocation in those minutes; the percentile interpolates linearly (numpy's default).
    scale_out_cold_starts are those of minutes that had some instance warm, but too few.
    seen_cold_functions counts functions active in the warmup and cold at least once
    after it: a function silent in the warmup gives a per-function policy nothing to go on
    (see `silent_warmup_floor`), one seen there does.
    """
    need = trace.need[:, warmup:]
    held = warm[:, warmup:]
    invocations = trace.invocations[:, warmup:].sum(axis=1)
    cold_cells = np.maximum(need - held, 0)
    cold = cold_cells.sum(axis=1)
    idle = (np.maximum(held - need, 0).sum(axis=1) * trace.memory_mb).sum()
    called = invocations > 0
    seen = seen_in_warmup(trace, warmup)
    cold_pct = 100.0 * cold[called] / invocations[called]
    total = float(invocations.sum())
    return {
        "total_invocations": total,
        "total_cold_starts": float(cold.sum()),
        "cold_start_per_invocation": float(cold.sum()) / total if total else math.nan,
        "p75_function_cold_pct": float(np.percentile(cold_pct, 75)) if called.any() else math.nan,
        "zero_cold_share": float(np.mean(cold[called] == 0)) if called.any() else math.nan,
        "idle_mb_minutes": float(idle),
        "scale_out_cold_starts": float(cold_cells[held > 0].sum()),
        "seen_cold_functions": int(((cold > 0) & seen).sum()),
    }


def seen_in_warmup(trace: Trace, warmup: int) -> np.ndarray:
    """Per function: called at least once in the warmup minutes."""
    return trace.invocations[:, :warmup].sum(axis=1) > 0


def silent_warmup_floor(trace: Trace, warmup: int) -> dict[str, float]:
    """The cold starts a policy that warms nothing without history cannot avoid.

    A function with no invocation in the warmup minutes has no history of its own: its
    first call after the warmup is cold for such a policy, need[first call] instances.
    (A policy may still hold never-seen functions warm blindly, at an idle cost, and so go
    under this floor.)
    """
    after = trace.need[:, warmup:]
    silent = ~seen_in_warmup(trace, warmup) & (after.sum(axis=1) > 0)
    first = np.argmax(after[silent] > 0, axis=1)
    cold = float(after[silent][np.arange(first.size), first].sum())
    total = float(trace.invocations[:, warmup:].sum())
    return {
        "silent_functions": int(silent.sum()),
        "cold_starts": cold,
        "cold_start_per_invocation": cold / total if total else math.nan,
    }


def with_idle_ratio(
    metrics: dict[str, dict[str, float]], reference_idle: float
) -> dict[str, dict[str, float]]:
    """Add idle_vs_fixed10 (idle over the reference policy's idle) to every policy's row."""
    return {
        name: {
            **row,
            "idle_vs_fixed10": row["idle_mb_minutes"] / reference_idle
            if reference_idle > 0
            else math.nan,
        }
        for name, row in metrics.items()
    }
