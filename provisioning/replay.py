"""Replay a real trace minute by minute: prewarm's provisioning against production policies.

Why: a forecaster's error metrics do not say what a user pays. Replaying a trace with the
exact accounting of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020) compares
prewarm with the keep-alive policies real platforms run, in cold starts and idle memory,
on the same data. prewarm is replayed with its production parts (the shared exceedance
model of `models.exceedance` and the planner's `plan_pools`), not with a separate toy model.

The model (exact, so results compare with other implementations), per function f, minute m:

- need[m] = 0 if inv[m] == 0 else max(1, ceil(inv[m] x avg_duration_ms[f] / 60000)): the
  instances the minute's invocations keep busy, as the warehouse loader computes it;
  each instance holds the app's memory (mean AverageAllocatedMb over the app's rows,
  the median of all apps when the app has none).
- A policy sets warm[m], the instances alive at the start of minute m, from minutes < m
  only. cold[m] = max(0, need[m] - warm[m]); idle = max(0, warm[m] - need[m]) x memory
  (MB-minutes). The first `warmup` minutes are history only: metrics cover the rest.

Policies (`BASELINES`, plus prewarm at several cost ratios):

- `none` (warm = 0), `fixed_keepalive_K` (warm[m] = max need over the previous K minutes),
  `oracle` (warm = need: zero cold starts and zero idle, a sanity row);
- `hybrid_histogram`: the paper's policy, per function and online (`warm_hybrid_histogram`);
- `prewarm@R`: P(need[m] >= k) from the exceedance model, retrained every `cadence_minutes`
  on the minutes before the block it serves and scored at origin m - 1 (no look-ahead),
  then `plan_pools` decides the pool with a cost model whose cold-start penalty over the
  idle cost of a reference instance is R. Idle cost is proportional to memory, so function
  f effectively runs at R x reference / memory_f (the reference is the median function
  memory of the trace): a large container must be likelier to be used to stay warm.

The planner is called once per ratio over all replayed minutes, one 60-second window each
(tier 'active' only, buffer 0, no scaling-action price, one host far larger than any
pool). Without an action price or a capacity limit, windows do not interact, so this is the
same decision as calling it minute by minute, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from models.exceedance import ExceedanceConfig, fit_exceedance_model
from provisioning.costs import MIB_PER_GIB, CostModel
from provisioning.planner import PlannerConfig, plan_pools
from warehouse.sources.azure_functions import load_azure_functions

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

MINUTE = timedelta(minutes=1)
BASELINES: tuple[str, ...] = (
    "none",
    "fixed_keepalive_10",
    "fixed_keepalive_20",
    "hybrid_histogram",
    "oracle",
)
# From well below keep-alive 10's idle to twice it on the Azure sample; dense around
# 100..1000, where the curve passes hybrid_histogram's idle and half of it.
DEFAULT_RATIOS: tuple[float, ...] = (
    3.0,
    10.0,
    30.0,
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


# --- the trace ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Dense per-minute arrays of one trace: functions in rows, minutes in columns."""

    client_ids: np.ndarray  # (F,) str, sorted
    start: datetime  # ts of minute 0
    invocations: np.ndarray  # (F, T) float64
    need: np.ndarray  # (F, T) int64
    memory_mb: np.ndarray  # (F,) float64, one instance
    notes: tuple[str, ...] = ()

    @property
    def functions(self) -> int:
        return int(self.need.shape[0])

    @property
    def minutes(self) -> int:
        return int(self.need.shape[1])

    def ts(self, minute: int) -> datetime:
        """The timestamp of a minute index."""
        return self.start + minute * MINUTE


def compute_need(invocations: np.ndarray, avg_duration_ms: np.ndarray) -> np.ndarray:
    """need = 0 if inv == 0 else max(1, ceil(inv x avg_ms / 60000)), per function row.

    Multiplies before dividing, like the loader, so exact multiples of a minute stay exact.
    """
    busy = np.ceil(invocations * avg_duration_ms[:, None] / 60_000.0)
    return np.where(invocations > 0, np.maximum(1.0, busy), 0.0).astype(np.int64)


