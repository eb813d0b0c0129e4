"""Client schemas are checked before they reach a runtime (issue 12).

Each attack is tried where a client's extension enters (`prewarm schema add`, the real CLI in
a subprocess) and where a stored one is used (the API over a real warehouse, the extension
written straight into `client_schema_extensions` as if stored before the checks existed):
refused with one message naming the field, nothing stored or changed, nothing started.
Good extensions are still accepted and composed exactly as before.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.composite import client_composite
from provisioning.apply import release_all
from provisioning.inventory import inventory_from_dict
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema import compose_workload
from provisioning.schema_checks import (
    DEFAULT_ALLOWED_IMAGES,
    SchemaRejected,
)
from provisioning.schema_extensions import load_extension
from tests.security.schema_attacks import ATTACKS, HOST, extension
from warehouse.api_keys import issue_key
from warehouse.db import connect
from warehouse.inventory import store_inventory

PREWARM = Path(sys.executable).with_name("prewarm")


def _cli(data_dir: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`prewarm ARGS` in a subprocess on `data_dir`, with PREWARM_<NAME> from `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREWARM_")}
    env["PREWARM_DATA_DIR"] = str(data_dir)
    env.update({f"PREWARM_{name.upper()}": value for name, value in settings.items()})
    return subprocess.run(
        [str(PREWARM), *args],
        env=env,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _query(path: Path, sql: str) -> list[tuple]:
    with connect(path, read_only=True) as con:
        return con.execute(sql).fetchall()


def _rows(path: Path) -> list[tuple]:
    return _query(
        path,
        "SELECT client_id, name, precedence, document::VARCHAR, updated_at"
        " FROM client_schema_extensions ORDER BY ALL",
    )


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with client acme (one good extension), an inventory of one 16-core host."""
    data = tmp_path_factory.mktemp("cli") / "data"
    assert _cli(data, "clients", "add", "acme").returncode == 0
    path = data / "warehouse.duckdb"
    store_inventory(path, inventory_from_dict({"hosts": [HOST]}), "test")
    good = data.parent / "good.json"
    good.write_text(json.dumps(extension("good", {"env": {"A": "1"}, "cpu": 2.0})))
    stored = _cli(data, "schema", "add", "acme", str(good))
    assert stored.returncode == 0, stored.stderr
    return data


# Files are refused before they are parsed when too deep or over 1 MiB: at "$".
CLI_FIELD = {
    "deep": "evil.json is refused: $: nested deeper than 8",
    "31mb": "bytes, more than 1048576",
}


@pytest.mark.parametrize(
    ("document", "field"),
    [(a[1], CLI_FIELD.get(a[0], a[2])) for a in ATTACKS],
    ids=[a[0] for a in ATTACKS],
)
def test_schema_add_refuses_each_attack(cli_world: Path, tmp_path: Path, document, field):
    file = tmp_path / "evil.json"
    file.write_text(json.dumps(document))
    before = _rows(cli_world / "warehouse.duckdb")

    result = _cli(cli_world, "schema", "add", "acme", str(file))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], lines
    assert _rows(cli_world / "warehouse.duckdb") == before


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"name": "evil", "workload": ' + "[" * 100_000 + "]" * 100_000 + "}", "deeper than 8"),
        ('{"name": "evil", "workload": ' + "[" * 9_000 + "]" * 9_000 + "}", "deeper than 8"),
        ('{"name": "evil", "workload": {"cpu": 1' + "0" * 5000 + "}}", "not readable as JSON"),
        ('{"name": "evil", "workload": {"cpu": NaN}}', "not a finite number"),
        ('{"name": "evil", "workload": {"env": {"A": "\\u0000"}}}', "U+0000"),
    ],
    ids=["100k-deep", "9k-deep", "5000-digits", "nan", "escaped-nul"],
)
def test_schema_add_refuses_raw_json_attacks(cli_world: Path, tmp_path: Path, text, problem):
    file = tmp_path / "evil.json"
    file.write_text(text)
    before = _rows(cli_world / "warehouse.duckdb")

    result = _cli(cli_world, "schema", "add", "acme", str(file))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert problem in result.stderr and len(result.stderr) < 500, result.stderr
    assert _rows(cli_world / "warehouse.duckdb") == before


def test_schema_add_still_accepts_and_shows_good_extensions(cli_world: Path, tmp_path: Path):
    file = tmp_path / "cache.json"
    file.write_text(
        json.dumps(extension("cache", {"cache": {"ttl_seconds": 60}, "memory_mb": 2048}))
    )

    added = _cli(cli_world, "schema", "add", "acme", str(file))
    shown = _cli(cli_world, "schema", "show", "acme")

    assert added.returncode == 0, added.stderr
    composite = json.loads(shown.stdout)
    assert composite["extensions"] == ["cache", "good"]
    assert (composite["cpu"], composite["memory_mb"], composite["env"]) == (2.0, 2048, {"A": "1"})
    assert composite["cache"]["ttl_seconds"] == 60


