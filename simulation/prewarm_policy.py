"""prewarm@R in the replay: the production exceedance model and planner, minute by minute.

prewarm is replayed with its production parts (the shared exceedance model of
`models.exceedance` and the planner's `plan_pools`), not with a separate toy model:
P(need[m] >= k) from the exceedance model, retrained every `cadence_minutes` on the minutes
before the block it serves and scored at origin m - 1 (no look-ahead), then `plan_pools`
decides the pool with a cost model whose cold-start penalty over the idle cost of a
reference instance is R. Idle cost is proportional to memory, so function f effectively
runs at R x reference / memory_f (the reference is the median function memory of the
trace): a large container must be likelier to be used to stay warm.

The planner is called once per ratio over all replayed minutes, one 60-second window each
(tier 'active' only, buffer 0, no scaling-action price, one host far larger than any
pool). Without an action price or a capacity limit, windows do not interact, so this is the
same decision as calling it minute by minute, at a fraction of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from models.exceedance import ExceedanceConfig, fit_exceedance_model
from provisioning.costs import MIB_PER_GIB, CostModel
from provisioning.planner import PlannerConfig, plan_pools
from simulation.policies import DEFAULT_RATIOS, policy_name
from simulation.trace import Trace


@dataclass(frozen=True)
class PrewarmSettings:
    """How prewarm@R is replayed: ratios, retraining cadence, instance levels, the model.

    `max_level` per retraining is max(`min_levels`, `level_headroom` x the largest need
    seen so far): the model advises no pool above its top level, so it must cover scale-out.
    `floor_last_need` keeps at least last minute's need warm (a reactive floor under the
    forecast; off by default: the forecast alone is the production policy).
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    cadence_minutes: int = 60
    min_levels: int = 16
    level_headroom: float = 2.0
    floor_last_need: bool = False
    seed: int = 0
    num_boost_round: int = 100
    negative_keep: float = 0.25

    def __post_init__(self) -> None:
        if self.cadence_minutes < 1 or self.min_levels < 1:
            raise ValueError("cadence_minutes and min_levels must be >= 1")
        if any(not r > 0 for r in self.ratios):
            raise ValueError(f"cost ratios must be > 0, got {self.ratios}")

    def levels(self, history: np.ndarray) -> int:
        """Instance levels the model covers after seeing `history` (need so far)."""
        seen = float(history.max()) if history.size else 0.0
        return max(self.min_levels, math.ceil(self.level_headroom * seen))


def forecast_exceedance(
    trace: Trace,
    first_minute: int,
    settings: PrewarmSettings,
    progress: Callable[[], None] | None = None,
) -> np.ndarray:
    """P(need[f, m] >= k) for m >= first_minute, from minutes < m only: shape (F, T, K).

    The model is retrained every `cadence_minutes` on the minutes before the block it
    serves; each minute m is scored at origin m - 1 (horizon 1) from usage up to m - 1.
    Minutes before first_minute are left at 0.
    """
    if first_minute < 2:
        raise ValueError(f"prewarm needs at least 2 minutes of history, got {first_minute}")
    usage = _usage_frame(trace)
    clients = pl.DataFrame(
        {"client_id": trace.client_ids.tolist(), "container_memory_mb": trace.memory_mb},
        schema={"client_id": pl.String, "container_memory_mb": pl.Float64},
    )
    blocks: list[tuple[int, pl.DataFrame]] = []
    for begin in range(first_minute, trace.minutes, settings.cadence_minutes):
        end = min(begin + settings.cadence_minutes, trace.minutes)
        config = ExceedanceConfig(
            freq_seconds=60,
            max_level=settings.levels(trace.need[:, :begin]),
            negative_keep=settings.negative_keep,
            num_boost_round=settings.num_boost_round,
            num_threads=1,
            seed=settings.seed,
        )
        model = fit_exceedance_model(usage.filter(pl.col("ts") < trace.ts(begin)), config, clients)
        origins = pl.DataFrame(
            {
                "client_id": np.repeat(trace.client_ids, end - begin).tolist(),
                "origin": np.tile(
                    np.array([trace.ts(m - 1) for m in range(begin, end)], "datetime64[us]"),
                    trace.functions,
                ),
            },
            schema={"client_id": pl.String, "origin": pl.Datetime("us")},
        )
        # only the usage the block may see, so no look-ahead holds by construction too
        known = usage.filter(pl.col("ts") < trace.ts(end - 1))
        blocks.append((config.max_level, model.score_origins(known, origins, clients=clients)))
        if progress is not None:
            progress()
    levels = max((k for k, _ in blocks), default=1)
    p = np.zeros((trace.functions, trace.minutes, levels))
    for _, scored in blocks:
        f, m = _cell_indexes(trace, scored)
        p[f, m, scored["level"].to_numpy() - 1] = scored["p_exceed"].to_numpy()
    return p