def load_trace(trace_dir: Path) -> Trace:
    """Read an Azure Functions trace directory through the warehouse loader into a Trace.

    need is recomputed from the invocations and each function's average duration with
    `compute_need`; a mismatch with the loader's concurrency is logged and noted, and the
    recomputed need (the replay's exact model) is what the replay uses.
    """
    batch = load_azure_functions(Path(trace_dir))
    if batch.read_error:
        raise ValueError(f"cannot read trace {trace_dir}: {batch.read_error}")
    notes = list(batch.notes)
    rows = batch.rows.drop_nulls("client_id").sort("client_id", "ts")
    if rows.is_empty():
        raise ValueError(f"trace {trace_dir} has no invocation rows")
    start = rows["ts"].min()
    assert isinstance(start, datetime)
    ids = np.array(sorted(rows["client_id"].unique().to_list()), dtype=object)
    code = {client: i for i, client in enumerate(ids)}
    minute = ((rows["ts"] - start).dt.total_seconds() // 60).cast(pl.Int64).to_numpy()
    function = np.array([code[c] for c in rows["client_id"].to_list()], dtype=np.int64)
    shape = (ids.size, int(minute.max()) + 1)

    requests = rows["requests"].to_numpy().astype(np.float64)
    unusable = ~np.isfinite(requests) | (requests < 0)
    if unusable.any():
        notes.append(f"{int(unusable.sum())} unusable invocation count(s) read as 0")
    invocations = np.zeros(shape)
    np.add.at(invocations, (function, minute), np.where(unusable, 0.0, requests))

    profile = _function_profile(batch.clients, ids)
    need = compute_need(invocations, profile["avg_duration_ms"].to_numpy())
    loader_need = np.zeros(shape)
    np.add.at(loader_need, (function, minute), rows["concurrency"].fill_null(0.0).to_numpy())
    mismatched = int((loader_need != need).sum())
    if mismatched:
        log.warning("loader need differs from the replay's model in %d cell(s)", mismatched)
        notes.append(f"loader concurrency differs from the exact need model in {mismatched} cells")
    return Trace(
        client_ids=ids,
        start=start,
        invocations=invocations,
        need=need,
        memory_mb=profile["app_memory_mb"].to_numpy().astype(np.float64),
        notes=tuple(notes),
    )


def _function_profile(clients: pl.DataFrame | None, ids: np.ndarray) -> pl.DataFrame:
    """avg_duration_ms and app_memory_mb of every function, in the order of `ids`."""
    if clients is None:
        raise ValueError("the trace loader returned no clients frame")
    decoded = clients.select(
        "client_id",
        pl.col("attributes").str.json_decode(
            pl.Struct({"avg_duration_ms": pl.Float64, "app_memory_mb": pl.Float64})
        ),
    ).unnest("attributes")
    order = pl.DataFrame({"client_id": ids.tolist()}, schema={"client_id": pl.String})
    profile = order.join(decoded, on="client_id", how="left", maintain_order="left")
    if profile.null_count().sum_horizontal().item():
        raise ValueError("functions without a duration or memory in the loader's clients frame")
    return profile


# --- baseline policies --------------------------------------------------------------------


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
        first, final = t + prewarm + 1, min(t + prewarm + keep_alive, until)
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


# --- prewarm ------------------------------------------------------------------------------


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


def policy_name(ratio: float) -> str:
    """prewarm@R, R written compactly (100, 0.5)."""
    return f"{PREWARM_PREFIX}{ratio:g}"


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


# --- metrics ------------------------------------------------------------------------------


def replay_metrics(trace: Trace, warm: np.ndarray, warmup: int) -> dict[str, float]:
    """Cold starts and idle memory of one policy over the minutes after `warmup`.

    p75_function_cold_pct and zero_cold_share are over functions with at least one
    invocation in those minutes; the percentile interpolates linearly (numpy's default).
    scale_out_cold_starts are those of minutes that had some instance warm, but too few.
    """
    need = trace.need[:, warmup:]
    held = warm[:, warmup:]
    invocations = trace.invocations[:, warmup:].sum(axis=1)
    cold_cells = np.maximum(need - held, 0)
    cold = cold_cells.sum(axis=1)
    idle = (np.maximum(held - need, 0).sum(axis=1) * trace.memory_mb).sum()
    called = invocations > 0
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


# --- the replay ---------------------------------------------------------------------------


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
            ratios.append(_ratio(item))
        else:
            known = ", ".join([*BASELINES, "prewarm", "prewarm@R", "all"])
            raise ValueError(f"unknown policy {item!r}; known: {known}")
    return list(dict.fromkeys(baselines)), sorted(set(ratios))


def _ratio(name: str) -> float:
    text = name.removeprefix(PREWARM_PREFIX)
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"policy {name!r}: R must be a number (prewarm@100)") from None
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"policy {name!r}: R must be a positive number")
    return ratio


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


