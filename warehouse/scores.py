"""Reads and writes of scoring: forecast/actual pairs not yet scored, the capacity the
plans held, the forecast scores, member stats and drift records, and the drift episodes
still waiting for a retraining."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from core.vocabulary import METRICS
from warehouse.db import connect, fetch_frame, insert_frame


def read_unscored(path: Path) -> pl.DataFrame:
    """Forecast buckets ready to score: client_id, metric, ts, window_end, origin, horizon,
    p10, p50, p90, actual. The forecast is the latest one issued before the bucket.

    Two kinds of bucket: those with a measured actual, newer than the client's last
    scored bucket; and those with none (no usage row, or a null metric) that lie inside
    a window the client reported actuals for, up to its newest usage bucket and not yet
    scored. The second kind comes with a null `actual` for the caller to fill from the
    feedback (models.feedback.fill_from_feedback); past the newest usage bucket the
    measurement may still arrive, and a measurement wins.
    """
    unpivot = ", ".join(METRICS)
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            f"""
            WITH marks AS (
                SELECT client_id, max(window_start) AS done FROM forecast_scores GROUP BY 1
            ),
            -- Each bucket's latest forecast is found among the forecasts of the buckets
            -- waiting, never over the whole table first: that holds every prediction run of
            -- the retention (2 days: 576 runs), and ranking it all cost 14 s a cycle at
            -- 1,000 clients a day in, growing with the retention, not with the clients.
            fresh AS (
                SELECT u.client_id, u.ts, {unpivot} FROM usage u
                LEFT JOIN marks m USING (client_id)
                WHERE m.done IS NULL OR u.ts > m.done
            ),
            actuals AS (
                UNPIVOT fresh ON {unpivot} INTO NAME metric VALUE actual
            ),
            measured AS (
                SELECT f.client_id, f.metric, f.ts, f.origin, f.horizon, f.p10, f.p50, f.p90,
                       a.actual
                FROM forecasts f JOIN actuals a USING (client_id, metric, ts)
                WHERE f.origin < f.ts
                QUALIFY row_number() OVER (
                    PARTITION BY f.client_id, f.metric, f.ts
                    ORDER BY f.origin DESC, f.generated_at DESC
                ) = 1
            ),
            reported AS (
                SELECT DISTINCT client_id, window_start, window_end FROM feedback
                WHERE actual IS NOT NULL
            ),
            newest AS (SELECT client_id, max(ts) AS last_ts FROM usage GROUP BY 1),
            -- Buckets of a reported window up to the newest usage bucket: those without a
            -- measured actual, not yet scored, wait for the feedback's.
            windowed AS (
                SELECT DISTINCT f.client_id, f.ts
                FROM reported r
                JOIN clients c USING (client_id)
                JOIN newest n USING (client_id)
                JOIN forecasts f ON f.client_id = r.client_id
                    AND f.ts > r.window_start - to_seconds(c.freq_seconds)
                    AND f.ts < r.window_end
                WHERE f.origin < f.ts AND f.ts <= n.last_ts
            ),
            unmeasured AS (
                SELECT f.client_id, f.metric, f.ts, f.origin, f.horizon, f.p10, f.p50, f.p90,
                       NULL::DOUBLE AS actual
                FROM forecasts f JOIN windowed w USING (client_id, ts)
                WHERE f.origin < f.ts
                  AND NOT EXISTS (
                      SELECT 1 FROM usage u
                      WHERE u.client_id = f.client_id AND u.ts = f.ts
                        AND CASE f.metric {_metric_cases()} END IS NOT NULL
                  )
                  AND NOT EXISTS (
                      SELECT 1 FROM forecast_scores r
                      WHERE r.client_id = f.client_id AND r.metric = f.metric
                        AND r.window_start = f.ts
                  )
                QUALIFY row_number() OVER (
                    PARTITION BY f.client_id, f.metric, f.ts
                    ORDER BY f.origin DESC, f.generated_at DESC
                ) = 1
            )
            SELECT p.client_id, p.metric, p.ts,
                   p.ts + to_seconds(c.freq_seconds) AS window_end,
                   p.origin, p.horizon, p.p10, p.p50, p.p90, p.actual
            FROM (SELECT * FROM measured UNION ALL SELECT * FROM unmeasured) p
            JOIN clients c USING (client_id)
            ORDER BY p.client_id, p.metric, p.ts
            """,
        )


def _metric_cases() -> str:
    """`WHEN '<metric>' THEN u.<metric>` for every metric: a usage row's value of f.metric."""
    return " ".join(f"WHEN '{m}' THEN u.{m}" for m in METRICS)


def read_planned_capacity(path: Path, since: datetime) -> pl.DataFrame:
    """Per client and planned window ending after `since` (the oldest bucket scored) of
    applied (not dry-run) plans: active, shadow and cold members wanted, from the newest
    plan covering each window. Only those: every plan of the history holds ~24,000
    allocations at 1,000 clients."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            WITH planned AS (
                SELECT a.client_id, a.window_start, a.window_end, p.seq,
                       sum(a.count) FILTER (WHERE a.tier = 'active') AS active,
                       sum(a.count) FILTER (WHERE a.tier = 'shadow') AS shadow,
                       sum(a.count) FILTER (WHERE a.tier = 'cold') AS cold
                FROM allocations a JOIN plans p USING (plan_id)
                WHERE NOT p.dry_run AND a.mode = 'provision' AND a.window_end > ?
                GROUP BY ALL
            )
            SELECT client_id, window_start, window_end,
                   coalesce(active, 0) AS active, coalesce(shadow, 0) AS shadow,
                   coalesce(cold, 0) AS cold
            FROM planned
            QUALIFY row_number() OVER (
                PARTITION BY client_id, window_start ORDER BY seq DESC
            ) = 1
            """,
            [since],
        )


