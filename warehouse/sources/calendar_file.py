"""An operator's own calendar: holidays, launches, sales, maintenance windows (CSV).

Columns: `region` (a client region, or `global` for every client), `start`, `end`
(ISO-8601, an offset or Z converted to UTC, naive taken as UTC; or epoch seconds), `name`
and `kind` (a short lowercase word: each kind becomes a feature the forecasters learn).
The file is kept as read (`raw`, strings) for quarantine and typed (`rows`: the `calendar`
table's columns); validation (warehouse/calendar_validation.py) judges it.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from warehouse.errors import SourceError
from warehouse.sources.base import ExtractedBatch, hash_files
from warehouse.sources.events import parse_timestamps

SOURCE = "calendar"
COLUMNS: tuple[str, ...] = ("region", "start", "end", "name", "kind")
MAX_FILE_BYTES = 16 * 1024 * 1024  # a calendar is hundreds of rows, not millions


def read_calendar_file(path: Path) -> ExtractedBatch:
    """The calendar file as a batch: raw strings and typed rows, row for row."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"No calendar file at {path}.")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SourceError(
            f"The calendar file {path} is {size / 2**20:.0f} MiB; a calendar is at most "
            f"{MAX_FILE_BYTES // 2**20} MiB (hundreds of events, not usage)."
        )
    batch = ExtractedBatch(
        source=SOURCE,
        location=str(path),
        content_hash=hash_files([path], SOURCE),
        freq_seconds=0,
        rows=pl.DataFrame(),
        kind="calendar",
    )
    try:
        raw = pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as error:
        batch.read_error = (
            str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        )
        return batch
    batch.raw = raw
    batch.rows = typed_calendar(raw)
    return batch


def typed_calendar(raw: pl.DataFrame) -> pl.DataFrame:
    """The recognised columns typed as the `calendar` table holds them (blank -> null)."""

    def text(name: str) -> pl.Expr:
        value = pl.col(name).str.strip_chars()
        return pl.when(value == "").then(None).otherwise(value)

    typed = []
    for name, column in (("region", "region"), ("name", "name"), ("kind", "kind")):
        if column in raw.columns:
            typed.append(text(column).alias(name))
    for name, column in (("start_ts", "start"), ("end_ts", "end")):
        if column in raw.columns:
            typed.append(parse_timestamps(pl.col(column)).alias(name))
    if not typed:
        return raw.drop(raw.columns)  # keeps the row count aligned with raw
    return raw.select(typed)
