"""Ingest what the warehouse's feed has ready: validate each batch (Great Expectations, as
`prewarm ingest` does), screen it (known clients, nothing late) and load it with the spool
files it takes, under the warehouse write slot. A rejected batch is recorded, not raised."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError

from core.times import naive_utc, utc_now
from flows.ingest import load_report, record_rejection, rejection_problem
from flows.locks import warehouse_write
from flows.settings import Settings
from warehouse.feed_screen import read_newest_buckets, screen_report
from warehouse.feed_sources import PendingBatch
from warehouse.feeds import Feed, follow_feed, is_taken, pending_batches, watermark
from warehouse.ingest import find_loaded_batch, new_batch_id, record_taken_files
from warehouse.validation import validate_batch


@dataclass
class FeedIngest:
    """What one feed ingest did. `files_taken` counts every spool file taken (loaded,
    rejected or a duplicate of content loaded before); `files_rejected` those rejected."""

    kind: str
    batches: int = 0  # batches recorded (loaded or rejected)
    rows_loaded: int = 0
    rows_quarantined: int = 0
    files_taken: int = 0
    files_rejected: int = 0
    watermark: datetime | None = None  # newest usage bucket after the ingest
    notes: list[str] = field(default_factory=list)


def complete_feed(feed: Feed, settings: Settings) -> Feed:
    """The feed with the parameters it leaves open taken from settings (bucket width,
    synthetic population and history, the trace's day)."""
    if feed.kind == "spool":
        defaults: dict[str, object] = {"freq_seconds": settings.freq_seconds}
    elif feed.kind == "synthetic":
        defaults = {
            "clients": settings.synthetic_clients,
            "seed": settings.synthetic_seed,
            "freq_seconds": settings.freq_seconds,
            "days": settings.synthetic_days,
        }
    elif feed.kind == "trace":
        defaults = {"day": settings.trace_day.isoformat()}
    else:
        defaults = {}
    return replace(feed, params={**defaults, **feed.params})


@task(cache_policy=NONE)
def record_feed(settings: Settings, feed: Feed, now: datetime) -> Feed:
    """Record the feed the warehouse follows (population checked; see `follow_feed`)."""
    with warehouse_write():
        return follow_feed(settings.warehouse_path, complete_feed(feed, settings), now=now)


@task(cache_policy=NONE)
def ingest_feed(settings: Settings, feed: Feed, clock_now: datetime) -> FeedIngest:
    """Load every batch the feed has ready at `clock_now`; raises FeedMismatch when the
    warehouse no longer matches the feed's population (nothing is written then)."""
    logger = _logger()
    result = FeedIngest(kind=feed.kind)
    for pending in pending_batches(settings.warehouse_path, feed, naive_utc(clock_now)):
        _ingest_one(settings, pending, result, logger)
    result.watermark = watermark(settings.warehouse_path)
    logger.info(
        "feed %s: %d batches, %d rows loaded, %d quarantined, %d files taken (%d rejected); "
        "watermark %s",
        feed.describe(),
        result.batches,
        result.rows_loaded,
        result.rows_quarantined,
        result.files_taken,
        result.files_rejected,
        result.watermark,
    )
    return result


def _ingest_one(
    settings: Settings,
    pending: PendingBatch,
    result: FeedIngest,
    logger: logging.Logger | logging.LoggerAdapter,
) -> None:
    """Validate, screen and load (or record as rejected) one pending batch."""
    path = settings.warehouse_path
    batch = pending.batch
    started_at = utc_now()
    batch_id = new_batch_id(batch.content_hash, started_at)
    report = validate_batch(batch)
    problem = rejection_problem(settings, batch, report)
    with warehouse_write():
        # Checked again under the write slot: another run may have taken the file meanwhile.
        if any(is_taken(path, f.path, f.content_hash) for f in pending.files):
            logger.info("%s was taken by another run meanwhile; skipped", batch.location)
            return
        if pending.files and (earlier := find_loaded_batch(path, batch.content_hash)):
            record_taken_files(
                path, earlier, [replace(f, status="duplicate") for f in pending.files]
            )
            result.files_taken += len(pending.files)
            result.notes.append(f"{batch.location}: same content as batch {earlier}, not loaded")
            return
        if problem:
            rejected = [replace(f, status="rejected") for f in pending.files]
            message = record_rejection(
                settings, batch, report, batch_id, started_at, problem, taken_files=rejected
            )
            result.batches += 1
            result.files_taken += len(rejected)
            result.files_rejected += len(rejected)
            result.rows_quarantined += report.rows_failed
            result.notes.append(message)
            logger.warning(message)
            return
        screened = screen_report(
            batch, report, read_newest_buckets(path), known_only=pending.known_only
        )
        outcome = load_report(
            settings,
            batch,
            screened,
            batch_id,
            started_at,
            taken_files=pending.files,
            overwrite=False,
        )
    result.batches += 1
    result.files_taken += len(pending.files)
    result.rows_loaded += outcome.rows_loaded
    result.rows_quarantined += outcome.rows_quarantined
    result.notes.extend(f"{batch.location}: {note}" for note in outcome.notes)
    logger.info(
        "batch %s (%s): %d rows in, %d loaded, %d quarantined",
        batch_id,
        batch.location,
        outcome.rows_in,
        outcome.rows_loaded,
        outcome.rows_quarantined,
    )


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task, this module's outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)
