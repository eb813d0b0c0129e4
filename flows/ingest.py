"""Flow `ingest-usage`: extract a source, validate it with Great Expectations, load it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.states import Failed

from core.vocabulary import SourceName
from flows.locks import warehouse_write
from flows.progress import tracker
from flows.settings import Settings
from warehouse.errors import IngestRejected, SourceError
from warehouse.ingest import (
    BatchRecord,
    Progress,
    TakenFile,
    find_loaded_batch,
    frequency_conflicts,
    load_batch,
    new_batch_id,
    record_attempt,
    utc_now,
)
from warehouse.sources.azure_functions import load_azure_functions
from warehouse.sources.base import ExtractedBatch, restrict_batch
from warehouse.sources.events import aggregate_events, read_events
from warehouse.sources.synthetic import generate_synthetic
from warehouse.validation import ValidationReport, describe_rejection, validate_batch

_EPOCH = datetime(1970, 1, 1)


@dataclass
class IngestOutcome:
    """What one ingest did, for people (CLI) and for the pipeline."""

    status: Literal["loaded", "skipped"]
    batch_id: str
    location: str
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_replaced: int = 0
    clients: int = 0
    notes: list[str] = field(default_factory=list)


def default_end(freq_seconds: int, now: datetime | None = None) -> datetime:
    """The synthetic history ends at the latest bucket boundary, so the data is 'live'."""
    seconds = int(((now or utc_now()) - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=seconds - seconds % freq_seconds)


@task(cache_policy=NONE)
def extract(
    settings: Settings,
    source: SourceName,
    path: Path | None,
    clients: int,
    days: int,
    seed: int,
    end: datetime | None,
    since: datetime | None = None,
    until: datetime | None = None,
    hold_back_minutes: int = 0,
    only_last_minutes: int = 0,
    attributes: Path | None = None,
) -> ExtractedBatch:
    """Read or generate the batch from the chosen source: only since <= ts < until, and
    without its last `hold_back_minutes` or with only its last `only_last_minutes`;
    `attributes`: the event log's sidecar of client attributes."""
    if attributes is not None and source != "events":
        raise SourceError("--attributes is a sidecar of an event log: use it with --source events.")
    if source == "synthetic":
        batch = generate_synthetic(
            n_clients=clients,
            days=days,
            end=end or default_end(settings.freq_seconds),
            freq_seconds=settings.freq_seconds,
            seed=seed,
        )
    elif path is None:
        raise SourceError(f"--path is required for the {source} source.")
    elif source == "azure-functions":
        batch = load_azure_functions(Path(path), day=settings.trace_day)
    else:
        batch = read_events(Path(path), settings.freq_seconds, attributes)
    return _window(batch, since, until, hold_back_minutes, only_last_minutes)


def _window(
    batch: ExtractedBatch,
    since: datetime | None,
    until: datetime | None,
    hold_back_minutes: int,
    only_last_minutes: int,
) -> ExtractedBatch:
    """The batch cut to since <= ts < until, the minute bounds measured back from its end."""
    if (
        (hold_back_minutes or only_last_minutes)
        and batch.rows.height
        and "ts" in batch.rows.columns
    ):
        last = batch.rows.get_column("ts").max()
        if isinstance(last, datetime):
            edge = last + timedelta(seconds=batch.freq_seconds)
            if hold_back_minutes:
                until = edge - timedelta(minutes=hold_back_minutes)
            if only_last_minutes:
                since = edge - timedelta(minutes=only_last_minutes)
    return restrict_batch(batch, since, until)


@task(cache_policy=NONE)
def validate(batch: ExtractedBatch) -> ValidationReport:
    """Run the Great Expectations suites over the batch."""
    return validate_batch(batch)


@task(cache_policy=NONE)
def load(
    settings: Settings,
    batch: ExtractedBatch,
    report: ValidationReport,
    batch_id: str,
    started_at: datetime,
) -> IngestOutcome:
    """Load the good rows (aggregated first for event logs) and the quarantine in one go."""
    with warehouse_write():
        return load_report(
            settings, batch, report, batch_id, started_at, on_progress=tracker("Loading usage")
        )


@task(cache_policy=NONE)
def reject(
    settings: Settings,
    batch: ExtractedBatch,
    report: ValidationReport,
    batch_id: str,
    started_at: datetime,
    message: str,
) -> str:
    """Record the rejected batch and its quarantined rows; return the full explanation."""
    with warehouse_write():
        return record_rejection(settings, batch, report, batch_id, started_at, message)


