"""Seeded synthetic usage: per-client demand with known structure, for tests, demos and benches.

Each client's expected requests per bucket is a product of factors of the absolute UTC time:

    level * drift * diurnal(local hour) * weekly(local weekday) * daily shock
          * calendar (regional holiday dip, regional launch spike) * bursts

where local time comes from the client's region offset and drift is a long, slow sine that
reads as a per-client trend over any window of weeks yet stays bounded for any `end`.
Counts scatter around that rate (lognormal noise, then a normal approximation of Poisson,
rounded stochastically). Resources follow requests: concurrency by Little's law
(ceil(requests * duration / bucket), so at least 1 when busy), cpu from busy time times the
container's cores, memory from concurrent instances times the container's memory, network
from payload sizes, io from operations per request, each with its own noise. Every metric is
exactly 0 when requests are 0: an idle client holds no memory here, because keeping warm
capacity is the provisioner's cost, not the client's usage.

Holidays (a dip for the region's clients) and product launches (a decaying spike) recur per
region on a fixed 15-day cadence staggered across regions; the calendar lists those overlapping
the window and the 3 days after `end`.

Archetypes are dealt exactly 12/3/3/2 in every block of 20 clients: regular, bursty (frequent
large spikes), sparse (mostly empty buckets, occasional clumps of calls) and late joiners
(regular, but no rows before a join time part-way through the window).

All randomness is a counter-based hash of (seed, stream, client index, absolute time), so the
same arguments give equal frames, a client does not change when more clients are generated,
and overlapping windows agree on their overlap (only a late joiner's join time is placed
relative to the window).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from warehouse.sources.base import (
    CALENDAR_COLUMNS,
    CLIENT_COLUMNS,
    METRICS,
    ExtractedBatch,
    hash_params,
)

GENERATOR_VERSION = 1

_EPOCH = datetime(1970, 1, 1)
_DAY_S = 86_400
_HOUR_S = 3_600
_FUTURE_EVENTS_S = 3 * _DAY_S  # forecasters need the calendar of the horizon too

# (name, UTC offset in hours). Daylight saving is ignored: offsets are fixed.
_REGIONS: tuple[tuple[str, float], ...] = (
    ("us-east", -5.0),
    ("us-west", -8.0),
    ("eu-west", 1.0),
    ("ap-south", 5.5),
    ("ap-east", 8.0),
)

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

_SHOCK_SIGMA = 0.08  # day-to-day level wobble, small so yesterday still predicts today

_TIERS: tuple[str, ...] = ("free", "standard", "premium")
_TIER_CUTS = np.array([0.5, 0.85])  # 50 / 35 / 15 %
_TIER_LEVEL = np.array([0.5, 1.0, 3.0])  # paying clients send more traffic


@dataclass(frozen=True)
class _Service:
    """What a kind of workload looks like: ranges are sampled per client."""

    name: str
    weight: float
    peak_rps: float  # median requests per second at the daily peak
    peak_hour: float  # local hour of the daily peak
    peak_spread_h: float
    weekend: tuple[float, float]  # weekend level relative to weekdays
    duration_s: tuple[float, float]  # mean request duration, log-uniform
    kb_per_request: tuple[float, float]
    io_per_request: tuple[float, float]
    cpus: tuple[float, ...]
    memories_mb: tuple[float, ...]


_SERVICES: tuple[_Service, ...] = (
    _Service("api", 0.35, 0.5, 13.0, 3.0, (0.5, 0.85), (0.05, 0.5), (5, 50), (1, 5),
             (0.25, 0.5), (128, 256, 512)),
    _Service("web", 0.25, 0.3, 20.0, 2.0, (0.8, 1.2), (0.1, 1.0), (50, 500), (0.5, 3),
             (0.25, 0.5, 1.0), (256, 512, 1024)),
    _Service("batch", 0.15, 0.25, 2.0, 1.0, (0.9, 1.0), (5.0, 60.0), (100, 2000), (10, 100),
             (1.0, 2.0), (1024, 2048, 4096)),
    _Service("ml-inference", 0.15, 0.25, 14.0, 3.0, (0.5, 0.9), (0.2, 2.0), (20, 200), (0.5, 2),
             (1.0, 2.0), (2048, 4096)),
    _Service("etl", 0.10, 0.15, 3.0, 1.0, (0.7, 1.0), (10.0, 120.0), (500, 5000), (50, 500),
             (0.5, 1.0, 2.0), (512, 1024, 2048)),
)  # fmt: skip

_ARCHETYPES: tuple[str, ...] = ("regular", "bursty", "sparse", "late")
_REGULAR, _BURSTY, _SPARSE, _LATE = range(4)
_ARCHETYPE_BLOCK = np.array([_REGULAR] * 12 + [_BURSTY] * 3 + [_SPARSE] * 3 + [_LATE] * 2)

# Hash streams: one per independent draw, so adding a draw never shifts the others.
(
    _S_ARCHETYPE, _S_REGION, _S_TIER, _S_SERVICE, _S_LEVEL, _S_PEAK, _S_KAPPA, _S_WEEKEND,
    _S_NOISE_SIGMA, _S_DRIFT_AMP, _S_DRIFT_PERIOD, _S_DRIFT_PHASE, _S_BURST_RATE, _S_BURST_LEN,
    _S_BURST_MAG, _S_SPARSE_RATE, _S_SPARSE_CLUMP, _S_HOLIDAY, _S_LAUNCH, _S_DURATION,
    _S_UTIL, _S_MEM_UTIL, _S_CPU, _S_MEMORY, _S_KB, _S_IO, _S_JOIN, _S_CALENDAR,
    _S_SHOCK, _S_COUNT_NOISE, _S_ROUND, _S_BURST, _S_RES_A, _S_RES_B, _S_RES_C, _S_SPARSE,
) = range(36)  # fmt: skip

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_CHUNK_CELLS = 1 << 18  # clients are simulated in slabs of about this many buckets


def generate_synthetic(
    n_clients: int, days: int, end: datetime, freq_seconds: int = 300, seed: int = 7
) -> ExtractedBatch:
    """Generate `days` of usage before `end` (naive UTC, exclusive) for `n_clients` clients."""
    if n_clients < 1 or days < 1 or freq_seconds < 1:
        raise ValueError(
            f"need n_clients, days and freq_seconds >= 1, got {n_clients}, {days}, {freq_seconds}"
        )
    if freq_seconds > days * _DAY_S:
        raise ValueError(f"a {freq_seconds} s bucket does not fit in {days} days of history")
    end_s = _floor_epoch_seconds(end, freq_seconds)
    start_s = -((-(end_s - days * _DAY_S)) // freq_seconds) * freq_seconds  # ceil to the grid
    end_floor = _EPOCH + timedelta(seconds=end_s)

    clients = _draw_clients(n_clients, seed, start_s, end_s, freq_seconds)
    rows = _simulate_usage(clients, seed, start_s, end_s, freq_seconds)
    return ExtractedBatch(
        source="synthetic",
        location=(
            f"synthetic clients={n_clients} days={days} seed={seed} freq={freq_seconds}s "
            f"end={end_floor.isoformat()}"
        ),
        content_hash=hash_params(GENERATOR_VERSION, n_clients, days, freq_seconds, seed, end_floor),
        freq_seconds=freq_seconds,
        rows=rows,
        kind="series",
        raw=None,
        clients=_clients_frame(clients),
        calendar=_calendar_frame(seed, start_s, end_s + _FUTURE_EVENTS_S),
    )


def _floor_epoch_seconds(moment: datetime, freq_seconds: int) -> int:
    """Whole seconds since the epoch of a naive UTC datetime, floored to the frequency."""
    if moment.tzinfo is not None:
        raise ValueError("end must be a naive UTC datetime")
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds // freq_seconds * freq_seconds


# --- counter-based randomness -------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: a bijective scramble of 64-bit words."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9
    x ^= x >> 27
    x *= 0x94D049BB133111EB
    x ^= x >> 31
    return x


def _stream_keys(seed: int, stream: int, ids: np.ndarray) -> np.ndarray:
    """One 64-bit key per id for a (seed, stream): the root of every draw about that id."""
    root = ((seed & _MASK64) * _GOLDEN + (stream + 1) * 0xD1B54A32D192ED03) & _MASK64
    base = _mix64(np.array([root], dtype=np.uint64))
    return _mix64(base ^ _mix64(ids.astype(np.uint64) + np.uint64(_GOLDEN)))


def _cell_bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Hash every (key, counter) pair: rows are keys, columns are counters (e.g. times)."""
    return _mix64(keys[:, None] + counters.astype(np.uint64)[None, :] * np.uint64(_GOLDEN))


