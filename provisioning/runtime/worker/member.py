"""What a member applies from its composite, and the report of it that `GET /config` serves.

The composite is the one the schema rendered into PREWARM_CONFIG, whole, so the member can
report exactly what it was created from next to what it made of it: its cache (policy, size,
TTL, the warm keys loaded), its database (the file, tables and indexes read back from
SQLite) and its ports (each declared port and the port it listens on here). A member created
without a composite (a spec built by hand) applies nothing and serves its health only.
"""

from __future__ import annotations

import json
import os

from .cache import Cache
from .store import STORE_FILE, Store

# The most of a member's memory (PREWARM_MEMORY_MB, its container's limit) its cache may use.
CACHE_SHARE_OF_MEMORY = 0.5

TYPE_CHECKING = False  # typing costs a member's start: see cache.py
if TYPE_CHECKING:
    from typing import Any


class CompositeRefused(ValueError):
    """PREWARM_CONFIG is not a composite this worker can apply."""


class MemberState:
    """One worker's applied settings; shared by the servers of all its ports."""

    def __init__(self, member_id: str, composite: dict[str, Any] | None) -> None:
        self.id = member_id
        self.composite = composite
        self.cache: Cache | None = None
        self.store: Store | None = None
        self.warm_keys_loaded = 0
        self.ports: dict[int, int] = {}  # declared port -> the port it listens on here

    def report(self) -> dict[str, Any]:
        """`GET /config`: the composite, and what was applied from it."""
        cache = None
        if self.cache is not None:
            cache = {
                "policy": self.cache.policy,
                "size_mb": self.cache.capacity_bytes / 2**20,
                "ttl_seconds": self.cache.ttl_seconds,
                "warm_keys_loaded": self.warm_keys_loaded,
            }
        return {
            "composite": self.composite,
            "applied": {
                "cache": cache,
                "database": self.store.describe() if self.store is not None else None,
                "ports": {str(declared): port for declared, port in self.ports.items()},
            },
        }


def load_composite(text: str | None) -> dict[str, Any] | None:
    """The composite in PREWARM_CONFIG's text; None when there is none."""
    if text is None or text == "null":
        return None
    try:
        composite = json.loads(text)
    except ValueError as error:
        raise CompositeRefused(f"PREWARM_CONFIG is not JSON: {error}") from None
    if not isinstance(composite, dict):
        raise CompositeRefused("PREWARM_CONFIG is not a JSON object")
    return composite


def declared_ports(composite: dict[str, Any] | None) -> list[int]:
    """The composite's ports, the probed one first; none without a composite."""
    if composite is None:
        return []
    ports = composite.get("ports") or []
    if not all(isinstance(port, int) and 0 < port < 65536 for port in ports):
        raise CompositeRefused(f"ports must be TCP port numbers, got {ports!r}")
    return list(ports)


def apply_composite(member: MemberState, data_dir: str | None) -> None:
    """Build the member's cache (warm keys loaded) and its database (indexes created)."""
    composite = member.composite
    if composite is None:
        return
    section = composite.get("cache") or {}
    capacity = int(float(section.get("size_mb", 0)) * 2**20)
    # A cache filling more than its share of the member's memory would get the member
    # killed (the default 64 MB cache in a 64 MB member): capped, and reported as applied.
    memory_mb = float(os.environ.get("PREWARM_MEMORY_MB") or 0)
    if memory_mb > 0:
        capacity = min(capacity, int(memory_mb * CACHE_SHARE_OF_MEMORY * 2**20))
    # Composites rendered before the schema had a policy meant the only cache there was: lru.
    member.cache = Cache(
        policy=section.get("policy", "lru"),
        capacity_bytes=capacity,
        ttl_seconds=int(section.get("ttl_seconds", 0)),
    )
    member.warm_keys_loaded = member.cache.preload(section.get("warm_keys") or [])
    if data_dir is None:
        raise CompositeRefused("give --data-dir: the database file is kept there")
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    hints = (composite.get("database") or {}).get("index_hints") or []
    member.store = Store(os.path.join(data_dir, STORE_FILE), hints)
