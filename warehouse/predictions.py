"""Write what the models produced: forecasts, exceedance, profiles and training runs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from warehouse.db import connect, fetch_value, transaction

_FORECAST_COLUMNS = (
    "client_id, metric, origin, ts, horizon, p10, p50, p90, model_name, model_version, generated_at"
)
_EXCEEDANCE_COLUMNS = "client_id, origin, ts, horizon, level, p_exceed, model_version, generated_at"


def write_predictions(
    path: Path,
    forecasts: pl.DataFrame,
    profiles: pl.DataFrame,
    exceedance: pl.DataFrame | None = None,
) -> None:
    """Append one prediction run (forecasts, exceedance, profiles) in a single transaction."""
    with connect(path) as con, transaction(con):
        if forecasts.height:
            con.register("new_forecasts", forecasts.to_arrow())
            con.execute(
                f"INSERT INTO forecasts ({_FORECAST_COLUMNS})"
                f" SELECT {_FORECAST_COLUMNS} FROM new_forecasts"
            )
        if exceedance is not None and exceedance.height:
            con.register("new_exceedance", exceedance.to_arrow())
            con.execute(
                f"INSERT INTO forecast_exceedance ({_EXCEEDANCE_COLUMNS})"
                f" SELECT {_EXCEEDANCE_COLUMNS} FROM new_exceedance"
            )
        if profiles.height:
            con.register("new_profiles", profiles.to_arrow())
            columns = ", ".join(profiles.columns)
            con.execute(f"INSERT INTO profiles ({columns}) SELECT {columns} FROM new_profiles")


def write_model_runs(path: Path, runs: pl.DataFrame) -> None:
    """Append training outcomes (one row per client) for ad-hoc SQL next to the usage."""
    if runs.height == 0:
        return
    with connect(path) as con:
        con.register("new_runs", runs.to_arrow())
        columns = ", ".join(runs.columns)
        con.execute(f"INSERT INTO model_runs ({columns}) SELECT {columns} FROM new_runs")


def prune_predictions(path: Path, before: datetime) -> int:
    """Delete prediction runs generated before `before`, except each client's latest run
    (its current forecast, whatever its age); return the rows deleted.

    Every cycle appends a run; without this the tables, and every query over them, grow
    without bound. Scoring reads the forecasts of buckets that arrive within a horizon, so
    a retention of a day or more loses nothing it needs."""
    deleted = 0
    with connect(path) as con, transaction(con):
        for table in ("forecasts", "forecast_exceedance", "profiles"):
            deleted += int(
                fetch_value(
                    con,
                    f"""
                    DELETE FROM {table} t WHERE t.generated_at < ?
                      AND t.generated_at < (
                          SELECT max(generated_at) FROM {table} l WHERE l.client_id = t.client_id
                      )
                    """,
                    [before],
                )
                or 0
            )
    return deleted
