"""Flow `load-calendar`: an operator's own holidays, launches and sales, validated with Great
Expectations like usage and loaded into the `calendar` table the forecasters read.

A file loaded before (same content) is a no-op. Rows failing validation go to `quarantine`;
when more than PREWARM_QUARANTINE_MAX_SHARE of them fail, or the file cannot be judged at all
(unreadable, a column missing, no rows, too many kinds), nothing loads and the run says why.
New kinds become features at each client's next training; models already trained keep the
kinds they were trained with.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Failed

from flows.ingest import IngestOutcome, record_rejection
from flows.locks import warehouse_write
from flows.settings import Settings
from warehouse.calendar_validation import validate_calendar
from warehouse.db import connect, fetch_frame
from warehouse.errors import IngestRejected
from warehouse.ingest import (
    BatchRecord,
    find_loaded_batch,
    load_calendar_batch,
    new_batch_id,
    utc_now,
)
from warehouse.sources.base import ExtractedBatch
from warehouse.sources.calendar_file import read_calendar_file
from warehouse.validation import ValidationReport, describe_rejection


def stored_kinds(path: Path) -> set[str]:
    """The kinds the calendar table holds now (none before the first write)."""
    if not path.exists():
        return set()
    with connect(path, read_only=True) as con:
        return set(fetch_frame(con, "SELECT DISTINCT kind FROM calendar")["kind"].to_list())


@task(cache_policy=NONE)
def validate(batch: ExtractedBatch, kinds: set[str]) -> ValidationReport:
    """Great Expectations over the calendar rows; failing rows are set aside."""
    return validate_calendar(batch, kinds)


@task(cache_policy=NONE)
def load(
    settings: Settings,
    batch: ExtractedBatch,
    report: ValidationReport,
    batch_id: str,
    started_at: datetime,
) -> IngestOutcome:
    """The good events, the quarantine and the batch record, in one transaction."""
    record = BatchRecord(
        batch_id=batch_id,
        status="loaded",
        rows_in=report.rows_in,
        rows_loaded=report.good.height,
        rows_quarantined=report.rows_failed,
        message="; ".join(f"{d}: {n}" for d, n in report.row_failures.items()),
    )
    with warehouse_write():
        load_calendar_batch(
            settings.warehouse_path, batch, report.good, report.quarantine, record, started_at
        )
    return IngestOutcome(
        status="loaded",
        batch_id=batch_id,
        location=batch.location,
        rows_in=report.rows_in,
        rows_loaded=report.good.height,
        rows_quarantined=report.rows_failed,
    )


@flow(name="load-calendar", log_prints=False)
def load_calendar(path: Path) -> IngestOutcome:
    """Read -> validate -> load one calendar file; a file already loaded is a no-op."""
    settings = Settings()
    logger = get_run_logger()
    batch = read_calendar_file(path)
    existing = find_loaded_batch(settings.warehouse_path, batch.content_hash)
    if existing:
        logger.info("already loaded as batch %s; nothing to do", existing)
        return IngestOutcome(status="skipped", batch_id=existing, location=batch.location)
    started_at = utc_now()
    batch_id = new_batch_id(batch.content_hash, started_at)
    report = validate(batch, stored_kinds(settings.warehouse_path))
    if report.batch_failures or report.failed_share > settings.quarantine_max_share:
        problem = describe_rejection(batch, report, settings.quarantine_max_share)
        with warehouse_write():
            message = record_rejection(settings, batch, report, batch_id, started_at, problem)
        # As ingest-usage: a Failed state, no traceback; the caller gets IngestRejected.
        return Failed(message=message, data=IngestRejected(message))  # type: ignore[return-value]
    outcome = load(settings, batch, report, batch_id, started_at)
    logger.info(
        "calendar batch %s: %d events in, %d loaded, %d quarantined",
        batch_id,
        outcome.rows_in,
        outcome.rows_loaded,
        outcome.rows_quarantined,
    )
    return outcome