def _unit_pair(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in (0, 1) from the two halves of each 64-bit word."""
    scale = 2.0**-32
    high = ((bits >> 32).astype(np.float64) + 0.5) * scale
    low = ((bits & 0xFFFFFFFF).astype(np.float64) + 0.5) * scale
    return high, low


def _normal_pair(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals per word (Box-Muller, tails cut near 5.9 sigma)."""
    # Noise needs no more than float32, whose log/cos/sin run several times faster. Each
    # uniform takes 24 bits, exactly representable, so it stays inside (0, 1).
    scale = np.float32(2.0**-24)
    u = ((bits >> 40).astype(np.float32) + np.float32(0.5)) * scale
    v = (((bits >> 8) & 0xFFFFFF).astype(np.float32) + np.float32(0.5)) * scale
    radius = np.sqrt(np.float32(-2.0) * np.log(u))
    angle = np.float32(2.0 * np.pi) * v
    return (radius * np.cos(angle)).astype(np.float64), (radius * np.sin(angle)).astype(np.float64)


def _client_unit(seed: int, stream: int, ids: np.ndarray) -> np.ndarray:
    """One uniform in (0, 1) per client for a stream (52 bits, so it never rounds up to 1)."""
    bits = _mix64(_stream_keys(seed, stream, ids))
    return ((bits >> 12).astype(np.float64) + 0.5) * 2.0**-52


def _between(u: np.ndarray, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """Map uniforms onto [low, high)."""
    return low + u * (np.asarray(high) - low)


def _log_between(u: np.ndarray, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """Map uniforms onto [low, high) evenly in log space (for scales spanning decades)."""
    return np.exp(_between(u, np.log(low), np.log(high)))


# --- clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clients:
    """Per-client parameters, one array entry per client index."""

    ids: list[str]
    archetype: np.ndarray
    region: np.ndarray
    tier: np.ndarray
    service: np.ndarray
    level: np.ndarray  # expected requests per bucket at the daily peak
    tz_s: np.ndarray
    peak_hour: np.ndarray
    kappa: np.ndarray  # diurnal sharpness: trough / peak = exp(-2 kappa)
    weekend: np.ndarray
    noise_sigma: np.ndarray
    drift_amp: np.ndarray
    drift_period_s: np.ndarray
    drift_phase: np.ndarray
    burst_p: np.ndarray  # probability a burst starts in a bucket
    burst_len: np.ndarray  # buckets
    burst_mag: np.ndarray
    sparse_rate: np.ndarray  # calls-clump starts per bucket at the peak
    sparse_clump: np.ndarray
    holiday_depth: np.ndarray
    launch_lift: np.ndarray
    duration_s: np.ndarray
    cpu_util: np.ndarray
    mem_util: np.ndarray
    container_cpu: np.ndarray
    container_memory_mb: np.ndarray
    kb_per_request: np.ndarray
    io_per_request: np.ndarray
    join_s: np.ndarray  # first bucket with rows (window start unless a late joiner)
    joined_late: np.ndarray


def _deal_archetypes(n_clients: int, seed: int) -> np.ndarray:
    """Exact 12/3/3/2 shares in each block of 20, shuffled within the block by the seed."""
    n_blocks = -(-n_clients // len(_ARCHETYPE_BLOCK))
    size = n_blocks * len(_ARCHETYPE_BLOCK)
    ids = np.arange(size)
    order = np.lexsort((_client_unit(seed, _S_ARCHETYPE, ids), ids // len(_ARCHETYPE_BLOCK)))
    dealt = np.empty(size, dtype=np.int64)
    dealt[order] = np.tile(_ARCHETYPE_BLOCK, n_blocks)
    return dealt[:n_clients]


def _pick(u: np.ndarray, choices_per_client: list[tuple[float, ...]]) -> np.ndarray:
    """Pick uniformly from each client's own tuple of choices."""
    return np.array(
        [choices[int(x * len(choices))] for x, choices in zip(u, choices_per_client, strict=True)]
    )


def _draw_clients(
    n_clients: int, seed: int, start_s: int, end_s: int, freq_seconds: int
) -> _Clients:
    ids = np.arange(n_clients)

    def unit(stream: int) -> np.ndarray:
        return _client_unit(seed, stream, ids)

    archetype = _deal_archetypes(n_clients, seed)
    region = (unit(_S_REGION) * len(_REGIONS)).astype(np.int64)
    tier = np.searchsorted(_TIER_CUTS, unit(_S_TIER))
    weights = np.cumsum([s.weight for s in _SERVICES])
    service = np.minimum(
        np.searchsorted(weights / weights[-1], unit(_S_SERVICE)), len(_SERVICES) - 1
    )
    services = [_SERVICES[i] for i in service]

    def per_service(field: str) -> np.ndarray:
        return np.array([getattr(s, field) for s in services], dtype=np.float64)

    def ranges(field: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.array([getattr(s, field) for s in services], dtype=np.float64)
        return pairs[:, 0], pairs[:, 1]

    regular_like = (archetype == _REGULAR) | (archetype == _LATE)
    bursty = archetype == _BURSTY
    sparse = archetype == _SPARSE

    level_rps = per_service("peak_rps") * _TIER_LEVEL[tier] * _log_between(unit(_S_LEVEL), 0.6, 2.5)
    # Bursty clients sit lower between spikes; their spikes carry the load.
    level_rps = np.where(bursty, level_rps * 0.5, level_rps)

    kappa_low = np.select([regular_like, bursty], [1.2, 0.4], 0.5)
    kappa_high = np.select([regular_like, bursty], [2.2, 0.9], 1.2)
    sigma_low = np.where(bursty, 0.15, 0.05)
    sigma_high = np.where(bursty, 0.35, 0.15)

    bursts_per_day = np.select(
        [regular_like, bursty], [_between(unit(_S_BURST_RATE), 0.2, 0.8),
                                 _between(unit(_S_BURST_RATE), 4.0, 10.0)], 0.0
    )  # fmt: skip
    burst_minutes = np.where(
        bursty, _between(unit(_S_BURST_LEN), 10, 45), _between(unit(_S_BURST_LEN), 15, 30)
    )
    burst_mag = np.where(
        bursty, _between(unit(_S_BURST_MAG), 4, 15), _between(unit(_S_BURST_MAG), 1, 3)
    )

    # Late joiners arrive between 30 % and 70 % through the window, on the grid.
    n_buckets = -(-(end_s - start_s) // freq_seconds)
    late_offset = np.minimum(
        np.ceil(_between(unit(_S_JOIN), 0.3, 0.7) * n_buckets), n_buckets - 1
    )  # a late joiner still gets at least one bucket
    joined_late = archetype == _LATE
    join_s = np.where(joined_late, start_s + late_offset.astype(np.int64) * freq_seconds, start_s)

    cpus = [s.cpus for s in services]
    memories = [s.memories_mb for s in services]
    return _Clients(
        ids=_client_ids(n_clients),
        archetype=archetype,
        region=region,
        tier=tier,
        service=service,
        level=level_rps * freq_seconds,
        tz_s=np.array([_REGIONS[r][1] * _HOUR_S for r in region], dtype=np.int64),
        peak_hour=per_service("peak_hour")
        + _between(unit(_S_PEAK), -1, 1) * per_service("peak_spread_h"),
        kappa=_between(unit(_S_KAPPA), kappa_low, kappa_high),
        weekend=_between(unit(_S_WEEKEND), *ranges("weekend")),
        noise_sigma=_between(unit(_S_NOISE_SIGMA), sigma_low, sigma_high),
        drift_amp=_between(unit(_S_DRIFT_AMP), 0.1, 0.5),
        drift_period_s=_log_between(unit(_S_DRIFT_PERIOD), 90, 365) * _DAY_S,
        drift_phase=_between(unit(_S_DRIFT_PHASE), 0, 2 * np.pi),
        burst_p=np.minimum(bursts_per_day * freq_seconds / _DAY_S, 1.0),
        burst_len=np.maximum(np.round(burst_minutes * 60 / freq_seconds), 1).astype(np.int64),
        burst_mag=burst_mag,
        sparse_rate=np.where(sparse, _between(unit(_S_SPARSE_RATE), 0.6, 3.0), 0.0)
        * freq_seconds
        / _HOUR_S,
        sparse_clump=_between(unit(_S_SPARSE_CLUMP), 0.5, 4.0),
        holiday_depth=_between(unit(_S_HOLIDAY), 0.4, 0.7),
        launch_lift=_between(unit(_S_LAUNCH), 1.0, 2.0),
        duration_s=_log_between(unit(_S_DURATION), *ranges("duration_s")),
        cpu_util=_between(unit(_S_UTIL), 0.3, 0.85),
        mem_util=_between(unit(_S_MEM_UTIL), 0.35, 0.8),
        container_cpu=_pick(unit(_S_CPU), cpus).astype(np.float64),
        container_memory_mb=_pick(unit(_S_MEMORY), memories).astype(np.float64),
        kb_per_request=_log_between(unit(_S_KB), *ranges("kb_per_request")),
        io_per_request=_log_between(unit(_S_IO), *ranges("io_per_request")),
        join_s=join_s,
        joined_late=joined_late,
    )


def _client_ids(n_clients: int) -> list[str]:
    width = max(4, len(str(n_clients - 1)))
    return [f"c{i:0{width}d}" for i in range(n_clients)]


def _clients_frame(clients: _Clients) -> pl.DataFrame:
    attributes = [
        json.dumps(
            {
                "archetype": _ARCHETYPES[archetype],
                "tz_offset_h": _REGIONS[region][1],
                "peak_hour_local": round(float(peak) % 24, 2),
                "mean_duration_s": round(float(duration), 4),
                "joined_at": (
                    (_EPOCH + timedelta(seconds=int(join))).isoformat() if late else None
                ),
            },
            sort_keys=True,
        )
        for archetype, region, peak, duration, join, late in zip(
            clients.archetype,
            clients.region,
            clients.peak_hour,
            clients.duration_s,
            clients.join_s,
            clients.joined_late,
            strict=True,
        )
    ]
    return pl.DataFrame(
        {
            "client_id": clients.ids,
            "tier": [_TIERS[t] for t in clients.tier],
            "region": [_REGIONS[r][0] for r in clients.region],
            "service": [_SERVICES[s].name for s in clients.service],
            "container_cpu": clients.container_cpu,
            "container_memory_mb": clients.container_memory_mb,
            "attributes": attributes,
        },
        schema=CLIENT_COLUMNS,
    )


# --- calendar -----------------------------------------------------------------------------


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


# --- usage --------------------------------------------------------------------------------


def _simulate_usage(
    clients: _Clients, seed: int, start_s: int, end_s: int, freq_seconds: int
) -> pl.DataFrame:
    """Simulate every client on the window's grid, slab by slab, into the final columns."""
    grid_s = np.arange(start_s, end_s, freq_seconds, dtype=np.int64)
    # Late joiners have no rows before their join; everyone else covers the whole grid.
    present = len(grid_s) - np.searchsorted(grid_s, clients.join_s)
    ends = np.cumsum(present)
    # Filled in place slab by slab: stacking per-slab pieces would copy every column again.
    columns = {m: np.empty(int(ends[-1]), dtype=np.float64) for m in METRICS}
    per_slab = max(1, _CHUNK_CELLS // max(len(grid_s), 1))
    for first in range(0, len(clients.ids), per_slab):
        rows = slice(first, min(first + per_slab, len(clients.ids)))
        at = slice(int(ends[first] - present[first]), int(ends[rows.stop - 1]))
        metrics = _simulate_slab(clients, seed, rows, grid_s, freq_seconds)
        joined = grid_s[None, :] >= clients.join_s[rows, None]
        keep = None if joined.all() else np.flatnonzero(joined)
        for name, values in metrics.items():
            columns[name][at] = values.ravel() if keep is None else values.ravel()[keep]

    client = np.repeat(np.arange(len(clients.ids)), present)
    ts_s = grid_s[np.arange(len(client)) - np.repeat(ends - len(grid_s), present)]
    return pl.DataFrame(
        [
            pl.Series("client_id", clients.ids, dtype=pl.String).gather(client),
            pl.Series("ts", ts_s * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us")),
            *(pl.Series(name, columns[name], dtype=pl.Float64) for name in METRICS),
        ]
    )


def _simulate_slab(
    clients: _Clients, seed: int, rows: slice, grid_s: np.ndarray, freq_seconds: int
) -> dict[str, np.ndarray]:
    """Every metric of a contiguous slab of clients over the whole grid (clients x buckets)."""
    ids = np.arange(rows.start, rows.stop)
    local_s = grid_s[None, :] + clients.tz_s[rows, None]

    def bits(stream: int, grid: np.ndarray = grid_s) -> np.ndarray:
        return _cell_bits(_stream_keys(seed, stream, ids), grid)

    expected = (
        clients.level[rows, None]
        * _drift(clients, rows, grid_s)
        * _diurnal(clients, rows, local_s)
        * _weekly(clients, rows, local_s)
        * _daily_shock(seed, ids, grid_s)
        * _event_factors(seed, clients, rows, local_s)
        * _bursts(clients, rows, grid_s, freq_seconds, bits)
    )
    requests = _counts(expected, clients.noise_sigma[rows], bits(_S_COUNT_NOISE), bits(_S_ROUND))
    sparse = clients.archetype[rows] == _SPARSE
    if sparse.any():
        requests[sparse] = _sparse_counts(
            expected[sparse] / clients.level[rows][sparse, None],
            clients.sparse_rate[rows][sparse],
            clients.sparse_clump[rows][sparse],
            _cell_bits(_stream_keys(seed, _S_SPARSE, ids[sparse]), grid_s),
        )
    return _resources(clients, rows, requests, freq_seconds, bits)


def _drift(clients: _Clients, rows: slice, grid_s: np.ndarray) -> np.ndarray:
    """Slow multiplicative trend: a sine of months-long period, locally near linear."""
    angle = 2 * np.pi * grid_s[None, :] / clients.drift_period_s[rows, None]
    return np.exp(clients.drift_amp[rows, None] * np.sin(angle + clients.drift_phase[rows, None]))


def _diurnal(clients: _Clients, rows: slice, local_s: np.ndarray) -> np.ndarray:
    """1 at the local peak hour, exp(-2 kappa) twelve hours away (a von Mises bump)."""
    hour = (local_s % _DAY_S) / _HOUR_S
    angle = 2 * np.pi * (hour - clients.peak_hour[rows, None]) / 24
    return np.exp(clients.kappa[rows, None] * (np.cos(angle) - 1.0))


def _weekly(clients: _Clients, rows: slice, local_s: np.ndarray) -> np.ndarray:
    """The client's weekend level on local Saturdays and Sundays (1970-01-01 was a Thursday)."""
    weekday = (local_s // _DAY_S + 3) % 7
    return np.where(weekday >= 5, clients.weekend[rows, None], 1.0)


def _daily_shock(seed: int, ids: np.ndarray, grid_s: np.ndarray) -> np.ndarray:
    """Day-to-day level wobble, keyed by absolute UTC day so windows agree."""
    days = grid_s // _DAY_S
    first = int(days[0])
    distinct = np.arange(first, int(days[-1]) + 1)
    shock, _ = _normal_pair(_cell_bits(_stream_keys(seed, _S_SHOCK, ids), distinct))
    return np.exp(_SHOCK_SIGMA * shock - _SHOCK_SIGMA**2 / 2)[:, days - first]


def _bursts(
    clients: _Clients,
    rows: slice,
    grid_s: np.ndarray,
    freq_seconds: int,
    bits: Callable[[int, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Short spikes: a burst starts at random, jumps by its magnitude and decays over its length."""
    # Bursts that started before the window still show in it: simulate a lead-in.
    lead = int(clients.burst_len[rows].max())
    lead_in = np.arange(grid_s[0] - lead * freq_seconds, grid_s[0], freq_seconds, dtype=np.int64)
    starts_u, size_u = _unit_pair(bits(_S_BURST, np.concatenate([lead_in, grid_s])))
    steps = np.arange(starts_u.shape[1])
    started = starts_u < clients.burst_p[rows, None]
    last = np.maximum.accumulate(np.where(started, steps, -(1 << 40)), axis=1)[:, lead:]
    age = steps[lead:] - last
    length = clients.burst_len[rows, None]
    size = np.take_along_axis(size_u, np.maximum(last, 0), axis=1)
    jump = clients.burst_mag[rows, None] * (0.5 + size) * np.exp(-2.0 * age / length)
    return np.where(age < length, 1.0 + jump, 1.0)


def _counts(
    expected: np.ndarray, sigma: np.ndarray, noise_bits: np.ndarray, round_bits: np.ndarray
) -> np.ndarray:
    """Whole request counts around the expectation: lognormal spread, then Poisson-like."""
    spread, poisson = _normal_pair(noise_bits)
    mean = expected * np.exp(sigma[:, None] * spread - sigma[:, None] ** 2 / 2)
    draw = np.maximum(mean + np.sqrt(mean) * poisson, 0.0)
    jitter, _ = _unit_pair(round_bits)
    return np.floor(draw + jitter)  # stochastic rounding keeps the mean


def _sparse_counts(
    shape: np.ndarray, rate: np.ndarray, clump: np.ndarray, bits: np.ndarray
) -> np.ndarray:
    """Intermittent use: a clump of calls starts with a small, seasonal probability."""
    fire_u, clump_u = _unit_pair(bits)
    fire = fire_u < -np.expm1(-rate[:, None] * shape)  # P(a Poisson(rate * shape) start > 0)
    size = 1.0 + np.floor(-np.log(clump_u) * clump[:, None])
    return np.where(fire, size, 0.0)


def _resources(
    clients: _Clients,
    rows: slice,
    requests: np.ndarray,
    freq_seconds: int,
    bits: Callable[[int], np.ndarray],
) -> dict[str, np.ndarray]:
    """Resources follow requests, each with its own noise; all are 0 when requests are 0."""
    duration_z, cpu_z = _normal_pair(bits(_S_RES_A))
    memory_z, net_z = _normal_pair(bits(_S_RES_B))
    io_z, _ = _normal_pair(bits(_S_RES_C))
    container_cpu = clients.container_cpu[rows, None]
    container_memory = clients.container_memory_mb[rows, None]

    # Little's law: instances busy on average over the bucket.
    busy = requests * clients.duration_s[rows, None] * np.exp(0.15 * duration_z) / freq_seconds
    concurrency = np.ceil(busy)  # 0 only when idle, else at least 1
    cpu = busy * container_cpu * clients.cpu_util[rows, None] * np.exp(0.1 * cpu_z)
    memory = concurrency * container_memory * clients.mem_util[rows, None] * np.exp(0.1 * memory_z)
    megabits = requests * clients.kb_per_request[rows, None] * 8 / 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "cpu_cores": np.minimum(cpu, concurrency * container_cpu),
        "memory_mb": np.minimum(memory, concurrency * container_memory),
        "net_mbps": megabits / freq_seconds * np.exp(0.2 * net_z - 0.02),
        "io_ops": np.round(
            requests * clients.io_per_request[rows, None] * np.exp(0.2 * io_z - 0.02)
        ),
    }
