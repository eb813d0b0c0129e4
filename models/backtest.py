"""Rolling-origin backtests: how the forecaster would have done, against baselines, honestly.

The test window is the last `test_days` of a series. Origins sit every `horizon_steps` steps
across it; each forecasts the next `horizon_steps` buckets from data strictly before the
origin. The model is refit once per test day on data strictly before that day's first origin,
so nothing after an origin ever reaches its forecast. Baselines (naive, seasonal naive day and
week) are scored on exactly the same points; a seasonal baseline is left out when the history
does not reach back a full season for every point.

Works on any numeric columns (a bare trace of cpu_util_percent, net_in, ... or the warehouse
metrics), one client at a time; `backtest_clients` runs it per warehouse client.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from models.features import DAY_SECONDS, regular_grid
from models.forecaster import (
    WAREHOUSE_METRICS,
    ForecastConfig,
    fit_client_forecaster,
    forecast_origins,
    min_fit_steps,
)
from models.scoring import baseline_wmapes, point_metrics

BARE_CSV_START = datetime(2026, 1, 5)  # a Monday, 00:00 UTC
_SERIES_ID = "series"


def read_bare_csv(path: str | Path, freq_seconds: int) -> pl.DataFrame:
    """A CSV of numeric columns without timestamps, stamped every `freq_seconds` from 2026-01-05.

    Empty cells become nulls; any other non-numeric cell raises a ValueError naming the
    column and the line (1 is the header).
    """
    raw = pl.read_csv(path, infer_schema=False)
    if raw.width == 0 or raw.height == 0:
        raise ValueError(f"{path}: no columns or no rows")
    columns = []
    for name in raw.columns:
        text = raw.get_column(name).str.strip_chars()
        parsed = text.cast(pl.Float64, strict=False)
        bad = (parsed.is_null() & text.is_not_null() & (text != "")).arg_true()
        if bad.len():
            row = int(bad[0])
            raise ValueError(
                f"{path}: column {name!r} is not numeric: line {row + 2} holds {text[row]!r}"
            )
        columns.append(parsed.alias(name))
    start = int((BARE_CSV_START - datetime(1970, 1, 1)).total_seconds())
    ts = pl.Series("ts", (start + np.arange(raw.height) * freq_seconds) * 1_000_000)
    return pl.DataFrame([ts.cast(pl.Datetime("us")), *columns])


def backtest_series(
    frame: pl.DataFrame,
    freq_seconds: int,
    horizon_steps: int = 12,
    test_days: float = 7,
    config: ForecastConfig | None = None,
) -> dict:
    """Rolling-origin backtest of one series with `ts` and numeric metric columns.

    Returns {"metrics": {column: {"lightgbm": {wmape, coverage_80, pinball}, "naive": {wmape},
    "seasonal_naive_day": {wmape}, "seasonal_naive_week": {wmape}}}, "runtime_s": t}, plus
    "test_days" and "notes" when the test window had to be shortened.
    """
    started = time.perf_counter()
    columns, series = _as_series(frame)
    result = _backtest(series, columns, freq_seconds, horizon_steps, test_days, config)
    result["runtime_s"] = round(time.perf_counter() - started, 3)
    return result


def backtest_forecasts(
    frame: pl.DataFrame,
    freq_seconds: int,
    horizon_steps: int = 12,
    test_days: float = 7,
    config: ForecastConfig | None = None,
) -> pl.DataFrame:
    """The backtest's forecasts themselves: one row per (origin, column, horizon).

    Columns as `ClientForecaster.predict` plus `actual`; `origin` is the last bucket before
    the forecast window.
    """
    columns, series = _as_series(frame)
    config = _config_for(config, freq_seconds, horizon_steps, columns)
    grid = _regular(series, columns, freq_seconds)
    plan = _plan(grid.height, config, test_days)
    return _rolling_forecasts(grid, columns, config, plan, None, None)


def _as_series(frame: pl.DataFrame) -> tuple[list[str], pl.DataFrame]:
    """The metric columns of a bare series, and the series as one client of float columns."""
    columns = [c for c in frame.columns if c not in ("ts", "client_id")]
    series = frame.select(
        pl.lit(_SERIES_ID).alias("client_id"), "ts", *(pl.col(c).cast(pl.Float64) for c in columns)
    )
    return columns, series


_CLIENT_SCHEMA = {
    "client_id": pl.String,
    "metric": pl.String,
    "lightgbm_wmape": pl.Float64,
    "lightgbm_coverage_80": pl.Float64,
    "lightgbm_pinball": pl.Float64,
    "naive_wmape": pl.Float64,
    "seasonal_naive_day_wmape": pl.Float64,
    "seasonal_naive_week_wmape": pl.Float64,
    "test_days": pl.Float64,
    "notes": pl.String,
}


def backtest_clients(
    usage: pl.DataFrame,
    clients: pl.DataFrame | None,
    calendar: pl.DataFrame | None,
    config: ForecastConfig | None,
    horizon_steps: int = 12,
    test_days: float = 7,
) -> pl.DataFrame:
    """`backtest_series` per warehouse client: one row per (client, metric).

    Without a `config`, each client is backtested on the defaults at its own bucket width
    (`clients.freq_seconds`), as `prewarm backtest --from-warehouse` does.

    Columns: client_id, metric, lightgbm_wmape, lightgbm_coverage_80, lightgbm_pinball,
    naive_wmape, seasonal_naive_day_wmape, seasonal_naive_week_wmape, test_days, notes.
    A client whose history cannot support a backtest gets null numbers and a note.
    """
    attributes = {r["client_id"]: r for r in clients.to_dicts()} if clients is not None else {}
    rows: list[dict] = []
    for (client_id,), history in sorted(usage.partition_by("client_id", as_dict=True).items()):
        client = attributes.get(client_id)
        base = config or ForecastConfig()
        freq_seconds = base.freq_seconds
        if config is None and client and client.get("freq_seconds"):
            freq_seconds = int(client["freq_seconds"])
        columns = [
            c
            for c in (base.metrics or WAREHOUSE_METRICS)
            if c in history.columns and history.get_column(c).is_not_null().any()
        ]
        try:
            result = _backtest(
                history.select("client_id", "ts", *columns),
                columns,
                freq_seconds,
                horizon_steps,
                test_days,
                config,
                calendar,
                client,
            )
        except ValueError as error:
            rows += [_client_row(client_id, c, None, str(error)) for c in columns]
            continue
        note = "; ".join(result.get("notes", [])) or None
        for column, scores in result["metrics"].items():
            rows.append(_client_row(client_id, column, scores, note, result.get("test_days")))
    return pl.DataFrame(rows, schema=_CLIENT_SCHEMA, orient="row")


def _client_row(
    client_id: str, metric: str, scores: dict | None, note: str | None, days: float | None = None
) -> dict:
    scores = scores or {}
    model = scores.get("lightgbm", {})
    return {
        "client_id": client_id,
        "metric": metric,
        "lightgbm_wmape": model.get("wmape"),
        "lightgbm_coverage_80": model.get("coverage_80"),
        "lightgbm_pinball": model.get("pinball"),
        "naive_wmape": scores.get("naive", {}).get("wmape"),
        "seasonal_naive_day_wmape": scores.get("seasonal_naive_day", {}).get("wmape"),
        "seasonal_naive_week_wmape": scores.get("seasonal_naive_week", {}).get("wmape"),
        "test_days": days,
        "notes": note,
    }


# --- the plan and the loop ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Test window [start, n) on the grid, origins (first forecast index) and refit days."""

    start: int
    origins: tuple[int, ...]
    refits: tuple[tuple[int, tuple[int, ...]], ...]  # (fit on [:cut], origins it serves)
    test_days: float
    notes: tuple[str, ...]


