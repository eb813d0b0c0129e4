"""Inventory: the example TOML, this machine as a host, and errors that name host and key."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from provisioning.inventory import (
    INVENTORY_SCHEMA,
    InventoryError,
    default_inventory,
    inventory_from_dict,
    load_inventory,
    machine_memory_mb,
)

REPO = Path(__file__).resolve().parents[2]


def _host(**overrides: object) -> dict:
    return {"name": "node-a", "cpu_cores": 8, "memory_mb": 16384, **overrides}


def test_example_inventory_parses_with_defaults_inherited():
    hosts = load_inventory(REPO / "inventory.toml")
    assert hosts.schema == pl.Schema(INVENTORY_SCHEMA)
    assert hosts["host"].to_list() == ["node-a", "node-b", "spot-c"]
    assert hosts["cpu_cores"].to_list() == [16.0, 16.0, 8.0]
    # net_mbps comes from [host_defaults] unless the host sets it (spot-c does)
    assert hosts["net_mbps"].to_list() == [10000.0, 10000.0, 5000.0]
    # prices left out are null: the cost model's rates apply
    assert hosts["cost_core_minute"].to_list() == [0.0008, None, 0.0003]


def test_untracked_capacities_are_null():
    hosts = inventory_from_dict({"hosts": [_host()]})
    row = hosts.row(0, named=True)
    assert row == {
        "host": "node-a",
        "cpu_cores": 8.0,
        "memory_mb": 16384.0,
        "net_mbps": None,
        "io_ops": None,
        "cost_core_minute": None,
        "cost_memory_gib_minute": None,
        "reserve_cpu_cores": None,
        "reserve_memory_mb": None,
        "engine": None,
        "tls_ca": None,
        "tls_cert": None,
        "tls_key": None,
    }


def test_default_inventory_is_this_machine():
    hosts = default_inventory()
    assert hosts.height == 1
    row = hosts.row(0, named=True)
    assert row["cpu_cores"] == float(os.cpu_count() or 1)
    assert row["memory_mb"] == pytest.approx(machine_memory_mb())
    assert row["memory_mb"] > 0


def test_memory_is_read_from_meminfo_in_kib(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2097152 kB\nMemFree:  1 kB\n")
    assert machine_memory_mb(meminfo) == 2048.0
    # without the file, sysconf answers
    assert machine_memory_mb(tmp_path / "missing") > 0


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([_host(cpu_cores=-4)], "hosts[0] (node-a): cpu_cores must be > 0, got -4"),
        ([_host(memory_mb=0)], "hosts[0] (node-a): memory_mb must be > 0, got 0"),
        ([_host(net_mbps=-1)], "hosts[0] (node-a): net_mbps must be >= 0, got -1"),
        ([_host(), _host()], "hosts[1] (node-a): duplicate host 'node-a' (first at hosts[0])"),
        ([_host(cpus=4)], "hosts[0] (node-a): unknown key 'cpus'"),
        ([_host(cpu_cores="16")], "hosts[0] (node-a): cpu_cores must be a number, got str '16'"),
        ([{"name": "x", "cpu_cores": 1}], "hosts[0] (x): missing required key 'memory_mb'"),
        ([_host(name="")], "hosts[0]: name must be a non-empty string"),
        ([], "no hosts: add at least one [[hosts]] table"),
    ],
)
def test_errors_name_the_host_and_the_field(hosts: list, message: str):
    with pytest.raises(InventoryError) as error:
        inventory_from_dict({"hosts": hosts})
    assert message in str(error.value)


def test_every_problem_is_reported_at_once(tmp_path: Path):
    path = tmp_path / "inventory.toml"
    path.write_text(
        "[[hosts]]\nname = 'a'\ncpu_cores = -1\nmemory_mb = 1024\n"
        "[[hosts]]\nname = 'a'\ncpu_cores = 2\nmemory_mb = 1024\nspeed = 3\n"
        "[extras]\nx = 1\n"
    )
    with pytest.raises(InventoryError) as error:
        load_inventory(path)
    assert error.value.problems == [
        "unknown top-level key 'extras' (known: hosts, host_defaults, costs, planner)",
        "hosts[0] (a): cpu_cores must be > 0, got -1",
        "hosts[1] (a): unknown key 'speed' (known: name, cpu_cores, memory_mb, net_mbps, "
        "io_ops, cost_core_minute, cost_memory_gib_minute, reserve_cpu_cores, reserve_memory_mb, "
        "engine, tls)",
        "hosts[1] (a): duplicate host 'a' (first at hosts[0])",
    ]
    assert str(error.value).startswith(f"invalid inventory {path}:")


def test_unknown_host_defaults_and_broken_toml(tmp_path: Path):
    with pytest.raises(InventoryError, match="host_defaults: unknown key 'cpu_cores'"):
        inventory_from_dict({"host_defaults": {"cpu_cores": 4}, "hosts": [_host()]})
    path = tmp_path / "broken.toml"
    path.write_text("[[hosts]\n")
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_inventory(path)
    with pytest.raises(InventoryError, match="file not found"):
        load_inventory(tmp_path / "nope.toml")


def test_a_host_names_its_engine_and_tls_files_next_to_the_inventory(tmp_path: Path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "inventory.toml"
    path.write_text(
        "[[hosts]]\nname = 'local'\ncpu_cores = 2\nmemory_mb = 1024\n"
        "[[hosts]]\nname = 'sock'\ncpu_cores = 2\nmemory_mb = 1024\n"
        "engine = 'unix:///run/other.sock'\nreserve_cpu_cores = 0.5\n"
        "[[hosts]]\nname = 'tls'\ncpu_cores = 2\nmemory_mb = 1024\n"
        "engine = 'tcp://127.0.0.1:2376'\n"
        "tls = { ca = 'ca.pem', cert = 'cert.pem', key = 'key.pem' }\n"
    )
    hosts = load_inventory(path)
    assert hosts["engine"].to_list() == [None, "unix:///run/other.sock", "tcp://127.0.0.1:2376"]
    assert hosts["reserve_cpu_cores"].to_list() == [None, 0.5, None]
    assert hosts["tls_ca"].to_list() == [None, None, str(tmp_path / "ca.pem")]
    assert hosts["tls_key"].to_list() == [None, None, str(tmp_path / "key.pem")]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"engine": "http://x"}, "engine must start with unix://, tcp://, ssh://, got 'http://x'"),
        ({"engine": 5}, "engine must start with unix://, tcp://, ssh://, got 5"),
        (
            {"engine": "unix:///s.sock", "tls": {"ca": "a", "cert": "b", "key": "c"}},
            "tls goes with a tcp:// engine only",
        ),
        (
            {"engine": "tcp://h:1", "tls": {"ca": "a"}},
            "tls must be a table of exactly ca, cert, key",
        ),
        (
            {"engine": "tcp://h:1", "tls": {"ca": "nope.pem", "cert": "b", "key": "c"}},
            "tls.ca file",
        ),
        ({"reserve_memory_mb": -1}, "reserve_memory_mb must be >= 0, got -1"),
    ],
)
def test_engine_mistakes_are_named(tmp_path: Path, extra: dict, message: str):
    with pytest.raises(InventoryError) as error:
        inventory_from_dict({"hosts": [_host(**extra)]}, base_dir=tmp_path)
    assert message in str(error.value)


def test_an_engine_is_per_host_not_a_default():
    with pytest.raises(InventoryError) as error:
        inventory_from_dict({"host_defaults": {"engine": "unix:///s"}, "hosts": [_host()]})
    assert "host_defaults: unknown key 'engine'" in str(error.value)
