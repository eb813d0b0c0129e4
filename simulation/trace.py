"""The trace a replay runs on: dense per-minute invocations, need and memory per function.

need[f, m] is the instances minute m's invocations of function f keep busy, by the
warehouse loader's formula (`warehouse.sources.azure_functions.instances_needed`); each
instance holds the app's memory (mean AverageAllocatedMb over the app's rows, the median
of all apps when the app has none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from warehouse.sources.azure_functions import instances_needed, load_azure_functions

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)


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


def load_trace(trace_dir: Path) -> Trace:
    """Read an Azure Functions trace directory through the warehouse loader into a Trace.

    need is computed from each cell's invocations (summed over the function's rows) and the
    function's average duration with the loader's `instances_needed`. Where it differs from
    the loader's concurrency summed over the same rows (a function listed on several rows,
    whose per-row ceilings add up to more), that is logged and noted, and the need of the
    summed invocations (the replay's exact model) is what the replay uses.
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
    need = _need(invocations, profile["avg_duration_ms"].to_numpy())
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


def _need(invocations: np.ndarray, avg_duration_ms: np.ndarray) -> np.ndarray:
    """need (F, T) int64 of non-negative invocations (F, T) and one duration per row (F,)."""
    cells = pl.DataFrame(
        {
            "invocations": invocations.ravel(),
            "avg_duration_ms": np.repeat(avg_duration_ms, invocations.shape[1]),
        },
        schema={"invocations": pl.Float64, "avg_duration_ms": pl.Float64},
    )
    need = cells.select(instances_needed(pl.col("invocations"), pl.col("avg_duration_ms")))
    return need.to_series().to_numpy().reshape(invocations.shape).astype(np.int64)


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
