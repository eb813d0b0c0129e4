"""Validate an extracted batch with Great Expectations and split it into good and quarantined rows.

Two suites run on a pandas view of the batch (GX 1.x, ephemeral context, pandas datasource):
the batch suite (columns present, at least one row) decides whether the batch can be judged
at all; the row suite (keys not null, timestamps sane and on the grid, values finite and
non-negative, keys unique) marks rows. A third tiny suite checks the distinct client ids
against the id format, so the regex runs once per client rather than once per row.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from core.times import utc_now
from core.vocabulary import METRICS
from warehouse.sources.base import ExtractedBatch

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_CLIENT_ID_BODY = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
# The one definition of a client id. Anchored with ^...$ for pydantic / FastAPI (Rust regex,
# where $ is the very end). Python's $ also matches before a final newline, so Python code
# checks with `is_client_id` (and GE's pandas `str.contains` gets \A...\Z).
CLIENT_ID_PATTERN = rf"^{_CLIENT_ID_BODY}$"
_CLIENT_ID = re.compile(rf"\A{_CLIENT_ID_BODY}\Z")
EARLIEST_TS = datetime(2000, 1, 1)
MAX_VALUE = 1e15  # far above any real count; +inf lands above it
EXAMPLE_ROWS = 3


@dataclass
class ValidationReport:
    """What validation decided about one batch."""

    rows_in: int
    good: pl.DataFrame  # rows that passed, typed, in input order
    quarantine: pl.DataFrame  # row_number, row (JSON text), expectation
    batch_failures: list[str] = field(default_factory=list)
    row_failures: dict[str, int] = field(default_factory=dict)  # expectation -> rows failing

    @property
    def rows_failed(self) -> int:
        return self.quarantine.height

    @property
    def failed_share(self) -> float:
        return self.rows_failed / self.rows_in if self.rows_in else 0.0


def validate_batch(batch: ExtractedBatch, now: datetime | None = None) -> ValidationReport:
    """Run the batch, row and client-id suites; return good rows and quarantine rows."""
    rows = batch.rows
    if batch.read_error:
        return _batch_failure(batch, [f"the file is readable: {batch.read_error}"])
    frame = _to_pandas(batch)
    failures = _run_batch_suite(batch, frame)
    if failures:
        return _batch_failure(batch, failures)

    latest = (now or utc_now()) + timedelta(days=1)
    failed_by: dict[str, np.ndarray] = {}
    for description, row_indexes in _run_row_suite(batch, frame, latest).items():
        failed_by[description] = np.asarray(row_indexes, dtype=np.int64)
    for description, bad_ids in _run_client_id_suite(rows).items():
        mask = rows["client_id"].is_in(bad_ids).to_numpy()
        failed_by[description] = np.flatnonzero(mask)

    failed = np.zeros(rows.height, dtype=bool)
    for indexes in failed_by.values():
        failed[indexes] = True
    failed_idx = np.flatnonzero(failed)
    labels: dict[int, list[str]] = {}
    for description, indexes in failed_by.items():
        for index in indexes.tolist():
            labels.setdefault(index, []).append(description)
    quarantine = quarantine_rows(
        batch, failed_idx, ["; ".join(labels[i]) for i in failed_idx.tolist()]
    )
    good = rows.filter(pl.Series(~failed)) if failed_idx.size else rows
    return ValidationReport(
        rows_in=rows.height,
        good=good,
        quarantine=quarantine,
        row_failures={d: int(i.size) for d, i in failed_by.items() if i.size},
    )


def describe_rejection(batch: ExtractedBatch, report: ValidationReport, max_share: float) -> str:
    """One paragraph naming the input, what failed, and example rows."""
    if report.batch_failures:
        what = "; ".join(report.batch_failures)
        head = f"Rejected {batch.location}: the batch failed {what}."
    else:
        counts = ", ".join(f"{d} ({n} rows)" for d, n in report.row_failures.items())
        head = (
            f"Rejected {batch.location}: {report.rows_failed} of {report.rows_in} rows "
            f"({report.failed_share:.1%}) failed validation, above the {max_share:.1%} limit. "
            f"Failed expectations: {counts}."
        )
    examples = report.quarantine.head(EXAMPLE_ROWS)
    if examples.height:
        shown = "; ".join(
            f"row {n}: {r}" for n, r in zip(examples["row_number"], examples["row"], strict=True)
        )
        head += f" Example rows: {shown}."
    return head + " Nothing was loaded."


def _batch_failure(batch: ExtractedBatch, failures: list[str]) -> ValidationReport:
    sample = batch.rows.head(EXAMPLE_ROWS)
    quarantine = quarantine_rows(
        batch, np.arange(sample.height), ["; ".join(failures)] * sample.height
    )
    return ValidationReport(
        rows_in=batch.rows.height,
        good=batch.rows.clear(),
        quarantine=quarantine,
        batch_failures=failures,
    )


@cache
def _context() -> Any:
    """One ephemeral GX context per process: quiet, offline, in memory."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.data_sources.add_pandas("prewarm")
    # GX fingerprints every in-memory batch by hashing all of it (twice per validation),
    # metadata we never read that costs ~0.5 s per million rows: switch it off.
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0
    return context