def test_a_stored_bad_extension_is_named_and_can_be_replaced(tmp_path: Path):
    data = tmp_path / "data"
    assert _cli(data, "clients", "add", "acme").returncode == 0
    path = data / "warehouse.duckdb"
    _store_raw(path, "acme", "old", json.dumps(extension("old", {"env": {"LD_PRELOAD": "/x.so"}})))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(extension("good", {"env": {"A": "1"}})))
    before = _rows(path)

    shown = _cli(data, "schema", "show", "acme")
    refused = _cli(data, "schema", "add", "acme", str(good))

    assert shown.returncode == 1 and "$.workload.env.LD_PRELOAD: denied" in shown.stderr
    assert refused.returncode == 1 and "stored extension 'old'" in refused.stderr
    assert _rows(path) == before
    fixed = tmp_path / "old.json"
    fixed.write_text(json.dumps(extension("old", {"env": {"B": "2"}})))
    assert _cli(data, "schema", "add", "acme", str(fixed)).returncode == 0
    assert json.loads(_cli(data, "schema", "show", "acme").stdout)["env"] == {"B": "2"}


# --- the API: extensions stored before the checks existed -----------------------------------


def _store_raw(path: Path, client_id: str, name: str, document: str) -> None:
    """Write an extension straight into the table, as an older prewarm could have."""
    with connect(path) as con:
        con.execute(
            "INSERT OR REPLACE INTO client_schema_extensions VALUES (?, ?, 0, ?::JSON, now())",
            [client_id, name, document],
        )


