"""Event-log reader (CSV, Parquet, JSONL) and the aggregation of events to a usage series.

An event log holds interaction records: `client_id`, `ts` and any of the numeric fields in
`EVENT_FIELDS`, per call (duration_ms, cpu_ms, bytes_in, bytes_out ...) or per interval
(requests, concurrency, cpu_cores ...). `read_events` keeps every value as read (`raw`) and
types the recognised columns (`rows`); `aggregate_events` turns clean rows into usage buckets.

Aggregation rules, per client and bucket (`ts` truncated to `freq_seconds`):

- requests    = sum(requests) when the column exists, else the number of events;
- concurrency = max(concurrency) when the column exists, else from duration_ms by Little's
  law: ceil(sum(duration_ms) / (freq_seconds * 1000)), at least 1 when the bucket had calls
  (requests > 0);
- cpu_cores   = mean(cpu_cores) when the column exists, else sum(cpu_ms) / (freq_seconds * 1000);
- memory_mb   = max(memory_mb);
- net_mbps    = mean(net_mbps) when the column exists, else
  (sum(bytes_in) + sum(bytes_out)) * 8 / 1e6 / freq_seconds over whichever byte columns exist;
- io_ops      = sum(io_ops).

A metric appears only when the columns it derives from are present: unknown is not zero.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from core.vocabulary import METRICS
from warehouse.errors import SourceError
from warehouse.sources.attributes_file import read_client_attributes
from warehouse.sources.base import ExtractedBatch, hash_files

log = logging.getLogger(__name__)

SOURCE = "events"

EVENT_FIELDS: tuple[str, ...] = (
    *METRICS,
    "duration_ms",
    "cpu_ms",
    "bytes_in",
    "bytes_out",
)

_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}

# Tried in order after normalising 'T'/'Z'; the first that parses a value wins.
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_EPOCH_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)$"


def read_events(path: Path, freq_seconds: int, attributes: Path | None = None) -> ExtractedBatch:
    """Read an event log (.csv, .parquet/.pq, .jsonl/.ndjson) into an 'events' batch; with
    `attributes`, a sidecar CSV naming each client's region, tier and service."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"event log not found: {path}")
    if not path.is_file():
        raise SourceError(f"event log is not a file: {path}")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        supported = ", ".join(_FORMATS)
        raise SourceError(
            f"cannot read {path.name}: unsupported extension '{path.suffix}' "
            f"(supported: {supported})"
        )

    clients = read_client_attributes(attributes) if attributes is not None else None
    sidecar = [Path(attributes)] if attributes is not None else []
    batch = ExtractedBatch(
        source=SOURCE,
        location=str(path),
        # The sidecar is part of the content: the same calls with new attributes load.
        content_hash=hash_files([path, *sidecar], freq_seconds),
        freq_seconds=freq_seconds,
        rows=pl.DataFrame(schema={"client_id": pl.String(), "ts": pl.Datetime("us")}),
        kind="events",
        raw=pl.DataFrame(schema={"client_id": pl.String(), "ts": pl.String()}),
        clients=clients,
    )
    if _is_blank(path):
        batch.notes.append(f"{path.name} is empty")
        return batch
    try:
        raw = _read_strings(path, fmt)
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        batch.read_error = f"cannot parse {path.name} as {fmt}: {message}"
        return batch

    batch.raw = raw
    batch.rows = _typed_rows(raw)
    ignored = [c for c in raw.columns if c not in ("client_id", "ts", *EVENT_FIELDS)]
    if ignored:
        batch.notes.append(f"ignored unknown column(s): {', '.join(ignored)}")
    if clients is not None and "client_id" in batch.rows.columns:
        strangers = clients.join(
            batch.rows.select("client_id").unique(), on="client_id", how="anti"
        )
        if strangers.height:
            batch.notes.append(
                f"{strangers.height} attribute row(s) name clients without events here: ignored"
            )
    log.info("read %d events (%d columns) from %s", raw.height, len(raw.columns), path)
    return batch


