"""Flow `prewarm-pipeline`: the main job, once: ingest -> validate -> train (only clients
whose model is missing or stale) -> predict profiles -> provision -> score.

With `replay_minutes`, the input's last minutes are held back and ingested after
provisioning, as if they arrived live, so scoring has fresh buckets to compare
with the forecasts (how the demo shows the whole loop in one run).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from core.times import utc_now
from flows.feed import record_feed
from flows.ingest import IngestOutcome, SourceName, default_end, ingest_usage
from flows.predict import PredictSummary, predict_profiles
from flows.provision import ProvisionSummary, provision_pools
from flows.scoring import ScoreSummary, score_outcomes
from flows.settings import Settings
from flows.train import TrainSummary, train_flow
from models.registry import current_aliases
from warehouse.feeds import Feed, FeedMismatch, watermark
from warehouse.predictions import read_training_state


@dataclass
class PipelineSummary:
    """What every stage of one pipeline run did."""

    ingested: list[IngestOutcome]
    stale: list[str]
    trained: TrainSummary | None
    predicted: PredictSummary
    provisioned: ProvisionSummary
    scored: ScoreSummary


def stale_clients(settings: Settings) -> list[str]:
    """Clients whose model is missing (never trained, or gone from the registry) or whose
    training data ended more than `model_max_age_hours` before their latest usage."""
    state = read_training_state(settings.warehouse_path)
    registered = current_aliases(settings.mlflow_tracking_uri)
    max_age = timedelta(hours=settings.model_max_age_hours)
    stale = state.filter(
        pl.col("trained_until").is_null()
        | (pl.col("trained_until") < pl.col("last_ts") - max_age)
        | ~pl.col("client_id").is_in(list(registered))
    )
    return stale.get_column("client_id").to_list()


@flow(name="prewarm-pipeline")
def prewarm_pipeline(
    source: SourceName = "synthetic",
    path: Path | None = None,
    clients: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    replay_minutes: int = 0,
) -> PipelineSummary:
    """Run every stage once on the given source (the embedded defaults: synthetic)."""
    settings = Settings()
    logger = get_run_logger()
    # One clock for both halves of the input: the synthetic history ends here.
    end = default_end(settings.freq_seconds) if source == "synthetic" else None
    common: dict[str, Any] = {
        "source": source,
        "path": path,
        "clients": clients,
        "days": days,
        "seed": seed,
        "end": end,
    }
    ingested = [ingest_usage(**common, hold_back_minutes=replay_minutes)]
    stale = stale_clients(settings)
    trained = train_flow(settings)(client_ids=stale) if stale else None
    logger.info("%d clients needed (re)training", len(stale))
    predicted = predict_profiles()
    # The pool is planned on the data's clock: for the held-back hour, which then "arrives".
    mark = watermark(settings.warehouse_path)
    at = mark + timedelta(seconds=settings.freq_seconds) if mark is not None else None
    provisioned = provision_pools(at=at)
    if replay_minutes:
        ingested.append(ingest_usage(**common, only_last_minutes=replay_minutes))
    scored = score_outcomes()
    # From now on the warehouse follows the demo's feed (cycles under `prewarm up`).
    _record_demo_feed(settings, source, clients, days, seed, logger)
    return PipelineSummary(ingested, stale, trained, predicted, provisioned, scored)


def _record_demo_feed(
    settings: Settings,
    source: SourceName,
    clients: int | None,
    days: int | None,
    seed: int | None,
    logger: Any,
) -> None:
    """Record the feed the demo's warehouse follows from now on: the generator it was made
    with (cycles extend it), or none for a trace or file, which was ingested whole."""
    if source != "synthetic":
        logger.info(
            "the %s input was ingested whole: the warehouse follows no feed (to replay a trace "
            "live: prewarm feed follow trace:DIR --speed N)",
            source,
        )
        record_feed(settings, Feed(kind="none"), utc_now())
        return
    population = {
        "clients": clients or settings.synthetic_clients,
        "seed": settings.synthetic_seed if seed is None else seed,
        "freq_seconds": settings.freq_seconds,
        "days": days or settings.synthetic_days,
    }
    try:
        record_feed(settings, Feed(kind="synthetic", params=population), utc_now())
    except FeedMismatch as refused:
        # The demo still runs on what it ingested; the warehouse keeps the feed it had.
        logger.warning("%s", refused)