def replay_trace(
    trace: Trace,
    warmup: int = 240,
    policies: Sequence[str] | None = None,
    settings: PrewarmSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay every policy on a loaded trace: metrics per policy and the run's settings."""
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
            return (1, _ratio(name))
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


# --- reporting ----------------------------------------------------------------------------

TABLE_HEADER = [
    "policy",
    "invocations",
    "cold starts",
    "cold/inv",
    "p75 fn cold %",
    "zero-cold fns",
    "idle MB-min",
    "idle vs KA10",
]


def render_table(result: dict[str, Any]) -> list[list[str]]:
    """The replay table as text cells, the header row first."""
    rows = [list(TABLE_HEADER)]
    for name, m in result["policies"].items():
        rows.append(
            [
                name,
                f"{m['total_invocations']:,.0f}",
                f"{m['total_cold_starts']:,.0f}",
                f"{m['cold_start_per_invocation']:.5f}",
                f"{m['p75_function_cold_pct']:.2f}",
                f"{m['zero_cold_share']:.1%}",
                f"{m['idle_mb_minutes']:,.0f}",
                f"{m['idle_vs_fixed10']:.3f}",
            ]
        )
    return rows


def plot_replay(result: dict[str, Any], path: Path) -> None:
    """PNG: idle memory (vs keep-alive 10) against p75 function cold-start %, one label each.

    prewarm@R points are joined into a curve in ratio order; baselines are labelled squares.
    A second panel puts the same idle against cold starts per invocation (log scale, so
    zero-cold policies such as the oracle are left out of it), where the curve still moves
    after its p75 has reached zero.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), dpi=100)
    left, right = figure.subplots(1, 2)
    _draw_panel(left, result["policies"], "p75_function_cold_pct")
    left.set_xlabel("75th percentile of per-function cold starts per invocation (%)")
    _draw_panel(right, result["policies"], "cold_start_per_invocation")
    right.set_xscale("log")
    right.set_xlabel("cold starts per invocation (all functions, log scale)")
    settings = result.get("settings", {})
    figure.suptitle(
        f"Trace replay after {settings.get('warmup', '?')} min of history; prewarm retrained "
        f"every {settings.get('cadence_minutes', '?')} min",
        fontsize=11,
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def _draw_panel(axes: Any, policies: dict[str, dict[str, float]], metric: str) -> None:
    """One panel: idle_vs_fixed10 (y) against `metric` (x) for every policy it can show."""
    log_scale = metric == "cold_start_per_invocation"
    shown = {n: m for n, m in policies.items() if not (log_scale and not m.get(metric, 0) > 0)}
    curve = [(n, m) for n, m in shown.items() if n.startswith(PREWARM_PREFIX)]
    if curve:
        x = [m[metric] for _, m in curve]
        y = [m["idle_vs_fixed10"] for _, m in curve]
        axes.plot(x, y, "-o", color="tab:blue", markersize=4, label="prewarm@R (R labelled)")
        for (name, _), xi, yi in zip(curve, x, y, strict=True):
            axes.annotate(
                name.removeprefix(PREWARM_PREFIX),
                (xi, yi),
                fontsize=7,
                color="tab:blue",
                xytext=(-4, 2),
                textcoords="offset points",
                ha="right",
            )
    for name, m in shown.items():
        if name.startswith(PREWARM_PREFIX):
            continue
        point = (m[metric], m["idle_vs_fixed10"])
        axes.plot(*point, "s", color="tab:red" if name == "hybrid_histogram" else "dimgray")
        axes.annotate(name, point, fontsize=8, xytext=(6, -3), textcoords="offset points")
    axes.set_ylabel("idle memory, relative to keep-alive 10 min")
    axes.margins(x=0.15)
    axes.grid(alpha=0.3)
    if curve:
        axes.legend(loc="upper right", fontsize=8)
