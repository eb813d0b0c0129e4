"""The promotion gate: when a challenger forecaster may replace the champion."""

from __future__ import annotations

import math


def decide_promotion(
    challenger_wmape: float,
    champion_wmape: float | None,
    baseline_wmape: float | None,
    baseline_name: str = "seasonal naive",
) -> tuple[bool, str]:
    """Promote only a challenger that beats both the current champion (scored on the same
    window) and the seasonal-naive baseline; otherwise say which one it did not beat."""
    if not math.isfinite(challenger_wmape):
        return False, "held back: challenger has no finite holdout wMAPE"
    if (
        baseline_wmape is not None
        and math.isfinite(baseline_wmape)
        and challenger_wmape >= baseline_wmape
    ):
        return False, (
            f"held back: wMAPE {challenger_wmape:.4f} does not beat {baseline_name} "
            f"{baseline_wmape:.4f}"
        )
    if (
        champion_wmape is not None
        and math.isfinite(champion_wmape)
        and challenger_wmape >= champion_wmape
    ):
        return False, (
            f"held back: wMAPE {challenger_wmape:.4f} does not beat the champion's "
            f"{champion_wmape:.4f} on the same window"
        )
    against = (
        f"{baseline_name} {baseline_wmape:.4f}" if baseline_wmape is not None else "no baseline"
    )
    if champion_wmape is None:
        return True, f"promoted: first champion, wMAPE {challenger_wmape:.4f} beats {against}"
    return True, (
        f"promoted: wMAPE {challenger_wmape:.4f} beats the champion's {champion_wmape:.4f} "
        f"and {against}"
    )
