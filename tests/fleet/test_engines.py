"""Engines of a fleet: capacity from the file and the engine (the lower, less the reserve),
down engines left out of planning, and real probes of a live and a missing engine."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from provisioning.inventory import inventory_from_dict
from provisioning.runtime.engines import (
    Engine,
    HostProbe,
    engines_of,
    has_remote_engines,
    host_status,
    plannable,
    probe,
)
from provisioning.runtime.select import docker_unavailable_reason
from warehouse.db import connect
from warehouse.inventory import read_host_status, write_host_status

AT = datetime(2026, 11, 30, 12, 0)


def _inventory() -> pl.DataFrame:
    return inventory_from_dict(
        {
            "hosts": [
                {"name": "big-file", "cpu_cores": 64, "memory_mb": 262144, "engine": "unix:///a"},
                {
                    "name": "reserved",
                    "cpu_cores": 4,
                    "memory_mb": 8192,
                    "engine": "unix:///b",
                    "reserve_cpu_cores": 1,
                    "reserve_memory_mb": 1024,
                },
                {"name": "down", "cpu_cores": 8, "memory_mb": 8192, "engine": "unix:///c"},
                {"name": "local", "cpu_cores": 2, "memory_mb": 4096},
            ]
        }
    )


PROBES = {
    "big-file": HostProbe("big-file", True, 8.0, 32768.0, None, AT),
    "reserved": HostProbe("reserved", True, 16.0, 65536.0, None, AT),
    "down": HostProbe("down", False, None, None, "unix:///c did not answer", AT),
}


def test_the_file_may_lower_an_engine_never_raise_it():
    status = host_status(_inventory(), PROBES)
    rows = {r["host"]: r for r in status.iter_rows(named=True)}
    # The file says 64 cores, the engine has 8: 8 are planned.
    assert (rows["big-file"]["cpu_cores"], rows["big-file"]["memory_mb"]) == (8.0, 32768.0)
    # The file says 4 of the engine's 16, less a reserve of 1.
    assert (rows["reserved"]["cpu_cores"], rows["reserved"]["memory_mb"]) == (3.0, 7168.0)
    assert rows["down"]["healthy"] is False and rows["down"]["cpu_cores"] is None
    assert rows["down"]["error"] == "unix:///c did not answer"
    # Not probed (no engine to ask on this runtime): the file less its reserve.
    assert rows["local"]["healthy"] is True and rows["local"]["cpu_cores"] == 2.0


def test_down_and_empty_hosts_are_not_planned():
    inventory = _inventory()
    probes = {**PROBES, "local": HostProbe("local", True, 2.0, 4096.0, None, AT)}
    status = host_status(
        inventory.with_columns(
            pl.when(pl.col("host") == "local")
            .then(2.0)
            .otherwise(pl.col("reserve_cpu_cores"))
            .alias("reserve_cpu_cores")
        ),
        probes,
    )
    usable = plannable(inventory, status)
    assert usable["host"].to_list() == ["big-file", "reserved"]  # down: out; local: 0 cores
    assert usable["cpu_cores"].to_list() == [8.0, 3.0]
    assert usable.columns == inventory.columns


def test_engines_of_the_inventory():
    engines = engines_of(_inventory())
    assert engines["big-file"] == Engine("big-file", "unix:///a")
    assert engines["local"].address is None and engines["local"].label == "the local engine"
    assert has_remote_engines(_inventory())
    assert not has_remote_engines(
        inventory_from_dict({"hosts": [{"name": "x", "cpu_cores": 1, "memory_mb": 1}]})
    )


def test_a_missing_engine_is_down_quickly_with_the_reason(tmp_path: Path):
    gone = Engine("gone", f"unix://{tmp_path}/no-such.sock")
    found = probe(gone, timeout_s=1.0)
    assert not found.healthy and found.cpu_cores is None
    assert (
        found.error is not None and f"unix://{tmp_path}/no-such.sock did not answer" in found.error
    )


@pytest.mark.docker
def test_the_local_engine_reports_this_machine():
    reason = docker_unavailable_reason(timeout_s=2.0)
    if reason is not None:
        pytest.skip(f"needs a Docker daemon: {reason}")
    found = probe(Engine("here", None))
    assert found.healthy and found.cpu_cores is not None and found.cpu_cores >= 1
    assert found.memory_mb is not None and found.memory_mb > 100


def test_host_status_is_kept_per_host(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    with connect(path):
        pass
    write_host_status(path, host_status(_inventory(), PROBES))
    later = {"down": HostProbe("down", True, 8.0, 8192.0, None, AT)}
    write_host_status(path, host_status(_inventory().filter(pl.col("host") == "down"), later))
    stored = read_host_status(path)
    assert stored.height == 4
    assert stored.filter(pl.col("host") == "down").row(0, named=True)["healthy"] is True


def test_the_cycle_artifact_shows_placement_and_a_lost_host(tmp_path: Path):
    from flows.artifacts import cycle_markdown
    from flows.cycle import CycleSummary
    from warehouse.inventory import read_host_placement, store_inventory

    path = tmp_path / "warehouse.duckdb"
    inventory = _inventory()
    store_inventory(path, inventory, "test")
    write_host_status(path, host_status(inventory, PROBES))
    placement = read_host_placement(path)
    rows = {r["host"]: r for r in placement.iter_rows(named=True)}
    assert rows["down"]["healthy"] is False and rows["down"]["active"] == 0
    assert rows["reserved"]["planned_cpu_cores"] == 3.0  # what the planner may use, not 4
    text = cycle_markdown(CycleSummary("cycle-1", "none", "2026-11-30T12:00:00"), placement)
    assert "### Placement by host" in text
    assert "| down | **down**: unix:///c did not answer | 0 | 0 | 0 | 0.00 / - |" in text
    assert "| reserved | up | 0 | 0 | 0 | 0.00 / 3.00 | 0 / 7,168 |" in text
    assert "Placement" not in cycle_markdown(CycleSummary("cycle-2", "none", "x"))
