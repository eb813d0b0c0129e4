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
    """Append one prediction run (forecasts, exceedance, profiles) and record it as its
    clients' latest (`latest_runs`), in a single transaction."""
    with connect(path) as con, transaction(con):
        insert_frame(con, "forecasts", forecasts, columns=_FORECAST_COLUMNS)
        if exceedance is not None:
            insert_frame(con, "forecast_exceedance", exceedance, columns=_EXCEEDANCE_COLUMNS)
        insert_frame(con, "profiles", profiles)
        frames = [f for f in (forecasts, exceedance, profiles) if f is not None and f.height]
        record_latest_runs(con, [f.select("client_id", "generated_at") for f in frames])


def record_latest_runs(con: duckdb.DuckDBPyConnection, runs: list[pl.DataFrame]) -> None:
    """Record each client's newest `generated_at` among `runs` (client_id, generated_at
    frames) as its latest run, unless it has a newer one already."""
    if not runs:
        return
    newest = pl.concat(runs).group_by("client_id").agg(pl.col("generated_at").max())
    con.register("new_runs", newest.to_arrow())
    try:
        con.execute(
            """
            INSERT INTO latest_runs SELECT client_id, generated_at FROM new_runs
            ON CONFLICT (client_id) DO UPDATE
            SET generated_at = greatest(latest_runs.generated_at, excluded.generated_at)
            """
        )
    finally:
        con.unregister("new_runs")


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
                      AND NOT EXISTS (
                          SELECT 1 FROM latest_runs l
                          WHERE l.client_id = t.client_id AND l.generated_at = t.generated_at
                      )
                    """,
                    [before],
                )
                or 0
            )
    return deleted


# Each client's newest prediction run (`latest_runs`). Profiles and exceedance rows are
# taken from that run only: a run that found no demand window writes no profile, and an
# older run's window must not stand in for it (a stale window, with its confidence, would
# keep warming a client the newest forecast calls idle). `generated_at >= ?` (the oldest
# latest run) lets DuckDB skip the row groups of older runs without reading them.
_OF_LATEST_RUN = "JOIN latest_runs USING (client_id, generated_at) WHERE generated_at >= ?"


def read_latest_runs(path: Path) -> pl.DataFrame:
    """Each client's latest prediction run: `client_id`, `generated_at` and the
    `model_version` its forecasts came from (null when the run wrote no forecast rows)."""
    with connect(path, read_only=True) as con:
        oldest = fetch_value(con, "SELECT min(generated_at) FROM latest_runs")
        return fetch_frame(
            con,
            """
            SELECT l.client_id, l.generated_at, any_value(f.model_version) AS model_version
            FROM latest_runs l LEFT JOIN forecasts f
              ON f.client_id = l.client_id AND f.generated_at = l.generated_at
             AND f.generated_at >= ?
            GROUP BY l.client_id, l.generated_at
            """,
            [oldest],
        )


def read_latest_forecasts(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Each client's latest prediction run: concurrency quantiles, exceedance, profiles."""
    with connect(path, read_only=True) as con:
        oldest = fetch_value(con, "SELECT min(generated_at) FROM latest_runs")
        quantiles = fetch_frame(
            con,
            f"""
            SELECT f.client_id, f.metric, f.origin, f.ts, f.p10, f.p50, f.p90
            FROM forecasts f {_OF_LATEST_RUN}
            QUALIFY f.origin = max(f.origin) OVER (PARTITION BY f.client_id)
            """,
            [oldest],
        )
        exceedance = fetch_frame(
            con,
            f"""
            SELECT e.client_id, e.origin, e.ts, e.level, e.p_exceed
            FROM forecast_exceedance e {_OF_LATEST_RUN}
            """,
            [oldest],
        )
        profiles = fetch_frame(
            con,
            f"""
            SELECT p.* FROM profiles p {_OF_LATEST_RUN}
            ORDER BY p.client_id, p.window_start
            """,
            [oldest],
        )
    return quantiles, exceedance, profiles


def latest_run(con: duckdb.DuckDBPyConnection, client_id: str) -> datetime | None:
    """When the client's latest prediction run was generated (None: never predicted)."""
    value: datetime | None = fetch_value(
        con, "SELECT generated_at FROM latest_runs WHERE client_id = ?", [client_id]
    )
    return value


def read_latest_profile(con: duckdb.DuckDBPyConnection, client_id: str) -> list[dict[str, Any]]:
    """The client's `profiles` rows of its latest prediction run, by window start (none when
    that run found no demand window: an older run's window is not current)."""
    generated_at = latest_run(con, client_id)
    if generated_at is None:
        return []
    frame = fetch_frame(
        con,
        "SELECT * FROM profiles WHERE client_id = ? AND generated_at = ? ORDER BY window_start",
        [client_id, generated_at],
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
