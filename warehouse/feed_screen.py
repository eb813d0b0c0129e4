"""Screen a feed's validated rows: only known clients' rows after their newest stored bucket load.

A feed never invents clients and never overwrites a stored row. After validation, rows of a
client the warehouse does not know (spool feeds) and rows whose bucket is at or before the
client's newest stored bucket (late or overlapping data) move to quarantine under
`known_client` / `not_late`, with the row as read, so nothing is lost either.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from warehouse.db import connect, fetch_frame
from warehouse.sources.base import ExtractedBatch
from warehouse.validation import ValidationReport

KNOWN_CLIENT = "known_client: the client is not in the warehouse (a feed never creates clients)"
NOT_LATE = (
    "not_late: at or before the client's newest stored bucket (a stored row is never overwritten)"
)

NEWEST_SCHEMA: dict[str, pl.DataType] = {"client_id": pl.String(), "newest": pl.Datetime("us")}


def read_newest_buckets(path: Path) -> pl.DataFrame:
    """Every known client with its newest stored usage bucket (null when it has none)."""
    if not Path(path).exists():
        return pl.DataFrame(schema=NEWEST_SCHEMA)
    with connect(path, read_only=True) as con:
        frame = fetch_frame(
            con,
            "SELECT c.client_id, n.newest FROM clients c LEFT JOIN"
            " (SELECT client_id, max(ts) AS newest FROM usage GROUP BY 1) n USING (client_id)",
        )
    if frame.height == 0:
        return pl.DataFrame(schema=NEWEST_SCHEMA)
    return frame.select(
        pl.col("client_id").cast(pl.String), pl.col("newest").cast(pl.Datetime("us"))
    )


def screen_report(
    batch: ExtractedBatch, report: ValidationReport, newest: pl.DataFrame, *, known_only: bool
) -> ValidationReport:
    """The report with late rows (and, when `known_only`, unknown clients' rows) moved from
    `good` to `quarantine`; a batch that failed as a whole is returned as it is."""
    if report.batch_failures or report.good.height == 0:
        return report
    failed = report.quarantine.get_column("row_number").to_numpy() - 1
    keep = np.ones(batch.rows.height, dtype=bool)
    keep[failed] = False
    good_index = np.flatnonzero(keep)
    if good_index.size != report.good.height:
        raise RuntimeError(
            f"validation of {batch.location} kept {report.good.height} rows but quarantined "
            f"{failed.size} of {batch.rows.height}: cannot tell which input rows are good"
        )
    bucket = pl.col("ts")
    if batch.kind == "events":
        bucket = bucket.dt.truncate(f"{batch.freq_seconds}s")
    judged = (
        report.good.select("client_id", bucket.alias("_bucket"))
        .with_columns(_index=pl.Series(good_index, dtype=pl.Int64))
        .join(
            newest.with_columns(_known=pl.lit(True)),
            on="client_id",
            how="left",
            maintain_order="left",
        )
        .select(
            "_index",
            unknown=pl.lit(known_only) & pl.col("_known").is_null(),
            late=pl.col("newest").is_not_null() & (pl.col("_bucket") <= pl.col("newest")),
        )
    )
    unknown = judged.get_column("unknown").to_numpy()
    late = judged.get_column("late").to_numpy() & ~unknown
    if not unknown.any() and not late.any():
        return report
    diverted = [
        _quarantine_rows(batch, good_index[mask], label)
        for mask, label in ((unknown, KNOWN_CLIENT), (late, NOT_LATE))
        if mask.any()
    ]
    failures = dict(report.row_failures)
    if unknown.any():
        failures[KNOWN_CLIENT] = int(unknown.sum())
    if late.any():
        failures[NOT_LATE] = int(late.sum())
    return replace(
        report,
        good=report.good.filter(pl.Series(~(unknown | late))),
        quarantine=pl.concat([report.quarantine, *diverted]).sort("row_number"),
        row_failures=failures,
    )


def _quarantine_rows(batch: ExtractedBatch, indexes: np.ndarray, label: str) -> pl.DataFrame:
    """The input rows at `indexes` as read, in validation's quarantine shape."""
    source = batch.raw if batch.raw is not None else batch.rows
    as_text = source[indexes.tolist()].select(pl.all().cast(pl.String))
    return pl.DataFrame(
        {
            "row_number": (indexes + 1).astype(np.int64),
            "row": [json.dumps(r, ensure_ascii=False) for r in as_text.iter_rows(named=True)],
            "expectation": [label] * indexes.size,
        },
        schema={"row_number": pl.Int64, "row": pl.String, "expectation": pl.String},
    )
