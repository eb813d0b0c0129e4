"""provision-pools on a fleet of real engines: two extra dockerds on this machine as two
hosts, with this machine's own Docker endpoint unreachable (a fleet whose hosts all name their
engines needs none). Every member lands on the engine of the host the plan chose; an engine
stopped is down for the cycle and its clients' members are re-placed on the other host in that
same run, without an error; when it answers again its members are adopted or released, so each
client holds exactly what the newest plan targets (never two owners, never an orphan)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from flows.provision import provision_pools
from flows.runtime import open_pool_runtime
from flows.settings import Settings
from provisioning.apply import release_all
from provisioning.runtime.base import LABEL_HOST, LABEL_MANAGED
from tests.conftest import remove_test_containers
from tests.fleet.conftest import ExtraEngine
from tests.flows.test_provision_flow import seeded_pool
from warehouse.db import connect, fetch_frame
from warehouse.inventory import read_host_status

pytestmark = pytest.mark.docker

POOL_LABEL = "prewarm.pool"


def _inventory(path: Path, engines: list[ExtraEngine]) -> Path:
    hosts = "".join(
        f"[[hosts]]\nname = 'node-{i}'\ncpu_cores = 2\nmemory_mb = 4096\nengine = '{e.address}'\n"
        for i, e in enumerate(engines, start=1)
    )
    file = path / "inventory.toml"
    file.write_text(hosts)
    return file


def _on_engine(engine: ExtraEngine, pool: str) -> list[dict[str, str]]:
    """The labels of this pool's containers on one engine, asked directly."""
    client = engine.client()
    try:
        found = client.api.containers(all=True, filters={"label": [f"{POOL_LABEL}={pool}"]})
        return [c["Labels"] for c in found]
    finally:
        client.close()


def _targets(settings: Settings, plan_id: str) -> Counter[str]:
    """Members the plan wants per client now."""
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con,
            "SELECT client_id, sum(active + shadow + cold) AS n FROM plan_targets"
            " WHERE plan_id = ? GROUP BY client_id",
            [plan_id],
        )
    return Counter({r["client_id"]: int(r["n"]) for r in rows.iter_rows(named=True) if r["n"]})


def _holds(settings: Settings, plan_id: str) -> dict[tuple[str, str], int]:
    """The most members the plan lets each client keep on each host (the scale-down hold)."""
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con, "SELECT client_id, host, hold FROM plan_targets WHERE plan_id = ?", [plan_id]
        )
    return {(r["client_id"], r["host"]): int(r["hold"]) for r in rows.iter_rows(named=True)}


def _members(settings: Settings) -> Counter[tuple[str, str]]:
    runtime = open_pool_runtime(settings)
    listed = runtime.list({LABEL_MANAGED: "1", **settings.pool_scope})
    return Counter((m.client_id, m.labels.get(LABEL_HOST, "")) for m in listed)


def _held(settings: Settings) -> Counter[str]:
    held: Counter[str] = Counter()
    for (client_id, _), n in _members(settings).items():
        held[client_id] += n
    return held


def test_members_follow_their_host_and_survive_an_engine_going_away(
    extra_engines: list[ExtraEngine], prefect_harness, data_dir, tmp_path, monkeypatch
):
    engines = extra_engines[:2]
    settings = seeded_pool(monkeypatch, "docker")
    monkeypatch.setenv("PREWARM_INVENTORY_PATH", str(_inventory(tmp_path, engines)))
    # Every host names its engine: the fleet needs no Docker on this machine, so the local
    # one is made unreachable for the whole test (CI once ran it with no local daemon).
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-local-docker.sock'}")
    stopped = False
    try:
        first = provision_pools()
        placed = {f"node-{i}": _on_engine(e, settings.pool) for i, e in enumerate(engines, 1)}
        assert sum(len(v) for v in placed.values()) > 0
        for host, labels in placed.items():  # each on the engine of the host it was planned on
            assert {label[LABEL_HOST] for label in labels} <= {host}
        assert _held(settings) == _targets(settings, first.plan_id)

        engines[0].stop()
        stopped = True
        second = provision_pools()  # node-1 is down: no error, everything on node-2
        status = {
            r["host"]: r for r in read_host_status(settings.warehouse_path).iter_rows(named=True)
        }
        assert status["node-1"]["healthy"] is False and status["node-2"]["healthy"] is True
        wanted = _targets(settings, second.plan_id)
        assert wanted == _targets(settings, first.plan_id)  # the same need, re-placed
        assert _held(settings) == wanted
        assert all(label[LABEL_HOST] == "node-2" for label in _on_engine(engines[1], settings.pool))

        engines[0].start()
        stopped = False
        third = provision_pools()  # node-1 is back: its old members adopted or released
        # Each client holds what the plan wants, plus at most what its scale-down hold keeps
        # (members of node-1 the plan no longer wants there go once the delay has passed);
        # none outside a (client, host) the plan has a row for.
        holds = _holds(settings, third.plan_id)
        members = _members(settings)
        assert all(n <= holds.get(key, 0) for key, n in members.items()), (members, holds)
        wanted = _targets(settings, third.plan_id)
        assert all(_held(settings)[c] >= n for c, n in wanted.items())
    finally:
        if stopped:
            engines[0].start()
        release_all(open_pool_runtime(settings), settings.pool_scope)
        for engine in engines:
            client = engine.client()
            remove_test_containers(client, {POOL_LABEL: settings.pool})
            client.close()
