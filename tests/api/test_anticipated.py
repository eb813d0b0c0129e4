"""The anticipated section has one owner: the applied plan.

`GET /schema` and `prewarm schema show` serve the anticipated section the newest applied plan
rendered into the client's members, not one recomputed from the profile (which once sized
the pool at round(p90) while the members got the plan's count). A client no applied plan
covers yet is served its profile's, marked `source: profile`; a later dry run changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import polars as pl
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from flows.provision import provision_pools
from flows.runtime import open_pool_runtime
from flows.schemas import show_client_composite
from flows.settings import Settings
from provisioning.apply import release_all
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.flows.test_provision_flow import END, seeded_pool
from warehouse.api_keys import issue_key
from warehouse.db import connect
from warehouse.predictions import record_latest_runs

# The stamp `_seed_forecasts` gives its run: a profile belongs to the run it shares it with.
RUN = datetime(2026, 1, 19, 0, 1)
WINDOW = (END, END + timedelta(hours=6))


@pytest.fixture
def settings(prefect_harness, data_dir, monkeypatch) -> Iterator[Settings]:
    """Three clients on a process pool; c0000 certainly needs 2 members, and its profile's
    p90 concurrency (7.6) would say 8."""
    settings = seeded_pool(monkeypatch, "process")
    with connect(settings.warehouse_path) as con:
        con.execute(
            "INSERT INTO profiles (client_id, generated_at, origin, window_start, window_end,"
            " duration_minutes, concurrency_p50, concurrency_p90, confidence, model_name,"
            " model_version) VALUES ('c0000', ?, ?, ?, ?, 360, 5.0, 7.6, 1.0, 'forecaster-x', '1')",
            [RUN, END - timedelta(minutes=5), *WINDOW],
        )
        record_latest_runs(con, [pl.DataFrame({"client_id": ["c0000"], "generated_at": [RUN]})])
    yield settings
    release_all(open_pool_runtime(settings), settings.pool_scope)


def _members_env(settings: Settings, client_id: str) -> list[dict[str, str]]:
    """The environment each of the client's live members was started with."""
    runtime = open_pool_runtime(settings)
    assert isinstance(runtime, ProcessRuntime)
    return [r.env for r in runtime.records.read_all() if r.client_id == client_id]


def test_schema_serves_what_the_applied_plan_gave_the_members(settings: Settings) -> None:
    key = issue_key(settings.warehouse_path, "c0000", False)
    app = create_app(settings.warehouse_path, None, settings.pool_scope)

    def served() -> dict:
        with TestClient(app) as client:
            response = client.get("/v1/clients/c0000/schema", headers={"X-API-Key": key})
        assert response.status_code == 200
        return response.json()["anticipated"]

    before = served()  # no plan applied yet: the profile's own guess, and it says so
    assert (before["source"], before["recommended_pool_size"]) == ("profile", 8)

    provision_pools()
    envs = _members_env(settings, "c0000")
    assert len(envs) == 2
    given = json.loads(envs[0]["PREWARM_ANTICIPATED"])
    assert all(json.loads(env["PREWARM_ANTICIPATED"]) == given for env in envs)
    assert (given["recommended_pool_size"], given["source"]) == (2, "plan")
    assert given["window_start"] == WINDOW[0].isoformat() + "Z"
    assert served() == given
    assert show_client_composite(settings, "c0000")["anticipated"] == given

    # A dry run on changed predictions records another config; the members keep theirs.
    with connect(settings.warehouse_path) as con:
        con.execute(
            "UPDATE profiles SET window_start = window_start + INTERVAL 5 MINUTE"
            " WHERE client_id = 'c0000'"
        )
    dry = provision_pools(dry_run=True)
    with connect(settings.warehouse_path, read_only=True) as con:
        (config,) = con.execute(
            "SELECT any_value(config)::VARCHAR FROM allocations"
            " WHERE plan_id = ? AND client_id = 'c0000'",
            [dry.plan_id],
        ).fetchone()
    dry_anticipated = json.loads(json.loads(config)["env"]["PREWARM_ANTICIPATED"])
    assert dry_anticipated["window_start"] != given["window_start"]
    assert served() == given
