"""The planner's input tables: clients and hosts as arrays, checked and defaulted.

`_ClientTable` (clients in client_id order: sizes, modes, confidence, penalties, idle
prices) and `_HostTable` (hosts cheapest first, capacity after the burst reserve), with the
column helpers and the checks that name the offending row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from core.vocabulary import MODES
from provisioning.costs import CostModel
from provisioning.planner.config import _ACTIVE, _COLD, _SHADOW, PlannerConfig


@dataclass
class _ClientTable:
    """Clients as arrays indexed 0..n-1 in client_id order."""

    index: pl.DataFrame  # client_id, _c
    ids: np.ndarray
    modes: np.ndarray
    provision: np.ndarray  # bool
    confidence: np.ndarray
    need: np.ndarray  # (n, 4): cpu, memory_mb, net_mbps, io_ops of one active container
    cold_penalty: np.ndarray
    activation: np.ndarray  # (n, 4) per option: 0, cold, shadow, 0
    idle: np.ndarray  # (n, 4) $ per minute per option at the model's rates: 0, cold, ...
    spread: np.ndarray  # (n,) a stable hash of the client id, to spread new cold pools

    @property
    def size(self) -> int:
        return self.ids.size


def _client_table(clients: pl.DataFrame, costs: CostModel, config: PlannerConfig) -> _ClientTable:
    _require(clients, ("client_id",), "clients")
    frame = clients.select(
        pl.col("client_id").cast(pl.String),
        _column(clients, "tier", pl.String, None),
        _column(clients, "container_cpu", pl.Float64, config.default_container_cpu),
        _column(clients, "container_memory_mb", pl.Float64, config.default_container_memory_mb),
        _column(clients, "container_net_mbps", pl.Float64, 0.0),
        _column(clients, "container_io_ops", pl.Float64, 0.0),
        _column(clients, "mode", pl.String, "provision"),
        _column(clients, "confidence", pl.Float64, 1.0),
    ).sort("client_id")
    _check_clients(frame)
    n = frame.height
    tier = frame["tier"]
    penalties = dict(costs.cold_start_penalty)
    cold_penalty = (
        tier.replace_strict(
            penalties, default=costs.default_cold_start_penalty, return_dtype=pl.Float64
        )
        .fill_null(costs.default_cold_start_penalty)
        .to_numpy()
    )
    cpu = frame["container_cpu"].to_numpy()
    memory = frame["container_memory_mb"].to_numpy()
    activation = np.zeros((n, 4))
    activation[:, _COLD] = cold_penalty * costs.start_seconds / costs.cold_start_seconds
    activation[:, _SHADOW] = cold_penalty * costs.unpause_seconds / costs.cold_start_seconds
    idle = np.zeros((n, 4))
    for option, name in ((_COLD, "cold"), (_SHADOW, "shadow"), (_ACTIVE, "active")):
        idle[:, option] = costs.idle_per_minute(name, cpu, memory)
    need = np.column_stack(
        [cpu, memory, frame["container_net_mbps"].to_numpy(), frame["container_io_ops"].to_numpy()]
    )
    modes = frame["mode"].to_numpy()
    return _ClientTable(
        index=frame.select("client_id")
        .with_row_index("_c")
        .with_columns(pl.col("_c").cast(pl.Int64)),
        ids=frame["client_id"].to_numpy(),
        modes=modes,
        provision=modes == "provision",
        confidence=frame["confidence"].to_numpy(),
        need=need,
        cold_penalty=cold_penalty,
        activation=activation,
        idle=idle,
        spread=np.array([zlib.crc32(c.encode()) for c in frame["client_id"]], dtype=np.int64),
    )


def _column(frame: pl.DataFrame, name: str, dtype: type[pl.DataType], default: Any) -> pl.Expr:
    """An optional column cast to dtype, nulls (or the whole column if absent) as default."""
    if name not in frame.columns:
        return pl.lit(default, dtype=dtype).alias(name)
    column = pl.col(name).cast(dtype)
    return column if default is None else column.fill_null(default)


def _require(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}")


def _check_clients(frame: pl.DataFrame) -> None:
    duplicated = frame.filter(pl.col("client_id").is_duplicated())["client_id"].unique().sort()
    if duplicated.len():
        raise ValueError(f"clients: duplicate client_id {_few(duplicated)}")
    bad_mode = frame.filter(~pl.col("mode").is_in(MODES))
    if bad_mode.height:
        row = bad_mode.row(0, named=True)
        raise ValueError(
            f"clients: client {row['client_id']!r} has mode {row['mode']!r};"
            f" expected one of {MODES}"
        )
    bad_conf = frame.filter(~pl.col("confidence").is_between(0.0, 1.0))
    if bad_conf.height:
        row = bad_conf.row(0, named=True)
        raise ValueError(
            f"clients: client {row['client_id']!r} has confidence {row['confidence']}; "
            "expected a number in [0, 1]"
        )
    for column in ("container_cpu", "container_memory_mb"):
        bad = frame.filter(pl.col(column) <= 0)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"clients: client {row['client_id']!r} has {column} {row[column]}; expected > 0"
            )
    for column in ("container_net_mbps", "container_io_ops"):
        bad = frame.filter(pl.col(column) < 0)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"clients: client {row['client_id']!r} has {column} {row[column]}; expected >= 0"
            )


@dataclass
class _HostTable:
    """Hosts in placement order (cheapest cpu first), with plannable capacity."""

    names: np.ndarray
    capacity: np.ndarray  # (H, 4) after the burst reserve; inf where not tracked
    core_minute: np.ndarray
    memory_gib_minute: np.ndarray

    @property
    def size(self) -> int:
        return self.names.size


def _host_table(inventory: pl.DataFrame, costs: CostModel, config: PlannerConfig) -> _HostTable:
    _require(inventory, ("host", "cpu_cores", "memory_mb"), "inventory")
    if inventory.height == 0:
        raise ValueError("inventory has no hosts")
    frame = inventory.select(
        pl.col("host").cast(pl.String),
        _column(inventory, "cpu_cores", pl.Float64, None),
        _column(inventory, "memory_mb", pl.Float64, None),
        _column(inventory, "net_mbps", pl.Float64, float("inf")),
        _column(inventory, "io_ops", pl.Float64, float("inf")),
        _column(inventory, "cost_core_minute", pl.Float64, costs.core_minute),
        _column(inventory, "cost_memory_gib_minute", pl.Float64, costs.memory_gib_minute),
    ).sort("cost_core_minute", "cost_memory_gib_minute", "host")
    duplicated = frame.filter(pl.col("host").is_duplicated())["host"].unique().sort()
    if duplicated.len():
        raise ValueError(f"inventory: duplicate host {_few(duplicated)}")
    keep = 1.0 - config.burst_reserve
    capacity = (
        frame.select("cpu_cores", "memory_mb", "net_mbps", "io_ops").to_numpy().astype(np.float64)
        * keep
    )
    return _HostTable(
        names=frame["host"].to_numpy(),
        capacity=capacity,
        core_minute=frame["cost_core_minute"].to_numpy(),
        memory_gib_minute=frame["cost_memory_gib_minute"].to_numpy(),
    )


def _few(values: pl.Series, limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values.head(limit).to_list())
    more = values.len() - limit
    return shown + (f" and {more} more" if more > 0 else "")
