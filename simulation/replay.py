"""Replay a real trace minute by minute: prewarm's provisioning against production policies.

Why: a forecaster's error metrics do not say what a user pays. Replaying a trace with the
exact accounting of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020) compares
prewarm with the keep-alive policies real platforms run, in cold starts and idle memory,
on the same data. prewarm is replayed with its production parts (the shared exceedance
model of `models.exceedance` and the planner's `plan_pools`), not with a separate toy model.

The model (exact, so results compare with other implementations), per function f, minute m:

- need[m] = 0 if inv[m] == 0 else max(1, ceil(inv[m] x avg_duration_ms[f] / 60000)): the
  instances the minute's invocations keep busy, as the warehouse loader computes it
  (`warehouse.sources.azure_functions.instances_needed`, read by `simulation.trace`);
  each instance holds the app's memory (mean AverageAllocatedMb over the app's rows,
  the median of all apps when the app has none).
- A policy sets warm[m], the instances alive at the start of minute m, from minutes < m
  only. cold[m] = max(0, need[m] - warm[m]); idle = max(0, warm[m] - need[m]) x memory
  (MB-minutes). The first `warmup` minutes are history only: metrics cover the rest
  (`simulation.metrics`).

Policies (`BASELINES`, plus prewarm at several cost ratios):

- `none` (warm = 0), `fixed_keepalive_K` (warm[m] = max need over the previous K minutes),
  `oracle` (warm = need: zero cold starts and zero idle, a sanity row);
- `hybrid_histogram`: the paper's policy, per function and online (`warm_hybrid_histogram`);
  these baselines are in `simulation.policies`;
- `prewarm@R`: P(need[m] >= k) from the exceedance model, retrained every `cadence_minutes`
  on the minutes before the block it serves and scored at origin m - 1 (no look-ahead),
  then `plan_pools` decides the pool with a cost model whose cold-start penalty over the
  idle cost of a reference instance is R, memory-aware (`simulation.prewarm_policy`, which
  also says how the planner is called).

The table and the plot of a replay's result are `simulation.report`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from simulation.metrics import replay_metrics, silent_warmup_floor, with_idle_ratio
from simulation.policies import (
    BASELINES,
    PREWARM_PREFIX,
    REFERENCE_POLICY,
    baseline_warm,
    prewarm_ratio,
    resolve_policies,
)
from simulation.prewarm_policy import PrewarmSettings, reference_memory, warm_prewarm
from simulation.trace import Trace, load_trace

Progress = Callable[[int, int], None]


def replay_trace(
    trace: Trace,
    warmup: int = 240,
    policies: Sequence[str] | None = None,
    settings: PrewarmSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay every policy on a loaded trace: metrics per policy, the silent-warmup floor
    (`simulation.metrics.silent_warmup_floor`) and the run's settings."""
    if not 0 <= warmup < trace.minutes:
        raise ValueError(f"warmup must be in 0..{trace.minutes - 1} minutes, got {warmup}")
    started = time.perf_counter()
    base = settings or PrewarmSettings()
    baselines, ratios = resolve_policies(policies, base.ratios)
    prewarm = PrewarmSettings(**{**asdict(base), "ratios": tuple(ratios)})
    blocks = len(range(warmup, trace.minutes, prewarm.cadence_minutes)) if ratios else 0
    total = len(baselines) + blocks + len(ratios)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    warm: dict[str, np.ndarray] = {}
    for name in baselines:
        warm[name] = baseline_warm(name, trace.need)
        step()
    if ratios:
        warm.update(warm_prewarm(trace, warmup, prewarm, step))
    reference = warm.get(REFERENCE_POLICY)
    if reference is None:
        reference = baseline_warm(REFERENCE_POLICY, trace.need)
    reference_idle = replay_metrics(trace, reference, warmup)["idle_mb_minutes"]
    metrics = {name: replay_metrics(trace, w, warmup) for name, w in warm.items()}
    return {
        "policies": with_idle_ratio(_ordered(metrics), reference_idle),
        "silent_warmup_floor": silent_warmup_floor(trace, warmup),
        "settings": {
            "warmup": warmup,
            "replayed_minutes": trace.minutes - warmup,
            "cadence_minutes": prewarm.cadence_minutes,
            "ratios": list(ratios),
            "memory_aware": True,
            "reference_memory_mb": reference_memory(trace.memory_mb),
            "max_level": "max(min_levels, level_headroom x largest need seen)",
            "max_level_per_retraining": [
                prewarm.levels(trace.need[:, :begin])
                for begin in range(warmup, trace.minutes, prewarm.cadence_minutes)
            ]
            if ratios
            else [],
            "min_levels": prewarm.min_levels,
            "level_headroom": prewarm.level_headroom,
            "floor_last_need": prewarm.floor_last_need,
            "seed": prewarm.seed,
            "decision": "plan_pools: tier active, 60 s windows, buffer 0, no action price",
            "runtime_s": round(time.perf_counter() - started, 2),
        },
        "trace": {
            "functions": trace.functions,
            "minutes": trace.minutes,
            "start": trace.start.isoformat(),
            "called_functions": int((trace.invocations[:, warmup:].sum(axis=1) > 0).sum()),
            "notes": list(trace.notes),
        },
    }


def _ordered(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Baselines in their usual order, prewarm by ratio, oracle last."""

    def key(name: str) -> tuple[int, float]:
        if name == "oracle":
            return (2, 0.0)
        if name.startswith(PREWARM_PREFIX):
            return (1, prewarm_ratio(name))
        return (0, float(BASELINES.index(name)) if name in BASELINES else 99.0)

    return {name: metrics[name] for name in sorted(metrics, key=key)}


def run_replay(
    trace_dir: Path,
    warmup: int = 240,
    policies: list[str] | None = None,
    progress: Progress | None = None,
    *,
    settings: PrewarmSettings | None = None,
) -> dict[str, Any]:
    """Load an Azure Functions trace directory and replay it (see `replay_trace`).

    Runtime (`settings.runtime_s`) includes loading the trace.
    """
    started = time.perf_counter()
    trace = load_trace(Path(trace_dir))
    result = replay_trace(trace, warmup, policies, settings, progress)
    result["trace"]["path"] = str(trace_dir)
    result["settings"]["runtime_s"] = round(time.perf_counter() - started, 2)
    return result
