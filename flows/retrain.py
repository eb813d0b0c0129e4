"""Flow `retrain-drifted`: retrain the clients whose forecasts drifted, at most once per
cooldown and only on data their models have not seen.

1. Read the open drift episodes (drifts recorded in `drift_events` after a client was last
   trained) and decide per client (models.retraining): eligible, or why it waits.
2. Train the eligible ones through `train-forecasters`, one run per trigger (drift,
   feedback), so every version says why it was trained.
3. Mark the episodes those versions closed (`drift_events.retrained`, `model_version`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
from prefect import flow, get_run_logger

from core.times import utc_now
from flows.locks import warehouse_write
from flows.settings import Settings
from flows.train import train_flow
from models.retraining import retrain_decisions
from warehouse.scores import mark_drift_retrained, read_open_drift

RETRAIN_TRIGGERS = ("drift", "feedback")  # the order their runs go in


@dataclass
class RetrainedClient:
    """One client retrained for drift or feedback."""

    client_id: str
    trigger: str
    version: str
    promoted: bool
    reason: str  # why it was (not) promoted


@dataclass
class RetrainSummary:
    """What one retrain-drifted run did, and why the other open episodes wait."""

    retrained: list[RetrainedClient] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # client -> why not now
    failures: dict[str, str] = field(default_factory=dict)  # client -> error
    seconds: float = 0.0


def retrain_candidates(settings: Settings, now: datetime) -> pl.DataFrame:
    """Every client with an open drift episode and whether it may be retrained at `now` (wall
    clock, UTC): client_id, detected_at, metric, reason, trigger, eligible, cooldown_until,
    why_not. One warehouse read and no Prefect: cheap enough to ask every cycle."""
    state = read_open_drift(settings.warehouse_path)
    cooldown = timedelta(seconds=settings.retrain_cooldown_seconds)
    decisions = retrain_decisions(state, now, cooldown)
    return state.select("client_id", "detected_at", "metric", "reason").join(
        decisions, on="client_id", how="left"
    )


@flow(name="retrain-drifted")
def retrain_drifted() -> RetrainSummary:
    """Retrain exactly the clients with an open drift episode that are eligible now."""
    started = time.perf_counter()
    settings = Settings()
    logger = get_run_logger()
    candidates = retrain_candidates(settings, utc_now())
    summary = RetrainSummary(
        skipped=dict(
            candidates.filter(~pl.col("eligible")).select("client_id", "why_not").iter_rows()
        )
    )
    eligible = candidates.filter(pl.col("eligible"))
    opened = dict(eligible.select("client_id", "detected_at").iter_rows())
    for trigger in RETRAIN_TRIGGERS:
        ids = sorted(eligible.filter(pl.col("trigger") == trigger).get_column("client_id"))
        if not ids:
            continue
        logger.info("retraining %d clients for %s: %s", len(ids), trigger, ", ".join(ids))
        try:
            trained = train_flow(settings)(client_ids=ids, trigger=trigger)
        except Exception as error:  # one trigger's run failing must not stop the other's
            logger.warning("retraining for %s failed: %s", trigger, error)
            summary.failures |= {cid: f"{type(error).__name__}: {error}" for cid in ids}
            continue
        summary.failures |= trained.failures
        summary.retrained += [
            RetrainedClient(r.client_id, trigger, r.version, r.promoted, r.reason)
            for r in trained.registrations
        ]
    closed = {r.client_id: (r.version, opened[r.client_id]) for r in summary.retrained}
    if closed:
        with warehouse_write():
            mark_drift_retrained(settings.warehouse_path, closed)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "retrained %d clients, %d wait (%s), %d failed in %.1f s",
        len(summary.retrained),
        len(summary.skipped),
        "; ".join(f"{c}: {why}" for c, why in sorted(summary.skipped.items())) or "none",
        len(summary.failures),
        summary.seconds,
    )
    return summary
