"""`build_series` at just the steps that feature rows read: the origins asked for and
their targets.

Prediction reads a client's features at about 75 origins (the latest and the recent ones
the recalibration rescores) and their targets, yet `build_series` computes every column at
every step of the eight-day tail, each through a window over (client, metric): most of
the cost of a prediction. Here lags, seasonal look-ups and the cross-metric changes are
gathers at the steps read. Rolling statistics and smoothed levels still run over each whole
series: polars carries their running sums from the series' start, so a window cut short
would differ in the last bits. They run on the series laid side by side as columns, where
polars runs the very kernels `build_series` does, per column, without grouping.

Columns and values equal `build_series` at those steps, bit for bit (`tests/models/
test_series_at.py`). Inside, NaN stands for null: usage values are validated to be numbers
(never NaN) and scales are positive, so no value becomes NaN on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from models.features import (
    FeatureSpec,
    _client_codes,
    _max_season_multiple,
    _with_calendar_flags,
)

# A full-series kernel: (statistic, window); `shifted_mean` is the mean of the window
# before the last `window` steps (a slope's older half).
_Kernel = tuple[str, int]
_KERNELS: dict[str, Callable[[pl.Expr, int], pl.Expr]] = {
    "mean": lambda z, w: z.rolling_mean(w, min_samples=1),
    "max": lambda z, w: z.rolling_max(w, min_samples=1),
    "min": lambda z, w: z.rolling_min(w, min_samples=1),
    "std": lambda z, w: z.rolling_std(w, min_samples=2),
    "ewm": lambda z, hl: z.ewm_mean(half_life=hl, ignore_nulls=True),
    "shifted_mean": lambda z, w: z.shift(w).rolling_mean(w, min_samples=1),
}


@dataclass(frozen=True)
class _Layout:
    """Where each client's series lies in a regular grid (sorted by client, step), and the
    grid rows read (`at`) with their client and position in its series."""

    ids: pl.Series
    lengths: np.ndarray
    row_client: np.ndarray  # the client of every grid row
    row_local: np.ndarray  # every grid row's position in its series
    at: np.ndarray
    client: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, grid: pl.DataFrame, pairs: pl.DataFrame) -> _Layout:
        runs = grid.get_column("client_id").rle().struct.unnest()
        lengths = runs.get_column("len").to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        first = grid.get_column("step").to_numpy()[offsets]
        index = pl.DataFrame(
            {"client_id": runs.get_column("value"), "_client": np.arange(len(lengths))}
        )
        read = pl.concat(
            [
                pairs.select("client_id", "step"),
                pairs.select("client_id", (pl.col("step") + pl.col("horizon")).alias("step")),
            ]
        ).join(index, on="client_id")
        client = read.get_column("_client").to_numpy()
        local = read.get_column("step").to_numpy() - first[client]
        inside = (local >= 0) & (local < lengths[client])
        at = np.unique(offsets[client[inside]] + local[inside])
        row_client = np.repeat(np.arange(len(lengths)), lengths)
        row_local = np.arange(grid.height) - offsets[row_client]
        ids = runs.get_column("value")
        return cls(ids, lengths, row_client, row_local, at, row_client[at], row_local[at])

    def back(self, values: np.ndarray, steps: int) -> np.ndarray:
        """`values` `steps` steps before each row read (NaN before its series starts)."""
        inside = self.local >= steps
        return np.where(inside, values[np.where(inside, self.at - steps, 0)], np.nan)


def build_series_at(
    grid: pl.DataFrame,
    metrics: Sequence[str],
    pairs: pl.DataFrame,
    spec: FeatureSpec,
    scales: pl.DataFrame,
    calendar: pl.DataFrame | None = None,
    clients: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """`build_series(to_long(grid, metrics), spec, scales, calendar, clients)` at the steps
    `assemble_rows` reads for `pairs` (client_id, step, horizon): origins and targets.

    `grid` comes from `regular_grid` (sorted by client and step); `scales` has client_id,
    metric, scale. Rows come metric by metric, not sorted: `assemble_rows` sorts its own.
    """
    layout = _Layout.of(grid, pairs)
    scale = {m: _client_scales(scales, m, layout.ids) for m in metrics}
    z = {
        m: grid.get_column(m).to_numpy().astype(np.float64) / scale[m][layout.row_client]
        for m in metrics
    }
    anchors = {m: _forward_filled(values, layout) for m, values in z.items()}
    kernels = _full_series(z, _kernels_of(spec), layout)
    blocks = []
    for metric in metrics:
        columns = _origin_columns(spec, z[metric], anchors[metric], kernels[metric], layout)
        columns |= _lookups(spec, z[metric], layout)
        blocks.append(
            {
                "value": grid.get_column(metric).to_numpy()[layout.at],
                "scale": scale[metric][layout.client],
                "z": z[metric][layout.at],
                "anchor": anchors[metric],
                **columns,
            }
        )
    frame = _frame(grid, metrics, blocks, layout)
    frame = _with_calendar_flags(frame, spec, calendar, clients)
    if spec.cross_metrics:
        frame = frame.with_columns(_cross(spec, z, anchors, kernels, layout, len(metrics)))
    return frame.join(_client_codes(frame, spec, clients), on="client_id", how="left")


def _client_scales(scales: pl.DataFrame, metric: str, ids: pl.Series) -> np.ndarray:
    """One metric's scale per client of `ids` (NaN when none is known)."""
    known = scales.filter(pl.col("metric") == metric).select("client_id", "scale")
    return (
        ids.to_frame("client_id")
        .join(known, on="client_id", how="left", maintain_order="left")
        .get_column("scale")
        .to_numpy()
        .astype(np.float64)
    )