def _usage_frame(trace: Trace) -> pl.DataFrame:
    """The trace as the warehouse's long usage rows (client_id, ts, concurrency)."""
    minutes = np.array([trace.ts(m) for m in range(trace.minutes)], dtype="datetime64[us]")
    return pl.DataFrame(
        {
            "client_id": np.repeat(trace.client_ids, trace.minutes).tolist(),
            "ts": np.tile(minutes, trace.functions),
            "concurrency": trace.need.ravel().astype(np.float64),
        },
        schema={"client_id": pl.String, "ts": pl.Datetime("us"), "concurrency": pl.Float64},
    )


def _cell_indexes(trace: Trace, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(function, minute) indexes of a frame's client_id and ts columns."""
    function = frame["client_id"].cast(pl.Enum(trace.client_ids.tolist())).to_physical().to_numpy()
    offset = (frame["ts"] - trace.start).dt.total_seconds().to_numpy()
    return function.astype(np.int64), (offset // 60).astype(np.int64)


def reference_memory(memory_mb: np.ndarray) -> float:
    """The memory at which prewarm@R's cost ratio is exactly R: the median function's."""
    return float(np.median(memory_mb))


def plan_warm(
    trace: Trace, p_exceed: np.ndarray, ratio: float, first_minute: int, reference_mb: float
) -> np.ndarray:
    """warm[f, m] for m >= first_minute decided by `plan_pools` from P(need[f, m] >= k).

    Cost model: idle cost proportional to memory (1 per GiB-minute, no CPU or disk price),
    cold-start penalty R x the idle cost of a `reference_mb` instance, no action price; so
    the planner keeps instance k of f warm when P(need >= k) > 1 / (1 + R x ref / mem_f).
    """
    windows = trace.minutes - first_minute
    warm = np.zeros_like(trace.need)
    if windows <= 0:
        return warm
    levels = p_exceed.shape[2]
    costs = CostModel(
        core_minute=0.0,
        memory_gib_minute=1.0,
        disk_gib_minute=0.0,
        cold_start_penalty={},
        default_cold_start_penalty=ratio * reference_mb / MIB_PER_GIB,
        scaling_action=0.0,
    )
    config = PlannerConfig(
        tick_seconds=60,
        windows=windows,
        buffer_seconds=0.0,
        max_level=max(levels, PlannerConfig.max_level),
        warm_tiers=("active",),
    )
    plan = plan_pools(
        _planner_clients(trace),
        _unbounded_inventory(),
        trace.ts(first_minute),
        exceedance=_exceedance_rows(trace, p_exceed, first_minute),
        costs=costs,
        config=config,
        plan_id=f"replay-{policy_name(ratio)}",
    )
    active = plan.desired.filter(pl.col("tier") == "active").rename({"window_start": "ts"})
    f, m = _cell_indexes(trace, active)
    np.add.at(warm, (f, m), active["count"].to_numpy())
    return warm


def _planner_clients(trace: Trace) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "client_id": trace.client_ids.tolist(),
            "tier": [None] * trace.functions,
            "container_cpu": np.ones(trace.functions),
            "container_memory_mb": trace.memory_mb,
        },
        schema={
            "client_id": pl.String,
            "tier": pl.String,
            "container_cpu": pl.Float64,
            "container_memory_mb": pl.Float64,
        },
    )


def _unbounded_inventory() -> pl.DataFrame:
    """One host no replayed pool can fill: the replay measures forecasts, not packing."""
    return pl.DataFrame({"host": ["replay"], "cpu_cores": [1e12], "memory_mb": [1e15]})


def _exceedance_rows(trace: Trace, p_exceed: np.ndarray, first_minute: int) -> pl.DataFrame:
    """The planner's exceedance input: client_id, ts, level, p_exceed for every kept cell."""
    f, m, k = np.nonzero(p_exceed[:, first_minute:, :] > 0.0)
    m = m + first_minute
    minutes = np.array([trace.ts(i) for i in range(trace.minutes)], dtype="datetime64[us]")
    return pl.DataFrame(
        {
            "client_id": trace.client_ids[f].tolist(),
            "ts": minutes[m],
            "level": k + 1,
            "p_exceed": p_exceed[f, m, k],
        },
        schema={
            "client_id": pl.String,
            "ts": pl.Datetime("us"),
            "level": pl.Int64,
            "p_exceed": pl.Float64,
        },
    )


def warm_prewarm(
    trace: Trace,
    first_minute: int,
    settings: PrewarmSettings,
    progress: Callable[[], None] | None = None,
) -> dict[str, np.ndarray]:
    """warm per prewarm@R policy (0 before first_minute, where no model exists yet)."""
    p = forecast_exceedance(trace, first_minute, settings, progress)
    reference = reference_memory(trace.memory_mb)
    floor = np.zeros_like(trace.need)
    if settings.floor_last_need:
        floor[:, first_minute:] = trace.need[:, first_minute - 1 : -1]
    result = {}
    for ratio in settings.ratios:
        warm = plan_warm(trace, p, ratio, first_minute, reference)
        result[policy_name(ratio)] = np.maximum(warm, floor)
        if progress is not None:
            progress()
    return result
