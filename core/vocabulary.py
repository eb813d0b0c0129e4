"""The words prewarm's tables, settings, API and CLI share, defined once.

Each is a StrEnum (for typer, pydantic and code that names a value) plus the plain-string
tuple and Literal that polars filters and type hints want; tests/core pins that they agree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, cast


class Tier(StrEnum):
    """How warm a pool member is: running, paused (shadow) or not created (cold)."""

    ACTIVE = "active"
    SHADOW = "shadow"
    COLD = "cold"


TierName = Literal["active", "shadow", "cold"]
# The values are Tier's own (tests/core checks they equal TierName's); mypy cannot see that
# a StrEnum's values are these literals, hence the cast.
TIERS: tuple[TierName, ...] = cast("tuple[TierName, ...]", tuple(tier.value for tier in Tier))


class Mode(StrEnum):
    """Whether prewarm provisions a client's pool or only forecasts it."""

    PROVISION = "provision"
    FORECAST_ONLY = "forecast-only"


MODES: tuple[str, ...] = tuple(mode.value for mode in Mode)
ModeName = Literal["provision", "forecast-only"]


class Metric(StrEnum):
    """The usage series every source delivers, one column each in `usage`."""

    REQUESTS = "requests"
    CONCURRENCY = "concurrency"
    CPU_CORES = "cpu_cores"
    MEMORY_MB = "memory_mb"
    NET_MBPS = "net_mbps"
    IO_OPS = "io_ops"


METRICS: tuple[str, ...] = tuple(metric.value for metric in Metric)
MetricName = Literal["requests", "concurrency", "cpu_cores", "memory_mb", "net_mbps", "io_ops"]


class Source(StrEnum):
    """Where interaction history comes from."""

    SYNTHETIC = "synthetic"
    AZURE_FUNCTIONS = "azure-functions"
    EVENTS = "events"


SOURCES: tuple[str, ...] = tuple(source.value for source in Source)
SourceName = Literal["synthetic", "azure-functions", "events"]
