"""`prewarm profile CLIENT`: a client's predicted profile for people, with a small terminal
chart of its concurrency forecast (p50 bar, p90 mark), the windows marked beside it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from warehouse.db import connect, fetch_frame
from warehouse.predictions import read_latest_profile

BAR_WIDTH = 40
MAX_ROWS = 24
_EIGHTHS = " ▏▎▍▌▋▊▉"


def read_profile_view(path: Path, client_id: str) -> tuple[list[dict[str, Any]], pl.DataFrame]:
    """The client's latest profile windows and the concurrency forecast they came from
    (ts, p50, p90 of its newest prediction run)."""
    with connect(path, read_only=True) as con:
        windows = read_latest_profile(con, client_id)
        series = fetch_frame(
            con,
            "SELECT ts, p50, p90 FROM forecasts WHERE client_id = ? AND metric = 'concurrency'"
            " AND generated_at = (SELECT max(generated_at) FROM forecasts WHERE client_id = ?)"
            " ORDER BY ts",
            [client_id, client_id],
        )
    return windows, series


def chart_lines(
    series: pl.DataFrame,
    windows: Sequence[tuple[datetime, datetime]],
    width: int = BAR_WIDTH,
    max_rows: int = MAX_ROWS,
) -> list[str]:
    """One line per forecast bucket (buckets merged by their max to at most `max_rows`):
    time, a p50 bar, a `|` at p90, the values, and `◀` when the bucket is in a window."""
    if series.height == 0:
        return []
    group = math.ceil(series.height / max_rows)
    rows = (
        series.with_row_index("i")
        .group_by((pl.col("i") // group).alias("g"), maintain_order=True)
        .agg(pl.col("ts").first(), pl.col("p50").max(), pl.col("p90").max())
    )
    top = max(1e-9, *rows["p90"].to_list(), *rows["p50"].to_list())
    lines = []
    for ts, p50, p90 in rows.select("ts", "p50", "p90").iter_rows():
        bar = _bar(max(0.0, p50) / top * width, width)
        mark = min(width - 1, round(max(0.0, p90) / top * width))
        cells = list(bar.ljust(width))
        if cells[mark] == " ":
            cells[mark] = "|"
        inside = any(start <= ts < end for start, end in windows)
        lines.append(
            f"{ts:%m-%d %H:%M} {''.join(cells)} {p50:6.2f} / {p90:6.2f}{'  ◀' if inside else ''}"
        )
    return lines


def _bar(length: float, width: int) -> str:
    """A bar `length` cells long, in eighths of a cell."""
    whole = min(int(length), width)
    rest = _EIGHTHS[int((length - whole) * 8)].strip() if whole < width else ""
    return "█" * whole + rest
