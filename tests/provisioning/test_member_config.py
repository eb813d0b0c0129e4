"""A member reports the composite it was created from at `GET /config`, on real Docker and
on processes alike: what the schema rendered is what the member holds (what it made of it,
`applied`, is tested in test_member_settings.py)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from provisioning.reconciler import build_spec
from provisioning.runtime.base import ContainerRuntime
from provisioning.schema import compose_workload
from provisioning.schema_render import render_container_config

EXTENSIONS = [
    {
        "name": "fast-cache",
        "workload": {
            "cache": {"size_mb": 32, "ttl_seconds": 45, "warm_keys": ["hot:1"]},
            "routing": {"weights": {"stable": 0.9, "canary": 0.1}, "affinity": "session"},
            "database": {"index_hints": [{"table": "orders", "columns": ["customer_id"]}]},
            "services": {"orders": {"kind": "db", "version": "16"}},
        },
    }
]
ANTICIPATED = {
    "window_start": "2026-11-30T10:00:00Z",
    "window_end": "2026-11-30T11:00:00Z",
    "peak": {"concurrency": {"p50": 2.0, "p90": 3.0}},
    "recommended_pool_size": 3,
    "confidence": 0.8,
}


def _config_of(endpoint: str) -> object:
    with urllib.request.urlopen(f"{endpoint}/config", timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("runtime_name", ["process_runtime", "docker_runtime"])
def test_a_member_serves_the_composite_it_was_created_from(
    request: pytest.FixtureRequest, runtime_name: str, plan_id: str
):
    runtime: ContainerRuntime = request.getfixturevalue(runtime_name)
    composite = compose_workload("acme", EXTENSIONS, ANTICIPATED, {"cpu": 0.25, "memory_mb": 64})
    config = render_container_config(composite)
    member = runtime.create(build_spec("acme", "shadow", None, config, plan_id))
    active, _ = runtime.activate(member.id)
    served = _config_of(active.endpoint)["composite"]
    assert served == json.loads(config["env"]["PREWARM_CONFIG"])
    assert served["cache"] == {
        "policy": "lru",
        "size_mb": 32.0,
        "ttl_seconds": 45,
        "warm_keys": ["hot:1"],
    }
    assert served["routing"]["weights"] == {"stable": 0.9, "canary": 0.1}
    assert served["anticipated"]["services"]["orders"]["connections"] == 3
    assert served["extensions"] == ["fast-cache"] and served["client_id"] == "acme"
