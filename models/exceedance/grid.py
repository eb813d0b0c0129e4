"""Long usage on dense per-client grids, and the (origin, horizon, level) rows scored on them.

Every client's series runs on its own regular grid from its first to its last row; a missing
bucket inside that span reads as need 0. All clients' grids are concatenated into one array,
so features and labels are gathers by global index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from models.exceedance.config import ExceedanceConfig

# the package's logger, as when the model was one module
log = logging.getLogger(__package__)

_US_PER_SECOND = 1_000_000


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


def _expand(origins: np.ndarray, n_h: int, n_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
