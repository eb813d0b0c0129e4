"""What the models produced (forecasts, exceedance, profiles, training runs): written once per
prediction run, read by the plan, the API and the training schedule."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from warehouse.db import connect, fetch_frame, fetch_value, insert_frame, transaction

_FORECAST_COLUMNS = ["client_id", "metric", "origin", "ts", "horizon", "p10", "p50", "p90"]
_FORECAST_COLUMNS += ["model_name", "model_version", "generated_at"]
_EXCEEDANCE_COLUMNS = ["client_id", "origin", "ts", "horizon", "level", "p_exceed"]
_EXCEEDANCE_COLUMNS += ["model_version", "generated_at"]


def write_predictions(
    path: Path,
    forecasts: pl.DataFrame,
    profiles: pl.DataFrame,
    exceedance: pl.DataFrame | None = None,
) -> None:
    """Append one prediction run (forecasts, exceedance, profiles) in a single transaction."""
    with connect(path) as con, transaction(con):
        insert_frame(con, "forecasts", forecasts, columns=_FORECAST_COLUMNS)
        if exceedance is not None:
            insert_frame(con, "forecast_exceedance", exceedance, columns=_EXCEEDANCE_COLUMNS)
        insert_frame(con, "profiles", profiles)


def write_model_runs(path: Path, runs: pl.DataFrame) -> None:
    """Append training outcomes (one row per client) for ad-hoc SQL next to the usage."""
    if runs.height == 0:
        return
    with connect(path) as con:
        insert_frame(con, "model_runs", runs)


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


# Each client's newest prediction run. Profiles and exceedance rows are taken from that run
# only: a run that found no demand window writes no profile, and an older run's window
# must not stand in for it (a stale window, with its confidence, would keep warming a
# client the newest forecast calls idle).
_LATEST_RUN = """
    WITH latest AS (
        SELECT client_id, max(generated_at) AS generated_at FROM (
            SELECT client_id, generated_at FROM forecasts
            UNION ALL SELECT client_id, generated_at FROM forecast_exceedance
            UNION ALL SELECT client_id, generated_at FROM profiles
        ) GROUP BY client_id
    )
"""


def read_latest_forecasts(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Each client's latest prediction run: concurrency quantiles, exceedance, profiles."""
    with connect(path, read_only=True) as con:
        quantiles = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT f.client_id, f.metric, f.origin, f.ts, f.p10, f.p50, f.p90
            FROM forecasts f JOIN latest USING (client_id, generated_at)
            QUALIFY f.origin = max(f.origin) OVER (PARTITION BY f.client_id)
            """,
        )
        exceedance = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT e.client_id, e.origin, e.ts, e.level, e.p_exceed
            FROM forecast_exceedance e JOIN latest USING (client_id, generated_at)
            """,
        )
        profiles = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT p.* FROM profiles p JOIN latest USING (client_id, generated_at)
            ORDER BY p.client_id, p.window_start
            """,
        )
    return quantiles, exceedance, profiles


def read_latest_profile(con: duckdb.DuckDBPyConnection, client_id: str) -> list[dict[str, Any]]:
    """The client's `profiles` rows of its latest prediction run, by window start (none when
    that run found no demand window: an older run's window is not current)."""
    frame = fetch_frame(
        con,
        "SELECT * FROM profiles WHERE client_id = ? AND generated_at = (SELECT max(g) FROM ("
        " SELECT max(generated_at) AS g FROM forecasts WHERE client_id = ?"
        " UNION ALL SELECT max(generated_at) FROM profiles WHERE client_id = ?))"
        " ORDER BY window_start",
        [client_id, client_id, client_id],
    )
    return list(frame.iter_rows(named=True))


def has_model_runs(path: Path) -> bool:
    """Whether any forecaster was ever trained on this warehouse (so the registry has some)."""
    with connect(path, read_only=True) as con:
        return fetch_value(con, "SELECT EXISTS (SELECT 1 FROM model_runs)") is True


def read_training_state(path: Path) -> pl.DataFrame:
    """Per client with usage: its latest bucket and when its newest model's data ended
    (null when it never had one)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            SELECT u.client_id, u.last_ts, m.trained_until
            FROM (SELECT client_id, max(ts) AS last_ts FROM usage GROUP BY 1) u
            LEFT JOIN (
                SELECT client_id, max(trained_until) AS trained_until FROM model_runs GROUP BY 1
            ) m USING (client_id)
            ORDER BY u.client_id
            """,
        )