@pytest.fixture(scope="module")
def template_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Client acme (0.5 cpu, 256 MB) with its key, and a one-host inventory (16 cores)."""
    path = tmp_path_factory.mktemp("api") / "warehouse.duckdb"
    with connect(path) as con:
        con.execute(
            "INSERT INTO clients (client_id, tier, region, service, container_cpu,"
            " container_memory_mb, freq_seconds, source)"
            " VALUES ('acme', 'free', 'eu', 'api', 0.5, 256, 300, 'test')"
        )
    store_inventory(path, inventory_from_dict({"hosts": [HOST]}), "test")
    return path, issue_key(path, "acme", False)


@pytest.fixture
def api(
    template_warehouse: tuple[Path, str], tmp_path: Path
) -> Iterator[tuple[FastAPI, Path, dict[str, str], ProcessRuntime, dict[str, str]]]:
    """An app over a copy of the warehouse, with a process runtime in its own pool.

    Tests read the warehouse after their `with TestClient(app)` block: closing the app
    writes the outcomes it recorded in the background, and lets go of the file.
    """
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(template_warehouse[0], path)
    scope = {"prewarm.pool": f"test-{uuid.uuid4().hex[:10]}"}
    runtime = ProcessRuntime(tmp_path / "pool.json", grace_s=0.5)
    headers = {"Authorization": f"Bearer {template_warehouse[1]}"}
    yield create_app(path, lambda: runtime, scope), path, headers, runtime, scope
    release_all(ProcessRuntime(tmp_path / "pool.json", grace_s=0.5), scope)


def _events(path: Path) -> list[tuple]:
    return _query(path, "SELECT client_id, ok, reason, error FROM pool_events ORDER BY happened_at")


# (DuckDB refuses to store a lone surrogate, so that one is only tried above.)
STORED_ATTACKS = [
    *[(a[0], json.dumps(a[1]), a[2]) for a in ATTACKS],
    ("100k-deep", '{"name": "evil", "workload": ' + "[" * 100_000 + "]" * 100_000 + "}", "$"),
    ("escaped-nul", '{"name": "evil", "workload": {"env": {"A": "x\\u0000y"}}}', "env.A"),
    ("5000-digits", '{"name": "evil", "workload": {"cpu": 1' + "0" * 5000 + "}}", "$"),
    ("not-an-object", "[1, 2]", "$"),
]


@pytest.mark.parametrize(
    ("document", "field"), [a[1:] for a in STORED_ATTACKS], ids=[a[0] for a in STORED_ATTACKS]
)
def test_a_stored_attack_is_422_on_schema_and_activate(api, document: str, field: str):
    app, path, headers, runtime, scope = api
    _store_raw(path, "acme", "evil", document)
    before = _rows(path)

    with TestClient(app) as client:
        schema = client.get("/v1/clients/acme/schema", headers=headers)
        activation = client.post("/v1/clients/acme/activate", headers=headers)

    for response in (schema, activation):
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["detail"].startswith("The client's stored schema cannot be used: ")
        assert [e["type"] for e in body["errors"]] == ["schema_refused"]
        assert field in body["errors"][0]["field"] and field in body["detail"]
        assert len(response.content) < 1000 and "Traceback" not in response.text
    [(client_id, ok, reason, error)] = _events(path)
    assert runtime.list(scope) == []
    assert _rows(path) == before
    assert (client_id, ok, reason) == ("acme", False, "request: refused (schema)")
    assert field in error


@pytest.fixture(scope="module")
def preload_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real shared object whose constructor writes $PWNED_MARKER: the LD_PRELOAD payload."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the LD_PRELOAD payload")
    folder = tmp_path_factory.mktemp("preload")
    source = folder / "pwned.c"
    source.write_text(
        "#include <stdio.h>\n#include <stdlib.h>\n"
        "__attribute__((constructor)) static void pwned(void) {\n"
        '  const char *m = getenv("PWNED_MARKER");\n'
        '  if (m) { FILE *f = fopen(m, "w"); if (f) { fputs("ran", f); fclose(f); } }\n}\n'
    )
    library = folder / "pwned.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", library, source], check=True)
    return library


def test_a_stored_ld_preload_never_runs_on_activate(api, preload_library: Path, tmp_path: Path):
    app, path, headers, runtime, scope = api
    marker = tmp_path / "pwned"
    # The payload is live: any process started with it writes the marker.
    subprocess.run(
        ["true"], env={"LD_PRELOAD": str(preload_library), "PWNED_MARKER": str(marker)}, check=True
    )
    assert marker.read_text() == "ran"
    marker.unlink()
    env = {"LD_PRELOAD": str(preload_library), "PWNED_MARKER": str(marker)}
    _store_raw(path, "acme", "evil", json.dumps(extension("evil", {"env": env})))

    with TestClient(app) as client:
        response = client.post("/v1/clients/acme/activate", headers=headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "$.workload.env.LD_PRELOAD"
    assert not marker.exists() and runtime.list(scope) == []


def test_a_good_stored_extension_is_served_and_started_as_before(api):
    app, path, headers, runtime, scope = api
    document = extension("cache", {"cache": {"ttl_seconds": 60}, "env": {"A": "1"}})
    _store_raw(path, "acme", "cache", json.dumps(document))

    with TestClient(app) as client:
        schema = client.get("/v1/clients/acme/schema", headers=headers)
        activation = client.post("/v1/clients/acme/activate", headers=headers)

    assert schema.status_code == 200
    expected = compose_workload("acme", [document], None, {"cpu": 0.5, "memory_mb": 256.0})
    assert schema.json() == expected == client_composite(path, "acme")
    assert (expected["cpu"], expected["env"], expected["cache"]["ttl_seconds"]) == (
        0.5,
        {"A": "1"},
        60,
    )
    assert activation.status_code == 409, activation.text  # no warm member: cold-started
    [member] = runtime.list(scope)
    assert member.details["cpu"] == 0.5 and member.details["memory_mb"] == 256


def test_the_allow_list_setting_admits_another_image(cli_world: Path, tmp_path: Path):
    file = tmp_path / "mine.json"
    file.write_text(json.dumps(extension("mine", {"image": "acme/api:2"})))
    refused = _cli(cli_world, "schema", "add", "acme", str(file))
    before = _rows(cli_world / "warehouse.duckdb")
    accepted = _cli(
        cli_world,
        "schema",
        "add",
        "acme",
        str(file),
        allowed_images="prewarm/worker:latest, acme/api:2",
    )

    assert refused.returncode == 1 and '"acme/api:2" is not an allowed image' in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert len(_rows(cli_world / "warehouse.duckdb")) == len(before) + 1
    with connect(cli_world / "warehouse.duckdb") as con:  # leave the module's world as it was
        con.execute("DELETE FROM client_schema_extensions WHERE name = 'mine'")


def test_load_extension_refuses_before_reading_a_huge_file(tmp_path: Path):
    file = tmp_path / "huge.json"
    file.write_text('{"name": "x", "description": "' + "y" * 31_000_000 + '", "workload": {}}')
    with pytest.raises(SchemaRejected, match=r"huge.json is refused: \$: 31000048 bytes, more"):
        load_extension(file)


def test_the_api_admits_the_images_its_deployment_allows(api):
    """`prewarm api` passes PREWARM_ALLOWED_IMAGES to the app: the same image is refused by
    an app with the default list and served by one that allows it."""
    app, path, headers, _runtime, scope = api
    _store_raw(path, "acme", "mine", json.dumps(extension("mine", {"image": "acme/api:2"})))
    with TestClient(app) as client:
        refused = client.get("/v1/clients/acme/schema", headers=headers)
    allowing = create_app(path, None, scope, allowed_images=[*DEFAULT_ALLOWED_IMAGES, "acme/api:2"])
    with TestClient(allowing) as client:
        served = client.get("/v1/clients/acme/schema", headers=headers)
    assert refused.status_code == 422 and "not an allowed image" in refused.json()["detail"]
    assert served.status_code == 200, served.text
    assert served.json()["image"] == "acme/api:2"
