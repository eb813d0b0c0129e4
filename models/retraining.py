"""Which clients with an open drift episode to retrain now, and why the others wait.

A drift (or a poor rating) stays detected for a while after the retraining that answers it:
the judged windows and the rating's lookback still hold the old model's misses. Retraining on
every detection retrained one client every cycle for days, each version held back as no
better than the champion because it saw no new data. So a client is retrained only when

- it was not retrained for drift or feedback within the cooldown (a scheduled or manual
  training does not start one: it answers no drift), and
- its usage has grown past the newest bucket its last model saw (a refit on the same rows
  learns nothing new).

Pure functions over frames; the caller reads the state and trains.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

TRIGGERS = ("schedule", "drift", "feedback", "manual")  # why a model version was trained
FEEDBACK_METRIC = "feedback"  # drift_events.metric of a drift raised by poor ratings
_STAMP = "%Y-%m-%dT%H:%M"


def check_trigger(trigger: str) -> str:
    """`trigger` itself when it is a known one; a clear error otherwise."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger {trigger!r} is not one of {', '.join(TRIGGERS)}")
    return trigger


def retrain_decisions(open_drift: pl.DataFrame, now: datetime, cooldown: timedelta) -> pl.DataFrame:
    """Per client with an open drift episode: its trigger (drift or feedback), whether it is
    eligible now, and why not: client_id, trigger, eligible, cooldown_until, why_not.

    open_drift: client_id, metric (of the episode's first record), last_retrained_at,
    trained_until, last_usage_ts (see warehouse.scores.read_open_drift).
    """
    cooldown_until = pl.col("last_retrained_at") + pl.lit(cooldown)
    cooling = cooldown_until.is_not_null() & (cooldown_until > pl.lit(now))
    has_data = pl.col("last_usage_ts").is_not_null()
    new_data = has_data & (
        pl.col("trained_until").is_null() | (pl.col("last_usage_ts") > pl.col("trained_until"))
    )
    return open_drift.select(
        "client_id",
        pl.when(pl.col("metric") == FEEDBACK_METRIC)
        .then(pl.lit("feedback"))
        .otherwise(pl.lit("drift"))
        .alias("trigger"),
        (~cooling & new_data).alias("eligible"),
        cooldown_until.cast(pl.Datetime("us")).alias("cooldown_until"),
        pl.when(cooling)
        .then(pl.format("cooldown until {}", cooldown_until.dt.strftime(_STAMP)))
        .when(~has_data)
        .then(pl.lit("no usage"))
        .when(~new_data)
        .then(pl.format("no new data since {}", pl.col("trained_until").dt.strftime(_STAMP)))
        .alias("why_not"),
    )
