"""A sidecar of client attributes for an event log: `client_id` and any of `region`, `tier`,
`service` (CSV). An event log carries calls, not who makes them; the sidecar says who, so
event-log clients get the features and calendar regions synthetic and trace clients have.

It is small and all-or-nothing: a sidecar with a bad row is refused whole, with the row
named, before anything of its event log loads.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from warehouse.clients import ATTRIBUTES, attribute_problem
from warehouse.errors import SourceError
from warehouse.validation import is_client_id

MAX_FILE_BYTES = 16 * 1024 * 1024


def read_client_attributes(path: Path) -> pl.DataFrame:
    """client_id plus the attribute columns the file has (String), one row per client."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"No attributes file at {path}.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SourceError(
            f"The attributes file {path} is over {MAX_FILE_BYTES // 2**20} MiB: one row per "
            "client is expected."
        )
    try:
        raw = pl.read_csv(path, infer_schema=False, empty_string_is_null=True)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as error:
        raise SourceError(f"Cannot read the attributes file {path} as CSV: {error}") from None
    present = [c for c in ATTRIBUTES if c in raw.columns]
    if "client_id" not in raw.columns or not present:
        raise SourceError(
            f"The attributes file {path} needs a client_id column and at least one of "
            f"{', '.join(ATTRIBUTES)} (found: {', '.join(raw.columns) or 'none'})."
        )
    frame = raw.select(pl.col(c).str.strip_chars() for c in ("client_id", *present))
    for number, row in enumerate(frame.iter_rows(named=True), start=2):  # 1 is the header
        problem = _row_problem(row)
        if problem:
            raise SourceError(f"The attributes file {path}, line {number}: {problem}.")
    duplicated = frame.filter(pl.col("client_id").is_duplicated())["client_id"].unique()
    if duplicated.len():
        shown = ", ".join(sorted(duplicated.to_list())[:5])
        raise SourceError(f"The attributes file {path} names a client twice: {shown}.")
    return frame


def _row_problem(row: dict[str, str | None]) -> str | None:
    if not is_client_id(row["client_id"]):
        return f"client_id {row['client_id']!r} is not a client id"
    for name, value in row.items():
        if name != "client_id" and (problem := attribute_problem(name, value)):
            return problem
    return None
