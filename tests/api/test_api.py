"""The HTTP API end to end: FastAPI's TestClient on a real warehouse file, real runtimes.

Covers what a client sees (profile and schema numbers, feedback rows, activations that
answer HTTP), and what an attacker tries (other clients' resources, no or forged keys,
invalid and oversized bodies, SQL-looking input), on every route.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.composite import client_composite
from api.models import Metric
from core.errors import PrewarmError
from core.vocabulary import METRICS
from provisioning.reconciler import build_spec
from provisioning.runtime.base import (
    ActivationTimeout,
    ContainerRuntime,
    ContainerSpec,
    Member,
    RuntimeUnavailable,
    probe_once,
)
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema import render_container_config
from tests.api.conftest import GENERATED_AT, POOL_LABEL, WINDOW_1, WINDOW_2, World
from warehouse.api_keys import issue_key, rotate_key, verify_key
from warehouse.db import connect, fetch_frame, fetch_value

ROUTES = [
    ("GET", "profile"),
    ("GET", "schema"),
    ("POST", "feedback"),
    ("POST", "activate"),
]
MALFORMED_JSON = b'{"score": 3, "window_start": '
WELL_FORMED_UNKNOWN_KEY = "pw_" + "0" * 16 + "_" + "x" * 43


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _feedback(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    body = {
        "window_start": (now - timedelta(hours=2)).isoformat(),
        "window_end": (now - timedelta(hours=1)).isoformat(),
        "score": 4,
        "actual": {"concurrency": 3.0, "cpu_cores": 0.75},
        "comment": "the afternoon peak came early",
    }
    return {**body, **overrides}


def _naive_utc(text: str) -> datetime:
    """An ISO time as the warehouse stores it: naive UTC."""
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def _count(path: Path, table: str) -> int:
    with connect(path, read_only=True) as con:
        return int(fetch_value(con, f"SELECT count(*) FROM {table}") or 0)


def _call(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> httpx.Response:
    """One request; `body` bytes are sent raw (as JSON), anything else as JSON."""
    if isinstance(body, bytes):
        headers = {**(headers or {}), "Content-Type": "application/json"}
        return client.request(method, path, headers=headers, content=body)
    return client.request(method, path, headers=headers, json=body)


# --- reading what the models said ---------------------------------------------------------


def test_own_key_reads_the_latest_profile(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/a/profile", headers=_bearer(world.key_a))

    assert response.status_code == 200
    profile = response.json()
    assert profile["client_id"] == "a"
    assert profile["generated_at"] == GENERATED_AT.isoformat() + "Z"
    # Only the latest run, by window start; the superseded run (10x bigger) is not served.
    first, second = profile["windows"]
    assert (first["start"], first["end"]) == tuple(t.isoformat() + "Z" for t in WINDOW_1)
    assert (second["start"], second["end"]) == tuple(t.isoformat() + "Z" for t in WINDOW_2)
    assert first["duration_minutes"] == 90.0
    assert first["peaks"]["concurrency"] == {"p50": 2.0, "p90": 3.4}
    assert first["peaks"]["requests"] == {"p50": 100.0, "p90": 150.0}
    assert first["peaks"]["net_mbps"] == {"p50": None, "p90": None}
    assert second["peaks"]["memory_mb"] == {"p50": 512.0, "p90": 600.0}
    assert set(first["peaks"]) == set(METRICS)
    assert (first["p_active"], first["confidence"]) == (0.9, 0.75)
    assert (first["model_name"], first["model_version"]) == ("lightgbm-quantile", "7")


def test_a_client_never_predicted_has_no_windows(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/b/profile", headers=_bearer(world.key_b))

    assert response.status_code == 200
    assert response.json() == {"client_id": "b", "generated_at": None, "windows": []}


def test_own_key_reads_the_composite_schema(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/a/schema", headers={"X-API-Key": world.key_a})

    assert response.status_code == 200
    schema = response.json()
    assert schema["client_id"] == "a"
    assert schema["extensions"] == ["big-cache"]
    assert (schema["cpu"], schema["memory_mb"]) == (0.25, 64.0)  # the clients row
    assert schema["cache"]["ttl_seconds"] == 600  # the extension
    anticipated = schema["anticipated"]
    assert anticipated["window_start"] == WINDOW_1[0].isoformat() + "Z"
    # No plan applied yet: the profile's own guess, round(concurrency p90 3.4), and it says so.
    assert (anticipated["recommended_pool_size"], anticipated["source"]) == (3, "profile")
    assert anticipated["peak"]["concurrency"] == {"p50": 2.0, "p90": 3.4}
    assert anticipated["confidence"] == 0.75


def test_composite_of_an_unknown_client_is_a_clear_error(world: World) -> None:
    with pytest.raises(PrewarmError, match="No client 'nobody'"):
        client_composite(world.path, "nobody")


def test_metric_names_are_the_usage_metrics() -> None:
    assert set(Metric.__args__) == set(METRICS)


# --- feedback -----------------------------------------------------------------------------


def test_feedback_is_stored_as_posted(client: TestClient, world: World) -> None:
    body = _feedback(
        window_start=(datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0).isoformat(),
        window_end=(datetime.now(UTC) - timedelta(hours=20)).replace(microsecond=0).isoformat(),
    )
    response = client.post("/v1/clients/a/feedback", headers=_bearer(world.key_a), json=body)

    assert response.status_code == 201
    feedback_id = response.json()["feedback_id"]
    with connect(world.path, read_only=True) as con:
        rows = fetch_frame(con, "SELECT *, actual::VARCHAR AS actual_text FROM feedback").to_dicts()
    [row] = rows
    assert row["feedback_id"] == feedback_id
    assert row["client_id"] == "a"
    assert row["score"] == 4
    assert row["comment"] == "the afternoon peak came early"
    assert json.loads(row["actual_text"]) == {"concurrency": 3.0, "cpu_cores": 0.75}
    assert row["window_start"] == _naive_utc(body["window_start"])
    assert row["window_end"] == _naive_utc(body["window_end"])
    received = row["received_at"].replace(tzinfo=UTC)
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=1)


def test_feedback_offsets_are_stored_as_utc(client: TestClient, world: World) -> None:
    day = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    body = _feedback(
        window_start=f"{day}T10:00:00+02:00", window_end=f"{day}T09:30:00Z", actual=None
    )
    response = client.post("/v1/clients/a/feedback", headers=_bearer(world.key_a), json=body)

    assert response.status_code == 201
    with connect(world.path, read_only=True) as con:
        start, end, actual = con.execute(
            "SELECT window_start, window_end, actual FROM feedback"
        ).fetchall()[0]
    assert (start.hour, end.hour, end.minute) == (8, 9, 30)
    assert actual is None


INVALID_BODIES = [
    pytest.param({"score": 0}, "body.score", id="score-0"),
    pytest.param({"score": 6}, "body.score", id="score-6"),
    pytest.param({"score": "5"}, "body.score", id="score-string"),
    pytest.param({"score": 4.5}, "body.score", id="score-float"),
    pytest.param({"score": True}, "body.score", id="score-bool"),
    pytest.param({"score": None}, "body.score", id="score-null"),
    pytest.param({"window_end": "2020-01-01T00:00:00Z"}, "window_end", id="end-before-start"),
    pytest.param({"window_start": 1714564800}, "body.window_start", id="start-unix-number"),
    pytest.param({"window_start": "yesterday"}, "body.window_start", id="start-not-a-date"),
    pytest.param(
        {"window_start": "2099-01-01T00:00:00Z", "window_end": "2099-01-02T00:00:00Z"},
        "window_start",
        id="window-far-future",
    ),
    pytest.param({"surprise": 1}, "body.surprise", id="unknown-field"),
    pytest.param({"actual": {"cpu_cores": -1}}, "body.actual.cpu_cores", id="negative-actual"),
    pytest.param({"actual": {"gpus": 1}}, "body.actual.gpus", id="unknown-metric"),
    pytest.param({"actual": {"cpu_cores": "1"}}, "body.actual.cpu_cores", id="actual-string"),
    pytest.param({"actual": [1, 2]}, "body.actual", id="actual-list"),
    pytest.param({"comment": "x" * 2001}, "body.comment", id="comment-too-long"),
    pytest.param({"comment": 7}, "body.comment", id="comment-number"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_BODIES)
def test_invalid_feedback_is_422_naming_the_field(
    client: TestClient, world: World, change: dict[str, Any], field: str
) -> None:
    response = client.post(
        "/v1/clients/a/feedback", headers=_bearer(world.key_a), json=_feedback(**change)
    )

    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert any(field in f"{e['field']}: {e['message']}" for e in response.json()["errors"])
    assert _count(world.path, "feedback") == 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"NaN", "body.actual.cpu_cores"),
        (b"Infinity", "body.actual.cpu_cores"),
        (b"-Infinity", "body.actual.cpu_cores"),
    ],
)
def test_non_finite_actuals_in_raw_json_are_422(
    client: TestClient, world: World, raw: bytes, field: str
) -> None:
    body = json.dumps(_feedback(actual={"cpu_cores": 1.0})).replace("1.0", raw.decode())
    response = _call(client, "POST", "/v1/clients/a/feedback", _bearer(world.key_a), body.encode())

    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert "finite" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (MALFORMED_JSON, "not valid JSON"),
        (b"[1, 2]", "body: expected a JSON object"),
        (b"", "body: Field required"),
        (b'{"comment": "\xff\xfe"}', "not valid UTF-8 JSON"),
    ],
)
def test_unreadable_bodies_are_422(
    client: TestClient, world: World, raw: bytes, message: str
) -> None:
    response = _call(client, "POST", "/v1/clients/a/feedback", _bearer(world.key_a), raw)

    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_a_body_not_sent_as_json_is_422(client: TestClient, world: World) -> None:
    response = client.post(
        "/v1/clients/a/feedback",
        headers={**_bearer(world.key_a), "Content-Type": "text/plain"},
        content=json.dumps(_feedback()),
    )

    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["detail"]


def test_an_integral_float_score_is_an_integer(client: TestClient, world: World) -> None:
    response = client.post(
        "/v1/clients/a/feedback", headers=_bearer(world.key_a), json=_feedback(score=5.0)
    )

    assert response.status_code == 201  # JSON Schema's integer: 5.0 is 5
    with connect(world.path, read_only=True) as con:
        assert fetch_value(con, "SELECT score FROM feedback") == 5


def test_sql_looking_comments_are_stored_literally(client: TestClient, world: World) -> None:
    comment = "'); DROP TABLE feedback; -- \" OR 1=1; SELECT * FROM api_keys"
    response = client.post(
        "/v1/clients/a/feedback", headers=_bearer(world.key_a), json=_feedback(comment=comment)
    )

    assert response.status_code == 201
    with connect(world.path, read_only=True) as con:
        assert fetch_value(con, "SELECT comment FROM feedback") == comment
        assert fetch_value(con, "SELECT count(*) FROM api_keys") == 2


# --- size limits --------------------------------------------------------------------------


def test_oversized_bodies_are_413_by_declared_length(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app(max_body_bytes=1024))
    padded = _feedback(comment="x" * 1500)

    response = client.post("/v1/clients/a/feedback", headers=_bearer(world.key_a), json=padded)

    assert response.status_code == 413
    assert "1024 bytes" in response.json()["detail"]
    assert _count(world.path, "feedback") == 0


def test_oversized_bodies_are_413_while_streaming(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app(max_body_bytes=1024))

    def chunks() -> Any:  # no Content-Length: sent chunked, counted as it arrives
        yield b'{"comment": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    response = client.post(
        "/v1/clients/a/feedback",
        headers={**_bearer(world.key_a), "Content-Type": "application/json"},
        content=chunks(),
    )

    assert response.status_code == 413
    assert _count(world.path, "feedback") == 0


def test_a_body_within_the_limit_is_read(make_app: Callable[..., FastAPI], world: World) -> None:
    client = TestClient(make_app(max_body_bytes=1024))

    response = client.post("/v1/clients/a/feedback", headers=_bearer(world.key_a), json=_feedback())

    assert response.status_code == 201


# --- authentication and authorisation -----------------------------------------------------

# Another client, an unknown one (no hint that it does not exist), SQL, malformed ids.
OTHER_CLIENTS = ["b", "nobody", "a' OR '1'='1", "a;DROP TABLE clients", "-dash", "A", "a ", "a%00"]
BODIES = [
    pytest.param(None, id="no-body"),
    pytest.param(_feedback(), id="valid-body"),
    pytest.param({"score": 0, "bogus": True}, id="invalid-body"),
    pytest.param(MALFORMED_JSON, id="malformed-json"),
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_another_clients_resources_are_403(
    client: TestClient,
    world: World,
    process_runtime: ProcessRuntime,
    method: str,
    route: str,
    body: Any,
) -> None:
    for target in OTHER_CLIENTS:
        path = f"/v1/clients/{quote(target, safe='')}/{route}"
        response = _call(client, method, path, _bearer(world.key_a), body)

        assert response.status_code == 403, (target, response.text)
        assert response.json() == {"detail": "This API key does not grant access to that client."}
    assert _count(world.path, "feedback") == 0
    assert process_runtime.list() == []  # nothing activated or cold-started for anyone


@pytest.fixture
def revoked_key(world: World) -> str:
    old = world.key_b
    rotate_key(world.path, "b")
    return old


def _forged(key: str) -> str:
    """The same key id with another (well-formed) secret."""
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


CREDENTIALS = [
    pytest.param(lambda w: {}, id="none"),
    pytest.param(lambda w: {"Authorization": ""}, id="empty-authorization"),
    pytest.param(lambda w: {"Authorization": "Bearer"}, id="bearer-without-key"),
    pytest.param(lambda w: {"Authorization": f"Basic {w.key_a}"}, id="basic-scheme"),
    pytest.param(lambda w: {"Authorization": f"Bearer {w.key_a} extra"}, id="bearer-two-words"),
    pytest.param(lambda w: {"Authorization": w.key_a}, id="no-scheme"),
    pytest.param(lambda w: _bearer("pw_nonsense"), id="malformed-key"),
    pytest.param(lambda w: _bearer(_forged(w.key_a)), id="forged-secret"),
    pytest.param(lambda w: _bearer(WELL_FORMED_UNKNOWN_KEY), id="unknown-key-id"),
    pytest.param(lambda w: {"X-API-Key": _forged(w.key_a)}, id="forged-x-api-key"),
    pytest.param(lambda w: {"X-API-Key": "   "}, id="blank-x-api-key"),
    pytest.param(lambda w: {"X-API-Key": "' OR 1=1 --"}, id="sql-x-api-key"),
]


@pytest.mark.parametrize("credentials", CREDENTIALS)
@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_missing_or_bad_keys_are_401(
    client: TestClient,
    world: World,
    method: str,
    route: str,
    credentials: Callable[[World], dict[str, str]],
) -> None:
    for body in BODIES:
        response = _call(
            client, method, f"/v1/clients/a/{route}", credentials(world), body.values[0]
        )

        assert response.status_code == 401, (body.id, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (
            "key" in response.json()["detail"].lower() or "authorization" in response.text.lower()
        )


@pytest.mark.parametrize(("method", "route"), ROUTES)
def test_a_revoked_key_is_401_everywhere(
    client: TestClient, world: World, revoked_key: str, method: str, route: str
) -> None:
    response = _call(client, method, f"/v1/clients/b/{route}", _bearer(revoked_key))

    assert response.status_code == 401


def test_rotation_retires_the_old_key(client: TestClient, world: World) -> None:
    new_key = rotate_key(world.path, "a")

    assert client.get("/v1/clients/a/profile", headers=_bearer(world.key_a)).status_code == 401
    assert client.get("/v1/clients/a/profile", headers=_bearer(new_key)).status_code == 200
    assert verify_key(world.path, world.key_a) is None
    assert verify_key(world.path, new_key) == "a"
    assert verify_key(world.path, world.key_b) == "b"  # other clients keep theirs
    with connect(world.path, read_only=True) as con:
        assert fetch_value(con, "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL") == 2
        assert fetch_value(con, "SELECT count(*) FROM api_keys") == 3


def test_key_lifecycle_errors_are_explained(world: World) -> None:
    with pytest.raises(PrewarmError, match="No client 'nobody'.*no key to rotate"):
        rotate_key(world.path, "nobody")
    with pytest.raises(PrewarmError, match="No client 'nobody'"):
        issue_key(world.path, "nobody", create_client=False)
    with pytest.raises(PrewarmError, match="already has an API key.*rotate-key"):
        issue_key(world.path, "a", create_client=False)
    with pytest.raises(PrewarmError, match="not a valid client id"):
        issue_key(world.path, "a' OR '1'='1", create_client=True)
    assert _count(world.path, "clients") == 2


def test_issuing_for_a_new_client_creates_a_bare_one(client: TestClient, world: World) -> None:
    odd_but_valid = "tenant:42@eu.west-1_x"
    key = issue_key(world.path, odd_but_valid, create_client=True)
    path = f"/v1/clients/{quote(odd_but_valid, safe='')}"

    profile = client.get(f"{path}/profile", headers=_bearer(key))
    schema = client.get(f"{path}/schema", headers=_bearer(key))

    assert profile.status_code == 200 and profile.json()["windows"] == []
    assert schema.status_code == 200 and schema.json()["client_id"] == odd_but_valid
    assert schema.json()["anticipated"] is None
    with connect(world.path, read_only=True) as con:
        assert con.execute(
            "SELECT source, freq_seconds, mode FROM clients WHERE client_id = ?", [odd_but_valid]
        ).fetchall() == [("api", 300, "provision")]
    # Issued for that client only: a's resources stay closed to it.
    assert client.get("/v1/clients/a/profile", headers=_bearer(key)).status_code == 403


def test_keys_are_not_stored_in_clear(world: World) -> None:
    secrets_ = [key.rsplit("_", 1)[-1] for key in (world.key_a, world.key_b)]
    secrets_ += [key.split("_", 2)[2] for key in (world.key_a, world.key_b)]

    with connect(world.path, read_only=True) as con:
        cells = con.execute("SELECT * FROM api_keys").fetchall()
    stored = "".join(str(cell) for row in cells for cell in row)
    files = [world.path, *world.path.parent.glob(world.path.name + "*")]
    raw = b"".join(path.read_bytes() for path in files if path.is_file())

    assert len(cells) == 2
    for secret in secrets_:
        assert secret not in stored
        assert secret.encode() not in raw
    for key in (world.key_a, world.key_b):
        assert key.encode() not in raw


# --- health, docs, failures ---------------------------------------------------------------


def test_health_needs_no_key_and_reports_the_warehouse(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "warehouse": True}

    missing = TestClient(create_app(tmp_path / "absent.duckdb", None, {}))
    assert missing.get("/healthz").json() == {"status": "ok", "warehouse": False}
    response = missing.get("/v1/clients/a/profile", headers=_bearer(WELL_FORMED_UNKNOWN_KEY))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert set(spec["paths"]) == {
        "/healthz",
        "/v1/clients/{client_id}/profile",
        "/v1/clients/{client_id}/schema",
        "/v1/clients/{client_id}/feedback",
        "/v1/clients/{client_id}/activate",
    }
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert client.get("/docs").status_code == 200


def test_concurrent_reads_and_writes_all_succeed(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    # DuckDB refuses read-only and read-write connections to one file at once in a process:
    # the app serialises its warehouse calls, so threads mixing both never see that error.
    def one(i: int) -> int:
        if i % 2:
            return client.post(
                "/v1/clients/a/feedback", headers=headers, json=_feedback()
            ).status_code
        return client.get("/v1/clients/a/schema", headers=headers).status_code

    headers = _bearer(world.key_a)
    with TestClient(make_app()) as client, ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(one, range(12)))

    assert codes == [200, 201] * 6
    assert _count(world.path, "feedback") == 6


def test_a_locked_warehouse_is_503_with_retry_after(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]);"
            " print('locked', flush=True); time.sleep(30)",
            str(world.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        client = TestClient(make_app(lock_wait_s=0.2))

        response = client.get("/v1/clients/a/profile", headers=_bearer(world.key_a))

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "busy" in response.json()["detail"]
        assert client.get("/healthz").json() == {"status": "ok", "warehouse": False}
    finally:
        holder.kill()
        holder.wait()


def test_unexpected_errors_are_a_generic_500_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"this is not a DuckDB file" * 100)
    client = TestClient(create_app(corrupt, None, {}))

    response = client.get("/v1/clients/a/schema", headers=_bearer(WELL_FORMED_UNKNOWN_KEY))

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error; it has been logged."}
    assert "Traceback" not in response.text and "duckdb" not in response.text.lower()
    assert any(r.exc_info for r in caplog.records if r.name == "api.app")


# --- activation ---------------------------------------------------------------------------


def _shadow_member(runtime: ContainerRuntime, world: World, scope: dict[str, str]) -> str:
    config = render_container_config(client_composite(world.path, "a"))
    spec = build_spec("a", "shadow", "h1", config, "test-plan", labels=scope)
    return runtime.create(spec).id


def _answers(endpoint: str) -> bool:
    return probe_once(endpoint, timeout_s=2.0)


def _activation_rows(path: Path) -> tuple[list[dict], list[dict]]:
    with connect(path, read_only=True) as con:
        events = fetch_frame(con, "SELECT * FROM pool_events ORDER BY happened_at").to_dicts()
        members = fetch_frame(con, "SELECT * FROM pool_members ORDER BY created_at").to_dicts()
    return events, members


def test_activation_claims_the_shadow_then_cold_starts(
    client: TestClient,
    world: World,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
) -> None:
    shadow_id = _shadow_member(process_runtime, world, pool_scope)

    warm = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert warm.status_code == 200, warm.text
    body = warm.json()
    assert body["member_id"] == shadow_id and body["tier_before"] == "shadow"
    assert body["activation_ms"] > 0 and _answers(body["endpoint"])

    cold = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert cold.status_code == 409, cold.text
    fallback = cold.json()
    assert fallback["fallback"] == "cold-start" and "No warm member" in fallback["detail"]
    assert fallback["member_id"] != shadow_id and _answers(fallback["endpoint"])
    assert fallback["activation_ms"] > 0
    members = {m.id: m for m in process_runtime.list(pool_scope)}
    assert {m.tier for m in members.values()} == {"active"} and len(members) == 2
    # The cold-started member carries the pool scope (the reconciler sees it) and the
    # client's rendered config.
    started = members[fallback["member_id"]]
    assert started.labels[POOL_LABEL] == pool_scope[POOL_LABEL]
    assert started.details["cpu"] == 0.25 and started.details["memory_mb"] == 64

    events, rows = _activation_rows(world.path)
    assert [(e["member_id"], e["action"], e["ok"], e["reason"]) for e in events] == [
        (shadow_id, "activate", True, "request: from shadow"),
        (fallback["member_id"], "activate", True, "request: cold start (no warm member)"),
    ]
    assert [e["ms"] for e in events] == [body["activation_ms"], fallback["activation_ms"]]
    by_id = {row["member_id"]: row for row in rows}
    assert by_id[shadow_id]["tier"] == "active" and by_id[shadow_id]["activations"] == 1
    assert by_id[shadow_id]["last_activation_ms"] == body["activation_ms"]
    assert by_id[shadow_id]["host"] == "h1"
    assert by_id[fallback["member_id"]]["plan_id"] == "api-cold-start"
    assert by_id[fallback["member_id"]]["endpoint"] == fallback["endpoint"]


def test_activation_without_a_runtime_is_503(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app(runtime=None))

    response = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert response.status_code == 503
    assert "No container runtime is configured" in response.json()["detail"]


def test_an_unavailable_runtime_is_503_and_retried(world: World, pool_scope: dict) -> None:
    calls = []

    def factory() -> ContainerRuntime:
        calls.append(1)
        raise RuntimeUnavailable("no Docker daemon answers at unix:///var/run/docker.sock")

    client = TestClient(create_app(world.path, factory, pool_scope))
    first = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))
    second = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert (first.status_code, second.status_code) == (503, 503)
    assert first.headers["Retry-After"] == "5"
    assert "docker.sock" not in first.text  # internals stay in the log
    assert len(calls) == 2


class _NoStartingRuntime(ProcessRuntime):
    """A process runtime whose new members never answer (a broken image, say)."""

    def create(self, spec: ContainerSpec) -> Member:
        raise ActivationTimeout("http://127.0.0.1:1/health did not answer within 10.0 s")


def test_a_failed_cold_start_is_503_and_recorded(
    make_app: Callable[..., FastAPI], world: World, tmp_path: Path
) -> None:
    client = TestClient(make_app(_NoStartingRuntime(tmp_path / "pool.json")))

    response = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "127.0.0.1" not in response.text
    events, members = _activation_rows(world.path)
    assert [(e["action"], e["ok"], e["reason"]) for e in events] == [
        ("activate", False, "request: failed")
    ]
    assert "ActivationTimeout" in events[0]["error"] and members == []


def test_conflicting_extensions_are_409_on_schema_and_503_on_activate(
    client: TestClient, world: World, process_runtime: ProcessRuntime
) -> None:
    with connect(world.path) as con:
        for name, ttl in (("short", 60), ("long", 3600)):
            document = {"name": name, "workload": {"cache": {"ttl_seconds": ttl}}}
            con.execute(
                "INSERT INTO client_schema_extensions VALUES ('b', ?, 0, ?::JSON, now())",
                [name, json.dumps(document)],
            )

    schema = client.get("/v1/clients/b/schema", headers=_bearer(world.key_b))
    activation = client.post("/v1/clients/b/activate", headers=_bearer(world.key_b))

    assert schema.status_code == 409
    assert "cache.ttl_seconds" in schema.json()["detail"] and "'long'" in schema.json()["detail"]
    assert activation.status_code == 503
    assert process_runtime.list() == []


@pytest.mark.docker
def test_activation_on_docker_leaves_the_container_running(
    make_app: Callable[..., FastAPI],
    world: World,
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    pool_scope: dict[str, str],
) -> None:
    client = TestClient(make_app(docker_runtime))
    shadow_id = _shadow_member(docker_runtime, world, pool_scope)
    assert docker_client.containers.get(shadow_id).status == "paused"

    warm = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))
    cold = client.post("/v1/clients/a/activate", headers=_bearer(world.key_a))

    assert warm.status_code == 200, warm.text
    assert warm.json()["member_id"] == shadow_id and warm.json()["tier_before"] == "shadow"
    assert cold.status_code == 409, cold.text
    for body in (warm.json(), cold.json()):
        container = docker_client.containers.get(body["member_id"])
        assert container.status == "running"
        assert container.attrs["State"]["Paused"] is False
        assert container.labels[POOL_LABEL] == pool_scope[POOL_LABEL]
        assert _answers(body["endpoint"])
    deadline = time.monotonic() + 5
    while _count(world.path, "pool_events") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(world.path, "pool_events") == 2
    assert not math.isnan(warm.json()["activation_ms"])
