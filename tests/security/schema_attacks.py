"""The hostile schema extensions every entry point must refuse, and the host they are
checked against (shared by the check and the entry-point tests)."""

from __future__ import annotations

from typing import Any

from provisioning.schema_checks import (
    DEFAULT_ALLOWED_IMAGES,
    MAX_DEPTH,
    SchemaLimits,
)

HOST = {"name": "node-a", "cpu_cores": 16, "memory_mb": 65536}
LIMITS = SchemaLimits(DEFAULT_ALLOWED_IMAGES, max_cpu=16.0, max_memory_mb=65536.0)


def extension(name: str, workload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "workload": workload, **extra}


def nested(depth: int) -> Any:
    """`depth` nested arrays (built without recursion)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Every attack: (id, extension document, the field named, a phrase of the problem).
ATTACKS = [
    (
        "ld-preload",
        extension("evil", {"env": {"LD_PRELOAD": "/tmp/x.so"}}),
        "env.LD_PRELOAD",
        "denied",
    ),
    ("path", extension("evil", {"env": {"PATH": "/tmp/bin"}}), "env.PATH", "denied"),
    ("port", extension("evil", {"env": {"PORT": "1"}}), "env.PORT", "reserved"),
    ("pythonpath", extension("evil", {"env": {"PYTHONPATH": "/x"}}), "env.PYTHONPATH", "denied"),
    ("bash-env", extension("evil", {"env": {"BASH_ENV": "/x"}}), "env.BASH_ENV", "denied"),
    ("lowercase", extension("evil", {"env": {"ld_preload": "/x"}}), "env.ld_preload", "pattern"),
    ("cpu", extension("evil", {"cpu": 1e5}), "$.workload.cpu", "largest host"),
    ("memory", extension("evil", {"memory_mb": 1e12}), "$.workload.memory_mb", "largest host"),
    ("big-env-value", extension("evil", {"env": {"BIG": "x" * 200_000}}), "env.BIG", "200000"),
    ("nul", extension("evil", {"env": {"A": "x\x00y"}}), "env.A", "U+0000"),
    ("escape", extension("evil", {"env": {"A": "\x1b[2J"}}), "env.A", "U+001B"),
    (
        "many-env",
        extension("evil", {"env": {f"V{i}": "1" for i in range(65)}}),
        "$.workload.env",
        "65 entries",
    ),
    (
        "deep",
        extension("evil", {"routing": {"weights": nested(MAX_DEPTH)}}),
        "$.workload.routing.weights[0][0][0][0][0]",
        "nested deeper than 8",
    ),
    (
        "image",
        extension("evil", {"image": "evil/miner:latest"}),
        "$.workload.image",
        "not an allowed image",
    ),
    (
        "31mb",
        extension("evil", {"cache": {"warm_keys": ["k" * 1000] * 31_000}}),
        "$",
        "larger than 64 KiB",
    ),
]


# --- the checks themselves (pure) ----------------------------------------------------------
