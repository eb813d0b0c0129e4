"""Time conventions: the warehouse stores naive UTC; the API speaks aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl


def utc_now() -> datetime:
    """Naive UTC now, the warehouse's timestamp convention."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(moment: datetime) -> datetime:
    """A datetime as naive UTC (naive input is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def aware_utc(moment: datetime) -> datetime:
    """A datetime as aware UTC (naive input is taken to be UTC already), for API answers."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def naive_utc_expr(frame: pl.DataFrame, column: str) -> pl.Expr:
    """`column` of `frame` as naive UTC microseconds, whatever zone and unit it came in."""
    expr = pl.col(column)
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.cast(pl.Datetime("us"))


def floor_to(moment: datetime, tick: timedelta) -> datetime:
    """`moment` rounded down to a whole multiple of `tick` since the epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return moment - (moment - epoch) % tick
