"""Members apply the settings their schema renders, on real Docker and on processes alike:
the cache with its policy and size (served on the member), the index hints in a SQLite file
on the member (EXPLAIN uses them), every declared port answering; `GET /config` reports the
composite and what was applied."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from provisioning.reconciler import build_spec
from provisioning.runtime.base import ContainerRuntime, Member
from provisioning.schema import compose_workload
from provisioning.schema_render import render_container_config

RUNTIMES = ["process_runtime", "docker_runtime"]
HINTS = [
    {"table": "orders", "columns": ["customer_id", "created_at"]},
    {"table": "invoices", "columns": ["invoice_no"], "unique": True},
]
VALUE = b"v" * 400_000  # two fit a 1 MB cache, three do not


def _create(
    runtime: ContainerRuntime, plan_id: str, workload: dict[str, Any]
) -> tuple[Member, dict[str, Any]]:
    """An active member (created shadow, then activated) and the config it was built from."""
    extension = {"name": "settings", "workload": workload}
    composite = compose_workload("acme", [extension], None, {"cpu": 0.25, "memory_mb": 64})
    config = render_container_config(composite)
    shadow = runtime.create(build_spec("acme", "shadow", None, config, plan_id))
    member, _ = runtime.activate(shadow.id)
    return member, config


def _call(endpoint: str, path: str, method: str = "GET", body: bytes | None = None):
    """(status, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(f"{endpoint}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _json(endpoint: str, path: str) -> Any:
    status, body = _call(endpoint, path)
    assert status == 200, (path, body)
    return json.loads(body)


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_a_member_applies_its_composite_and_reports_it(
    request: pytest.FixtureRequest, runtime_name: str, plan_id: str
) -> None:
    runtime: ContainerRuntime = request.getfixturevalue(runtime_name)
    workload = {
        "cache": {"policy": "lfu", "size_mb": 1, "ttl_seconds": 0, "warm_keys": ["hot:1"]},
        "database": {"index_hints": HINTS},
        "ports": [8080, 9090],
    }
    member, config = _create(runtime, plan_id, workload)
    assert member.endpoint is not None

    served = _json(member.endpoint, "/config")
    assert served["composite"] == json.loads(config["env"]["PREWARM_CONFIG"])
    applied = served["applied"]
    assert applied["cache"] == {
        "policy": "lfu",
        "size_mb": 1.0,
        "ttl_seconds": 0,
        "warm_keys_loaded": 1,
    }
    assert applied["database"]["tables"] == {
        "orders": ["customer_id", "created_at"],
        "invoices": ["invoice_no"],
    }
    indexes = {index["name"]: index for index in applied["database"]["indexes"]}
    assert indexes == {
        "ix0_orders_customer_id_created_at": {
            "name": "ix0_orders_customer_id_created_at",
            "table": "orders",
            "columns": ["customer_id", "created_at"],
            "unique": False,
        },
        "ix1_invoices_invoice_no": {
            "name": "ix1_invoices_invoice_no",
            "table": "invoices",
            "columns": ["invoice_no"],
            "unique": True,
        },
    }
    # The first query on a hinted column is planned on its index, from the first request.
    for name, index in indexes.items():
        query = f"/db/explain?table={index['table']}&column={index['columns'][0]}"
        plan = _json(member.endpoint, query)["plan"]
        assert any(f"INDEX {name} " in step for step in plan), plan
    assert _json(member.endpoint, "/db/explain?table=orders&column=created_at")["plan"] == [
        "SCAN orders"  # not a leading column: no index helps, and the plan says so
    ]
    # Every declared port answers, where the member says it listens.
    assert sorted(member.ports) == [8080, 9090] and member.ports[8080] == member.endpoint
    listening = {int(port): here for port, here in applied["ports"].items()}
    for declared, endpoint in member.ports.items():
        assert _call(endpoint, "/health") == (200, b"ok\n")
        assert endpoint.endswith(f":{listening[declared]}")
    if runtime.name == "docker":
        assert listening == {8080: 8080, 9090: 9090}  # the container's ports are its own
    # The warm key is there before any traffic; the cache is the same on every port.
    assert _call(member.ports[9090], "/cache/hot:1") == (200, b"")
    assert _call(member.ports[8080], "/cache/k", "PUT", b"v")[0] == 200
    assert _call(member.ports[9090], "/cache/k") == (200, b"v")


# The same reads after two writes; each policy evicts a different key on a third write.
# lfu: a was read 3 times, b once -> b goes; lru: b was read last -> a goes; ttl: a was
# written first -> a goes.
@pytest.mark.parametrize("runtime_name", RUNTIMES)
@pytest.mark.parametrize(("policy", "evicted"), [("lfu", "b"), ("lru", "a"), ("ttl", "a")])
def test_a_member_cache_evicts_by_its_policy_and_expires_by_its_ttl(
    request: pytest.FixtureRequest, runtime_name: str, plan_id: str, policy: str, evicted: str
) -> None:
    runtime: ContainerRuntime = request.getfixturevalue(runtime_name)
    ttl_seconds = 2 if policy == "ttl" else 0
    cache = {"policy": policy, "size_mb": 1, "ttl_seconds": ttl_seconds}
    member, _ = _create(runtime, plan_id, {"cache": cache})
    endpoint = member.endpoint or ""

    for key in ("a", "b"):
        assert _call(endpoint, f"/cache/{key}", "PUT", VALUE)[0] == 200
    for key in ("a", "a", "a", "b"):
        assert _call(endpoint, f"/cache/{key}")[0] == 200
    assert _call(endpoint, "/cache/c", "PUT", VALUE)[0] == 200

    kept = ({"a", "b"} - {evicted}).pop()
    assert _call(endpoint, f"/cache/{evicted}")[0] == 404
    assert _call(endpoint, f"/cache/{kept}") == (200, VALUE)
    stats = _json(endpoint, "/cache")
    assert (stats["policy"], stats["entries"], stats["evictions"]) == (policy, 2, 1)
    assert stats["used_bytes"] == 2 * (len(VALUE) + 1) <= stats["capacity_bytes"] == 2**20
    if policy == "ttl":
        time.sleep(2.2)
        assert _call(endpoint, "/cache/c")[0] == 404
        assert _json(endpoint, "/cache")["expirations"] == 2


@pytest.mark.parametrize("runtime_name", RUNTIMES)
def test_bad_requests_are_clear_4xx_and_the_member_serves_on(
    request: pytest.FixtureRequest, runtime_name: str, plan_id: str
) -> None:
    runtime: ContainerRuntime = request.getfixturevalue(runtime_name)
    member, _ = _create(runtime, plan_id, {"cache": {"size_mb": 0.5}})
    endpoint = member.endpoint or ""

    status, body = _call(endpoint, "/cache/big", "PUT", b"x" * 600_000)
    assert status == 413 and b"do not fit a cache of 524288 bytes" in body
    status, body = _call(endpoint, "/cache/" + "k" * 251, "PUT", b"x")
    assert status == 400 and b"more than 250" in body
    status, body = _call(endpoint, "/cache/", "PUT", b"x")
    assert status == 400 and b"empty key" in body
    host, port = endpoint.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.putrequest("PUT", "/cache/k")
    connection.endheaders()  # no Content-Length: the value's size is not known
    response = connection.getresponse()
    assert response.status == 411 and b"Content-Length" in response.read()
    connection.close()
    status, body = _call(endpoint, "/db/explain?table=orders&column=id")
    assert status == 404 and b"no table 'orders'" in body
    assert _call(endpoint, "/db/explain")[0] == 400
    assert _call(endpoint, "/nowhere")[0] == 404
    assert _call(endpoint, "/cache", "POST", b"x")[0] == 501
    assert _call(endpoint, "/health") == (200, b"ok\n")  # and it serves on
