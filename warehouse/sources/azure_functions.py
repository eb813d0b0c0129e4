"""Azure Functions Trace 2019 reader: per-minute invocations of each function as a usage series.

Each function (owner/app/function) is one client. Per minute:

- requests = the invocation count as written (a negative count stays negative, a non-numeric
  or empty cell is null: validation quarantines both);
- concurrency = instances needed, `0 if inv == 0 else max(1, ceil(inv * avg_ms / 60000))`
  with avg_ms the function's Average duration (median over all functions when the function
  has no durations row); null when the count is null or negative;
- memory_mb = concurrency x the app's memory (mean AverageAllocatedMb over the app's rows of
  memory.csv, median over all apps when the app has none).

CPU, network and I/O are not in the trace: they are unknown, so no such columns are produced.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import date, datetime
from pathlib import Path
from typing import cast

import polars as pl

from warehouse.errors import SourceError
from warehouse.sources.base import CLIENT_COLUMNS, ExtractedBatch, hash_files

log = logging.getLogger(__name__)

SOURCE = "azure-functions"
FREQ_SECONDS = 60

_IDENTITY = ("HashOwner", "HashApp", "HashFunction")
_TRACE_FILES = ("invocations", "durations", "memory")
_REQUIRED_COLUMNS = {
    "invocations": (*_IDENTITY, "Trigger"),
    "durations": (*_IDENTITY, "Average"),
    "memory": ("HashOwner", "HashApp", "AverageAllocatedMb"),
}
_ROWS_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "ts": pl.Datetime("us"),
    "requests": pl.Float64(),
    "concurrency": pl.Float64(),
    "memory_mb": pl.Float64(),
}
_RAW_COLUMNS = (*_IDENTITY, "Trigger", "minute", "invocations")


def load_azure_functions(path: Path, day: date = date(2019, 7, 15)) -> ExtractedBatch:
    """Read a trace directory (invocations, durations, memory CSVs) into a per-minute batch."""
    files = _find_trace_files(Path(path))
    content_hash = hash_files([files[name] for name in _TRACE_FILES], day)
    try:
        frames = {name: _read_strings(files[name]) for name in _TRACE_FILES}
        _check_columns(frames, files)
    except _UnreadableTrace as error:
        return ExtractedBatch(
            source=SOURCE,
            location=str(path),
            content_hash=content_hash,
            freq_seconds=FREQ_SECONDS,
            rows=pl.DataFrame(schema=_ROWS_SCHEMA),
            raw=pl.DataFrame(schema=dict.fromkeys(_RAW_COLUMNS, pl.String())),
            read_error=str(error),
        )

    notes: list[str] = []
    functions = _function_profiles(frames, notes)
    minute_columns = _minute_columns(frames["invocations"], notes)
    long = _unpivot_minutes(frames["invocations"], minute_columns, day)
    long = long.join(
        functions.select("_row", "client_id", "avg_duration_ms", "app_memory_mb"),
        on="_row",
        how="left",
    ).sort("_row", "_position")

    inv = pl.col("invocations").str.strip_chars().cast(pl.Float64, strict=False)
    need = (
        pl.when(pl.col("requests").is_null() | (pl.col("requests") < 0))
        .then(None)
        .otherwise(instances_needed(pl.col("requests"), pl.col("avg_duration_ms")))
    )
    rows = (
        long.with_columns(requests=inv)
        .with_columns(concurrency=need)
        .with_columns(memory_mb=pl.col("concurrency") * pl.col("app_memory_mb"))
        .select(
            pl.col("client_id"),
            pl.col("ts"),
            pl.col("requests"),
            pl.col("concurrency").cast(pl.Float64),
            pl.col("memory_mb").cast(pl.Float64),
        )
    )
    raw = long.select(list(_RAW_COLUMNS))
    clients = _clients(functions)
    log.info("read %d functions x %d minutes from %s", clients.height, len(minute_columns), path)
    return ExtractedBatch(
        source=SOURCE,
        location=str(path),
        content_hash=content_hash,
        freq_seconds=FREQ_SECONDS,
        rows=rows,
        kind="series",
        raw=raw,
        clients=clients,
        notes=notes,
    )


def instances_needed(invocations: pl.Expr, avg_duration_ms: pl.Expr) -> pl.Expr:
    """Instances a minute's invocations keep busy (Float64): the trace's need model.

    `0 if inv == 0 else max(1, ceil(inv * avg_ms / 60000))`, the one formula of it: the
    loader's concurrency and the replay's need (`simulation.trace`) both come from here.
    Multiplies before dividing, so exact multiples of a minute stay exact: 100 x 4200 ms is
    7 minutes, while 100 x (4200 / 60000) is 7.000000000000001, whose ceiling is 8.
    Null, negative or NaN counts are the caller's to handle.
    """
    busy = (invocations * avg_duration_ms / 60_000.0).ceil()
    return pl.when(invocations == 0).then(0.0).otherwise(pl.max_horizontal(pl.lit(1.0), busy))


def client_id_for(owner: str, app: str, function: str) -> str:
    """Short stable id of one function: blake2b of 'owner/app/function', 12 hex characters."""
    return hashlib.blake2b(f"{owner}/{app}/{function}".encode(), digest_size=6).hexdigest()


class _UnreadableTrace(Exception):
    """A trace file exists but cannot be used; becomes the batch's read_error."""


