"""The synthetic calendar: regional holidays and product launches, and their effect on demand.

Holidays (a dip for the region's clients) and product launches (a decaying spike) recur per
region on a fixed cadence staggered across regions (see `warehouse.sources.synthetic`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from warehouse.sources.base import CALENDAR_COLUMNS
from warehouse.sources.synthetic_clients import _DAY_S, _EPOCH, _HOUR_S, _REGIONS, _Clients
from warehouse.sources.synthetic_draws import _S_CALENDAR, _client_unit

# Holidays recur every 15 days per region (a period that is not a multiple of a week, so they
# wander over weekdays) and regions are staggered by 3 days; launches sit between them. Far
# more often than real life, on purpose: any two-week history shows every region a holiday,
# and any three days ahead hold an event, so forecasters always have an effect to learn.
_EVENT_PERIOD_DAYS = 15
_REGION_STAGGER_DAYS = 3
_LAUNCH_AFTER_HOLIDAY_DAYS = 7
_LAUNCH_LOCAL_HOUR = 10
_LAUNCH_HOURS = 6
_LAUNCH_DECAY_HOURS = 2.0


def _region_event_offsets(seed: int) -> np.ndarray:
    """Local day (mod the event period) of each region's holiday, staggered by the seed."""
    units = _client_unit(seed, _S_CALENDAR, np.arange(len(_REGIONS) + 1))
    base = int(units[-1] * _EVENT_PERIOD_DAYS)
    slots = np.empty(len(_REGIONS), dtype=np.int64)
    slots[np.argsort(units[:-1])] = np.arange(len(_REGIONS))
    return (base + _REGION_STAGGER_DAYS * slots) % _EVENT_PERIOD_DAYS


def _calendar_frame(seed: int, start_s: int, until_s: int) -> pl.DataFrame:
    """Every regional holiday and launch overlapping [start_s, until_s)."""
    offsets = _region_event_offsets(seed)
    events: list[tuple[str, datetime, datetime, str, str]] = []
    first_day = start_s // _DAY_S - 2  # local days reach up to a day either side of UTC
    last_day = until_s // _DAY_S + 2
    for (name, tz_h), offset in zip(_REGIONS, offsets, strict=True):
        tz_s = int(tz_h * _HOUR_S)
        for day in range(first_day, last_day + 1):
            phase = (day - offset) % _EVENT_PERIOD_DAYS
            if phase == 0:
                begin, length, label, kind = day * _DAY_S, _DAY_S, "public holiday", "holiday"
            elif phase == _LAUNCH_AFTER_HOLIDAY_DAYS:
                begin = day * _DAY_S + _LAUNCH_LOCAL_HOUR * _HOUR_S
                length, label, kind = _LAUNCH_HOURS * _HOUR_S, "product launch", "launch"
            else:
                continue
            utc_begin = begin - tz_s
            if utc_begin < until_s and utc_begin + length > start_s:
                events.append(
                    (
                        name,
                        _EPOCH + timedelta(seconds=utc_begin),
                        _EPOCH + timedelta(seconds=utc_begin + length),
                        f"{name} {label}",
                        kind,
                    )
                )
    events.sort(key=lambda event: (event[1], event[0]))
    return pl.DataFrame(events, schema=CALENDAR_COLUMNS, orient="row")


def _event_factors(seed: int, clients: _Clients, rows: slice, local_s: np.ndarray) -> np.ndarray:
    """Multiplier from the client's regional calendar: holiday dip, decaying launch spike."""
    offsets = _region_event_offsets(seed)[clients.region[rows]]
    local_day = local_s // _DAY_S
    phase = (local_day - offsets[:, None]) % _EVENT_PERIOD_DAYS
    hours_in = (local_s - local_day * _DAY_S) / _HOUR_S - _LAUNCH_LOCAL_HOUR
    in_launch = (phase == _LAUNCH_AFTER_HOLIDAY_DAYS) & (hours_in >= 0) & (hours_in < _LAUNCH_HOURS)
    launch = np.where(in_launch, np.exp(-hours_in / _LAUNCH_DECAY_HOURS), 0.0)
    holiday = np.where(phase == 0, clients.holiday_depth[rows, None], 1.0)
    return holiday * (1.0 + clients.launch_lift[rows, None] * launch)
