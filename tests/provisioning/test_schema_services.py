"""Service requirements: a client's schema declares the services its workload needs beside
it (cache, db, queue: version, size and connections per request in flight); the anticipated
section and the predicted profile size each one for the window's peak."""

from __future__ import annotations

import json

import pytest

from provisioning.schema import compose_workload
from provisioning.schema_model import MAX_SERVICES, SchemaValidationError
from provisioning.schema_render import config_hash, render_container_config

SERVICES = {
    "name": "checkout-deps",
    "workload": {
        "services": {
            "sessions": {"kind": "cache", "version": "7.2", "size_mb": 64, "connections": 2},
            "orders": {"kind": "db", "version": "16", "size_mb": 10},
        }
    },
}
WINDOW = {
    "window_start": "2026-11-30T10:00:00Z",
    "window_end": "2026-11-30T12:00:00Z",
    "recommended_pool_size": 3,
    "confidence": 0.8,
}


def _anticipated(p50: float | None, p90: float | None) -> dict:
    return {**WINDOW, "peak": {"concurrency": {"p50": p50, "p90": p90}}}


def test_declared_services_are_sized_for_the_windows_peak():
    composite = compose_workload("c1", [SERVICES], _anticipated(2.0, 3.4))
    assert composite["services"]["orders"] == {
        "kind": "db",
        "version": "16",
        "size_mb": 10.0,
        "connections": 1,
    }
    assert composite["anticipated"]["services"] == {
        "sessions": {"kind": "cache", "version": "7.2", "size_mb": 217.6, "connections": 7},
        "orders": {"kind": "db", "version": "16", "size_mb": 34.0, "connections": 4},
    }


@pytest.mark.parametrize(
    ("p50", "p90", "in_flight"), [(2.0, None, 2.0), (0.2, 0.4, 1.0), (None, None, 1.0)]
)
def test_the_peak_falls_back_to_p50_and_never_below_one_request(p50, p90, in_flight):
    needs = compose_workload("c1", [SERVICES], _anticipated(p50, p90))["anticipated"]["services"]
    assert needs["orders"]["size_mb"] == pytest.approx(10 * in_flight)


def test_services_reach_the_container_and_leave_other_clients_hashes_alone():
    with_services = compose_workload("c1", [SERVICES])
    config = render_container_config(with_services)
    assert json.loads(config["env"]["PREWARM_SERVICES"]) == with_services["services"]
    # A member built before services existed (no key) keeps its hash: no upgrade churn.
    plain = compose_workload("c2")
    assert plain["services"] == {}
    before = {k: v for k, v in plain.items() if k != "services"}
    assert config_hash(plain) == config_hash(before)
    assert config_hash(with_services) != config_hash(
        {k: v for k, v in with_services.items() if k != "services"}
    )


@pytest.mark.parametrize(
    ("services", "path", "says"),
    [
        ({"s": {"kind": "mainframe"}}, "$.workload.services.s.kind", "cache"),
        (
            {"s": {"kind": "db", "version": "16; rm -rf /"}},
            "$.workload.services.s.version",
            "pattern",
        ),
        (
            {"s": {"kind": "db", "size_mb": -1}},
            "$.workload.services.s.size_mb",
            "greater than or equal",
        ),
        ({"Bad Name": {"kind": "db"}}, "$.workload.services", "pattern"),
        (
            {f"s{n}": {"kind": "queue"} for n in range(MAX_SERVICES + 1)},
            "$.workload.services",
            f"more than {MAX_SERVICES}",
        ),
    ],
)
def test_bad_service_declarations_are_refused_naming_the_path(services, path, says):
    with pytest.raises(SchemaValidationError) as refused:
        compose_workload("c1", [{"name": "deps", "workload": {"services": services}}])
    assert any(p.startswith(path) and says in problem for p, problem in refused.value.issues), (
        refused.value.issues
    )
