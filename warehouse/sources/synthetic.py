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

Layout: the client population is `synthetic_clients`, the calendar `synthetic_calendar`, the
counter-based draws `synthetic_draws`; this module generates the usage from them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from warehouse.sources.base import METRICS, ExtractedBatch, hash_params
from warehouse.sources.synthetic_calendar import _calendar_frame, _event_factors
from warehouse.sources.synthetic_clients import (
    _DAY_S,
    _EPOCH,
    _HOUR_S,
    _SPARSE,
    _Clients,
    _clients_frame,
    _draw_clients,
)
from warehouse.sources.synthetic_draws import (
    _S_BURST,
    _S_COUNT_NOISE,
    _S_RES_A,
    _S_RES_B,
    _S_RES_C,
    _S_ROUND,
    _S_SHOCK,
    _S_SPARSE,
    _cell_bits,
    _normal_pair,
    _stream_keys,
    _unit_pair,
)

GENERATOR_VERSION = 1

_FUTURE_EVENTS_S = 3 * _DAY_S  # forecasters need the calendar of the horizon too

_SHOCK_SIGMA = 0.08  # day-to-day level wobble, small so yesterday still predicts today

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
