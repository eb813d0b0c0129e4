"""The one live feed a warehouse follows, its clock, and the batches it has ready.

A warehouse records its feed in `feed_state` (one row). A cycle ingests only from it,
incrementally after the watermark (the newest stored usage bucket), never overwriting a
stored row and never inventing clients:

- `none`: nothing arrives; the clock is one bucket past the watermark.
- `spool:DIR`: new event files (CSV/Parquet/JSONL, as `prewarm ingest --source events`
  reads), each taken exactly once with its rows (see `feed_sources`). Unknown clients' rows
  and rows at or before a client's newest bucket go to quarantine (`feed_screen`).
- `trace:DIR`: an Azure Functions 2019 trace replayed live: sim_now = sim_start +
  (wall_now - wall_start) x speed; each ingest loads the whole minutes after the watermark
  that have ended by sim_now.
- `synthetic`: the seeded generator, extended forward over the warehouse's own population;
  the first ingest into an empty warehouse loads `days` of history.

Following a trace or synthetic feed requires its clients to be exactly the warehouse's
clients with usage (an empty warehouse is fine); otherwise `FeedMismatch` says why and
nothing is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import polars as pl

from core.errors import PrewarmError
from core.times import naive_utc
from warehouse.db import connect, fetch_frame, fetch_one, fetch_value, transaction
from warehouse.feed_sources import (
    PendingBatch,
    load_trace,
    pending_spool,
    synthetic_extension,
    synthetic_history,
    synthetic_ids,
    trace_minutes,
    trace_population,
    trace_span,
)
from warehouse.sources.azure_functions import FREQ_SECONDS as TRACE_FREQ_SECONDS
from warehouse.sources.base import ExtractedBatch

log = logging.getLogger(__name__)

FeedKind = Literal["none", "spool", "trace", "synthetic"]
FEED_KINDS: tuple[str, ...] = ("none", "spool", "trace", "synthetic")
SPEC_HELP = "none | spool:DIR | trace:DIR | synthetic"

# Used when a feed is followed without them; flows fill them from Settings first.
DEFAULT_FREQ_SECONDS = 300
DEFAULT_TRACE_DAY = date(2019, 7, 15)
DEFAULT_SYNTHETIC = {"clients": 50, "seed": 7, "freq_seconds": DEFAULT_FREQ_SECONDS, "days": 14}
EXAMPLE_IDS = 3


class FeedError(PrewarmError):
    """A feed spec, or the feed a warehouse follows, cannot be used as it is."""


class FeedMismatch(FeedError):
    """A feed's population is not the warehouse's: following it would invent or lose clients."""


@dataclass(frozen=True)
class Feed:
    """Where a warehouse's new usage comes from; `params` hold its population and clock."""

    kind: FeedKind
    location: Path | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def describe(self) -> str:
        """'none', 'spool:/abs/dir', 'trace:/abs/dir' or 'synthetic'."""
        if self.location is None:
            return self.kind
        return f"{self.kind}:{self.location}"


def parse_feed(text: str, *, speed: float = 1.0) -> Feed:
    """A feed from its spec (none | spool:DIR | trace:DIR | synthetic); `speed` is the
    replay speed of a trace (trace minutes per wall minute)."""
    spec = text.strip()
    kind, _, location = spec.partition(":")
    kind = kind.lower()
    if kind not in FEED_KINDS:
        raise FeedError(f"Feed {text!r} is not understood: give one of {SPEC_HELP}.")
    if not speed > 0:
        raise FeedError(f"Replay speed {speed} must be above 0 (e.g. 1, 60).")
    if kind != "trace" and speed != 1.0:
        raise FeedError(f"--speed {speed} applies to trace feeds only, not to {kind}.")
    if kind in ("none", "synthetic"):
        if location:
            raise FeedError(f"Feed {text!r}: the {kind} feed takes no directory; give '{kind}'.")
        return Feed(kind=cast(FeedKind, kind))
    if not location.strip():
        raise FeedError(f"Feed {text!r} needs a directory: give '{kind}:DIR'.")
    directory = Path(location.strip()).expanduser().resolve()
    if not directory.is_dir():
        raise FeedError(
            f"Feed {text!r}: no directory at {directory}. Create it (or fix the path) first."
        )
    params: dict[str, Any] = {"speed": float(speed)} if kind == "trace" else {}
    return Feed(kind=cast(FeedKind, kind), location=directory, params=params)


