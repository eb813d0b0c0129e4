"""Property-based tests of the whole API from its own OpenAPI schema (schemathesis 4.x).

Schemathesis generates valid and invalid requests for every operation and checks each
answer against the schema (documented status codes, response bodies, content types) and
for server errors. Three callers: the owner of client `a` (paths pinned to `a`, so bodies
reach validation and storage), the same key on generated client ids (403s), and nobody
(401s). No 5xx anywhere: the activation endpoint runs on a real process runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from api.app import create_app
from provisioning.apply import release_all
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.api.conftest import World

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (constraints.txt pins it; make install)"
)

# Derandomized: a CI gate should fail the same way twice (to explore, drop it locally).
# Health checks judge the generator's speed and sizes, not the API: off, so a loaded CI
# machine does not fail the run.
EXAMPLES = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@pytest.fixture
def api_runtime(tmp_path: Path, pool_scope: dict[str, str]) -> Iterator[ProcessRuntime]:
    runtime = ProcessRuntime(tmp_path / "process-pool.json", grace_s=0.5)
    yield runtime
    release_all(runtime, pool_scope)


@pytest.fixture
def api(world: World, api_runtime: ProcessRuntime, pool_scope: dict[str, str]) -> FastAPI:
    """The app under test, over this test's warehouse copy and runtime."""
    return create_app(world.path, lambda: api_runtime, pool_scope)


# The schema is the same for every app; it is read from one that is never called otherwise
# (serving /openapi.json touches no warehouse), and every case is sent to the test's `api`.
# (`schemathesis.pytest.from_fixture` would be the lazy way, but 4.32 breaks on pytest 9.)
ParameterLocation = pytest.importorskip("schemathesis.core.parameters").ParameterLocation
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Path("openapi-only.duckdb"), None, {})
)


def _only_path_or_headers_negative(case: Any) -> bool:
    meta = case.meta
    if meta is None or meta.is_negative_at(ParameterLocation.BODY):
        return False
    return meta.generation.mode.is_negative or any(
        component.mode.is_negative for component in meta.components.values()
    )


def _unknowable_acceptance(case: Any) -> list[Any]:
    """An extension document can be schema-valid and still refused: JSON Schema cannot say
    "an env var that is not LD_PRELOAD" or "no more CPU than this deployment's largest host"
    (tests/api/test_api_changes.py pins those refusals). For it, a documented 422 is not a
    rejected valid request; every other check still runs."""
    if case.method.upper() == "POST" and case.path.endswith("/schema/extensions"):
        return [schemathesis.checks.positive_data_acceptance]
    return []


def _without_5xx(response: Any) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text}"


def _near_now_window(case: Any) -> None:
    """Positive feedback bodies get a window around now: JSON Schema cannot say "within 400
    days of now, end after start", so generated dates would make every valid body a 422."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if isinstance(case.body, dict) and "window_start" in case.body:
        now = datetime.now(UTC)
        case.body["window_start"] = (now - timedelta(hours=2)).isoformat()
        case.body["window_end"] = (now - timedelta(hours=1)).isoformat()


@schema.parametrize()
@EXAMPLES
def test_own_client_with_a_valid_key(
    case: Any, api: FastAPI, world: World, api_runtime: ProcessRuntime, pool_scope: dict[str, str]
) -> None:
    if _only_path_or_headers_negative(case):
        return  # pinned below to a valid id and key: nothing invalid would be left to send
    if "client_id" in (case.path_parameters or {}):
        case.path_parameters["client_id"] = "a"
    _near_now_window(case)

    # Passed as the caller's headers: schemathesis then knows this auth is real, not
    # generated, and its ignored-auth check probes without it.
    response = case.call_and_validate(
        app=api,
        headers={"Authorization": f"Bearer {world.key_a}"},
        excluded_checks=_unknowable_acceptance(case),
    )

    _without_5xx(response)
    if case.path.endswith("/activate"):
        if case.method.upper() == "POST" and not _only_path_or_headers_negative(case):
            assert response.status_code in (200, 409), response.text
        release_all(api_runtime, pool_scope)  # one cold start per example, not a pile


@schema.parametrize()
@EXAMPLES
def test_generated_client_ids_with_a_valid_key(case: Any, api: FastAPI, world: World) -> None:
    response = case.call_and_validate(app=api, headers={"X-API-Key": world.key_a})

    _without_5xx(response)
    if "client_id" in (case.path_parameters or {}) and case.path_parameters["client_id"] != "a":
        # 401 when schemathesis also sent an Authorization of its own (it takes precedence).
        assert response.status_code in (401, 403, 404, 405), response.text


@schema.parametrize()
@EXAMPLES
def test_no_key(case: Any, api: FastAPI) -> None:
    for name in ("Authorization", "X-API-Key"):
        (case.headers or {}).pop(name, None)

    response = case.call_and_validate(app=api)

    _without_5xx(response)
    if case.path.startswith("/v1/"):
        assert response.status_code in (401, 404, 405), response.text


@schema.parametrize()
@EXAMPLES
def test_another_clients_key_gets_nothing_of_a(case: Any, api: FastAPI, world: World) -> None:
    """Client b's key on client a's paths (a has profiles, schema, a pool): never a success,
    never a byte of a's data, whatever schemathesis generates around it."""
    if "client_id" not in (case.path_parameters or {}):
        return  # /healthz and the docs carry no client data
    case.path_parameters["client_id"] = "a"
    response = case.call(app=api, headers={"Authorization": f"Bearer {world.key_b}"})

    _without_5xx(response)
    assert response.status_code in (401, 403, 404, 405, 422), response.text
    # Nothing that names a as its subject comes back (a profile, a schema, a member).
    assert '"client_id":"a"' not in response.text.replace(" ", ""), response.text
