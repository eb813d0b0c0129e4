"""`prewarm profile CLIENT`: a client's predicted profile for people, with a small terminal
chart of its demand forecast (p50 bar, p90 mark), the windows marked beside it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from models.profile import DEMAND_METRICS, demand_metric
from warehouse.db import connect, fetch_frame
from warehouse.predictions import latest_run, read_latest_profile

BAR_WIDTH = 40
MAX_ROWS = 24
_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class ProfileView:
    """A client's latest profile windows and the demand forecast they were found on."""

    windows: list[dict[str, Any]]
    metric: str  # the demand metric charted
    series: pl.DataFrame  # ts, p50, p90 of its newest prediction run


def read_profile_view(path: Path, client_id: str) -> ProfileView:
    """The client's latest profile windows and its demand metric's forecast (the one its
    windows were found on: requests, else concurrency)."""
    with connect(path, read_only=True) as con:
        windows = read_latest_profile(con, client_id)
        forecasts = fetch_frame(
            con,
            "SELECT metric, ts, p50, p90 FROM forecasts WHERE client_id = ?"
            f" AND metric IN ({', '.join('?' for _ in DEMAND_METRICS)})"
            " AND generated_at = ? ORDER BY ts",
            [client_id, *DEMAND_METRICS, latest_run(con, client_id)],
        )
    if forecasts.height == 0:
        return ProfileView(windows, DEMAND_METRICS[0], forecasts.drop("metric"))
    metric = demand_metric(forecasts.get_column("metric").unique().to_list())
    series = forecasts.filter(pl.col("metric") == metric).drop("metric")
    return ProfileView(windows, metric, series)


def chart_lines(
    series: pl.DataFrame,
    windows: Sequence[tuple[datetime, datetime]],
    width: int = BAR_WIDTH,
    max_rows: int = MAX_ROWS,
) -> list[str]:
    """One line per slot of time (the forecast's finest step, slots merged by their max to
    at most `max_rows`): the slot's start, a p50 bar, a `|` at p90, the values, and `◀` when
    the slot overlaps a window. Past the horizon the forecast has a step only every few
    buckets; a slot holding none is left out."""
    if series.height == 0:
        return []
    ts = series.get_column("ts").to_list()
    step = min((b - a for a, b in zip(ts, ts[1:], strict=False)), default=timedelta(minutes=5))
    slot = step * math.ceil((ts[-1] - ts[0] + step) / step / max_rows)
    rows = series.group_by(
        (
            (pl.col("ts") - ts[0]).dt.total_microseconds() // (slot // timedelta(microseconds=1))
        ).alias("slot"),
        maintain_order=True,
    ).agg(pl.col("p50").max(), pl.col("p90").max())
    top = max(1e-9, *rows["p90"].to_list(), *rows["p50"].to_list())
    lines = []
    for index, p50, p90 in rows.select("slot", "p50", "p90").iter_rows():
        bar = _bar(max(0.0, p50) / top * width, width)
        mark = min(width - 1, round(max(0.0, p90) / top * width))
        cells = list(bar.ljust(width))
        if cells[mark] == " ":
            cells[mark] = "|"
        start = ts[0] + slot * index
        inside = any(s < start + slot and start < e for s, e in windows)
        lines.append(
            f"{start:%m-%d %H:%M} {''.join(cells)} {p50:6.2f} / {p90:6.2f}{'  ◀' if inside else ''}"
        )
    return lines


def _bar(length: float, width: int) -> str:
    """A bar `length` cells long, in eighths of a cell."""
    whole = min(int(length), width)
    rest = _EIGHTHS[int((length - whole) * 8)].strip() if whole < width else ""
    return "█" * whole + rest
