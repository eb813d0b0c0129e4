"""The soak simulator's yardsticks (`simulation.soak`), on hand-made ledgers."""

from __future__ import annotations

import math

import numpy as np

from simulation.soak import Ledger, soak_metrics


def test_soak_report_numbers_are_finite(tmp_path):
    """The pure yardsticks on a hand-made ledger."""
    ledger = Ledger(
        client_ids=["a", "b"],
        need=np.array([[1, 0, 2], [0, 0, 0]]),
        warm=np.array([[1, 1, 1], [0, 1, 0]]),
        cold=np.array([[0, 0, 1], [0, 0, 0]]),
        invocations=np.array([[10.0, 0.0, 20.0], [0.0, 0.0, 0.0]]),
        memory_mb=np.array([100.0, 50.0]),
    )
    metrics = soak_metrics(ledger, reference_idle=200.0)
    assert metrics["invocations"] == 30.0 and metrics["cold_starts"] == 1.0
    assert math.isclose(metrics["cold_start_per_invocation"], 1 / 30)
    assert metrics["zero_cold_share"] == 0.0  # only "a" was called, and it was cold once
    assert metrics["idle_mb_minutes"] == 100.0 + 50.0  # a idle at minute 1, b at minute 1
    assert metrics["idle_vs_fixed10"] == 0.75
