"""Cost model: what holding a container warm costs, and what a request pays when none is.

The planner weighs two prices against each other for every instance it could keep warm:
the idle cost of holding it (paid whether or not a request comes) and the penalty a request
pays when it finds no ready container (a cold start, or the shorter wait to start a created
container or unpause a paused one). Every rate lives in `CostModel`, documented here once.

Warm tiers (what a container holds between requests):

- **active**: running. Holds its CPU share, its memory and its disk. Serves at once.
- **shadow**: paused (frozen). Holds memory and disk, no CPU. Serves after an unpause.
- **cold**: created, not started. Holds disk only. Serves after a start.
- (none): nothing exists; a request waits for a full cold start.

Rates (every field of `CostModel`; money is one unit throughout, written $ here):

| field                        | unit            | default | meaning                          |
|------------------------------|-----------------|---------|----------------------------------|
| `core_minute`                | $ / core-minute | 0.0008  | CPU an active container reserves |
| `memory_gib_minute`          | $ / GiB-minute  | 0.0001  | memory an active/shadow holds    |
| `disk_gib_minute`            | $ / GiB-minute  | 2e-06   | disk any created container holds |
| `container_disk_gib`         | GiB / container | 1.0     | image layers + writable layer    |
| `cold_start_penalty[tier]`   | $ / cold start  | free 0.001, standard 0.005, premium 0.02 |
| `default_cold_start_penalty` | $ / cold start  | 0.005   | client tiers not in the table    |
| `cold_start_seconds`         | s               | 10.0    | create + start + init            |
| `start_seconds`              | s               | 2.0     | start a created (cold) container |
| `unpause_seconds`            | s               | 0.2     | unpause a shadow container       |
| `scaling_action`             | $ / action      | 0.0001  | one warming step (see below)     |

Defaults are on-demand cloud prices: $0.048 per core-hour, $0.006 per GiB-hour, $0.09 per
GiB-month of disk. `cold_start_penalty` is what one request finding no warm container costs
the client's SLO (its tier: free, standard, premium). `cold_start_seconds` is also the
activation time in the planner's default provisioning buffer. `scaling_action` prices one
warming step (see below).

Derived prices (container of c cores and m MiB; GiB = 1024 MiB):

    idle per minute   active = c * core_minute + m/1024 * memory_gib_minute + disk
                      shadow =                   m/1024 * memory_gib_minute + disk
                      cold   =                                                disk
                      where disk = container_disk_gib * disk_gib_minute
    activation penalty (a request finds a shadow/cold container, waits `seconds`):
                      cold_start_penalty[tier] * seconds / cold_start_seconds
    cold-start penalty (a request finds nothing): cold_start_penalty[tier]

The activation penalty is proportional to the wait because the SLO penalty is a price on
latency: unpausing (0.2 s) costs 2% of a 10 s cold start, starting a created container 20%.
Only warming is an action with a price (create, start, unpause, and the on-demand start
behind a cold start); cooling (pause, stop, release) is free in the model, because every
container that goes up comes down once, so the pair is paid on the way up. Latencies must
be ordered unpause <= start <= cold start: that keeps every activation penalty below the
cold-start penalty and a warmer tier never worse on a hit, which keeps plans monotone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from core.errors import PrewarmError
from core.vocabulary import TIERS
from provisioning.toml_file import UnreadableToml, read_toml

MIB_PER_GIB = 1024.0

_DEFAULT_PENALTIES: Mapping[str, float] = MappingProxyType(
    {"free": 0.001, "standard": 0.005, "premium": 0.02}
)


class CostConfigError(PrewarmError, ValueError):
    """A cost configuration (TOML section or dict) is malformed; the message names the key."""


@dataclass(frozen=True)
class CostModel:
    """Every price the planner uses (see the module docstring for units and defaults)."""

    core_minute: float = 0.0008
    memory_gib_minute: float = 0.0001
    disk_gib_minute: float = 0.000002
    container_disk_gib: float = 1.0
    cold_start_penalty: Mapping[str, float] = field(default_factory=lambda: _DEFAULT_PENALTIES)
    default_cold_start_penalty: float = 0.005
    cold_start_seconds: float = 10.0
    start_seconds: float = 2.0
    unpause_seconds: float = 0.2
    scaling_action: float = 0.0001

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "cold_start_penalty":
                continue
            _check_non_negative(f.name, getattr(self, f.name))
        if self.cold_start_seconds <= 0:
            raise CostConfigError(f"cold_start_seconds must be > 0, got {self.cold_start_seconds}")
        if not self.unpause_seconds <= self.start_seconds <= self.cold_start_seconds:
            raise CostConfigError(
                "latencies must be ordered unpause_seconds <= start_seconds <= "
                f"cold_start_seconds, got {self.unpause_seconds}, {self.start_seconds}, "
                f"{self.cold_start_seconds}"
            )
        penalties = dict(self.cold_start_penalty)
        for tier, value in penalties.items():
            _check_non_negative(f"cold_start_penalty.{tier}", value)
        # Frozen and hashable-in-spirit: nobody mutates the table behind the planner's back.
        object.__setattr__(self, "cold_start_penalty", MappingProxyType(penalties))

    def disk_minute(self) -> float:
        """$ per minute for the disk one created container holds (every tier pays it)."""
        return self.container_disk_gib * self.disk_gib_minute

    def idle_per_minute(
        self,
        tier: str,
        cpu: float | np.ndarray,
        memory_mb: float | np.ndarray,
        core_minute: float | np.ndarray | None = None,
        memory_gib_minute: float | np.ndarray | None = None,
    ) -> float | np.ndarray:
        """$ per minute to hold one container of `cpu` cores and `memory_mb` MiB in `tier`.

        `core_minute` / `memory_gib_minute` override the model's rates (a host's own price).
        """
        core = self.core_minute if core_minute is None else core_minute
        memory = self.memory_gib_minute if memory_gib_minute is None else memory_gib_minute
        memory_cost = np.asarray(memory_mb) / MIB_PER_GIB * memory
        if tier == "active":
            result = np.asarray(cpu) * core + memory_cost + self.disk_minute()
        elif tier == "shadow":
            result = memory_cost + self.disk_minute()
        elif tier == "cold":
            result = np.zeros_like(memory_cost, dtype=np.float64) + self.disk_minute()
        else:
            raise ValueError(f"unknown warm tier {tier!r}; expected one of {TIERS}")
        return float(result) if np.ndim(result) == 0 else result

    def cold_penalty(self, client_tier: str | None) -> float:
        """$ a request of a client in `client_tier` pays when it finds no warm container."""
        if client_tier is None:
            return self.default_cold_start_penalty
        return self.cold_start_penalty.get(client_tier, self.default_cold_start_penalty)

    def activation_seconds(self, warm_tier: str) -> float:
        """Seconds until a container held in `warm_tier` answers a request."""
        return {
            "active": 0.0,
            "shadow": self.unpause_seconds,
            "cold": self.start_seconds,
        }[warm_tier]

    def activation_penalty(self, warm_tier: str, client_tier: str | None) -> float:
        """$ a request pays waiting for a `warm_tier` container: the cold penalty x wait share."""
        share = self.activation_seconds(warm_tier) / self.cold_start_seconds
        return self.cold_penalty(client_tier) * share

    def table(self) -> list[dict[str, Any]]:
        """Every rate as rows (field, unit, value), for reports and `costs show`."""
        rows = [
            {"field": name, "unit": unit, "value": getattr(self, name)}
            for name, unit in _UNITS.items()
            if name != "cold_start_penalty"
        ]
        for tier, value in sorted(self.cold_start_penalty.items()):
            rows.append(
                {"field": f"cold_start_penalty.{tier}", "unit": "$ / cold start", "value": value}
            )
        return rows


_UNITS: dict[str, str] = {
    "core_minute": "$ / core-minute",
    "memory_gib_minute": "$ / GiB-minute",
    "disk_gib_minute": "$ / GiB-minute",
    "container_disk_gib": "GiB / container",
    "cold_start_penalty": "$ / cold start",
    "default_cold_start_penalty": "$ / cold start",
    "cold_start_seconds": "s",
    "start_seconds": "s",
    "unpause_seconds": "s",
    "scaling_action": "$ / action",
}


def cost_model_from_dict(values: Mapping[str, Any], where: str = "costs") -> CostModel:
    """Build a CostModel from a mapping (a TOML section); missing keys keep their defaults."""
    known = {f.name for f in fields(CostModel)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CostConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "cold_start_penalty":
            if not isinstance(value, Mapping):
                raise CostConfigError(
                    f"{where}.cold_start_penalty: expected a table of tier = $ per cold start, "
                    f"got {type(value).__name__}"
                )
            # The TOML table extends the defaults: naming one tier keeps the others.
            kwargs[name] = {
                **_DEFAULT_PENALTIES,
                **{
                    str(tier): _number(f"{where}.cold_start_penalty.{tier}", v)
                    for tier, v in value.items()
                },
            }
        else:
            kwargs[name] = _number(f"{where}.{name}", value)
    try:
        return CostModel(**kwargs)
    except CostConfigError as error:
        raise CostConfigError(f"{where}: {error}") from None


def load_cost_model(path: str | Path, section: str = "costs") -> CostModel:
    """Read `[section]` of a TOML file into a CostModel (defaults when the section is absent)."""
    path = Path(path)
    try:
        document = read_toml(path)
    except UnreadableToml as error:
        raise CostConfigError(str(error)) from None
    values = document.get(section, {})
    if not isinstance(values, Mapping):
        raise CostConfigError(f"{path}: [{section}] must be a table")
    return cost_model_from_dict(values, where=f"{path}: {section}")


def _number(where: str, value: Any) -> float:
    # bool is an int in Python; `true` for a price is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = repr(value)  # cut short: a wrong type may be a whole nested table
        text = text if len(text) <= 60 else text[:57] + "..."
        raise CostConfigError(f"{where}: expected a number, got {type(value).__name__} {text}")
    try:
        return float(value)
    except OverflowError:  # TOML integers have no size limit
        raise CostConfigError(f"{where}: too large a number") from None


def _check_non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CostConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise CostConfigError(f"{name} must be a finite number >= 0, got {value}")