def read_feed(path: Path) -> Feed | None:
    """The feed the warehouse follows, or None when it follows none recorded (or is absent)."""
    if not Path(path).exists():
        return None
    with connect(path, read_only=True) as con:
        row = fetch_one(con, "SELECT kind, location, params FROM feed_state WHERE id = 1")
    if row is None:
        return None
    kind, location, params = row
    return Feed(
        kind=cast(FeedKind, kind),
        location=Path(location) if location else None,
        params=json.loads(params) if isinstance(params, str) else dict(params or {}),
    )


def watermark(path: Path) -> datetime | None:
    """The newest stored usage bucket, or None for an empty (or absent) warehouse."""
    if not Path(path).exists():
        return None
    with connect(path, read_only=True) as con:
        value = fetch_value(con, "SELECT max(ts) FROM usage")
    return cast(datetime | None, value)


def follow_feed(path: Path, feed: Feed, *, now: datetime) -> Feed:
    """Check the feed's population against the warehouse, then record it as the feed this
    warehouse follows; return it as stored (params filled, a trace's clock anchored at now).

    Raises FeedMismatch (nothing written) when its clients are not the warehouse's."""
    now = naive_utc(now)
    stored = _stored_population(path)
    newest = watermark(path)
    if feed.kind == "spool":
        params = {"freq_seconds": int(feed.params.get("freq_seconds", DEFAULT_FREQ_SECONDS))}
        _check_widths(feed, stored, params["freq_seconds"])
    elif feed.kind == "synthetic":
        params = {k: int(feed.params.get(k, v)) for k, v in DEFAULT_SYNTHETIC.items()}
        _check_synthetic(path, feed, params, stored, newest)
    elif feed.kind == "trace":
        params = _anchor_trace(path, feed, stored, newest, now)
    else:
        params = {}
    followed = replace(feed, params=params)
    with connect(path) as con, transaction(con):
        con.execute(
            "INSERT OR REPLACE INTO feed_state (id, kind, location, params, updated_at)"
            " VALUES (1, ?, ?, ?, ?)",
            [
                followed.kind,
                str(followed.location) if followed.location else None,
                json.dumps(params),
                now,
            ],
        )
    log.info("warehouse %s follows %s (%s)", path, followed.describe(), params)
    return followed


def feed_clock(path: Path, feed: Feed, wall_now: datetime) -> datetime:
    """The feed's now: a trace's replay clock; for none, one bucket past the watermark (wall
    now when empty); for spool and synthetic, wall now."""
    wall_now = naive_utc(wall_now)
    if feed.kind == "trace":
        sim_start, wall_start, speed = _trace_clock(feed)
        return sim_start + (wall_now - wall_start) * speed
    if feed.kind == "none":
        if not Path(path).exists():
            return wall_now
        with connect(path, read_only=True) as con:
            row = fetch_one(
                con,
                "SELECT u.ts, max(c.freq_seconds) FROM usage u JOIN clients c USING (client_id)"
                " WHERE u.ts = (SELECT max(ts) FROM usage) GROUP BY u.ts",
            )
        if row is None:
            return wall_now
        return row[0] + timedelta(seconds=int(row[1]))
    return wall_now


def pending_batches(path: Path, feed: Feed, clock_now: datetime) -> list[PendingBatch]:
    """The batches the feed has ready at `clock_now`, in load order.

    Raises FeedMismatch when the warehouse holds usage of clients the feed does not make."""
    clock_now = naive_utc(clock_now)
    if feed.kind == "spool":
        directory = _location(feed)
        if not directory.is_dir():
            raise FeedError(
                f"The spool {directory} this warehouse follows does not exist (any more). "
                "Recreate it, or follow another feed: prewarm feed follow SPEC."
            )
        freq = int(feed.params.get("freq_seconds", DEFAULT_FREQ_SECONDS))
        return pending_spool(directory, freq, _taken_sizes(path))
    if feed.kind == "trace":
        return _pending_trace(path, feed, clock_now)
    if feed.kind == "synthetic":
        return _pending_synthetic(path, feed, clock_now)
    return []


def read_taken_files(path: Path) -> pl.DataFrame:
    """Every spool file taken, newest first: path, status, size_bytes, batch_id, taken_at."""
    if not Path(path).exists():
        return pl.DataFrame(
            schema={
                "path": pl.String,
                "status": pl.String,
                "size_bytes": pl.Int64,
                "batch_id": pl.String,
                "taken_at": pl.Datetime("us"),
            }
        )
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            "SELECT path, status, size_bytes, batch_id, taken_at FROM feed_files"
            " ORDER BY taken_at DESC, path",
        )


