"""POST /activate answered before the router (`api.activate_asgi`) answers as the FastAPI
route does, for every outcome, and leaves to the route what it does not answer itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.routes
from api.activate_asgi import ActivateAsgi
from provisioning.apply import release_all
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.api.conftest import World
from tests.api.helpers import WELL_FORMED_UNKNOWN_KEY, bearer, shadow_member, wait_for_rows
from warehouse.api_keys import issue_key

ACTIVATE_A = "/v1/clients/a/activate"


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The client ids the FastAPI route was asked to activate (it calls through this)."""
    calls: list[str] = []
    answer = api.routes.answer_activation

    async def counted(ctx: Any, client_id: str, affinity: str | None) -> Any:
        calls.append(client_id)
        return await answer(ctx, client_id, affinity)

    monkeypatch.setattr(api.routes, "answer_activation", counted)
    return calls


def _without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ActivateAsgi]
    return app


def _outcomes(client: TestClient, world: World) -> list[httpx.Response]:
    """Warm, cold, an unknown key, another client, a bad affinity key, rate-limited."""
    key = bearer(world.key_a)
    # The key snapshot is read by the first request (a route's, in a thread).
    assert client.get("/v1/clients/a/profile", headers=key).status_code == 200
    return [
        client.post(ACTIVATE_A, headers=key),
        client.post(ACTIVATE_A, headers=key),
        client.post(ACTIVATE_A, headers=bearer(WELL_FORMED_UNKNOWN_KEY)),
        client.post("/v1/clients/b/activate", headers=key),
        client.post(ACTIVATE_A, headers={**key, "X-Prewarm-Affinity": " padded"}),
        client.post(ACTIVATE_A, headers=key),
    ]


# What differs between two activations by nature: which member, how long it took.
_VARYING = ("member_id", "endpoint", "activation_ms")


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = response.json()
    shape = {k: (type(v).__name__ if k in _VARYING else v) for k, v in body.items()}
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    return response.status_code, headers, shape


def test_every_outcome_is_answered_as_the_route_answers_it(
    make_app: Callable[..., FastAPI],
    world: World,
    tmp_path: Any,
    pool_scope: dict[str, str],
    route_calls: list[str],
) -> None:
    answers = {}
    for name in ("route", "fast"):
        runtime = ProcessRuntime(tmp_path / f"{name}-pool.json", grace_s=0.5)
        try:
            shadow = shadow_member(runtime, world.path, pool_scope)
            # Two activations in a burst, then the third is refused: the rate limit answers.
            app = make_app(runtime, activate_rate=0.001, activate_burst=2)
            with TestClient(app if name == "fast" else _without_fast_path(app)) as client:
                answers[name] = _outcomes(client, world)
        finally:
            release_all(runtime, pool_scope)
        calls, route_calls[:] = list(route_calls), []
        assert answers[name][0].json()["member_id"] == shadow
        # Without the fast path the route activated three times; with it, never.
        assert calls == (["a", "a", "a"] if name == "route" else [])

    statuses = [r.status_code for r in answers["fast"]]
    assert statuses == [200, 409, 401, 403, 422, 429]
    assert answers["fast"][0].json()["tier_before"] == "shadow"
    assert answers["fast"][1].json()["fallback"] == "cold-start"
    assert answers["fast"][5].headers["retry-after"] == "1000"
    assert [_comparable(r) for r in answers["fast"]] == [_comparable(r) for r in answers["route"]]


def test_a_key_issued_after_the_snapshot_goes_to_the_route_which_reads_it(
    client: TestClient,
    world: World,
    route_calls: list[str],
) -> None:
    assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 200
    first = client.post(ACTIVATE_A, headers=bearer(world.key_a))  # no member: a cold start
    assert first.status_code == 409 and route_calls == []

    new_key = issue_key(world.path, "c", create_client=True)  # the snapshot is stale now
    answer = client.post("/v1/clients/c/activate", headers=bearer(new_key))

    assert answer.status_code == 409 and answer.json()["fallback"] == "cold-start"
    assert route_calls == ["c"]  # the route read the keys again, in a thread
    again = client.post("/v1/clients/c/activate", headers=bearer(new_key))
    assert again.status_code == 409 and route_calls == ["c"]  # and from memory after
    assert wait_for_rows(world.path, "pool_events", 3) == 3