def rejection_problem(
    settings: Settings, batch: ExtractedBatch, report: ValidationReport
) -> str | None:
    """Why a validated batch must not load (the input as a whole is wrong, too many rows
    failed, or its clients are stored at another bucket width), or None when it may."""
    if report.batch_failures or report.failed_share > settings.quarantine_max_share:
        return describe_rejection(batch, report, settings.quarantine_max_share)
    if conflicts := frequency_conflicts(
        settings.warehouse_path, report.good["client_id"].unique().to_list(), batch.freq_seconds
    ):
        return (
            f"Rejected {batch.location}: clients already stored at another bucket width than "
            f"{batch.freq_seconds}s: {', '.join(conflicts[:5])}. Nothing was loaded."
        )
    return None


def load_report(
    settings: Settings,
    batch: ExtractedBatch,
    report: ValidationReport,
    batch_id: str,
    started_at: datetime,
    *,
    taken_files: Sequence[TakenFile] = (),
    overwrite: bool = True,
    on_progress: Progress | None = None,
) -> IngestOutcome:
    """Load a validated batch's good rows (aggregated first for event logs) and its
    quarantine in one transaction. The caller holds the warehouse write slot."""
    usage = (
        aggregate_events(report.good, batch.freq_seconds) if batch.kind == "events" else report.good
    )
    record = BatchRecord(
        batch_id=batch_id,
        status="loaded",
        rows_in=report.rows_in,
        rows_loaded=usage.height,
        rows_quarantined=report.rows_failed,
        message="; ".join(f"{d}: {n}" for d, n in report.row_failures.items()),
    )
    replaced = load_batch(
        settings.warehouse_path,
        batch,
        usage,
        report.quarantine,
        record,
        started_at,
        on_progress=on_progress,
        new_client_mode=settings.new_client_mode,
        taken_files=taken_files,
        overwrite=overwrite,
    )
    return IngestOutcome(
        status="loaded",
        batch_id=batch_id,
        location=batch.location,
        rows_in=report.rows_in,
        rows_loaded=usage.height,
        rows_quarantined=report.rows_failed,
        rows_replaced=replaced,
        clients=usage["client_id"].n_unique(),
        notes=batch.notes,
    )


def record_rejection(
    settings: Settings,
    batch: ExtractedBatch,
    report: ValidationReport,
    batch_id: str,
    started_at: datetime,
    message: str,
    *,
    taken_files: Sequence[TakenFile] = (),
) -> str:
    """Record a rejected batch, its quarantined rows and the files it took; return the full
    explanation. The caller holds the warehouse write slot."""
    record = BatchRecord(
        batch_id=batch_id,
        status="rejected",
        rows_in=report.rows_in,
        rows_loaded=0,
        rows_quarantined=report.rows_failed,
        message=message,
    )
    record_attempt(
        settings.warehouse_path, batch, record, report.quarantine, started_at, taken_files
    )
    return (
        f"{message} The failing rows are kept in quarantine: "
        f"prewarm sql \"select * from quarantine where batch_id = '{batch_id}'\""
    )


@flow(name="ingest-usage", log_prints=False)
def ingest_usage(
    source: SourceName = "synthetic",
    path: Path | None = None,
    clients: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    end: datetime | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    hold_back_minutes: int = 0,
    only_last_minutes: int = 0,
    attributes: Path | None = None,
) -> IngestOutcome:
    """Extract -> validate -> load one batch; a batch already loaded is a no-op.

    `since`/`until` keep only that time slice of the input; `hold_back_minutes` leaves out the
    input's last minutes and `only_last_minutes` keeps only them (the demo replays the last
    hour as if it arrived live)."""
    settings = Settings()
    logger = get_run_logger()
    batch = extract(
        settings,
        source,
        path,
        clients or settings.synthetic_clients,
        days or settings.synthetic_days,
        settings.synthetic_seed if seed is None else seed,
        end,
        since,
        until,
        hold_back_minutes,
        only_last_minutes,
        attributes,
    )
    existing = find_loaded_batch(settings.warehouse_path, batch.content_hash)
    if existing:
        logger.info("already loaded as batch %s; nothing to do", existing)
        return IngestOutcome(status="skipped", batch_id=existing, location=batch.location)

    started_at = utc_now()
    batch_id = new_batch_id(batch.content_hash, started_at)
    report = validate(batch)
    problem = rejection_problem(settings, batch, report)
    if problem:
        message = reject(settings, batch, report, batch_id, started_at, problem)
        # A Failed state (not a raise) so the run fails visibly without a traceback; Prefect
        # raises its IngestRejected to a caller, so callers only ever see an IngestOutcome.
        return Failed(message=message, data=IngestRejected(message))  # type: ignore[return-value]
    outcome = load(settings, batch, report, batch_id, started_at)
    logger.info(
        "batch %s: %d rows in, %d loaded, %d quarantined, %d replaced",
        batch_id,
        outcome.rows_in,
        outcome.rows_loaded,
        outcome.rows_quarantined,
        outcome.rows_replaced,
    )
    return outcome
