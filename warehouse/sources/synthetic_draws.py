"""Counter-based randomness of the synthetic generator: every draw is a hash, not a state.

A draw is splitmix64 of (seed, stream, client index, counter), so it depends on nothing
generated before it: the same arguments give equal frames, a client does not change when more
clients are generated, and overlapping windows agree on their overlap.
"""

from __future__ import annotations

import numpy as np

# Hash streams: one per independent draw, so adding a draw never shifts the others.
(
    _S_ARCHETYPE,
    _S_REGION,
    _S_TIER,
    _S_SERVICE,
    _S_LEVEL,
    _S_PEAK,
    _S_KAPPA,
    _S_WEEKEND,
    _S_NOISE_SIGMA,
    _S_DRIFT_AMP,
    _S_DRIFT_PERIOD,
    _S_DRIFT_PHASE,
    _S_BURST_RATE,
    _S_BURST_LEN,
    _S_BURST_MAG,
    _S_SPARSE_RATE,
    _S_SPARSE_CLUMP,
    _S_HOLIDAY,
    _S_LAUNCH,
    _S_DURATION,
    _S_UTIL,
    _S_MEM_UTIL,
    _S_CPU,
    _S_MEMORY,
    _S_KB,
    _S_IO,
    _S_JOIN,
    _S_CALENDAR,
    _S_SHOCK,
    _S_COUNT_NOISE,
    _S_ROUND,
    _S_BURST,
    _S_RES_A,
    _S_RES_B,
    _S_RES_C,
    _S_SPARSE,
) = range(36)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


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