def _forward_filled(values: np.ndarray, layout: _Layout) -> np.ndarray:
    """The last non-null value at or before each row read, within its series."""
    index = np.where(np.isnan(values), -1, np.arange(len(values)))
    last = np.maximum.accumulate(index)[layout.at]
    inside = last >= layout.at - layout.local  # not before the series' first row
    return np.where(inside, values[np.maximum(last, 0)], np.nan)


def _kernels_of(spec: FeatureSpec) -> list[_Kernel]:
    """The full-series kernels the spec's origin and cross-metric features need."""
    kernels: list[_Kernel] = list(spec.rolling)
    kernels += [("ewm", hl) for hl in spec.ewm_half_lives]
    kernels += [k for w in spec.slopes for k in (("mean", w), ("shifted_mean", w))]
    if spec.cross_metrics:
        kernels.append(("mean", spec.cross_window[1]))
    return list(dict.fromkeys(kernels))


def _full_series(
    z: dict[str, np.ndarray], kernels: list[_Kernel], layout: _Layout
) -> dict[str, dict[_Kernel, np.ndarray]]:
    """Each kernel over every whole series, at the rows read: the series of all clients
    and metrics side by side as columns (each starting at its first step), so polars runs
    each kernel per column as `build_series` runs it per (client, metric) window."""
    clients, length = len(layout.lengths), int(layout.lengths.max())
    side = np.full((length, clients * len(z)), np.nan)
    for j, values in enumerate(z.values()):
        side[layout.row_local, j * clients + layout.row_client] = values
    columns = pl.DataFrame(side, nan_to_null=True)
    out: dict[str, dict[_Kernel, np.ndarray]] = {m: {} for m in z}
    for kernel in kernels:
        stat, window = kernel
        result = columns.select(_KERNELS[stat](pl.all(), window)).to_numpy()
        for j, metric in enumerate(z):
            out[metric][kernel] = result[layout.local, j * clients + layout.client]
    return out


def _origin_columns(
    spec: FeatureSpec,
    z: np.ndarray,
    anchor: np.ndarray,
    kernels: dict[_Kernel, np.ndarray],
    layout: _Layout,
) -> dict[str, np.ndarray]:
    """Level, lags, rolling statistics, smoothed levels and slopes (`_origin_exprs`)."""
    columns = {"level": anchor}
    columns |= {f"lag_{k}": layout.back(z, k) - anchor for k in spec.lags}
    for stat, w in spec.rolling:
        value = kernels[(stat, w)]
        columns[f"{stat}_{w}"] = value if stat == "std" else value - anchor
    columns |= {f"ewm_{hl}": kernels[("ewm", hl)] - anchor for hl in spec.ewm_half_lives}
    columns |= {
        f"slope_{w}": kernels[("mean", w)] - kernels[("shifted_mean", w)] for w in spec.slopes
    }
    return columns


def _lookups(spec: FeatureSpec, z: np.ndarray, layout: _Layout) -> dict[str, np.ndarray]:
    """The seasonal look-ups of `_season_lookups`: values whole seasons back, and the mean
    over past days (by polars' own `mean_horizontal`, nulls left out as there)."""
    columns = {}
    for season in spec.seasons:
        for m in range(1, _max_season_multiple(spec.horizon_steps, season) + 1):
            columns[f"_s{season}_m{m}"] = layout.back(z, m * season)
    if spec.profile_days > 1:
        day = spec.steps_per_day
        for m in range(1, _max_season_multiple(spec.horizon_steps, day) + 1):
            back = pl.DataFrame(
                {str(k): layout.back(z, (m + k) * day) for k in range(spec.profile_days)},
                nan_to_null=True,
            )
            columns[f"_p_m{m}"] = back.select(pl.mean_horizontal(pl.all())).to_series().to_numpy()
    return columns


def _frame(
    grid: pl.DataFrame, metrics: Sequence[str], blocks: list[dict[str, np.ndarray]], layout: _Layout
) -> pl.DataFrame:
    """The rows read of every metric, one block after another, in `build_series` columns."""
    count = len(layout.at)
    keys = pl.DataFrame(
        {
            "client_id": layout.ids.gather(layout.client),
            "step": grid.get_column("step").gather(layout.at),
            "ts": grid.get_column("ts").gather(layout.at),
        }
    )
    values = {
        name: pl.Series(name, np.concatenate([b[name] for b in blocks]), nan_to_null=True)
        for name in blocks[0]
    }
    return pl.concat([keys] * len(metrics)).select(
        "client_id",
        pl.Series("metric", np.repeat(np.asarray(metrics, dtype=object), count), pl.String),
        "step",
        "ts",
        *values.values(),
    )


def _cross(
    spec: FeatureSpec,
    z: dict[str, np.ndarray],
    anchors: dict[str, np.ndarray],
    kernels: dict[str, dict[_Kernel, np.ndarray]],
    layout: _Layout,
    metrics: int,
) -> list[pl.Series]:
    """`cross_features` at the rows read, repeated for each metric's block: each cross
    metric's last-hour change and distance to its daily mean (null when not an input)."""
    change, mean = spec.cross_window
    columns = []
    for i, metric in enumerate(spec.cross_metrics):
        if metric in z:
            lag = anchors[metric] - layout.back(z[metric], change)
            level = kernels[metric][("mean", mean)] - anchors[metric]
        else:
            lag = level = np.full(len(layout.at), np.nan)
        columns += [
            pl.Series(f"x{i}_lag_{change}", np.tile(lag, metrics), nan_to_null=True),
            pl.Series(f"x{i}_mean_{mean}", np.tile(level, metrics), nan_to_null=True),
        ]
    return columns
