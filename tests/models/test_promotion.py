"""The promotion gate: a challenger must beat both the baseline and the champion."""

import math

from models.promotion import decide_promotion


def test_first_champion_beating_the_baseline_is_promoted() -> None:
    assert decide_promotion(0.2, None, 0.3) == (
        True,
        "promoted: first champion, wMAPE 0.2000 beats seasonal naive 0.3000",
    )


def test_a_challenger_no_better_than_the_baseline_is_held_back() -> None:
    assert decide_promotion(0.3, None, 0.3, "naive") == (
        False,
        "held back: wMAPE 0.3000 does not beat naive 0.3000",
    )


def test_a_challenger_no_better_than_the_champion_is_held_back() -> None:
    assert decide_promotion(0.25, 0.2, 0.3) == (
        False,
        "held back: wMAPE 0.2500 does not beat the champion's 0.2000 on the same window",
    )


def test_beating_both_promotes_and_names_both() -> None:
    assert decide_promotion(0.1, 0.2, 0.3) == (
        True,
        "promoted: wMAPE 0.1000 beats the champion's 0.2000 and seasonal naive 0.3000",
    )


def test_rivals_without_a_finite_score_are_no_bar() -> None:
    assert decide_promotion(0.5, math.nan, None)[0] is True
    assert decide_promotion(0.5, None, math.inf)[0] is True


def test_a_challenger_without_a_finite_score_is_held_back() -> None:
    assert decide_promotion(math.nan, None, None) == (
        False,
        "held back: challenger has no finite holdout wMAPE",
    )
