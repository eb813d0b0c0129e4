"""Client feedback on predicted windows: how accurate a forecast felt, and what really ran.

Rows land in `feedback` for scoring to weigh against the numbers; validating the
values (score range, metric names, window order) is the caller's job (the API's request
model), this module only stores them, with parameters, never SQL built from input, and
reads back the reported actuals (training labels and scoring actuals where usage has none).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from pathlib import Path

import polars as pl

from core.times import naive_utc, utc_now
from warehouse.db import connect, fetch_frame

log = logging.getLogger(__name__)


def record_feedback(
    path: Path,
    client_id: str,
    window_start: datetime,
    window_end: datetime,
    score: int,
    actual: dict[str, float] | None,
    comment: str | None,
    *,
    wait_s: float | None = None,
) -> str:
    """Store one feedback row (times as naive UTC, `actual` as JSON); return its id."""
    feedback_id = str(uuid.uuid4())
    with connect(path, wait_s=wait_s) as con:
        con.execute(
            "INSERT INTO feedback (feedback_id, client_id, window_start, window_end, score,"
            " actual, comment, received_at) VALUES (?, ?, ?, ?, ?, ?::JSON, ?, ?)",
            [
                feedback_id,
                client_id,
                naive_utc(window_start),
                naive_utc(window_end),
                int(score),
                json.dumps(actual, allow_nan=False) if actual is not None else None,
                comment,
                utc_now(),
            ],
        )
    log.info("recorded feedback %s from %s (score %d)", feedback_id, client_id, score)
    return feedback_id


def read_reported_actuals(path: Path, client_ids: list[str] | None = None) -> pl.DataFrame:
    """Feedback rows that carry actual usage, with the client's bucket width: client_id,
    window_start, window_end, actual (JSON text), received_at, freq_seconds."""
    with connect(path, read_only=True) as con:
        only = ""
        if client_ids is not None:
            con.register("wanted", pl.DataFrame({"client_id": client_ids}).to_arrow())
            only = "SEMI JOIN wanted USING (client_id)"
        return fetch_frame(
            con,
            "SELECT f.client_id, f.window_start, f.window_end, f.actual::VARCHAR AS actual,"
            " f.received_at, c.freq_seconds FROM feedback f JOIN clients c USING (client_id)"
            f" {only} WHERE f.actual IS NOT NULL ORDER BY f.received_at",
        )


def read_feedback_signals(path: Path, since: object) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Forecast scores and client feedback received since `since` (both possibly empty)."""
    with connect(path, read_only=True) as con:
        scores = fetch_frame(con, "SELECT * FROM forecast_scores WHERE scored_at >= ?", [since])
        feedback = fetch_frame(con, "SELECT * FROM feedback WHERE received_at >= ?", [since])
    return scores, feedback
