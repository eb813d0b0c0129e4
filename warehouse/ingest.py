"""Write validated batches to the warehouse: atomically, idempotently, with an audit trail.

A batch is identified by the hash of its content. Loading it runs in one transaction: the
clients and calendar it brings, its usage rows (replacing any existing rows with the same
(client_id, ts): an upsert, so never a duplicate), its quarantined rows, its
`ingest_batches` record and the spool files it took (`feed_files`) all appear together or
not at all. A feed loads with `overwrite=False`: a batch that would replace a stored row
fails whole instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from core.vocabulary import METRICS
from warehouse.db import connect, fetch_value, transaction
from warehouse.sources.base import ExtractedBatch

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class BatchRecord:
    """One row of `ingest_batches`."""

    batch_id: str
    status: str  # loaded | rejected | failed
    rows_in: int
    rows_loaded: int
    rows_quarantined: int
    message: str


@dataclass(frozen=True)
class TakenFile:
    """One spool file a batch takes (a row of `feed_files`): recorded with the batch, once."""

    path: str
    content_hash: str
    size_bytes: int
    status: str  # loaded | rejected | duplicate


class OverwriteRefused(PrewarmError):
    """A batch loaded with overwrite=False would have replaced stored usage rows."""


def new_batch_id(content_hash: str, started_at: datetime) -> str:
    """A readable, unique id per ingest attempt: when, and which content."""
    return f"{started_at:%Y%m%dT%H%M%S%f}-{content_hash[:12]}"


def find_loaded_batch(path: Path, content_hash: str) -> str | None:
    """The batch id that already loaded this exact content, if any."""
    if not Path(path).exists():
        return None
    with connect(path) as con:
        batch_id = fetch_value(
            con,
            "SELECT batch_id FROM ingest_batches WHERE content_hash = ? AND status = 'loaded'"
            " ORDER BY started_at LIMIT 1",
            [content_hash],
        )
    return str(batch_id) if batch_id else None


def frequency_conflicts(path: Path, client_ids: list[str], freq_seconds: int) -> list[str]:
    """Clients that already have usage on a different bucket width than this batch."""
    if not Path(path).exists() or not client_ids:
        return []
    with connect(path) as con:
        con.register("incoming", pl.DataFrame({"client_id": client_ids}).to_arrow())
        rows = con.execute(
            "SELECT c.client_id, c.freq_seconds FROM clients c JOIN incoming USING (client_id)"
            " WHERE c.freq_seconds <> ? ORDER BY 1",
            [freq_seconds],
        ).fetchall()
    return [f"{cid} ({freq}s)" for cid, freq in rows]


def load_batch(
    path: Path,
    batch: ExtractedBatch,
    usage: pl.DataFrame,
    quarantine: pl.DataFrame,
    record: BatchRecord,
    started_at: datetime,
    on_progress: Progress | None = None,
    new_client_mode: str = "provision",
    taken_files: Sequence[TakenFile] = (),
    overwrite: bool = True,
) -> int:
    """Load one batch in a single transaction; return how many existing rows it replaced.

    Clients seen for the first time start in `new_client_mode` (provision | forecast-only).
    `taken_files` are recorded in `feed_files` in the same transaction, so a file is taken
    exactly when its rows land. With `overwrite=False` a row colliding with a stored one
    raises `OverwriteRefused` and nothing is written.
    """
    with connect(path) as con, transaction(con):
        _upsert_clients(con, batch, usage, new_client_mode)
        if batch.calendar is not None and batch.calendar.height:
            _upsert_calendar(con, batch.calendar)
        replaced = _upsert_usage(con, usage, record.batch_id, on_progress)
        if replaced and not overwrite:
            raise OverwriteRefused(
                f"Batch {record.batch_id} ({batch.location}) would replace {replaced} stored "
                "usage rows; a feed never overwrites, so nothing was loaded."
            )
        _insert_quarantine(con, record.batch_id, quarantine)
        _insert_record(con, batch, record, started_at)
        _insert_taken_files(con, record.batch_id, taken_files)
    return replaced


def load_calendar_batch(
    path: Path,
    batch: ExtractedBatch,
    calendar: pl.DataFrame,
    quarantine: pl.DataFrame,
    record: BatchRecord,
    started_at: datetime,
) -> None:
    """Load a validated calendar file in one transaction: its events (an event already
    stored with the same region, start and name takes the file's end and kind), its
    quarantined rows and its `ingest_batches` record."""
    with connect(path) as con, transaction(con):
        if calendar.height:
            _upsert_calendar(con, calendar)
        _insert_quarantine(con, record.batch_id, quarantine)
        _insert_record(con, batch, record, started_at)


def record_attempt(
    path: Path,
    batch: ExtractedBatch,
    record: BatchRecord,
    quarantine: pl.DataFrame,
    started_at: datetime,
    taken_files: Sequence[TakenFile] = (),
) -> None:
    """Record a batch that did not load (rejected or failed), with its quarantined rows and
    the spool files it took (so a rejected file is never retried)."""
    with connect(path) as con, transaction(con):
        _insert_quarantine(con, record.batch_id, quarantine)
        _insert_record(con, batch, record, started_at)
        _insert_taken_files(con, record.batch_id, taken_files)


def record_taken_files(path: Path, batch_id: str, taken_files: Sequence[TakenFile]) -> None:
    """Record spool files taken without a batch of their own (content loaded before)."""
    with connect(path) as con, transaction(con):
        _insert_taken_files(con, batch_id, taken_files)


def _upsert_clients(
    con: duckdb.DuckDBPyConnection, batch: ExtractedBatch, usage: pl.DataFrame, mode: str
) -> None:
    first_ts = usage.group_by("client_id").agg(pl.col("ts").min().alias("first_ts"))
    if batch.clients is not None:
        clients = batch.clients.join(first_ts, on="client_id", how="inner")
    else:
        clients = first_ts
    for column in ("tier", "region", "service", "attributes"):
        if column not in clients.columns:
            clients = clients.with_columns(pl.lit(None, dtype=pl.String).alias(column))
    for column in ("container_cpu", "container_memory_mb"):
        if column not in clients.columns:
            clients = clients.with_columns(pl.lit(None, dtype=pl.Float64).alias(column))
    con.register("incoming_clients", clients.to_arrow())
    # Attributes a later batch does not know (null) keep their earlier value; the mode is
    # the operator's choice and is never changed by an ingest.
    con.execute(
        """
        INSERT INTO clients (client_id, tier, region, service, container_cpu,
                             container_memory_mb, freq_seconds, source, attributes, first_ts,
                             updated_at, mode)
        SELECT client_id, tier, region, service, container_cpu, container_memory_mb,
               ?, ?, attributes::JSON, first_ts, ?, ?
        FROM incoming_clients
        ON CONFLICT (client_id) DO UPDATE SET
            tier = coalesce(excluded.tier, clients.tier),
            region = coalesce(excluded.region, clients.region),
            service = coalesce(excluded.service, clients.service),
            container_cpu = coalesce(excluded.container_cpu, clients.container_cpu),
            container_memory_mb = coalesce(excluded.container_memory_mb,
                                           clients.container_memory_mb),
            attributes = coalesce(excluded.attributes, clients.attributes),
            first_ts = least(excluded.first_ts, clients.first_ts),
            updated_at = excluded.updated_at
        """,
        [batch.freq_seconds, batch.source, utc_now(), mode],
    )
    con.unregister("incoming_clients")


def _upsert_calendar(con: duckdb.DuckDBPyConnection, calendar: pl.DataFrame) -> None:
    con.register("incoming_calendar", calendar.to_arrow())
    con.execute(
        "INSERT OR REPLACE INTO calendar (region, start_ts, end_ts, name, kind)"
        " SELECT region, start_ts, end_ts, name, kind FROM incoming_calendar"
    )
    con.unregister("incoming_calendar")


def _upsert_usage(
    con: duckdb.DuckDBPyConnection,
    usage: pl.DataFrame,
    batch_id: str,
    on_progress: Progress | None,
) -> int:
    present = [m for m in METRICS if m in usage.columns]
    selected = ", ".join(m if m in present else f"NULL::DOUBLE AS {m}" for m in METRICS)
    # An empty table has nothing to replace: skip the join that would find nothing.
    has_rows = bool(fetch_value(con, "SELECT EXISTS (SELECT 1 FROM usage)"))
    replaced = 0
    total = usage.height
    if on_progress:
        on_progress(0, total)
    for offset in range(0, total, CHUNK_ROWS):
        chunk = usage.slice(offset, CHUNK_ROWS).select(["client_id", "ts", *present])
        con.register("staged", chunk.to_arrow())
        if has_rows:
            replaced += int(
                fetch_value(
                    con,
                    "DELETE FROM usage USING staged s"
                    " WHERE usage.client_id = s.client_id AND usage.ts = s.ts",
                )
                or 0
            )
        con.execute(
            f"INSERT INTO usage (client_id, ts, {', '.join(METRICS)}, batch_id)"
            f" SELECT client_id, ts, {selected}, ? FROM staged",
            [batch_id],
        )
        con.unregister("staged")
        if on_progress:
            on_progress(min(offset + CHUNK_ROWS, total), total)
    return replaced


def _insert_quarantine(
    con: duckdb.DuckDBPyConnection, batch_id: str, quarantine: pl.DataFrame
) -> None:
    if quarantine.height == 0:
        return
    con.register("incoming_quarantine", quarantine.to_arrow())
    con.execute(
        'INSERT INTO quarantine (batch_id, row_number, "row", expectation, quarantined_at)'
        ' SELECT ?, row_number, "row"::JSON, expectation, ? FROM incoming_quarantine',
        [batch_id, utc_now()],
    )
    con.unregister("incoming_quarantine")


def _insert_record(
    con: duckdb.DuckDBPyConnection, batch: ExtractedBatch, record: BatchRecord, started_at: datetime
) -> None:
    con.execute(
        "INSERT INTO ingest_batches (batch_id, source, location, content_hash, freq_seconds,"
        " rows_in, rows_loaded, rows_quarantined, status, message, started_at, finished_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            record.batch_id,
            batch.source,
            batch.location,
            batch.content_hash,
            batch.freq_seconds,
            record.rows_in,
            record.rows_loaded,
            record.rows_quarantined,
            record.status,
            record.message,
            started_at,
            utc_now(),
        ],
    )


def _insert_taken_files(
    con: duckdb.DuckDBPyConnection, batch_id: str, taken_files: Sequence[TakenFile]
) -> None:
    taken_at = utc_now()
    for taken in taken_files:
        # The primary key (path, content_hash) makes a second take of the same file fail the
        # whole transaction: a file is taken exactly once even if two cycles race.
        con.execute(
            "INSERT INTO feed_files (path, content_hash, size_bytes, batch_id, status, taken_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [taken.path, taken.content_hash, taken.size_bytes, batch_id, taken.status, taken_at],
        )