def read_score_history(path: Path, lookback_windows: int) -> pl.DataFrame:
    """Each client and metric's newest `lookback_windows` scored buckets with a coverage:
    what drift detection reads (`provisioning.outcomes.detect_drift`), not every score ever
    recorded (6,000 rows a cycle at 1,000 clients)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            SELECT client_id, window_start, metric, actual, covered, pinball
            FROM forecast_scores WHERE covered IS NOT NULL
            QUALIFY row_number() OVER (
                PARTITION BY client_id, metric ORDER BY window_start DESC
            ) <= ?
            """,
            [lookback_windows],
        )


def write_scores(path: Path, rows: pl.DataFrame) -> None:
    """Append scored buckets."""
    _append(path, "forecast_scores", rows)


def write_member_stats(path: Path, rows: pl.DataFrame) -> None:
    """Append pool members' observed CPU and memory."""
    _append(path, "pool_member_stats", rows)


def write_drift_events(path: Path, rows: pl.DataFrame) -> None:
    """Append detected drifts and whether they were retrained."""
    _append(path, "drift_events", rows)


def read_open_drift(path: Path) -> pl.DataFrame:
    """Every client with an open drift episode (a drift recorded after the client was last
    trained, by any trigger) and what decides whether it may be retrained now: client_id,
    detected_at (the episode's first record), metric, reason, last_trained_at,
    last_retrained_at (last training for drift or feedback), trained_until (the newest bucket
    its models saw) and last_usage_ts (its newest usage bucket)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            WITH runs AS (
                SELECT client_id,
                       max(trained_at) AS last_trained_at,
                       max(trained_at) FILTER (WHERE trigger IN ('drift', 'feedback'))
                           AS last_retrained_at,
                       max(trained_until) AS trained_until
                FROM model_runs GROUP BY 1
            ),
            episodes AS (
                SELECT d.client_id, d.detected_at, d.metric, d.reason
                FROM drift_events d LEFT JOIN runs r USING (client_id)
                WHERE r.last_trained_at IS NULL OR d.detected_at > r.last_trained_at
                QUALIFY row_number() OVER (
                    PARTITION BY d.client_id ORDER BY d.detected_at, d.metric
                ) = 1
            ),
            newest AS (SELECT client_id, max(ts) AS last_usage_ts FROM usage GROUP BY 1)
            SELECT e.client_id, e.detected_at, e.metric, e.reason, r.last_trained_at,
                   r.last_retrained_at, r.trained_until, n.last_usage_ts
            FROM episodes e
            LEFT JOIN runs r USING (client_id)
            LEFT JOIN newest n USING (client_id)
            ORDER BY e.client_id
            """,
        )


def mark_drift_retrained(path: Path, closed: dict[str, tuple[str, datetime]]) -> None:
    """Record on each open episode that a retraining closed it: client id -> (the version
    registered, when the episode opened)."""
    if not closed:
        return
    frame = pl.DataFrame(
        [(cid, version, since) for cid, (version, since) in closed.items()],
        schema={"client_id": pl.String, "model_version": pl.String, "since": pl.Datetime("us")},
        orient="row",
    )
    with connect(path) as con:
        con.register("closed", frame.to_arrow())
        con.execute(
            """
            UPDATE drift_events d SET retrained = true, model_version = c.model_version
            FROM closed c
            WHERE d.client_id = c.client_id AND NOT d.retrained AND d.detected_at >= c.since
            """
        )
        con.unregister("closed")


def _append(path: Path, table: str, rows: pl.DataFrame) -> None:
    if rows.height == 0:
        return
    with connect(path) as con:
        insert_frame(con, table, rows)


def annotate_scores(path: Path, scored_at: object, notes: dict[str, tuple[str, str]]) -> None:
    """Record the action taken for a client (and why) on its newest concurrency row of the
    scoring run at `scored_at` (or its newest row when it has no concurrency)."""
    if not notes:
        return
    frame = pl.DataFrame(
        [(cid, action, reason) for cid, (action, reason) in notes.items()],
        schema={"client_id": pl.String, "action": pl.String, "reason": pl.String},
        orient="row",
    )
    with connect(path) as con:
        con.register("notes", frame.to_arrow())
        con.execute(
            """
            UPDATE forecast_scores r SET action = n.action, reason = n.reason
            FROM notes n, (
                SELECT client_id, max(window_start) AS last_start,
                       bool_or(metric = 'concurrency') AS has_concurrency
                FROM forecast_scores WHERE scored_at = ? GROUP BY client_id
            ) last
            WHERE r.client_id = n.client_id AND r.client_id = last.client_id
              AND r.scored_at = ? AND r.window_start = last.last_start
              AND (r.metric = 'concurrency' OR NOT last.has_concurrency)
            """,
            [scored_at, scored_at],
        )
        con.unregister("notes")