def _config_for(
    config: ForecastConfig | None, freq_seconds: int, horizon_steps: int, columns: list[str]
) -> ForecastConfig:
    base = config or ForecastConfig()
    return dataclasses.replace(
        base, freq_seconds=freq_seconds, horizon_steps=horizon_steps, metrics=tuple(columns)
    )


def _plan(n_steps: int, config: ForecastConfig, test_days: float) -> _Plan:
    """Place the test window, shortening it when too little history would precede it."""
    day = config.steps_per_day
    horizon = config.horizon_steps
    wanted = round(test_days * day)
    notes: list[str] = []
    # At least half the series (and enough to fit) must precede the test window.
    longest = min(n_steps - min_fit_steps(config), n_steps // 2)
    test_steps = wanted
    if wanted > longest:
        whole_days = longest // day
        test_steps = whole_days * day if whole_days else longest
        if test_steps < horizon:
            raise ValueError(
                f"series of {n_steps} buckets is too short to backtest a {horizon}-step horizon"
            )
        notes.append(
            f"history of {n_steps * config.freq_seconds / DAY_SECONDS:.2f} days cannot support"
            f" {test_days:g} test days with enough history before them;"
            f" shortened to {test_steps / day:g} days"
        )
    start = n_steps - test_steps
    origins = tuple(range(start, n_steps, horizon))
    refits: dict[int, list[int]] = {}
    for origin in origins:
        refits.setdefault((origin - start) // day, []).append(origin)
    plan = tuple((group[0], tuple(group)) for group in refits.values())
    return _Plan(start, origins, plan, test_steps / day, tuple(notes))


def _backtest(
    series: pl.DataFrame,
    columns: list[str],
    freq_seconds: int,
    horizon_steps: int,
    test_days: float,
    config: ForecastConfig | None,
    calendar: pl.DataFrame | None = None,
    client: dict | None = None,
) -> dict:
    if not columns:
        raise ValueError("no numeric columns to backtest")
    config = _config_for(config, freq_seconds, horizon_steps, columns)
    grid = _regular(series, columns, freq_seconds)
    plan = _plan(grid.height, config, test_days)
    forecasts = _rolling_forecasts(grid, columns, config, plan, calendar, client)
    metrics = {
        column: _score_column(
            grid.get_column(column).to_numpy(), forecasts, column, grid["ts"][0], config
        )
        for column in columns
    }
    result: dict = {"metrics": metrics}
    if plan.notes:
        result["test_days"] = plan.test_days
        result["notes"] = list(plan.notes)
    return result


def _regular(series: pl.DataFrame, columns: list[str], freq_seconds: int) -> pl.DataFrame:
    """The series on a complete grid (missing buckets null), one client."""
    if series.get_column("client_id").n_unique() != 1:
        raise ValueError("a backtest runs on one client's series")
    return regular_grid(series, freq_seconds, columns, missing_as=0.0)


def _rolling_forecasts(
    grid: pl.DataFrame,
    columns: list[str],
    config: ForecastConfig,
    plan: _Plan,
    calendar: pl.DataFrame | None,
    client: dict | None,
) -> pl.DataFrame:
    """Refit once per test day on data before its first origin; forecast each of its origins."""
    history = grid.select("client_id", "ts", *columns)
    ts = grid.get_column("ts")
    frames = []
    for cut, origins in plan.refits:
        visible = history.slice(0, cut)  # strictly before the day's first origin
        model = fit_client_forecaster(visible, config, calendar, client)
        last_origin = origins[-1]
        # Each origin's forecast starts after the bucket before it; rows after the last
        # origin of the day are never handed over.
        window = history.slice(0, last_origin)
        forecast = forecast_origins(
            model, window, [ts[o - 1] for o in origins], calendar, config.horizon_steps
        )
        frames.append(forecast)
    forecasts = pl.concat(frames)
    actual = grid.unpivot(index="ts", on=columns, variable_name="metric", value_name="actual")
    return forecasts.join(actual, on=["ts", "metric"], how="left").filter(pl.col("ts") <= ts[-1])


def _score_column(
    values: np.ndarray,
    forecasts: pl.DataFrame,
    column: str,
    grid_start: datetime,
    config: ForecastConfig,
) -> dict:
    """LightGBM and baseline scores for one column on the same (origin, horizon) points."""
    rows = forecasts.filter((pl.col("metric") == column) & pl.col("actual").is_not_null())
    if rows.height == 0:
        return {"lightgbm": {"wmape": None, "coverage_80": None, "pinball": None}}
    offset = (pl.col("origin") - pl.lit(grid_start)).dt.total_seconds() // config.freq_seconds
    origins = rows.select(offset.alias("o")).get_column("o").to_numpy().astype(np.int64)
    horizons = rows.get_column("horizon").to_numpy()
    actual = rows.get_column("actual").to_numpy()
    quantiles = rows.select("p10", "p50", "p90").to_numpy()
    model = point_metrics(actual, quantiles)  # rows is not empty: pinball is a number
    scores: dict = {"lightgbm": {k: model[k] for k in ("wmape", "coverage_80", "pinball")}}
    baselines = baseline_wmapes(actual, values, origins, horizons, config.freq_seconds)
    for name, score in baselines.items():  # naive, and the seasons the history reaches
        scores[name] = {"wmape": score}
    return scores


__all__ = [
    "backtest_clients",
    "backtest_forecasts",
    "backtest_series",
    "read_bare_csv",
]
