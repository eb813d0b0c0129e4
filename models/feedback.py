"""Turn reconciliation errors and client feedback into adjustments for the next training.

A client whose recent windows were badly covered (actuals outside [p10, p90]) or who rated
recent forecasts poorly (score <= 2 of 5) gets the training rows since the first such window
up-weighted, so the refit follows the new behaviour instead of averaging it away. The weight
grows with the share of missed windows: 1 + 4 x miss share (at most 5); a poor rating
counts as a miss share of 0.75. Bias corrections are
left to the refit itself: the data of those windows is already in the next training set.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from models.forecaster import Adjustments

LOOKBACK = timedelta(days=2)
POOR_SCORE = 2
POOR_FEEDBACK_SHARE = 0.75  # a poor rating weighs like three windows in four missed
MAX_WEIGHT = 5.0


def adjustments_from_signals(
    reconciliations: pl.DataFrame, feedback: pl.DataFrame, now: datetime
) -> dict[str, Adjustments]:
    """Per client, the adjustments its recent signals call for (absent: no change)."""
    since = now - LOOKBACK
    flagged: dict[str, tuple[datetime, float]] = {}
    if reconciliations.height:
        recent = reconciliations.filter(
            (pl.col("window_start") >= since) & pl.col("covered").is_not_null()
        )
        misses = recent.group_by("client_id").agg(
            (1 - pl.col("covered").cast(pl.Float64).mean()).alias("miss_share"),
            pl.col("window_start").filter(~pl.col("covered")).min().alias("first_miss"),
        )
        for cid, share, first in misses.filter(pl.col("miss_share") > 0.5).iter_rows():
            flagged[cid] = (first, share)
    if feedback.height:
        poor = (
            feedback.filter((pl.col("window_start") >= since) & (pl.col("score") <= POOR_SCORE))
            .group_by("client_id")
            .agg(pl.col("window_start").min())
        )
        for cid, first in poor.iter_rows():
            start, share = flagged.get(cid, (first, 0.0))
            flagged[cid] = (min(start, first), max(share, POOR_FEEDBACK_SHARE))
    return {
        cid: Adjustments(recent_since=start, recent_weight=min(MAX_WEIGHT, 1 + 4 * share))
        for cid, (start, share) in flagged.items()
    }