def is_taken(path: Path, taken_path: str, content_hash: str) -> bool:
    """Whether this file (path and content) was taken already."""
    if not Path(path).exists():
        return False
    with connect(path, read_only=True) as con:
        return bool(
            fetch_value(
                con,
                "SELECT count(*) FROM feed_files WHERE path = ? AND content_hash = ?",
                [taken_path, content_hash],
            )
        )


# --- population ---------------------------------------------------------------------------


def _stored_population(path: Path) -> dict[str, int]:
    """Clients with usage and their bucket width in seconds."""
    if not Path(path).exists():
        return {}
    with connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT c.client_id, c.freq_seconds FROM clients c"
            " WHERE EXISTS (SELECT 1 FROM usage u WHERE u.client_id = c.client_id)"
        ).fetchall()
    return {client_id: int(freq) for client_id, freq in rows}


def _known_clients(path: Path) -> set[str]:
    if not Path(path).exists():
        return set()
    with connect(path, read_only=True) as con:
        return {r[0] for r in con.execute("SELECT client_id FROM clients").fetchall()}


def _population_message(
    path: Path, feed: Feed, feed_ids: set[str], stored: set[str], lead: str
) -> str:
    only_feed = sorted(feed_ids - stored)
    only_stored = sorted(stored - feed_ids)
    parts = [
        f"{len(ids)} only in the {where} (e.g. {', '.join(ids[:EXAMPLE_IDS])})"
        for ids, where in ((only_feed, "feed"), (only_stored, "warehouse"))
        if ids
    ]
    if feed.kind == "synthetic":
        hint = (
            "Follow it with an empty warehouse (e.g. PREWARM_DATA_DIR=data/synthetic), or make "
            "the generator's population this warehouse's (PREWARM_SYNTHETIC_CLIENTS, "
            "PREWARM_SYNTHETIC_SEED, PREWARM_FREQ)"
        )
    else:
        hint = (
            "Follow it with an empty warehouse (e.g. PREWARM_DATA_DIR=data/replay) to replay it, "
            "or follow the trace that made these clients"
        )
    return (
        f"{lead} {feed.describe()}: it makes {len(feed_ids)} clients and the warehouse {path} "
        f"holds usage of {len(stored)}; {len(only_feed) + len(only_stored)} differ "
        f"({'; '.join(parts)}). Nothing was written. {hint}; or follow a feed that creates no "
        "clients: prewarm feed follow none (or spool:DIR)."
    )


def _check_population(
    path: Path, feed: Feed, feed_ids: set[str], stored: dict[str, int], freq_seconds: int
) -> None:
    """Refuse unless the warehouse is empty or holds exactly the feed's clients, on its grid."""
    if not stored:
        return
    if set(stored) != feed_ids:
        raise FeedMismatch(
            _population_message(path, feed, feed_ids, set(stored), "Refused to follow")
        )
    _check_widths(feed, stored, freq_seconds)


def _check_widths(feed: Feed, stored: dict[str, int], freq_seconds: int) -> None:
    """Refuse a feed whose buckets are not the width its clients are stored at (their
    batches would all be rejected)."""
    other = sorted(cid for cid, freq in stored.items() if freq != freq_seconds)
    if other:
        raise FeedMismatch(
            f"Refused to follow {feed.describe()}: it makes {freq_seconds}s buckets but "
            f"{len(other)} of the warehouse's clients are stored at another width (e.g. "
            f"{', '.join(f'{c} ({stored[c]}s)' for c in other[:EXAMPLE_IDS])}). Nothing was "
            "written. Set PREWARM_FREQ to the stored width, or use an empty warehouse."
        )


def _check_still_matches(path: Path, feed: Feed, feed_ids: set[str]) -> None:
    """At ingest: the warehouse holds usage of no client the feed does not make."""
    stored = set(_stored_population(path))
    if stored - feed_ids:
        raise FeedMismatch(
            _population_message(
                path, feed, feed_ids, stored, "The warehouse no longer matches the feed it follows,"
            )
        )


def _only_new_clients(batch: ExtractedBatch, known: set[str]) -> ExtractedBatch:
    """The batch with its clients frame cut to clients not stored yet: a feed never updates a
    known client's attributes."""
    if batch.clients is None or not known:
        return batch
    fresh = batch.clients.filter(~pl.col("client_id").is_in(sorted(known)))
    return replace(batch, clients=fresh if fresh.height else None)


# --- synthetic ----------------------------------------------------------------------------


