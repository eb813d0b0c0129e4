"""The synthetic client population: regions, tiers, services, archetypes and each client's
parameters, drawn per client index (see `warehouse.sources.synthetic`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from warehouse.sources.base import CLIENT_COLUMNS
from warehouse.sources.synthetic_draws import (
    _S_ARCHETYPE,
    _S_BURST_LEN,
    _S_BURST_MAG,
    _S_BURST_RATE,
    _S_CPU,
    _S_DRIFT_AMP,
    _S_DRIFT_PERIOD,
    _S_DRIFT_PHASE,
    _S_DURATION,
    _S_HOLIDAY,
    _S_IO,
    _S_JOIN,
    _S_KAPPA,
    _S_KB,
    _S_LAUNCH,
    _S_LEVEL,
    _S_MEM_UTIL,
    _S_MEMORY,
    _S_NOISE_SIGMA,
    _S_PEAK,
    _S_REGION,
    _S_SERVICE,
    _S_SPARSE_CLUMP,
    _S_SPARSE_RATE,
    _S_TIER,
    _S_UTIL,
    _S_WEEKEND,
    _between,
    _client_unit,
    _log_between,
)

_EPOCH = datetime(1970, 1, 1)
_DAY_S = 86_400
_HOUR_S = 3_600

# (name, UTC offset in hours). Daylight saving is ignored: offsets are fixed.
_REGIONS: tuple[tuple[str, float], ...] = (
    ("us-east", -5.0),
    ("us-west", -8.0),
    ("eu-west", 1.0),
    ("ap-south", 5.5),
    ("ap-east", 8.0),
)

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
    _Service(
        "api",
        0.35,
        0.5,
        13.0,
        3.0,
        (0.5, 0.85),
        (0.05, 0.5),
        (5, 50),
        (1, 5),
        (0.25, 0.5),
        (128, 256, 512),
    ),
    _Service(
        "web",
        0.25,
        0.3,
        20.0,
        2.0,
        (0.8, 1.2),
        (0.1, 1.0),
        (50, 500),
        (0.5, 3),
        (0.25, 0.5, 1.0),
        (256, 512, 1024),
    ),
    _Service(
        "batch",
        0.15,
        0.25,
        2.0,
        1.0,
        (0.9, 1.0),
        (5.0, 60.0),
        (100, 2000),
        (10, 100),
        (1.0, 2.0),
        (1024, 2048, 4096),
    ),
    _Service(
        "ml-inference",
        0.15,
        0.25,
        14.0,
        3.0,
        (0.5, 0.9),
        (0.2, 2.0),
        (20, 200),
        (0.5, 2),
        (1.0, 2.0),
        (2048, 4096),
    ),
    _Service(
        "etl",
        0.10,
        0.15,
        3.0,
        1.0,
        (0.7, 1.0),
        (10.0, 120.0),
        (500, 5000),
        (50, 500),
        (0.5, 1.0, 2.0),
        (512, 1024, 2048),
    ),
)

_ARCHETYPES: tuple[str, ...] = ("regular", "bursty", "sparse", "late")
_REGULAR, _BURSTY, _SPARSE, _LATE = range(4)
_ARCHETYPE_BLOCK = np.array([_REGULAR] * 12 + [_BURSTY] * 3 + [_SPARSE] * 3 + [_LATE] * 2)


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
        [regular_like, bursty],
        [_between(unit(_S_BURST_RATE), 0.2, 0.8), _between(unit(_S_BURST_RATE), 4.0, 10.0)],
        0.0,
    )
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
