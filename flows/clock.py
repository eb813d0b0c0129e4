"""The clock plans are made on, and how far past it a plan must look.

The clock is the followed feed's (`warehouse.feeds.feed_clock`): the wall clock for a live
feed, the replay clock for a trace replayed live, the data's own clock (one bucket after the
newest usage) when no feed is followed. A cycle's pool is in place only once the cycle has
run, so its plan starts after the cycle is expected to end: the lead is the longest of the
recent cycles' durations (the median would leave every other cycle's first minutes cold), in
clock seconds (a trace replayed at N times real time moves its clock N seconds per second).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from core.times import utc_now
from flows.settings import Settings
from warehouse.cycles import recent_durations

if TYPE_CHECKING:
    from warehouse.feeds import Feed

# Before any cycle has finished: what a small cycle takes on the reference machine.
DEFAULT_CYCLE_SECONDS = 5.0


def clock_rate(feed: object | None) -> float:
    """Clock seconds per wall second: the replay speed of a trace feed, else 1."""
    if feed is not None and getattr(feed, "kind", None) == "trace":
        return float(getattr(feed, "params", {}).get("speed", 1.0))
    return 1.0


def expected_lead_seconds(settings: Settings, feed: object | None = None) -> float:
    """Clock seconds the next cycle should be done within (the longest of the recent ones)."""
    durations = recent_durations(settings.warehouse_path, settings.cycle_history_cycles)
    wall = max(durations) if durations else DEFAULT_CYCLE_SECONDS
    return wall * clock_rate(feed)


def planning_clock(settings: Settings, feed: Feed | None = None) -> datetime:
    """The clock a plan is made on now (see the module docstring)."""
    from warehouse.feeds import feed_clock, parse_feed, read_feed

    if feed is None:
        feed = read_feed(settings.warehouse_path) or parse_feed("none")
    return feed_clock(settings.warehouse_path, feed, utc_now())
