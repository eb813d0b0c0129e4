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
    for rival, wmape, where in (
        (baseline_name, baseline_wmape, ""),
        ("the champion's", champion_wmape, " on the same window"),
    ):
        if _does_not_beat(challenger_wmape, wmape):
            return False, (
                f"held back: wMAPE {challenger_wmape:.4f} does not beat {rival} {wmape:.4f}{where}"
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


def _does_not_beat(challenger: float, rival: float | None) -> bool:
    """A rival without a finite score is no bar; otherwise the challenger must be lower."""
    return rival is not None and math.isfinite(rival) and challenger >= rival
