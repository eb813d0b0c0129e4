"""Clients shape their own schema through the API: attributes and schema extensions, checked
exactly as the CLI checks them, bounded, refused with the problem named and nothing stored,
and recorded in `client_changes` with who and when."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from api.client_changes import MAX_EXTENSIONS
from core.errors import PrewarmError
from flows.schemas import add_extension
from flows.settings import Settings
from tests.api.conftest import World
from tests.api.helpers import bearer
from warehouse.db import connect, fetch_frame

FAST_CACHE = {"name": "fast-cache", "precedence": 20, "workload": {"cache": {"ttl_seconds": 30}}}


@pytest.fixture
def api(make_app) -> TestClient:
    return TestClient(make_app())


def _rows(world: World, sql: str) -> list[dict]:
    with connect(world.path, read_only=True) as con:
        return fetch_frame(con, sql).to_dicts()


def _changes(world: World) -> list[tuple]:
    rows = _rows(world, "SELECT client_id, action, name, actor FROM client_changes")
    return [(r["client_id"], r["action"], r["name"], r["actor"]) for r in rows]


def _actor(key: str) -> str:
    return "api:" + "_".join(key.split("_")[:2])  # pw_<key_id>: the public half


def _extension_names(world: World, client_id: str) -> list[str]:
    rows = _rows(
        world, f"SELECT name FROM client_schema_extensions WHERE client_id = '{client_id}'"
    )
    return sorted(r["name"] for r in rows)


def test_a_client_sets_and_clears_its_attributes(api: TestClient, world: World):
    set_ = api.put(
        "/v1/clients/a/attributes",
        json={"region": "us", "tier": "gold"},
        headers=bearer(world.key_a),
    )
    assert set_.status_code == 200, set_.text
    assert set_.json() == {"client_id": "a", "region": "us", "tier": "gold", "service": "api"}
    cleared = api.put("/v1/clients/a/attributes", json={"tier": None}, headers=bearer(world.key_a))
    assert cleared.json() == {"client_id": "a", "region": "us", "tier": None, "service": "api"}
    stored = _rows(world, "SELECT region, tier, service FROM clients WHERE client_id = 'a'")
    assert stored == [{"region": "us", "tier": None, "service": "api"}]
    actor = _actor(world.key_a)
    assert _changes(world) == [("a", "attributes", None, actor), ("a", "attributes", None, actor)]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"region": "../etc"}, "body.region"),
        ({"colour": "red"}, "body.colour"),
        ({}, "Give at least one of region, tier, service"),
        ({"tier": 7}, "body.tier"),
        ({"region": "x" * 65}, "body.region"),
    ],
)
def test_bad_attributes_are_refused_and_change_nothing(api, world, body, says):
    response = api.put("/v1/clients/a/attributes", json=body, headers=bearer(world.key_a))
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]
    assert _rows(world, "SELECT region, tier FROM clients WHERE client_id = 'a'") == [
        {"region": "eu", "tier": "premium"}
    ]
    assert _changes(world) == []


def test_a_client_adds_an_extension_that_shapes_its_schema_and_removes_it(api, world):
    headers = bearer(world.key_a)
    added = api.post("/v1/clients/a/schema/extensions", json=FAST_CACHE, headers=headers)
    assert added.status_code == 201, added.text
    assert added.json() == {"name": "fast-cache"}
    composite = api.get("/v1/clients/a/schema", headers=headers).json()
    assert composite["cache"]["ttl_seconds"] == 30  # precedence 20 beats 10
    assert composite["extensions"] == ["big-cache", "fast-cache"]
    assert _extension_names(world, "a") == ["big-cache", "fast-cache"]

    removed = api.delete("/v1/clients/a/schema/extensions/fast-cache", headers=headers)
    assert removed.status_code == 204
    again = api.delete("/v1/clients/a/schema/extensions/fast-cache", headers=headers)
    assert again.status_code == 404 and "fast-cache" in again.json()["detail"]
    composite = api.get("/v1/clients/a/schema", headers=headers).json()
    assert composite["cache"]["ttl_seconds"] == 600
    actor = _actor(world.key_a)
    assert _changes(world) == [
        ("a", "extension-add", "fast-cache", actor),
        ("a", "extension-remove", "fast-cache", actor),
    ]
    stored = _rows(world, "SELECT document::VARCHAR AS d FROM client_changes LIMIT 1")
    assert json.loads(stored[0]["d"]) == FAST_CACHE


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        ({"name": "x", "workload": {"cache": {"ttl": 1}}}, "body.workload.cache.ttl", "ttl"),
        (
            {"name": "x", "workload": {"env": {"LD_PRELOAD": "/tmp/evil.so"}}},
            "body.workload.env.LD_PRELOAD",
            "LD_PRELOAD",
        ),
        (
            {"name": "x", "workload": {"anticipated": {}}},
            "body.workload.anticipated",
            "written by prewarm",
        ),
        ({"name": "x", "workload": {"cpu": 10_000}}, "body.workload.cpu", "cpu"),
        ({"name": "Not A Name", "workload": {}}, "body.name", "name"),
    ],
)
def test_a_bad_extension_is_refused_as_the_cli_refuses_it(
    api, world, tmp_path, monkeypatch, document, field, says
):
    response = api.post(
        "/v1/clients/a/schema/extensions", json=document, headers=bearer(world.key_a)
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(e["field"] == field for e in body["errors"]), body
    assert says in body["detail"]
    assert _extension_names(world, "a") == ["big-cache"] and _changes(world) == []
    # The operator's CLI refuses the same document with the same words.
    monkeypatch.setenv("PREWARM_DUCKDB_PATH", str(world.path))
    file = tmp_path / "ext.json"
    file.write_text(json.dumps(document))
    with pytest.raises(PrewarmError) as cli:
        add_extension(Settings(), "a", file)
    assert body["detail"].endswith(" ".join(str(cli.value).split()))


def test_extensions_are_bounded_per_client(api, world):
    headers = bearer(world.key_a)
    for n in range(MAX_EXTENSIONS - 1):  # the client has big-cache already
        document = {"name": f"e{n}", "workload": {"env": {f"K{n}": "v"}}}
        assert (
            api.post("/v1/clients/a/schema/extensions", json=document, headers=headers).status_code
            == 201
        )
    over = api.post(
        "/v1/clients/a/schema/extensions",
        json={"name": "one-more", "workload": {}},
        headers=headers,
    )
    assert over.status_code == 422
    assert f"already has {MAX_EXTENSIONS} schema extensions" in over.json()["detail"]
    # Replacing one it has is not a new one.
    replaced = api.post(
        "/v1/clients/a/schema/extensions", json={"name": "e0", "workload": {}}, headers=headers
    )
    assert replaced.status_code == 201
    assert len(_extension_names(world, "a")) == MAX_EXTENSIONS


def test_a_key_changes_only_its_own_client(api, world):
    put = api.put("/v1/clients/a/attributes", json={"tier": "free"}, headers=bearer(world.key_b))
    post = api.post("/v1/clients/a/schema/extensions", json=FAST_CACHE, headers=bearer(world.key_b))
    delete = api.delete("/v1/clients/a/schema/extensions/big-cache", headers=bearer(world.key_b))
    anonymous = api.post("/v1/clients/a/schema/extensions", json=FAST_CACHE)
    assert [r.status_code for r in (put, post, delete, anonymous)] == [403, 403, 403, 401]
    assert _extension_names(world, "a") == ["big-cache"] and _changes(world) == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "big", "workload": {"env": {"K": "' + b"x" * 70_000 + b'"}}}',  # over 64 KiB
        b"[" * 30_000 + b"]" * 30_000,  # nested beyond any parser's patience
        b'{"name": "x", "workload": ',  # cut short
    ],
)
def test_hostile_bodies_are_refused_without_a_trace(api, world, raw):
    response = api.post(
        "/v1/clients/a/schema/extensions",
        content=raw,
        headers={**bearer(world.key_a), "Content-Type": "application/json"},
    )
    assert response.status_code in (413, 422), response.text
    assert "Traceback" not in response.text
    assert _extension_names(world, "a") == ["big-cache"] and _changes(world) == []


def test_an_unknown_extension_name_path_is_refused(api: TestClient, world: World):
    response = api.delete("/v1/clients/a/schema/extensions/..%2Fetc", headers=bearer(world.key_a))
    assert response.status_code in (404, 422)
    assert _extension_names(world, "a") == ["big-cache"]


def test_declared_services_appear_in_the_profile_sized_per_window(api, world):
    headers = bearer(world.key_a)
    document = {
        "name": "deps",
        "workload": {"services": {"orders": {"kind": "db", "version": "16", "size_mb": 8}}},
    }
    assert (
        api.post("/v1/clients/a/schema/extensions", json=document, headers=headers).status_code
        == 201
    )
    assert api.get("/v1/clients/a/schema", headers=headers).json()["services"] == {
        "orders": {"kind": "db", "version": "16", "size_mb": 8.0, "connections": 1}
    }
    windows = api.get("/v1/clients/a/profile", headers=headers).json()["windows"]
    assert len(windows) == 2
    for window in windows:
        peak = window["peaks"]["concurrency"]
        in_flight = max(1.0, peak["p90"] if peak["p90"] is not None else peak["p50"] or 0.0)
        need = window["services"]["orders"]
        assert need["size_mb"] == pytest.approx(8 * in_flight)
        assert need["connections"] == math.ceil(in_flight)
    assert windows[0]["services"] != windows[1]["services"]  # the windows' peaks differ
