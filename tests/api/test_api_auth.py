"""The HTTP API end to end, what an attacker tries on every route: oversized bodies, other
clients' resources, missing, malformed, forged and revoked keys; and the key lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.errors import PrewarmError
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.api.conftest import World
from tests.api.helpers import (
    MALFORMED_JSON,
    WELL_FORMED_UNKNOWN_KEY,
    bearer,
    call_api,
    count_rows,
    feedback_body,
)
from warehouse.api_keys import issue_key, rotate_key, verify_key
from warehouse.db import connect, fetch_value

ROUTES = [
    ("GET", "profile"),
    ("GET", "schema"),
    ("POST", "feedback"),
    ("POST", "activate"),
]

# --- size limits --------------------------------------------------------------------------


def test_oversized_bodies_are_413_by_declared_length(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app(max_body_bytes=1024))
    padded = feedback_body(comment="x" * 1500)

    response = client.post("/v1/clients/a/feedback", headers=bearer(world.key_a), json=padded)

    assert response.status_code == 413
    assert "1024 bytes" in response.json()["detail"]
    assert count_rows(world.path, "feedback") == 0


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
        headers={**bearer(world.key_a), "Content-Type": "application/json"},
        content=chunks(),
    )

    assert response.status_code == 413
    assert count_rows(world.path, "feedback") == 0


def test_a_body_within_the_limit_is_read(make_app: Callable[..., FastAPI], world: World) -> None:
    client = TestClient(make_app(max_body_bytes=1024))

    response = client.post(
        "/v1/clients/a/feedback", headers=bearer(world.key_a), json=feedback_body()
    )

    assert response.status_code == 201


# --- authentication and authorisation -----------------------------------------------------

# Another client, an unknown one (no hint that it does not exist), SQL, malformed ids.
OTHER_CLIENTS = ["b", "nobody", "a' OR '1'='1", "a;DROP TABLE clients", "-dash", "A", "a ", "a%00"]
BODIES = [
    pytest.param(None, id="no-body"),
    pytest.param(feedback_body(), id="valid-body"),
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
        response = call_api(client, method, path, bearer(world.key_a), body)

        assert response.status_code == 403, (target, response.text)
        assert response.json() == {"detail": "This API key does not grant access to that client."}
    assert count_rows(world.path, "feedback") == 0
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
    pytest.param(lambda w: bearer("pw_nonsense"), id="malformed-key"),
    pytest.param(lambda w: bearer(_forged(w.key_a)), id="forged-secret"),
    pytest.param(lambda w: bearer(WELL_FORMED_UNKNOWN_KEY), id="unknown-key-id"),
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
        response = call_api(
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
    response = call_api(client, method, f"/v1/clients/b/{route}", bearer(revoked_key))

    assert response.status_code == 401


def test_rotation_retires_the_old_key(client: TestClient, world: World) -> None:
    new_key = rotate_key(world.path, "a")

    assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 401
    assert client.get("/v1/clients/a/profile", headers=bearer(new_key)).status_code == 200
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
    assert count_rows(world.path, "clients") == 2


def test_issuing_for_a_new_client_creates_a_bare_one(client: TestClient, world: World) -> None:
    odd_but_valid = "tenant:42@eu.west-1_x"
    key = issue_key(world.path, odd_but_valid, create_client=True)
    path = f"/v1/clients/{quote(odd_but_valid, safe='')}"

    profile = client.get(f"{path}/profile", headers=bearer(key))
    schema = client.get(f"{path}/schema", headers=bearer(key))

    assert profile.status_code == 200 and profile.json()["windows"] == []
    assert schema.status_code == 200 and schema.json()["client_id"] == odd_but_valid
    assert schema.json()["anticipated"] is None
    with connect(world.path, read_only=True) as con:
        assert con.execute(
            "SELECT source, freq_seconds, mode FROM clients WHERE client_id = ?", [odd_but_valid]
        ).fetchall() == [("api", 300, "provision")]
    # Issued for that client only: a's resources stay closed to it.
    assert client.get("/v1/clients/a/profile", headers=bearer(key)).status_code == 403


def test_keys_are_not_stored_in_clear(world: World) -> None:
    # The secret is everything after the key id: token_urlsafe may itself contain "_", so a
    # split from the right could leave a fragment short enough to occur in the file by chance.
    secrets_ = [key.split("_", 2)[2] for key in (world.key_a, world.key_b)]
    assert all(len(secret) == 43 for secret in secrets_)

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