def run_suite(frame: pd.DataFrame, name: str, expectations: list[Any]) -> list[Any]:
    """Validate a pandas frame against expectations; return their results in the order of
    `expectations`. GX returns them grouped by column, in the order each column first
    appears, so a suite not written column by column gets them back in another order:
    results are matched to expectations by type and arguments, never by position."""
    import great_expectations as gx

    context = _context()
    source = context.data_sources.get("prewarm")
    asset = source.add_dataframe_asset(name=f"{name}-{len(source.assets)}")
    definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = gx.ExpectationSuite(name=f"{name}-{len(source.assets)}", expectations=expectations)
    result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False}
    )
    source.delete_asset(asset.name)
    by_key: dict[str, list[Any]] = {}
    for outcome in result.results:
        by_key.setdefault(_expectation_key(outcome.expectation_config), []).append(outcome)
    return [by_key[_expectation_key(e.configuration)].pop(0) for e in expectations]


def _expectation_key(config: Any) -> str:
    """An expectation's type and arguments (not the batch it ran on), as one string."""
    arguments = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return f"{config.type}:{json.dumps(arguments, sort_keys=True, default=str)}"


def _to_pandas(batch: ExtractedBatch) -> pd.DataFrame:
    """The pandas view GX checks, built column by column (no block consolidation copy).

    Client ids go as categories (cheap, same nulls). Timestamps go as integer epoch seconds,
    null where the source could not parse them: GX compares datetimes row by row, 20x slower.
    """
    import pandas as pd

    rows = batch.rows
    columns = []
    if "client_id" in rows.columns:
        columns.append(pl.col("client_id").cast(pl.Categorical))
    if "ts" in rows.columns:
        epoch_s = pl.col("ts").cast(pl.Datetime("us")).dt.epoch("s")
        columns.append(epoch_s.alias("ts"))
        if batch.kind == "series":
            # Seconds past the grid; 0 for an aligned timestamp.
            columns.append((epoch_s % batch.freq_seconds).alias("ts_offset_s"))
    columns += [pl.col(c) for c in batch.value_columns]
    view = rows.select(columns)
    return pd.DataFrame({name: view[name].to_pandas() for name in view.columns}, copy=False)


