"""Which drifted clients are retrained now: a cooldown per client, and only on new data."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from models.retraining import check_trigger, retrain_decisions

NOW = datetime(2026, 11, 30, 12, 0)
DATA = datetime(2026, 11, 30, 11, 0)


def test_cooldown_and_new_data_decide_who_is_retrained():
    state = pl.DataFrame(
        [
            # retrained for feedback 2 h ago: cooling down until 16:00, whatever the data
            ("cooling", "feedback", NOW - timedelta(hours=2), DATA - timedelta(hours=1), DATA),
            # never retrained for drift, but its model already saw its newest bucket
            ("stale", "requests", None, DATA, DATA),
            # retrained a day ago, newer usage since: due
            ("due", "concurrency", NOW - timedelta(days=1), DATA - timedelta(hours=1), DATA),
            # never trained at all (a rating before the first training): due
            ("new", "feedback", None, None, DATA),
            ("empty", "requests", None, None, None),
        ],
        schema={
            "client_id": pl.String,
            "metric": pl.String,
            "last_retrained_at": pl.Datetime("us"),
            "trained_until": pl.Datetime("us"),
            "last_usage_ts": pl.Datetime("us"),
        },
        orient="row",
    )
    decisions = retrain_decisions(state, NOW, timedelta(hours=6))
    assert decisions.select("client_id", "trigger", "eligible", "why_not").rows() == [
        ("cooling", "feedback", False, "cooldown until 2026-11-30T16:00"),
        ("stale", "drift", False, "no new data since 2026-11-30T11:00"),
        ("due", "drift", True, None),
        ("new", "feedback", True, None),
        ("empty", "drift", False, "no usage"),
    ]
    # Once the cooldown has passed, only the data still holds a client back.
    later = retrain_decisions(state, NOW + timedelta(hours=4), timedelta(hours=6))
    assert later.filter(pl.col("eligible")).get_column("client_id").to_list() == [
        "cooling",
        "due",
        "new",
    ]
    later = retrain_decisions(
        state.with_columns(pl.lit(DATA + timedelta(minutes=5)).alias("last_usage_ts")),
        NOW + timedelta(hours=4),
        timedelta(hours=6),
    )
    assert later.get_column("eligible").to_list() == [True, True, True, True, True]


def test_an_unknown_trigger_is_refused():
    assert check_trigger("drift") == "drift"
    with pytest.raises(ValueError, match="'nightly' is not one of schedule, drift"):
        check_trigger("nightly")
