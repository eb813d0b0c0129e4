"""What each kind of feed has ready: new spool files, trace minutes, synthetic buckets.

Spool: writers write a file elsewhere (or under a name starting with '.' or ending in
'.tmp'/'.partial', which are ignored) and then rename it into the spool, so a file is only
ever read whole. A file is taken once: a path already taken with the same size is not read
again (writers never rewrite a file in place; a new file needs a new name).

Trace: the parsed trace is cached per process, keyed by its directory, day and the files'
sizes and modification times, because a cycle may run every few seconds at high speed.

Synthetic: the generator is counter-based, so a bucket's values do not depend on the window
it is generated in, except a late joiner's join time, which is placed 30-70% into the window:
an extension is generated with a lead-in long enough that every late joiner has joined
before the extension starts, and checked to cover every client and bucket.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import cast

from core.errors import PrewarmError
from warehouse.errors import SourceError
from warehouse.ingest import TakenFile
from warehouse.sources.azure_functions import load_azure_functions
from warehouse.sources.base import ExtractedBatch, restrict_batch
from warehouse.sources.events import read_events
from warehouse.sources.synthetic import generate_synthetic

log = logging.getLogger(__name__)

# The formats `warehouse.sources.events.read_events` reads.
SPOOL_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")
# Files still being written: a writer renames them into their final name when complete.
IN_PROGRESS_SUFFIXES = (".tmp", ".partial")
# A backlog is taken oldest first over several ingests: bounded memory and cycle time.
SPOOL_FILES_PER_INGEST = 100

_EPOCH = datetime(1970, 1, 1)
_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
# Late joiners join at most this far into a generated window (see synthetic.py).
_LATEST_JOIN_SHARE = 0.7


@dataclass
class PendingBatch:
    """One batch a feed has ready to validate and load, with the spool files it takes."""

    batch: ExtractedBatch
    files: list[TakenFile] = field(default_factory=list)
    known_only: bool = False  # rows of clients the warehouse does not know are quarantined


# --- spool --------------------------------------------------------------------------------


def spool_candidates(directory: Path) -> list[Path]:
    """Complete event files in the spool, oldest first (hidden and in-progress ones skipped)."""
    found = []
    for entry in Path(directory).iterdir():
        name = entry.name
        if name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES) or not entry.is_file():
            continue
        if entry.suffix.lower() not in SPOOL_SUFFIXES:
            log.debug("spool %s: ignoring %s (not an event file)", directory, name)
            continue
        found.append(entry)
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def pending_spool(
    directory: Path, freq_seconds: int, taken_sizes: dict[str, set[int]]
) -> list[PendingBatch]:
    """A batch per spool file not taken yet (`taken_sizes`: path -> sizes already taken), the
    oldest `SPOOL_FILES_PER_INGEST` of them."""
    pending: list[PendingBatch] = []
    for file in spool_candidates(directory):
        size = file.stat().st_size
        if size in taken_sizes.get(str(file), set()):
            continue
        if len(pending) == SPOOL_FILES_PER_INGEST:
            log.info(
                "spool %s: more than %d new files; the rest next time", directory, len(pending)
            )
            break
        batch = read_events(file, freq_seconds=freq_seconds)
        taken = TakenFile(str(file), batch.content_hash, size, "loaded")
        pending.append(PendingBatch(batch=batch, files=[taken], known_only=True))
    return pending


# --- trace --------------------------------------------------------------------------------


def load_trace(directory: Path, day: date) -> ExtractedBatch:
    """The whole trace, parsed once per process until one of its files changes."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise SourceError(f"The trace directory {directory} does not exist (any more).")
    stats = tuple(
        sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.iterdir()
            if p.is_file() and p.suffix == ".csv"
        )
    )
    batch = _parsed_trace(str(directory), day, stats)
    if batch.read_error:
        raise SourceError(f"The trace {directory} cannot be read: {batch.read_error}.")
    return batch


@lru_cache(maxsize=2)
def _parsed_trace(directory: str, day: date, stats: tuple) -> ExtractedBatch:
    # `stats` is only part of the key: a changed file is a new entry.
    return load_azure_functions(Path(directory), day=day)


def trace_population(trace: ExtractedBatch) -> set[str]:
    """The trace's functions (its clients)."""
    if trace.clients is None:
        return set()
    return set(trace.clients.get_column("client_id").drop_nulls().to_list())