def _check_synthetic(
    path: Path, feed: Feed, params: dict[str, int], stored: dict[str, int], newest: datetime | None
) -> None:
    ids = synthetic_ids(params["clients"], params["seed"])
    _check_population(path, feed, ids, stored, params["freq_seconds"])
    if newest is None:
        return
    # Same ids, but the same generator? Compare its newest bucket with what is stored.
    end = newest + timedelta(seconds=params["freq_seconds"])
    sample = synthetic_history(params["clients"], params["seed"], params["freq_seconds"], 1, end)
    made = sample.rows.filter(pl.col("ts") == newest).select("client_id", "requests")
    with connect(path, read_only=True) as con:
        kept = fetch_frame(con, "SELECT client_id, requests FROM usage WHERE ts = ?", [newest])
    if kept.height == 0:
        return
    compared = kept.join(made, on="client_id", how="inner", suffix="_made")
    differ = compared.filter(pl.col("requests") != pl.col("requests_made"))
    if differ.height:
        examples = ", ".join(differ.get_column("client_id").sort().head(EXAMPLE_IDS).to_list())
        raise FeedMismatch(
            f"Refused to follow synthetic (clients {params['clients']}, seed {params['seed']}): "
            f"the warehouse {path} holds its client ids, but at its newest bucket {newest} "
            f"{differ.height} of {compared.height} clients' stored requests differ from the "
            f"generator's (e.g. {examples}): another seed or source made them. Nothing was "
            "written. Set PREWARM_SYNTHETIC_SEED to the seed that made them, or use an empty "
            "warehouse."
        )


def _pending_synthetic(path: Path, feed: Feed, now: datetime) -> list[PendingBatch]:
    params = {k: int(feed.params.get(k, v)) for k, v in DEFAULT_SYNTHETIC.items()}
    clients, seed, freq_seconds = params["clients"], params["seed"], params["freq_seconds"]
    _check_still_matches(path, feed, synthetic_ids(clients, seed))
    newest = watermark(path)
    if newest is None:
        history = synthetic_history(clients, seed, freq_seconds, params["days"], now)
        return [PendingBatch(_only_new_clients(history, _known_clients(path)))]
    return [
        PendingBatch(part) for part in synthetic_extension(clients, seed, freq_seconds, newest, now)
    ]


# --- trace --------------------------------------------------------------------------------


def _anchor_trace(
    path: Path, feed: Feed, stored: dict[str, int], newest: datetime | None, now: datetime
) -> dict[str, Any]:
    day = _trace_day(feed)
    trace = load_trace(_location(feed), day)
    _check_population(path, feed, trace_population(trace), stored, TRACE_FREQ_SECONDS)
    span = trace_span(trace)
    if span is None:
        raise FeedError(f"The trace {feed.location} has no minutes to replay.")
    first = span[0]
    # A warehouse that already holds this trace's minutes resumes right after them.
    sim_start = max(first, newest + timedelta(minutes=1)) if stored and newest else first
    return {
        "speed": float(feed.params.get("speed", 1.0)),
        "day": day.isoformat(),
        "sim_start": sim_start.isoformat(),
        "wall_start": now.isoformat(),
    }


def _pending_trace(path: Path, feed: Feed, sim_now: datetime) -> list[PendingBatch]:
    trace = load_trace(_location(feed), _trace_day(feed))
    _check_still_matches(path, feed, trace_population(trace))
    part = trace_minutes(trace, watermark(path), sim_now)
    if part is None:
        return []
    return [PendingBatch(_only_new_clients(part, _known_clients(path)))]


def _trace_clock(feed: Feed) -> tuple[datetime, datetime, float]:
    try:
        return (
            datetime.fromisoformat(feed.params["sim_start"]),
            datetime.fromisoformat(feed.params["wall_start"]),
            float(feed.params["speed"]),
        )
    except (KeyError, TypeError, ValueError):
        raise FeedError(
            f"The trace feed {feed.describe()} has no replay clock yet: follow it first "
            f"(prewarm feed follow trace:{feed.location})."
        ) from None


def _trace_day(feed: Feed) -> date:
    day = feed.params.get("day")
    return date.fromisoformat(day) if day else DEFAULT_TRACE_DAY


def _location(feed: Feed) -> Path:
    if feed.location is None:
        raise FeedError(f"The {feed.kind} feed has no directory: give '{feed.kind}:DIR'.")
    return feed.location


# --- spool --------------------------------------------------------------------------------


def _taken_sizes(path: Path) -> dict[str, set[int]]:
    if not Path(path).exists():
        return {}
    with connect(path, read_only=True) as con:
        rows = con.execute("SELECT path, size_bytes FROM feed_files").fetchall()
    taken: dict[str, set[int]] = {}
    for taken_path, size in rows:
        taken.setdefault(taken_path, set()).add(int(size))
    return taken
