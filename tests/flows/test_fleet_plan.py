"""Planning on a fleet: a host whose engine does not answer gets nothing, says why, and is
recorded down; with every engine down the cycle refuses to plan and changes nothing.

The pool is on processes (hosts are where the plan places members); the engines named in
the inventory are real unix sockets that nothing listens on: the probe is real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.errors import PrewarmError
from flows.provision import provision_pools
from tests.flows.test_provision_flow import seeded_pool
from warehouse.db import connect, fetch_value
from warehouse.inventory import read_host_status


def _inventory(path: Path, hosts: str) -> Path:
    file = path / "inventory.toml"
    file.write_text(hosts)
    return file


def test_a_down_engine_gets_no_member_and_is_recorded(
    prefect_harness, data_dir, tmp_path, monkeypatch, caplog
):
    settings = seeded_pool(monkeypatch, "process")
    gone = f"unix://{tmp_path}/gone.sock"
    inventory = _inventory(
        tmp_path,
        "[[hosts]]\nname = 'gone'\ncpu_cores = 64\nmemory_mb = 262144\n"
        f"engine = '{gone}'\ncost_core_minute = 0.0\ncost_memory_gib_minute = 0.0\n"
        "[[hosts]]\nname = 'here'\ncpu_cores = 4\nmemory_mb = 8192\n",
    )
    monkeypatch.setenv("PREWARM_INVENTORY_PATH", str(inventory))
    with caplog.at_level(logging.WARNING, logger="flows.fleet"):
        summary = provision_pools(dry_run=True)

    with connect(settings.warehouse_path, read_only=True) as con:
        hosts = {
            host
            for (host,) in con.execute(
                "SELECT DISTINCT host FROM allocations WHERE plan_id = ? AND count > 0",
                [summary.plan_id],
            ).fetchall()
        }
        placed = fetch_value(
            con, "SELECT sum(count) FROM allocations WHERE plan_id = ?", [summary.plan_id]
        )
    # 'gone' is free and far larger, so a healthy 'gone' would have taken the members.
    assert hosts == {"here"} and placed > 0
    status = {r["host"]: r for r in read_host_status(settings.warehouse_path).iter_rows(named=True)}
    assert status["gone"]["healthy"] is False and gone in status["gone"]["error"]
    assert status["here"]["healthy"] is True and status["here"]["cpu_cores"] == 4.0
    assert any("host gone is down for this cycle" in r.getMessage() for r in caplog.records)


def test_with_every_engine_down_nothing_is_planned(
    prefect_harness, data_dir, tmp_path, monkeypatch
):
    settings = seeded_pool(monkeypatch, "process")
    inventory = _inventory(
        tmp_path,
        f"[[hosts]]\nname = 'gone'\ncpu_cores = 4\nmemory_mb = 8192\nengine = 'unix://{tmp_path}/x.sock'\n",
    )
    monkeypatch.setenv("PREWARM_INVENTORY_PATH", str(inventory))
    with pytest.raises(PrewarmError, match="No host can take members this cycle"):
        provision_pools(dry_run=True)
    with connect(settings.warehouse_path, read_only=True) as con:
        assert fetch_value(con, "SELECT count(*) FROM plans") == 0