def trace_span(trace: ExtractedBatch) -> tuple[datetime, datetime] | None:
    """The trace's first and last minute, or None for a trace without minutes."""
    ts = trace.rows.get_column("ts").drop_nulls()
    if ts.len() == 0:
        return None
    # polars types min()/max() as any scalar; those of a `ts` column are datetimes.
    return cast(datetime, ts.min()), cast(datetime, ts.max())


def trace_minutes(
    trace: ExtractedBatch, after: datetime | None, sim_now: datetime
) -> ExtractedBatch | None:
    """The whole minutes m with after < m and m + 1 min <= sim_now, or None if none."""
    until = _floor(sim_now, 60)
    since = after + _MINUTE if after is not None else None
    if since is not None and since >= until:
        return None
    part = restrict_batch(trace, since, until)
    if part.rows.get_column("ts").drop_nulls().len() == 0:
        return None
    # The cached trace is shared: the slice gets lists of its own.
    return replace(part, notes=list(part.notes))


# --- synthetic ----------------------------------------------------------------------------


def synthetic_history(
    clients: int, seed: int, freq_seconds: int, days: int, end: datetime
) -> ExtractedBatch:
    """The population's first `days` of history, up to `end` (exclusive, on the grid)."""
    return generate_synthetic(
        n_clients=clients, days=days, end=end, freq_seconds=freq_seconds, seed=seed
    )


def synthetic_extension(
    clients: int, seed: int, freq_seconds: int, after: datetime, end: datetime
) -> list[ExtractedBatch]:
    """Every complete bucket after `after` and before `end`, a day at most per batch."""
    step = timedelta(seconds=freq_seconds)
    start = after + step
    end = _floor(end, freq_seconds)
    batches = []
    while start < end:
        stop = min(start + _DAY, end)
        batches.append(_extension_chunk(clients, seed, freq_seconds, start, stop))
        start = stop
    return batches


def synthetic_ids(clients: int, seed: int) -> set[str]:
    """The client ids the generator makes for a population of `clients`."""
    # One daily bucket is the cheapest window there is; the ids do not depend on it.
    one = generate_synthetic(
        n_clients=clients, days=1, end=datetime(2000, 1, 2), freq_seconds=86_400, seed=seed
    )
    assert one.clients is not None
    return set(one.clients.get_column("client_id").to_list())


def _extension_chunk(
    clients: int, seed: int, freq_seconds: int, start: datetime, stop: datetime
) -> ExtractedBatch:
    days = _lead_in_days(start, stop, freq_seconds)
    window = generate_synthetic(
        n_clients=clients, days=days, end=stop, freq_seconds=freq_seconds, seed=seed
    )
    part = restrict_batch(window, start, stop)
    expected = clients * ((stop - start) // timedelta(seconds=freq_seconds))
    if part.rows.height != expected:
        raise PrewarmError(
            f"The synthetic generator gave {part.rows.height} rows for {start}..{stop}, not "
            f"{expected} ({clients} clients x every bucket): its late joiners no longer join "
            "where the feed expects. Nothing was loaded."
        )
    # The calendar it brings is the same events again (deterministic), harmless to upsert;
    # the clients are known already and keep their attributes.
    return replace(
        part, clients=None, location=f"synthetic extension {start}..{stop} (seed {seed})"
    )


def _lead_in_days(start: datetime, stop: datetime, freq_seconds: int) -> int:
    """Whole days of window before `stop` that put every late joiner's join at or before
    `start` (the generator places joins up to 70% into its window)."""
    start_s = (start - _EPOCH) // timedelta(seconds=1)
    stop_s = (stop - _EPOCH) // timedelta(seconds=1)
    days = max(1, -(-(stop_s - start_s) // 86_400))
    while True:
        first_s = -(-(stop_s - days * 86_400) // freq_seconds) * freq_seconds
        buckets = -(-(stop_s - first_s) // freq_seconds)
        latest_join = first_s + math.ceil(_LATEST_JOIN_SHARE * buckets) * freq_seconds
        if latest_join <= start_s:
            return days
        days += 1


def _floor(moment: datetime, seconds: int) -> datetime:
    total = (moment - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=total - total % seconds)
