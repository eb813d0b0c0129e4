"""Rendering a composite into the config one container is created with.

The config carries the image, cpu, memory and port, the client's env plus PREWARM_* variables
(cache, routing, database hints, the anticipated window), and labels with a hash of the
static configuration. The composite is validated and checked again here, the last step before
a runtime, whoever built it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from provisioning.schema_checks import check_composite
from provisioning.schema_model import ENV_PREFIX, Composite, SchemaValidationError, _issues


def render_container_config(composite: Mapping[str, Any]) -> dict[str, Any]:
    """The config one container is created with: image, cpu, memory_mb, env, labels, port.

    env carries the client's own variables plus PREWARM_* ones: the cache, routing and
    database hints as JSON, and the anticipated window, peaks, pool size and confidence.
    Labels carry a hash of the static config (everything but `anticipated`), so a
    reconciler can tell a container built from an older configuration.
    """
    try:
        model = Composite.model_validate(dict(composite))
    except ValidationError as error:
        raise SchemaValidationError("composite", _issues(error, Composite, ())) from None
    data = model.model_dump(mode="json")
    # Again here, the last step before a runtime, whoever built the composite.
    check_composite(data, "composite")
    cpu, memory_mb = member_size(model)
    env = dict(model.env)
    env.update(
        {
            f"{ENV_PREFIX}CLIENT_ID": model.client_id,
            f"{ENV_PREFIX}EXTENSIONS": ",".join(model.extensions),
            f"{ENV_PREFIX}CPU": _compact(cpu),
            f"{ENV_PREFIX}MEMORY_MB": str(_memory_limit(memory_mb)),
            f"{ENV_PREFIX}PORT": str(model.ports[0]),
            f"{ENV_PREFIX}PORTS": ",".join(str(port) for port in model.ports),
            f"{ENV_PREFIX}CACHE": _compact(data["cache"]),
            f"{ENV_PREFIX}CACHE_POLICY": model.cache.policy,
            f"{ENV_PREFIX}CACHE_SIZE_MB": _compact(model.cache.size_mb),
            f"{ENV_PREFIX}CACHE_TTL_SECONDS": str(model.cache.ttl_seconds),
            f"{ENV_PREFIX}CACHE_WARM_KEYS": _compact(model.cache.warm_keys),
            f"{ENV_PREFIX}ROUTING": _compact(data["routing"]),
            f"{ENV_PREFIX}DB_INDEX_HINTS": _compact(data["database"]["index_hints"]),
            f"{ENV_PREFIX}SERVICES": _compact(data["services"]),
            # The whole composite, which the member reports at `GET /config`.
            f"{ENV_PREFIX}CONFIG": _compact(data),
        }
    )
    labels = {
        "prewarm.config-hash": config_hash(data),
        "prewarm.extensions": ",".join(model.extensions),
    }
    anticipated = data["anticipated"]
    if anticipated is not None:
        env.update(
            {
                f"{ENV_PREFIX}ANTICIPATED": _compact(anticipated),
                f"{ENV_PREFIX}ANTICIPATED_WINDOW_START": anticipated["window_start"],
                f"{ENV_PREFIX}ANTICIPATED_WINDOW_END": anticipated["window_end"],
                f"{ENV_PREFIX}ANTICIPATED_POOL_SIZE": str(anticipated["recommended_pool_size"]),
                f"{ENV_PREFIX}ANTICIPATED_CONFIDENCE": _compact(anticipated["confidence"]),
                f"{ENV_PREFIX}ANTICIPATED_PEAK": _compact(anticipated["peak"]),
            }
        )
        labels["prewarm.anticipated-window"] = (
            f"{anticipated['window_start']}/{anticipated['window_end']}"
        )
    return {
        "image": model.image,
        "cpu": float(cpu),
        "memory_mb": _memory_limit(memory_mb),
        "env": env,
        "labels": labels,
        "port": model.ports[0],
    }


def member_size(model: Composite) -> tuple[float, float]:
    """The cpu and memory MB a member is created with: the size the forecast set, else the
    declared ones."""
    if model.size is not None:
        return model.size.cpu, model.size.memory_mb
    return model.cpu, model.memory_mb


def config_hash(composite: Mapping[str, Any]) -> str:
    """A short hash of what a member is built from: the composite without `anticipated`
    (a resized member is a different member: `size` counts).

    A field added to the schema later (`services`, `sizing`, `cache.policy`) counts only
    once set (off its default): a member built before it existed keeps its hash, so an
    upgrade does not replace every member."""
    static = {
        key: value
        for key, value in composite.items()
        if key != "anticipated" and not (key in _LATER_FIELDS and not value)
    }
    cache = static.get("cache")
    if isinstance(cache, Mapping) and cache.get("policy") == _FIRST_CACHE_POLICY:
        static["cache"] = {key: value for key, value in cache.items() if key != "policy"}
    canonical = json.dumps(static, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_LATER_FIELDS = frozenset({"services", "sizing", "size"})
_FIRST_CACHE_POLICY = "lru"  # what every cache was before the schema could say


def show_composite(composite: Mapping[str, Any]) -> str:
    """The composite as pretty JSON (for `prewarm schema show CLIENT`)."""
    return json.dumps(composite, indent=2, ensure_ascii=False)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _memory_limit(memory_mb: float) -> int:
    return int(math.ceil(memory_mb))
