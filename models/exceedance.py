"""Tail forecasts for warm pools: P(need >= k) per client, horizon and instance level k.

Why: most serverless clients are sparse, so quantile forecasts of concurrency are zero even
when a call in the next minute is likely, and a point forecast says nothing about scale-out.
The planner keeps instance k warm when P(need >= k) x cold-start penalty >= (1 - P) x idle
cost, so it needs the probability of each instance level, not a quantile.

How: ONE LightGBM binary classifier shared by all clients, trained on rows
(client, origin t, horizon h, level k) with label 1[need[t+h] >= k]. Per-client regressors
starve on sparse series (a median Azure function is active ~40 of 480 minutes); a shared
model learns how idle-gap histories and exceedance rates translate into probabilities, and
each client contributes only its own state (features computed from its own history).
Every feature at origin t uses need at or before t only, so scoring many origins at once
(`score_origins`, for backtests and minute-by-minute replays) has no look-ahead.

Conventions:
- usage is long (client_id, ts, concurrency); each client's series runs on its own regular
  grid from its first to its last row; a missing bucket inside that span is read as need 0
  (series sources write idle buckets as zeros, so a hole means nothing was recorded).
- negatives may be down-sampled for training; the odds are corrected at scoring
  (p = q p' / (q p' + 1 - p')), so probabilities stay calibrated.
- p_exceed is forced non-increasing in level (a running minimum over levels 1..K) because
  P(need >= k) cannot grow with k, while a booster is free to break that.
- levels are absolute instance counts 1..K, so no pool larger than K is ever advised: pick
  K above the largest need to serve warm (on the Azure sample, K = 8 left one function that
  needs up to 12 instances with 441 of the replay's 499 cold starts; K = 16 left 72).
- `warm_count` / `warm_counts` hold the newsvendor rule shared by planner and replay:
  keep the largest k with P(need >= k) >= 1 / (1 + R), R = cold penalty / idle cost.
- no per-client calibration: a per-client logit temperature and shift fitted on two hours
  of a function's own scores doubled level-1 log loss on the Azure sample; shrunk hard
  towards identity it gained ~3%, within seed-to-seed noise, so it is not worth the state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

log = logging.getLogger(__name__)

_US_PER_SECOND = 1_000_000
_US_PER_HOUR = 3_600 * _US_PER_SECOND
_US_PER_DAY = 86_400 * _US_PER_SECOND
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_SCORE_CHUNK_ROWS = 1_000_000

FEATURES: tuple[str, ...] = (
    "level",
    "horizon",
    # exceedance of level k: rates over trailing windows, steps since, seasonal lags
    "rate_short",
    "rate_mid",
    "rate_day",
    "rate_all",
    "since_level",
    "lag_mid_level",
    "lag_day_level",
    # activity (level 1) and recent need, whatever the level
    "active_mid",
    "active_all",
    "need_last",
    "need_max_short",
    "need_max_mid",
    "need_mean_mid",
    "need_max_all",
    "level_over_last",
    "level_over_max_mid",
    # idle gaps (idle buckets between two active buckets)
    "idle_run",
    "gap_count",
    "gap_mean",
    "gap_last",
    "gap_p50",
    "gap_p90",
    "gap_max",
    "gap_hazard",
    # context
    "history_steps",
    "hour",
    "weekday",
    "container_memory_mb",
)

OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "origin": pl.Datetime("us"),
    "ts": pl.Datetime("us"),
    "horizon": pl.Int32(),
    "level": pl.Int32(),
    "p_exceed": pl.Float64(),
}


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
        if self.freq_seconds < 1:
            raise ValueError(f"freq_seconds must be >= 1, got {self.freq_seconds}")
        if self.horizon_steps < 1 or self.max_level < 1:
            raise ValueError(
                f"horizon_steps and max_level must be >= 1, "
                f"got {self.horizon_steps} and {self.max_level}"
            )
        if min(self.origin_stride, self.max_rows, self.gap_memory, self.num_threads) < 1:
            raise ValueError("origin_stride, max_rows, gap_memory and num_threads must be >= 1")
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
    def day_steps(self) -> int:
        return self.window_steps(86_400)


@dataclass
class _Grid:
    """Every client's need on its own dense grid, concatenated client after client.

    Position g of the concatenation belongs to client `client_of[g]`, whose series occupies
    starts[c] .. starts[c] + lengths[c] - 1 and whose first bucket is first_us[c].
    """

    client_ids: np.ndarray  # sorted unique client ids (object)
    starts: np.ndarray  # int64, global index of each client's first bucket
    lengths: np.ndarray  # int64
    first_us: np.ndarray  # int64, first ts of each client in epoch microseconds
    need: np.ndarray  # float64, one value per bucket
    client_of: np.ndarray  # int64, client code per bucket
    freq_us: int


class ExceedanceModel:
    """A shared booster plus the config and client attributes it was trained with.

    Picklable: the booster is kept as LightGBM's model string and rebuilt on demand, so a
    model scores the same before and after a round trip.
    """

    def __init__(
        self,
        config: ExceedanceConfig,
        booster_string: str,
        client_memory: dict[str, float] | None = None,
        training_rows: int = 0,
    ) -> None:
        self.config = config
        self.booster_string = booster_string
        self.client_memory = dict(client_memory or {})
        self.training_rows = training_rows
        self._booster: lgb.Booster | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_booster"] = None
        return state

    @property
    def booster(self) -> lgb.Booster:
        """The LightGBM booster, rebuilt from its model string on first use."""
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.booster_string)
        return self._booster

    def predict(
        self,
        history: pl.DataFrame,
        horizon_steps: int | None = None,
        levels: int | None = None,
        clients: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """P(need >= k), h = 1..horizon_steps, k = 1..levels, after each client's last bucket."""
        grid = _build_grid(history, self.config.freq_seconds)
        origins = grid.starts + grid.lengths - 1
        return self._score(grid, origins, horizon_steps, levels, clients)

    def score_origins(
        self,
        usage: pl.DataFrame,
        origins: pl.DataFrame,
        horizon_steps: int | None = None,
        levels: int | None = None,
        clients: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Score many (client_id, origin) pairs at once, each from usage at or before its origin.

        Meant for backtests and replays: features for all origins come from one pass over
        `usage`. An origin off its client's grid raises ValueError; an origin outside the
        client's observed span (or of an unknown client) has no history and gets no rows.
        """
        grid = _build_grid(usage, self.config.freq_seconds)
        return self._score(grid, _origin_positions(grid, origins), horizon_steps, levels, clients)

    def _score(
        self,
        grid: _Grid,
        origins: np.ndarray,
        horizon_steps: int | None,
        levels: int | None,
        clients: pl.DataFrame | None,
    ) -> pl.DataFrame:
        n_h, n_k = _output_shape(self.config, horizon_steps, levels)
        memory = _client_memory_array(grid, {**self.client_memory, **_memory_map(clients)})
        # bounded chunks keep the feature matrix (~250 bytes a row) small on long replays
        per_chunk = max(1, _SCORE_CHUNK_ROWS // (n_h * n_k))
        chunks = [
            self._probabilities(grid, origins[i : i + per_chunk], n_h, n_k, memory)
            for i in range(0, origins.size, per_chunk)
        ]
        p = np.concatenate(chunks) if chunks else np.empty(0)
        keys = _row_keys(grid, *_expand(origins, n_h, n_k))
        return keys.with_columns(p_exceed=pl.Series(p, dtype=pl.Float64)).cast(OUTPUT_SCHEMA)

    def _probabilities(
        self, grid: _Grid, origins: np.ndarray, n_h: int, n_k: int, memory: np.ndarray
    ) -> np.ndarray:
        """Calibrated, level-monotone P for rows ordered origin, horizon, level."""
        x = _features(grid, self.config, *_expand(origins, n_h, n_k), memory)
        raw = self.booster.predict(x, num_threads=self.config.num_threads)
        q = self.config.negative_keep
        p = np.clip(q * raw / (q * raw + 1.0 - raw), 0.0, 1.0)
        return np.minimum.accumulate(p.reshape(-1, n_k), axis=1).ravel()


def origin_features(
    usage: pl.DataFrame,
    origins: pl.DataFrame,
    config: ExceedanceConfig,
    horizon_steps: int | None = None,
    levels: int | None = None,
    clients: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The model's inputs at (client_id, origin) pairs, one row per horizon and level.

    Columns: client_id, origin, ts, horizon, level, then FEATURES (NaN where unknown, e.g.
    gap statistics before a second active bucket). For inspection, tests and notebooks.
    """
    grid = _build_grid(usage, config.freq_seconds)
    n_h, n_k = _output_shape(config, horizon_steps, levels)
    origin, horizon, level = _expand(_origin_positions(grid, origins), n_h, n_k)
    memory = _client_memory_array(grid, _memory_map(clients))
    x = _features(grid, config, origin, horizon, level, memory)
    values = pl.DataFrame(x, schema=dict.fromkeys(FEATURES, pl.Float64), orient="row")
    return pl.concat(
        [_row_keys(grid, origin, horizon, level), values.drop("level", "horizon")],
        how="horizontal",
    )


def fit_exceedance_model(
    usage: pl.DataFrame, config: ExceedanceConfig, clients: pl.DataFrame | None = None
) -> ExceedanceModel:
    """Train one shared P(need[t+h] >= k) classifier over all clients in `usage`.

    `clients` (client_id, container_memory_mb) is optional; its memory becomes a feature
    and is remembered for scoring.
    """
    grid = _build_grid(usage, config.freq_seconds)
    rng = np.random.default_rng(config.seed)
    origin, horizon, level = _training_rows(grid, config, rng)
    label = (grid.need[origin + horizon] >= level).astype(np.float64)
    if config.negative_keep < 1.0:
        keep = (label == 1.0) | (rng.random(label.size) < config.negative_keep)
        origin, horizon, level, label = origin[keep], horizon[keep], level[keep], label[keep]
    if label.size > config.max_rows:
        keep = np.sort(rng.choice(label.size, config.max_rows, replace=False))
        origin, horizon, level, label = origin[keep], horizon[keep], level[keep], label[keep]
    if label.size == 0:
        raise ValueError("no training rows: every client needs at least two buckets")

    client_memory = _memory_map(clients)
    x = _features(grid, config, origin, horizon, level, _client_memory_array(grid, client_memory))
    params = {
        "objective": "binary",
        "verbose": -1,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        **config.lgb_params,
        "num_threads": config.num_threads,
    }
    dataset = lgb.Dataset(x, label=label, feature_name=list(FEATURES), free_raw_data=True)
    booster = lgb.train(params, dataset, num_boost_round=config.num_boost_round)
    log.info(
        "trained exceedance model on %d rows (%d positive) from %d clients",
        label.size,
        int(label.sum()),
        grid.client_ids.size,
    )
    return ExceedanceModel(config, booster.model_to_string(), client_memory, label.size)


def critical_probability(cost_ratio: float) -> float:
    """The newsvendor threshold 1 / (1 + R), R = cold-start penalty / idle cost of one instance."""
    if not cost_ratio >= 0.0:
        raise ValueError(f"cost_ratio must be >= 0, got {cost_ratio}")
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
        p_exceed.with_columns(_threshold=1.0 / (1.0 + ratio))
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


# --- grid ---------------------------------------------------------------------------------


def _build_grid(usage: pl.DataFrame, freq_seconds: int) -> _Grid:
    """Densify long usage onto one regular grid per client (holes are need 0)."""
    missing = {"client_id", "ts", "concurrency"} - set(usage.columns)
    if missing:
        raise ValueError(f"usage lacks column(s): {', '.join(sorted(missing))}")
    freq_us = freq_seconds * _US_PER_SECOND
    frame = (
        usage.select(
            pl.col("client_id").cast(pl.String),
            pl.col("ts").cast(pl.Datetime("us")).dt.epoch("us").alias("us"),
            pl.col("concurrency").cast(pl.Float64),
        )
        .sort("client_id", "us")
        .with_columns(
            code=pl.col("client_id").rle_id(),
            first=pl.col("us").min().over("client_id"),
        )
    )
    if frame["client_id"].null_count() or frame["us"].null_count():
        raise ValueError("usage has null client_id or ts")
    need = frame["concurrency"]
    if need.null_count() or (need < 0).any() or not need.is_finite().all():
        raise ValueError("concurrency must be finite, non-null and >= 0")
    offset = (frame["us"] - frame["first"]).to_numpy()
    if (offset % freq_us).any():
        raise ValueError(f"usage ts off a {freq_seconds} s grid")
    position = offset // freq_us
    code = frame["code"].to_numpy().astype(np.int64)
    if np.any((np.diff(code) == 0) & (np.diff(position) == 0)):
        raise ValueError("usage has duplicate (client_id, ts) rows")

    per_client = frame.group_by("code", maintain_order=True).agg(
        pl.col("client_id").first(), pl.col("first").first()
    )
    n_clients = per_client.height
    lengths = np.zeros(n_clients, dtype=np.int64)
    np.maximum.at(lengths, code, position + 1)
    starts = np.cumsum(lengths) - lengths
    dense = np.zeros(int(lengths.sum()), dtype=np.float64)
    dense[starts[code] + position] = need.to_numpy()
    return _Grid(
        client_ids=per_client["client_id"].to_numpy().astype(object),
        starts=starts,
        lengths=lengths,
        first_us=per_client["first"].to_numpy().astype(np.int64),
        need=dense,
        client_of=np.repeat(np.arange(n_clients, dtype=np.int64), lengths),
        freq_us=freq_us,
    )


def _origin_positions(grid: _Grid, origins: pl.DataFrame) -> np.ndarray:
    """Global grid indices of (client_id, origin) pairs inside their client's span, sorted."""
    known = pl.DataFrame(
        {
            "client_id": grid.client_ids,
            "_code": np.arange(grid.client_ids.size),
            "_first": grid.first_us,
            "_length": grid.lengths,
            "_start": grid.starts,
        },
        schema_overrides={"client_id": pl.String},
    )
    joined = (
        origins.select(
            pl.col("client_id").cast(pl.String),
            pl.col("origin").cast(pl.Datetime("us")).dt.epoch("us").alias("_us"),
        )
        .unique()
        .join(known, on="client_id", how="inner")
        .with_columns(_offset=pl.col("_us") - pl.col("_first"))
    )
    if (joined["_offset"] % grid.freq_us != 0).any():
        raise ValueError("origins off their client's grid")
    position = joined["_offset"] // grid.freq_us
    inside = (position >= 0) & (position < joined["_length"])
    dropped = joined.height - int(inside.sum())
    if dropped:
        log.debug("%d origin(s) outside their client's observed span: not scored", dropped)
    index = (joined["_start"] + position).filter(inside).to_numpy().astype(np.int64)
    return np.sort(index)


def _output_shape(
    config: ExceedanceConfig, horizon_steps: int | None, levels: int | None
) -> tuple[int, int]:
    n_h = config.horizon_steps if horizon_steps is None else horizon_steps
    n_k = config.max_level if levels is None else levels
    if not 1 <= n_h <= config.horizon_steps:
        raise ValueError(f"horizon_steps must be in 1..{config.horizon_steps}, got {n_h}")
    if not 1 <= n_k <= config.max_level:
        raise ValueError(f"levels must be in 1..{config.max_level}, got {n_k}")
    return n_h, n_k


def _expand(origins: np.ndarray, n_h: int, n_k: int) -> tuple[np.ndarray, ...]:
    """Rows (origin, horizon, level) ordered origin, horizon, level: one block of levels each."""
    origin = np.repeat(origins, n_h * n_k)
    horizon = np.tile(np.repeat(np.arange(1, n_h + 1, dtype=np.int64), n_k), origins.size)
    level = np.tile(np.arange(1, n_k + 1, dtype=np.int64), origins.size * n_h)
    return origin, horizon, level


def _row_keys(
    grid: _Grid, origin: np.ndarray, horizon: np.ndarray, level: np.ndarray
) -> pl.DataFrame:
    """client_id, origin, ts, horizon, level of rows given by global grid indices."""
    client = grid.client_of[origin]
    origin_us = grid.first_us[client] + (origin - grid.starts[client]) * grid.freq_us
    return pl.DataFrame(
        {
            "client_id": pl.Series(grid.client_ids, dtype=pl.String).gather(client),
            "origin": pl.Series(origin_us, dtype=pl.Int64).cast(pl.Datetime("us")),
            "ts": pl.Series(origin_us + horizon * grid.freq_us, dtype=pl.Int64).cast(
                pl.Datetime("us")
            ),
            "horizon": pl.Series(horizon, dtype=pl.Int64).cast(pl.Int32),
            "level": pl.Series(level, dtype=pl.Int64).cast(pl.Int32),
        }
    )


def _memory_map(clients: pl.DataFrame | None) -> dict[str, float]:
    if clients is None or "container_memory_mb" not in clients.columns:
        return {}
    pairs = clients.select("client_id", "container_memory_mb").drop_nulls()
    return dict(
        zip(pairs["client_id"].to_list(), pairs["container_memory_mb"].to_list(), strict=True)
    )


def _client_memory_array(grid: _Grid, memory: dict[str, float]) -> np.ndarray:
    return np.array([memory.get(c, np.nan) for c in grid.client_ids], dtype=np.float64)


def _training_rows(
    grid: _Grid, config: ExceedanceConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, horizon, level) rows with a known label, every level, origins every stride.

    When the full product is larger than the budget, a uniform sample of it is drawn
    before labels are looked at, so the class balance is untouched.
    """
    local = np.arange(grid.need.size) - grid.starts[grid.client_of]
    last = grid.lengths[grid.client_of] - 1
    candidates = np.flatnonzero((local % config.origin_stride == 0) & (local < last))
    n_h, n_k = config.horizon_steps, config.max_level
    total = candidates.size * n_h * n_k
    budget = int(config.max_rows / config.negative_keep)
    flat = np.arange(total) if total <= budget else np.unique(rng.integers(0, total, budget))
    origin = candidates[flat // (n_h * n_k)]
    horizon = (flat // n_k) % n_h + 1
    level = flat % n_k + 1
    valid = local[origin] + horizon <= last[origin]
    return origin[valid], horizon[valid], level[valid]


# --- features -------------------------------------------------------------------------------


def _features(
    grid: _Grid,
    config: ExceedanceConfig,
    origin: np.ndarray,
    horizon: np.ndarray,
    level: np.ndarray,
    memory: np.ndarray,
) -> np.ndarray:
    """The FEATURES matrix for rows (origin global index, horizon, level), no look-ahead."""
    client = grid.client_of[origin]
    start = grid.starts[client]
    history = (origin - start + 1).astype(np.float64)
    columns: dict[str, np.ndarray] = {
        "level": level.astype(np.float64),
        "horizon": horizon.astype(np.float64),
        "history_steps": history,
        "container_memory_mb": memory[client],
    }
    columns.update(_level_features(grid, config, origin, start, horizon, level))
    columns.update(_need_features(grid, config, origin, start, level))

    # gap statistics depend on the origin only; the hazard on (origin, horizon)
    pairs, pair_of_row = np.unique(
        origin * (config.horizon_steps + 1) + horizon, return_inverse=True
    )
    pair_origin = pairs // (config.horizon_steps + 1)
    pair_horizon = pairs % (config.horizon_steps + 1)
    gaps = _gap_features(grid, config, pair_origin, pair_horizon)
    columns.update({name: values[pair_of_row] for name, values in gaps.items()})
    columns.update(_calendar_features(grid, origin, client, horizon))
    # column-major: filling whole columns is cheap and LightGBM reads either layout
    matrix = np.empty((origin.size, len(FEATURES)), dtype=np.float64, order="F")
    for j, name in enumerate(FEATURES):
        matrix[:, j] = columns[name]
    return matrix


def _window_share(
    cumulative: np.ndarray, origin: np.ndarray, start: np.ndarray, steps: int | None
) -> np.ndarray:
    """Mean of a series over the last `steps` buckets up to the origin (all when None).

    `cumulative` has a leading zero: cumulative[j] is the sum of the first j buckets.
    """
    low = start if steps is None else np.maximum(origin + 1 - steps, start)
    return (cumulative[origin + 1] - cumulative[low]) / (origin + 1 - low)


def _level_features(
    grid: _Grid,
    config: ExceedanceConfig,
    origin: np.ndarray,
    start: np.ndarray,
    horizon: np.ndarray,
    level: np.ndarray,
) -> dict[str, np.ndarray]:
    names = ("rate_short", "rate_mid", "rate_day", "rate_all", "since_level")
    names += ("lag_mid_level", "lag_day_level")
    out = {name: np.full(origin.size, np.nan) for name in names}
    index = np.arange(grid.need.size)
    # one pass per level over the whole grid (K is small); rows of that level gather from it
    for k in np.unique(level):
        rows = np.flatnonzero(level == k)
        o, s, h = origin[rows], start[rows], horizon[rows]
        hit = grid.need >= k
        cumulative = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
        out["rate_short"][rows] = _window_share(cumulative, o, s, config.short_steps)
        out["rate_mid"][rows] = _window_share(cumulative, o, s, config.mid_steps)
        out["rate_day"][rows] = _window_share(cumulative, o, s, config.day_steps)
        out["rate_all"][rows] = _window_share(cumulative, o, s, None)
        last_hit = np.maximum.accumulate(np.where(hit, index, -1))[o]
        out["since_level"][rows] = np.where(last_hit >= s, o - last_hit, np.nan)
        for name, lag in (("lag_mid_level", config.mid_steps), ("lag_day_level", config.day_steps)):
            # the bucket one hour (day) before the target, if it is known at the origin
            source = o + h - lag
            known = (h <= lag) & (source >= s)
            out[name][rows] = np.where(known, hit[np.where(known, source, 0)], np.nan)
    return out


def _need_features(
    grid: _Grid, config: ExceedanceConfig, origin: np.ndarray, start: np.ndarray, level: np.ndarray
) -> dict[str, np.ndarray]:
    need = grid.need
    active = np.concatenate([[0], np.cumsum(need > 0, dtype=np.int64)])
    total = np.concatenate([[0.0], np.cumsum(need)])
    series = pl.DataFrame({"c": grid.client_of, "x": need})
    rolled = series.select(
        short=pl.col("x").rolling_max(config.short_steps, min_samples=1).over("c"),
        mid=pl.col("x").rolling_max(config.mid_steps, min_samples=1).over("c"),
        all=pl.col("x").cum_max().over("c"),
    )
    last = need[origin]
    max_mid = rolled["mid"].to_numpy()[origin]
    return {
        "active_mid": _window_share(active, origin, start, config.mid_steps),
        "active_all": _window_share(active, origin, start, None),
        "need_last": last,
        "need_max_short": rolled["short"].to_numpy()[origin],
        "need_max_mid": max_mid,
        "need_mean_mid": _window_share(total, origin, start, config.mid_steps),
        "need_max_all": rolled["all"].to_numpy()[origin],
        # trees split on one feature at a time: give them the distance to the level directly
        "level_over_last": level - last,
        "level_over_max_mid": level - max_mid,
    }


def _gap_features(
    grid: _Grid, config: ExceedanceConfig, origin: np.ndarray, horizon: np.ndarray
) -> dict[str, np.ndarray]:
    """Idle-gap history at each origin: counts, mean, recent percentiles and hazard.

    A gap is the number of idle buckets between two consecutive active buckets (0 when
    they are adjacent). With r idle buckets since the last active one, the next bucket
    active at t+h closes a gap of r + h - 1, so the empirical hazard
    #{recent gaps in [r, r+h-1]} / #{recent gaps >= r} estimates P(activity by t+h); at
    h = 1 it is exactly the chance that the current gap ends now.
    """
    client = grid.client_of[origin]
    start = grid.starts[client]
    active = np.flatnonzero(grid.need > 0)
    if active.size == 0:
        return {name: _no_gaps(origin.size, name) for name in _GAP_FEATURES}
    same_client = grid.client_of[active[1:]] == grid.client_of[active[:-1]]
    gaps = np.full(active.size, np.nan)
    gaps[1:] = np.where(same_client, active[1:] - active[:-1] - 1, np.nan)
    gap_sum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(gaps))])

    last = np.searchsorted(active, origin, side="right") - 1  # last active bucket <= origin
    seen = last >= 0
    seen[seen] = active[last[seen]] >= start[seen]
    first = np.searchsorted(active, start, side="left")  # client's first active bucket
    count = np.where(seen, last - first, 0).astype(np.float64)
    idle_run = np.where(seen, origin - active[np.maximum(last, 0)], np.nan)

    back = last[:, None] - np.arange(config.gap_memory)[None, :]
    usable = seen[:, None] & (back > first[:, None])
    recent = np.where(usable, gaps[np.clip(back, 0, None)], np.nan)
    n_recent = usable.sum(axis=1)
    ordered = np.sort(recent, axis=1)  # NaN sorts last

    def recent_quantile(q: float) -> np.ndarray:
        rank = np.round(q * np.maximum(n_recent - 1, 0)).astype(np.int64)
        return np.where(n_recent > 0, ordered[np.arange(origin.size), rank], np.nan)

    with np.errstate(invalid="ignore"):
        at_least = recent >= idle_run[:, None]
        closing = at_least & (recent <= (idle_run + horizon - 1)[:, None])
    n_at_least = at_least.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hazard = np.where(n_at_least > 0, closing.sum(axis=1) / n_at_least, np.nan)
        summed = gap_sum[np.maximum(last, 0) + 1] - gap_sum[np.minimum(first, active.size - 1) + 1]
        mean = np.where(count > 0, summed / count, np.nan)
    return {
        "idle_run": idle_run,
        "gap_count": count,
        "gap_mean": mean,
        "gap_last": np.where(count > 0, gaps[np.maximum(last, 0)], np.nan),
        "gap_p50": recent_quantile(0.5),
        "gap_p90": recent_quantile(0.9),
        "gap_max": recent_quantile(1.0),
        "gap_hazard": hazard,
    }


_GAP_FEATURES = ("idle_run", "gap_count", "gap_mean", "gap_last", "gap_p50", "gap_p90")
_GAP_FEATURES += ("gap_max", "gap_hazard")


def _no_gaps(size: int, name: str) -> np.ndarray:
    """Gap features of clients never active: no gaps counted, everything else unknown."""
    return np.zeros(size) if name == "gap_count" else np.full(size, np.nan)


def _calendar_features(
    grid: _Grid, origin: np.ndarray, client: np.ndarray, horizon: np.ndarray
) -> dict[str, np.ndarray]:
    target_us = grid.first_us[client] + (origin - grid.starts[client] + horizon) * grid.freq_us
    return {
        "hour": ((target_us // _US_PER_HOUR) % 24).astype(np.float64),
        "weekday": ((target_us // _US_PER_DAY + _EPOCH_WEEKDAY) % 7).astype(np.float64),
    }
