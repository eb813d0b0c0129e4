"""Pictures a reviewer opens: forecast vs actual with the p10-p90 band, as SVG.

Written out directly instead of drawn with matplotlib: training draws one per client, and
a matplotlib PNG cost ~0.14 s of a client's ~1.5 s of fit and registration (9 % of a
training run); this takes about a millisecond. MLflow's artifact view shows SVG as an image.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import numpy as np
import polars as pl

WIDTH, HEIGHT = 720, 272
# Plot area inside the picture: room for the title above, the value labels on the left, the
# time labels and the legend below (a legend inside would hide data).
LEFT, RIGHT, TOP, BOTTOM = 64, WIDTH - 12, 30, HEIGHT - 50
BLUE = "#1f77b4"
# Time between labelled ticks: the first that gives at most `_MAX_TIME_TICKS` ticks.
_TIME_STEPS_S = (300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
_MAX_TIME_TICKS = 9


def plot_forecast_vs_actual(frame: pl.DataFrame, title: str, metric: str) -> bytes:
    """SVG of actual (line) against p50 (dashed) and the p10-p90 band, over `ts`.

    `frame` has ts, actual, p10, p50, p90 (one row per forecast bucket, e.g. the holdout);
    rows missing any of them are left out. `title` and `metric` may hold any text.
    """
    columns = ["ts", "actual", "p10", "p50", "p90"]
    finite = pl.all_horizontal(pl.exclude("ts").is_finite())
    rows = frame.select(columns).drop_nulls().filter(finite).sort("ts")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{WIDTH / 2:g}" y="18" text-anchor="middle" font-size="13">'
        f"{escape(title)}</text>",
    ]
    if rows.height == 0:
        parts.append(
            f'<text x="{WIDTH / 2:g}" y="{HEIGHT / 2:g}" text-anchor="middle">'
            "no rows with an actual and a forecast</text>"
        )
    else:
        parts += _chart(rows, metric)
    parts.append("</svg>")
    return "\n".join(parts).encode()


def _chart(rows: pl.DataFrame, metric: str) -> list[str]:
    seconds = rows.get_column("ts").dt.epoch("s").to_numpy().astype(np.float64)
    actual, p10, p50, p90 = (rows.get_column(c).to_numpy() for c in ("actual", "p10", "p50", "p90"))
    t0, t1 = float(seconds[0]), float(seconds[-1])
    if t1 == t0:
        t0, t1 = t0 - 1800, t1 + 1800
    y_ticks = value_ticks(float(min(p10.min(), actual.min())), float(max(p90.max(), actual.max())))
    y0, y1 = y_ticks[0], y_ticks[-1]

    def x(values: np.ndarray) -> np.ndarray:
        return LEFT + (values - t0) / (t1 - t0) * (RIGHT - LEFT)

    def y(values: np.ndarray) -> np.ndarray:
        return BOTTOM - (values - y0) / (y1 - y0) * (BOTTOM - TOP)

    xs = x(seconds)
    band = _points(np.concatenate([xs, xs[::-1]]), y(np.concatenate([p90, p10[::-1]])))
    out = []
    for tick in y_ticks:
        at = float(y(np.array(tick)))
        out.append(f'<line x1="{LEFT}" x2="{RIGHT}" y1="{at:.1f}" y2="{at:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{LEFT - 4}" y="{at + 4:.1f}" text-anchor="end">{_number(tick)}</text>'
        )
    for tick in time_ticks(t0, t1):
        at = float(x(np.array(tick)))
        moment = datetime.fromtimestamp(tick, UTC)
        label = f"{moment:%b %d}" if tick % 86400 == 0 else f"{moment:%H:%M}"
        out.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{TOP}" y2="{BOTTOM}" stroke="#ddd"/>')
        out.append(f'<text x="{at:.1f}" y="{BOTTOM + 15}" text-anchor="middle">{label}</text>')
    out += [
        f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}"'
        ' fill="none" stroke="#888"/>',
        f'<text x="14" y="{(TOP + BOTTOM) / 2:g}" text-anchor="middle"'
        f' transform="rotate(-90 14 {(TOP + BOTTOM) / 2:g})">{escape(metric)}</text>',
        f'<polygon points="{band}" fill="{BLUE}" fill-opacity="0.25" stroke="none"/>',
        f'<polyline points="{_points(xs, y(p50))}" fill="none" stroke="{BLUE}"'
        ' stroke-width="1.2" stroke-dasharray="5,3"/>',
        f'<polyline points="{_points(xs, y(actual))}" fill="none" stroke="black"'
        ' stroke-width="1"/>',
    ]
    return out + _legend()


def _legend() -> list[str]:
    x, y = LEFT, HEIGHT - 10
    return [
        f'<rect x="{x}" y="{y - 6}" width="18" height="8" fill="{BLUE}" fill-opacity="0.25"/>',
        f'<text x="{x + 22}" y="{y + 2}">p10-p90</text>',
        f'<line x1="{x + 80}" x2="{x + 98}" y1="{y - 2}" y2="{y - 2}" stroke="{BLUE}"'
        ' stroke-width="1.2" stroke-dasharray="5,3"/>',
        f'<text x="{x + 102}" y="{y + 2}">p50</text>',
        f'<line x1="{x + 136}" x2="{x + 154}" y1="{y - 2}" y2="{y - 2}" stroke="black"/>',
        f'<text x="{x + 158}" y="{y + 2}">actual</text>',
    ]


def value_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2, 2.5 or 5 times a power of ten apart) from at or
    below `low` to at or above `high`: the value axis's grid, which spans them."""
    span = high - low or abs(high) or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    if last == first:
        last = first + step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def time_ticks(start: float, end: float) -> list[float]:
    """Epoch seconds between `start` and `end` at a whole step (5 minutes to a week, the
    first giving at most `_MAX_TIME_TICKS`), aligned to UTC midnight."""
    step = next(
        (s for s in _TIME_STEPS_S if (end - start) / s < _MAX_TIME_TICKS), _TIME_STEPS_S[-1]
    )
    first = math.ceil(start / step) * step
    return [float(t) for t in np.arange(first, end + 1, step)]


def _number(value: float) -> str:
    """A tick value without float noise (0.30000000000000004 -> 0.3)."""
    return f"{round(value, 10):,.12g}"


def _points(xs: np.ndarray, ys: np.ndarray) -> str:
    return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys, strict=True))
