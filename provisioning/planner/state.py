"""Pool state between windows: what each client holds and where (its home host)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from core.vocabulary import TIERS
from provisioning.planner.config import _ACTIVE, _COLD, _NONE, _SHADOW
from provisioning.planner.tables import _ClientTable, _HostTable


@dataclass
class _PoolState:
    """What each client holds at the end of the previous window."""

    counts: np.ndarray  # (n, 4) instances per option (column _NONE unused)
    home: np.ndarray  # (n,) host index holding most of the client's pool, -1 if none

    def previous_options(self, client: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Instance `level`'s previous option: the first `active` were active, then shadow, cold."""
        counts = self.counts[client]
        active = counts[:, _ACTIVE]
        shadow = active + counts[:, _SHADOW]
        cold = shadow + counts[:, _COLD]
        return np.select(
            [level <= active, level <= shadow, level <= cold], [_ACTIVE, _SHADOW, _COLD], _NONE
        )

    def totals(self) -> np.ndarray:
        """Containers per client in any warm tier."""
        return self.counts[:, _COLD:].sum(axis=1)


def _pool_state(
    current_pool: pl.DataFrame | None, table: _ClientTable, hosts: _HostTable
) -> _PoolState:
    n = table.size
    counts = np.zeros((n, 4), dtype=np.int64)
    home = np.full(n, -1, dtype=np.int64)
    if current_pool is None or current_pool.height == 0:
        return _PoolState(counts, home)
    count = pl.col("count").cast(pl.Int64) if "count" in current_pool.columns else pl.lit(1)
    host_index = pl.DataFrame(
        {"host": hosts.names, "_h": np.arange(hosts.size)},
        schema={"host": pl.String, "_h": pl.Int64},
    )
    rows = (
        current_pool.select(
            pl.col("client_id").cast(pl.String),
            pl.col("tier").cast(pl.String),
            pl.col("host").cast(pl.String),
            count.alias("count"),
        )
        .filter(pl.col("tier").is_in(TIERS))
        .join(table.index, on="client_id", how="inner")  # clients no longer planned: released
        .join(host_index, on="host", how="left")
        .with_columns(
            pl.col("tier")
            .replace_strict({"cold": _COLD, "shadow": _SHADOW, "active": _ACTIVE})
            .alias("_o")
        )
    )
    np.add.at(counts, (rows["_c"].to_numpy(), rows["_o"].to_numpy()), rows["count"].to_numpy())
    on_hosts = rows.filter(pl.col("_h").is_not_null())
    if on_hosts.height:
        home = _home_hosts(
            on_hosts["_c"].to_numpy(),
            on_hosts["_h"].to_numpy(),
            on_hosts["count"].to_numpy(),
            n,
            hosts.size,
            home,
        )
    return _PoolState(counts, home)


def _home_hosts(
    client: np.ndarray,
    host: np.ndarray,
    weight: np.ndarray,
    n: int,
    n_hosts: int,
    previous: np.ndarray,
) -> np.ndarray:
    """Per client the host with the most of its containers (ties: earliest host)."""
    per_host = np.bincount(client * n_hosts + host, weights=weight, minlength=n * n_hosts)
    per_host = per_host.reshape(n, n_hosts)
    has_any = per_host.sum(axis=1) > 0
    return np.where(has_any, per_host.argmax(axis=1), previous)