def _find_trace_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise SourceError(f"Azure Functions trace directory not found: {directory}")
    found: dict[str, Path] = {}
    problems: list[str] = []
    for name in _TRACE_FILES:
        matches = sorted(
            p for p in directory.iterdir() if p.is_file() and p.name.endswith(f"{name}.csv")
        )
        if not matches:
            problems.append(f"no file ending in '{name}.csv'")
        elif len(matches) > 1:
            listed = ", ".join(p.name for p in matches)
            problems.append(f"{len(matches)} files ending in '{name}.csv' ({listed})")
        else:
            found[name] = matches[0]
    if problems:
        raise SourceError(
            f"Azure Functions trace directory {directory}: {'; '.join(problems)}; "
            "expected exactly one each of *invocations.csv, *durations.csv, *memory.csv"
        )
    return found


def _read_strings(path: Path) -> pl.DataFrame:
    # Strings everywhere so a bad cell becomes null later instead of failing the read,
    # and empty cells stay "" so the raw frame shows exactly what was written.
    try:
        return pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    except (pl.exceptions.PolarsError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise _UnreadableTrace(f"cannot parse {path.name}: {first_line}") from error


def _check_columns(frames: dict[str, pl.DataFrame], files: dict[str, Path]) -> None:
    problems = []
    for name, required in _REQUIRED_COLUMNS.items():
        missing = [c for c in required if c not in frames[name].columns]
        if missing:
            problems.append(f"{files[name].name} lacks column(s) {', '.join(missing)}")
    if problems:
        raise _UnreadableTrace("; ".join(problems))


def _number(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)


def _measure(column: str) -> pl.Expr:
    # a duration or memory that is not a finite non-negative number is treated as missing
    value = _number(column)
    return pl.when(value.is_finite() & (value >= 0)).then(value).otherwise(None).alias(column)


def _identity(column: str) -> pl.Expr:
    # An empty identity cell is unknown: keeps the client id null rather than hashing "".
    return (
        pl.when(pl.col(column).str.strip_chars() == "")
        .then(None)
        .otherwise(pl.col(column))
        .alias(column)
    )


def _function_profiles(frames: dict[str, pl.DataFrame], notes: list[str]) -> pl.DataFrame:
    """One row per invocations row: identity, client_id, duration and app memory (imputed)."""
    durations = (
        frames["durations"]
        .select(*(_identity(c) for c in _IDENTITY), _measure("Average").alias("avg"))
        # a function listed twice keeps one duration (the mean) so the join cannot fan out
        .group_by(list(_IDENTITY))
        .agg(pl.col("avg").mean())
    )
    memory = (
        frames["memory"]
        .select(_identity("HashOwner"), _identity("HashApp"), _measure("AverageAllocatedMb"))
        .group_by("HashOwner", "HashApp")
        .agg(pl.col("AverageAllocatedMb").mean().alias("mem"))
    )
    # Medians of Float64 columns: a float, or None when empty (polars types Series.median as
    # any Python literal).
    median_duration = cast("float | None", durations["avg"].median())
    median_memory = cast("float | None", memory["mem"].median())

    functions = (
        frames["invocations"]
        .select(*(_identity(c) for c in _IDENTITY), pl.col("Trigger"))
        .with_row_index("_row")
        .join(durations, on=list(_IDENTITY), how="left", nulls_equal=False)
        .join(memory, on=["HashOwner", "HashApp"], how="left", nulls_equal=False)
        .sort("_row")
        .with_columns(
            duration_imputed=pl.col("avg").is_null(),
            memory_imputed=pl.col("mem").is_null(),
            avg_duration_ms=pl.col("avg").fill_null(median_duration),
            app_memory_mb=pl.col("mem").fill_null(median_memory),
        )
        .drop("avg", "mem")
    )
    ids = [
        None if None in key else client_id_for(*key)
        for key in functions.select(_IDENTITY).iter_rows()
    ]
    functions = functions.with_columns(client_id=pl.Series(ids, dtype=pl.String))

    imputed_duration = functions["duration_imputed"].sum()
    if imputed_duration:
        notes.append(
            f"{imputed_duration} function(s) without a usable Average in durations.csv: "
            f"used the median Average of all functions ({median_duration} ms)"
        )
    imputed_memory = functions["memory_imputed"].sum()
    if imputed_memory:
        notes.append(
            f"{imputed_memory} function(s) whose app has no usable memory.csv row: "
            f"used the median AverageAllocatedMb of all apps ({median_memory} MB)"
        )
    return functions


def _minute_columns(invocations: pl.DataFrame, notes: list[str]) -> list[str]:
    minutes = [c for c in invocations.columns if c.strip().isascii() and c.strip().isdigit()]
    ignored = [
        c for c in invocations.columns if c not in minutes and c not in (*_IDENTITY, "Trigger")
    ]
    if ignored:
        notes.append(f"ignored invocations.csv column(s): {', '.join(ignored)}")
    if not minutes:
        notes.append("invocations.csv has no minute columns")
    return minutes


def _unpivot_minutes(invocations: pl.DataFrame, minutes: list[str], day: date) -> pl.DataFrame:
    """Wide minute columns to one row per function and minute, with the original text kept."""
    position = pl.DataFrame(
        {"minute": minutes, "_position": range(len(minutes))},
        schema={"minute": pl.String, "_position": pl.Int64},
    )
    midnight = datetime(day.year, day.month, day.day)
    minute_number = pl.col("minute").str.strip_chars().cast(pl.Int64, strict=False)
    return (
        invocations.select(*_IDENTITY, "Trigger", *minutes)
        .with_row_index("_row")
        .unpivot(
            on=minutes,
            index=["_row", *_IDENTITY, "Trigger"],
            variable_name="minute",
            value_name="invocations",
        )
        # an empty unpivot (no minute columns) has Null-typed columns
        .with_columns(pl.col("minute", "invocations").cast(pl.String))
        .join(position, on="minute", how="left")
        .with_columns(
            ts=pl.lit(midnight, dtype=pl.Datetime("us")) + pl.duration(minutes=minute_number)
        )
    )


def _clients(functions: pl.DataFrame) -> pl.DataFrame:
    attributes = pl.struct(
        pl.col("HashOwner").alias("owner"),
        pl.col("HashApp").alias("app"),
        pl.col("HashFunction").alias("function"),
        pl.col("Trigger").alias("trigger"),
        pl.col("avg_duration_ms"),
        pl.col("app_memory_mb"),
        pl.col("duration_imputed"),
        pl.col("memory_imputed"),
    ).struct.json_encode()
    return (
        functions.filter(pl.col("client_id").is_not_null())
        .unique("client_id", keep="first", maintain_order=True)
        .select(
            pl.col("client_id"),
            pl.lit(None, dtype=pl.String).alias("tier"),
            pl.lit(None, dtype=pl.String).alias("region"),
            pl.col("Trigger").alias("service"),
            pl.lit(None, dtype=pl.Float64).alias("container_cpu"),
            pl.col("app_memory_mb").alias("container_memory_mb"),
            attributes.alias("attributes"),
        )
        .cast(pl.Schema(CLIENT_COLUMNS))
    )