def _run_batch_suite(batch: ExtractedBatch, frame: pd.DataFrame) -> list[str]:
    """Columns present and at least one row: judged on the first row alone, which is enough."""
    import great_expectations as gx

    expectations: list[Any] = [
        gx.expectations.ExpectColumnToExist(column="client_id"),
        gx.expectations.ExpectColumnToExist(column="ts"),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    failures = []
    for result in run_suite(frame.head(1), "batch", expectations):
        if result.success:
            continue
        config = result.expectation_config
        kind = config.type
        if kind == "expect_column_to_exist":
            found = ", ".join(repr(c) for c in batch.rows.columns) or "none"
            failures.append(
                f"expect_column_to_exist: column {config.kwargs['column']!r} is missing "
                f"(columns found: {found}; wrong delimiter or header?)"
            )
        elif kind == "expect_table_row_count_to_be_between":
            failures.append("expect_table_row_count_to_be_between: the input has no rows")
        else:
            failures.append(f"{kind}: {result.result}")
    unknown = sorted(set(batch.value_columns) - set(METRICS))
    if batch.kind == "series" and unknown:
        failures.append(
            f"metric columns are known metrics: unknown {unknown}, known {list(METRICS)}"
        )
    return failures


def _row_expectations(batch: ExtractedBatch, latest: datetime) -> list[tuple[str, Any]]:
    import great_expectations as gx

    ex = gx.expectations
    checks: list[tuple[str, Any]] = [
        (
            "expect_column_values_to_not_be_null(client_id)",
            ex.ExpectColumnValuesToNotBeNull(column="client_id"),
        ),
        (
            "expect_column_values_to_not_be_null(ts): missing or unparsable timestamp",
            ex.ExpectColumnValuesToNotBeNull(column="ts"),
        ),
        (
            f"expect_column_values_to_be_between(ts, {EARLIEST_TS:%Y-%m-%d}, "
            f"{latest:%Y-%m-%d %H:%M})",
            ex.ExpectColumnValuesToBeBetween(
                column="ts", min_value=_epoch_s(EARLIEST_TS), max_value=_epoch_s(latest)
            ),
        ),
    ]
    if batch.kind == "series":
        checks += [
            (
                "expect_column_values_to_be_between(ts_offset_s, 0, 0): "
                f"ts not on the {batch.freq_seconds}s grid",
                ex.ExpectColumnValuesToBeBetween(column="ts_offset_s", min_value=0, max_value=0),
            ),
            (
                "expect_compound_columns_to_be_unique(client_id, ts): duplicate key",
                ex.ExpectCompoundColumnsToBeUnique(column_list=["client_id", "ts"]),
            ),
        ]
    for column in batch.value_columns:
        checks += [
            (
                f"expect_column_values_to_not_be_null({column}): empty, non-numeric or NaN",
                ex.ExpectColumnValuesToNotBeNull(column=column),
            ),
            (
                f"expect_column_values_to_be_between({column}, 0, {MAX_VALUE:.0e}): "
                "negative or infinite",
                ex.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=MAX_VALUE),
            ),
        ]
    return checks


def _epoch_s(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds())


def _run_row_suite(
    batch: ExtractedBatch, frame: pd.DataFrame, latest: datetime
) -> dict[str, list[int]]:
    checks = _row_expectations(batch, latest)
    results = run_suite(frame, "rows", [expectation for _, expectation in checks])
    failed: dict[str, list[int]] = {}
    for (description, _), result in zip(checks, results, strict=True):
        if result.exception_info and result.exception_info.get("raised_exception"):
            raise RuntimeError(f"validation of {description} errored: {result.exception_info}")
        if not result.success:
            failed[description] = list(result.result.get("unexpected_index_list") or [])
    return failed


def is_client_id(text: object) -> bool:
    """Whether `text` is a valid client id, all of it (no trailing newline, NUL or path)."""
    return isinstance(text, str) and _CLIENT_ID.fullmatch(text) is not None


def _run_client_id_suite(rows: pl.DataFrame) -> dict[str, list[str]]:
    import great_expectations as gx

    ids = rows.select(pl.col("client_id").drop_nulls().unique().sort())
    if ids.height == 0:
        return {}
    expectation = gx.expectations.ExpectColumnValuesToMatchRegex(
        column="client_id", regex=_CLIENT_ID.pattern
    )
    (result,) = run_suite(ids.to_pandas(), "client_ids", [expectation])
    if result.success:
        return {}
    bad = [ids["client_id"][i] for i in result.result.get("unexpected_index_list") or []]
    description = (
        "expect_column_values_to_match_regex(client_id): 1-128 letters, digits or ._:@- "
        "starting with a letter or digit"
    )
    return {description: bad}


def quarantine_rows(batch: ExtractedBatch, indexes: np.ndarray, labels: list[str]) -> pl.DataFrame:
    """The original rows at `indexes` as JSON text, with their 1-based row numbers."""
    source = batch.raw if batch.raw is not None else batch.rows
    picked = source[indexes.tolist()] if indexes.size else source.clear()
    as_text = picked.select(pl.all().cast(pl.String))
    rows_json = [json.dumps(row, ensure_ascii=False) for row in as_text.iter_rows(named=True)]
    return pl.DataFrame(
        {
            "row_number": (indexes + 1).astype(np.int64),
            "row": rows_json,
            "expectation": labels,
        },
        schema={"row_number": pl.Int64, "row": pl.String, "expectation": pl.String},
    )
