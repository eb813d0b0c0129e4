"""Validate a calendar file with Great Expectations, as usage is validated: a batch suite
(columns present, at least one row) decides whether the file can be judged at all, a row
suite marks rows to quarantine, and the kinds are bounded (each kind is a feature every
forecaster learns: a file must not be able to add hundreds).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from core.times import utc_now
from warehouse.sources.base import ExtractedBatch
from warehouse.sources.calendar_file import COLUMNS
from warehouse.validation import ValidationReport, quarantine_rows, run_suite

if TYPE_CHECKING:
    import pandas as pd

EARLIEST = datetime(2000, 1, 1)
AHEAD = timedelta(days=2 * 366)  # known events may be planned up to two years ahead
MAX_DURATION = timedelta(days=366)
MAX_KINDS = 16  # distinct kinds in the whole calendar table
# Whole-value patterns: GX's pandas regex check is `str.contains`, hence \A...\Z.
KIND_PATTERN = r"\A[a-z][a-z0-9_]{0,31}\Z"
REGION_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
MAX_NAME = 128
NOT_NULL = (
    "expect_column_values_to_not_be_null(region, start, end, name, kind): blank or unparsable"
)


def validate_calendar(
    batch: ExtractedBatch, stored_kinds: set[str], now: datetime | None = None
) -> ValidationReport:
    """Good rows (the `calendar` table's columns) and quarantined ones, or batch failures."""
    if batch.read_error:
        return _refused(batch, [f"the file is readable as CSV: {batch.read_error}"])
    missing = [c for c in COLUMNS if batch.raw is None or c not in batch.raw.columns]
    frame = _to_pandas(batch.rows)
    failures = _batch_failures(batch, frame, missing)
    if failures:
        return _refused(batch, failures)

    latest = (now or utc_now()) + AHEAD
    failed_by = {
        description: np.asarray(indexes, dtype=np.int64)
        for description, indexes in _row_failures(frame, latest).items()
    }
    failed = np.zeros(batch.rows.height, dtype=bool)
    for indexes in failed_by.values():
        failed[indexes] = True
    good = batch.rows.filter(pl.Series(~failed))
    kinds = stored_kinds | set(good.get_column("kind").unique().to_list())
    if len(kinds) > MAX_KINDS:
        new = sorted(kinds - stored_kinds)
        return _refused(
            batch,
            [
                f"at most {MAX_KINDS} kinds in the calendar (each is a forecasting feature): "
                f"{len(stored_kinds)} stored, this file adds {len(new)} ({', '.join(new[:8])}"
                f"{' ...' if len(new) > 8 else ''})"
            ],
        )
    labels: dict[int, list[str]] = {}
    for description, indexes in failed_by.items():
        for index in indexes.tolist():
            labels.setdefault(index, []).append(description)
    failed_idx = np.flatnonzero(failed)
    return ValidationReport(
        rows_in=batch.rows.height,
        good=good,
        quarantine=quarantine_rows(
            batch, failed_idx, ["; ".join(labels[i]) for i in failed_idx.tolist()]
        ),
        row_failures={d: int(i.size) for d, i in failed_by.items() if i.size},
    )


def _refused(batch: ExtractedBatch, failures: list[str]) -> ValidationReport:
    rows = batch.raw if batch.raw is not None else batch.rows
    sample = np.arange(min(3, rows.height))
    return ValidationReport(
        rows_in=rows.height,
        good=batch.rows.clear(),
        quarantine=quarantine_rows(batch, sample, ["; ".join(failures)] * sample.size),
        batch_failures=failures,
    )


def _to_pandas(rows: pl.DataFrame) -> pd.DataFrame:
    """What GX checks: the typed columns, timestamps as epoch seconds (GX compares datetimes
    row by row, slowly), the duration, and the text lengths."""
    import pandas as pd

    columns: list[pl.Expr] = []
    for name in ("region", "name", "kind"):
        if name in rows.columns:
            columns.append(pl.col(name))
    for name in ("start_ts", "end_ts"):
        if name in rows.columns:
            columns.append(pl.col(name).dt.epoch("s").alias(name))
    if {"start_ts", "end_ts"} <= set(rows.columns):
        columns.append((pl.col("end_ts") - pl.col("start_ts")).dt.total_seconds().alias("seconds"))
    view = rows.select(columns)
    return pd.DataFrame({name: view[name].to_pandas() for name in view.columns}, copy=False)


def _batch_failures(batch: ExtractedBatch, frame: pd.DataFrame, missing: list[str]) -> list[str]:
    import great_expectations as gx

    failures = []
    if missing:
        found = ", ".join(repr(c) for c in (batch.raw.columns if batch.raw is not None else []))
        failures.append(
            f"expect_column_to_exist: {', '.join(repr(c) for c in missing)} missing "
            f"(columns needed: {', '.join(COLUMNS)}; found: {found or 'none'})"
        )
        return failures
    (rows,) = run_suite(
        frame.head(1),
        "calendar-batch",
        [gx.expectations.ExpectTableRowCountToBeBetween(min_value=1)],
    )
    if not rows.success:
        failures.append("expect_table_row_count_to_be_between: the file has no rows")
    return failures


def _epoch_s(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds())


def _row_checks(latest: datetime) -> list[tuple[str, Any]]:
    import great_expectations as gx

    ex = gx.expectations
    return [
        (
            "expect_column_values_to_match_regex(region): 1-64 letters, digits or ._- ('global' "
            "for every client)",
            ex.ExpectColumnValuesToMatchRegex(column="region", regex=REGION_PATTERN),
        ),
        (
            "expect_column_values_to_match_regex(kind): a lowercase word (a-z, 0-9, _), "
            "at most 32 characters",
            ex.ExpectColumnValuesToMatchRegex(column="kind", regex=KIND_PATTERN),
        ),
        (
            f"expect_column_value_lengths_to_be_between(name, 1, {MAX_NAME})",
            ex.ExpectColumnValueLengthsToBeBetween(column="name", min_value=1, max_value=MAX_NAME),
        ),
        (
            f"expect_column_values_to_be_between(start, {EARLIEST:%Y-%m-%d}, {latest:%Y-%m-%d})",
            ex.ExpectColumnValuesToBeBetween(
                column="start_ts", min_value=_epoch_s(EARLIEST), max_value=_epoch_s(latest)
            ),
        ),
        (
            "expect_column_values_to_be_between(end - start, 1 s, 366 days): "
            "an end after its start, within a year",
            ex.ExpectColumnValuesToBeBetween(
                column="seconds", min_value=1, max_value=MAX_DURATION.total_seconds()
            ),
        ),
        (
            "expect_compound_columns_to_be_unique(region, start, name): duplicate event",
            ex.ExpectCompoundColumnsToBeUnique(column_list=["region", "start_ts", "name"]),
        ),
    ]


def _row_failures(frame: pd.DataFrame, latest: datetime) -> dict[str, list[int]]:
    """Row indexes failing each check. Nulls are one check over all five columns (GX skips
    nulls in the others, so a blank cell fails only here)."""
    import great_expectations as gx

    checks = _row_checks(latest)
    null_checks = [
        gx.expectations.ExpectColumnValuesToNotBeNull(column=c)
        for c in ("region", "start_ts", "end_ts", "name", "kind")
    ]
    expectations = null_checks + [e for _, e in checks]
    results = run_suite(frame, "calendar-rows", expectations)
    failed: dict[str, list[int]] = {}
    nulls = sorted(
        {
            index
            for result in results[: len(null_checks)]
            for index in (result.result.get("unexpected_index_list") or [])
        }
    )
    if nulls:
        failed[NOT_NULL] = nulls
    for (description, _), result in zip(checks, results[len(null_checks) :], strict=True):
        if result.exception_info and result.exception_info.get("raised_exception"):
            raise RuntimeError(f"validation of {description} errored: {result.exception_info}")
        if not result.success:
            failed[description] = list(result.result.get("unexpected_index_list") or [])
    return failed