def aggregate_events(rows: pl.DataFrame, freq_seconds: int) -> pl.DataFrame:
    """Events to usage buckets per client (rules in the module docstring), Float64 metrics."""
    missing = [c for c in ("client_id", "ts") if c not in rows.columns]
    if missing:
        raise SourceError(f"cannot aggregate events without column(s): {', '.join(missing)}")
    present = set(rows.columns)
    width_ms = freq_seconds * 1000.0

    calls = pl.col("requests").sum() if "requests" in present else pl.len()
    metrics: dict[str, pl.Expr] = {"requests": calls}
    if "concurrency" in present:
        metrics["concurrency"] = pl.col("concurrency").max()
    elif "duration_ms" in present:
        # Little's law: busy time over bucket length is the mean number of calls in flight.
        in_flight = (pl.col("duration_ms").sum() / width_ms).ceil()
        metrics["concurrency"] = (
            pl.when(calls > 0).then(pl.max_horizontal(in_flight, pl.lit(1.0))).otherwise(in_flight)
        )
    if "cpu_cores" in present:
        metrics["cpu_cores"] = pl.col("cpu_cores").mean()
    elif "cpu_ms" in present:
        metrics["cpu_cores"] = pl.col("cpu_ms").sum() / width_ms
    if "memory_mb" in present:
        metrics["memory_mb"] = pl.col("memory_mb").max()
    if "net_mbps" in present:
        metrics["net_mbps"] = pl.col("net_mbps").mean()
    elif present & {"bytes_in", "bytes_out"}:
        sent = [pl.col(c).sum() for c in ("bytes_in", "bytes_out") if c in present]
        metrics["net_mbps"] = pl.sum_horizontal(sent) * 8 / 1e6 / freq_seconds
    if "io_ops" in present:
        metrics["io_ops"] = pl.col("io_ops").sum()

    ordered = [m for m in METRICS if m in metrics]
    return (
        rows.group_by(
            pl.col("client_id").cast(pl.String),
            pl.col("ts").cast(pl.Datetime("us")).dt.truncate(f"{freq_seconds}s"),
        )
        .agg(**{m: metrics[m].cast(pl.Float64) for m in ordered})
        .select("client_id", "ts", *ordered)
        .sort("client_id", "ts", nulls_last=True)
    )


def parse_timestamps(text: pl.Expr) -> pl.Expr:
    """ISO-8601 (offset or Z converted to UTC, naive taken as UTC) or epoch seconds -> naive UTC."""
    normal = (
        text.str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[Tt ]", "$1 ")
        .str.replace(r"[zZ]$", "+00:00")
    )
    candidates = [
        normal.str.to_datetime(
            fmt, time_unit="us", time_zone="UTC", strict=False
        ).dt.replace_time_zone(None)
        for fmt in _AWARE_FORMATS
    ]
    candidates += [
        normal.str.to_datetime(fmt, time_unit="us", strict=False) for fmt in _NAIVE_FORMATS
    ]
    epoch_us = (
        pl.when(normal.str.contains(_EPOCH_PATTERN))
        .then(normal.cast(pl.Float64, strict=False) * 1e6)
        .round()
        .cast(pl.Int64, strict=False)
    )
    candidates.append(pl.from_epoch(epoch_us, time_unit="us"))
    return pl.coalesce(candidates).cast(pl.Datetime("us"))


def _is_blank(path: Path) -> bool:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _read_strings(path: Path, fmt: str) -> pl.DataFrame:
    """The file as read, every column String, row for row."""
    if fmt == "csv":
        # "" stays "" so quarantine shows what was written; typing makes it null.
        return pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    if fmt == "jsonl":
        names = pl.scan_ndjson(path, infer_schema_length=None).collect_schema().names()
        return pl.read_ndjson(path, schema=dict.fromkeys(names, pl.String()))
    frame = pl.read_parquet(path)
    return frame.select(_as_text(name, dtype) for name, dtype in frame.schema.items())


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_nested():
        # nested values have no plain cast to String; keep them as JSON text
        wrapped = pl.struct(pl.col(name).alias("v")).struct.json_encode()
        text = wrapped.str.strip_prefix('{"v":').str.strip_suffix("}")
        return pl.when(pl.col(name).is_null()).then(None).otherwise(text).alias(name)
    return pl.col(name).cast(pl.String, strict=False)


def _typed_rows(raw: pl.DataFrame) -> pl.DataFrame:
    """Recognised columns typed: client_id String, ts naive UTC, numeric fields Float64."""
    typed: list[pl.Expr] = []
    if "client_id" in raw.columns:
        value = pl.col("client_id").str.strip_chars()
        typed.append(pl.when(value == "").then(None).otherwise(value).alias("client_id"))
    if "ts" in raw.columns:
        typed.append(parse_timestamps(pl.col("ts")).alias("ts"))
    typed += [
        pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)
        for name in raw.columns
        if name in EVENT_FIELDS
    ]
    if not typed:
        # nothing recognised: keep the row count so rows stay aligned with raw
        return raw.drop(raw.columns)
    return raw.select(typed)
