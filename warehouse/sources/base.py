"""The contract every source fulfils: an extracted batch, ready to validate and load."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import polars as pl

from core.vocabulary import METRICS

USAGE_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "ts": pl.Datetime("us"),
    **{metric: pl.Float64() for metric in METRICS},
}

CLIENT_COLUMNS: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "tier": pl.String(),
    "region": pl.String(),
    "service": pl.String(),
    "container_cpu": pl.Float64(),
    "container_memory_mb": pl.Float64(),
    "attributes": pl.String(),  # JSON text
}

CALENDAR_COLUMNS: dict[str, pl.DataType] = {
    "region": pl.String(),
    "start_ts": pl.Datetime("us"),
    "end_ts": pl.Datetime("us"),
    "name": pl.String(),
    "kind": pl.String(),
}


@dataclass
class ExtractedBatch:
    """One source's output before validation.

    `rows` holds client_id (String), ts (naive UTC, Datetime us) and the numeric value
    columns the source provides, typed Float64; an unparsable or empty cell in a provided
    column is null, which validation rejects. A source never drops a column it cannot read:
    validation reports what is missing. `raw` is the same rows as read (strings), row for row,
    kept for quarantine; None when `rows` is itself the original (generated data). `kind`
    says whether rows are already a series on the frequency grid ('series', value columns
    drawn from METRICS) or calls to aggregate ('events'); a 'calendar' batch holds calendar
    rows instead (warehouse/sources/calendar_file.py). `read_error` is set when the input
    could not be parsed at all (rows then empty): validation rejects the batch with it.
    """

    source: str
    location: str
    content_hash: str
    freq_seconds: int
    rows: pl.DataFrame
    kind: Literal["series", "events", "calendar"] = "series"
    raw: pl.DataFrame | None = None
    clients: pl.DataFrame | None = None
    calendar: pl.DataFrame | None = None
    read_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def value_columns(self) -> list[str]:
        """The numeric columns this batch provides (everything but client_id and ts)."""
        return [c for c in self.rows.columns if c not in ("client_id", "ts")]


def hash_files(paths: list[Path], *extra: object) -> str:
    """Content hash of files (bytes, in the given order) plus parameters that change output."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()


def hash_params(*params: object) -> str:
    """Content hash of generator parameters (same parameters, same rows)."""
    return hashlib.sha256(repr(params).encode()).hexdigest()


def restrict_batch(
    batch: ExtractedBatch, since: datetime | None = None, until: datetime | None = None
) -> ExtractedBatch:
    """The part of a batch with since <= ts < until (rows without a timestamp are kept, so
    validation still sees them). The content hash covers the bounds: another slice of the
    same input is another batch."""
    if since is None and until is None:
        return batch
    keep = pl.lit(True)
    if since is not None:
        keep = keep & (pl.col("ts") >= since)
    if until is not None:
        keep = keep & (pl.col("ts") < until)
    mask = batch.rows.select((keep | pl.col("ts").is_null()).alias("keep")).get_column("keep")
    bounds = f"{since or ''}..{until or ''}"
    return replace(
        batch,
        rows=batch.rows.filter(mask),
        raw=batch.raw.filter(mask) if batch.raw is not None else None,
        content_hash=hash_params(batch.content_hash, bounds),
        location=f"{batch.location} [{bounds}]",
    )
