"""`prewarm inventory` and `prewarm inventory discover`: hosts with their engine, health,
capacity (file / engine / planned) and what is used and free; a down engine named, the
exit code saying whether any host can take members."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning.runtime.select import docker_unavailable_reason
from warehouse.inventory import read_host_status


def _file(tmp_path: Path, hosts: str) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(hosts)
    return path


def test_without_a_warehouse_it_says_how_to_make_one(run_cli):
    code, _, err = run_cli("inventory")
    assert code == 1 and "No warehouse at" in err and "prewarm ingest" in err


def test_discover_names_a_down_engine_and_fails_when_no_host_is_left(run_cli, tmp_path):
    gone = f"unix://{tmp_path}/gone.sock"
    path = _file(
        tmp_path, f"[[hosts]]\nname = 'gone'\ncpu_cores = 4\nmemory_mb = 8192\nengine = '{gone}'\n"
    )
    assert run_cli("inventory", "load", str(path))[0] == 0
    code, out, _ = run_cli("inventory", "discover")
    assert code == 1
    assert "gone is down" in out and f"{gone} did not answer" in out
    code, out, _ = run_cli("inventory")
    assert code == 0 and "DOWN" in out and "4/-/-" in out


@pytest.mark.docker
def test_discover_caps_the_file_at_what_the_engine_has_less_the_reserve(
    run_cli, tmp_path, data_dir
):
    if reason := docker_unavailable_reason(timeout_s=2.0):
        pytest.skip(f"needs a Docker daemon: {reason}")
    path = _file(
        tmp_path,
        "[[hosts]]\nname = 'here'\ncpu_cores = 4096\nmemory_mb = 1048576\n"
        "reserve_cpu_cores = 0.5\n",
    )
    assert run_cli("inventory", "load", str(path))[0] == 0
    code, out, _ = run_cli("inventory", "discover")
    assert code == 0, out
    (row,) = read_host_status(data_dir / "warehouse.duckdb").iter_rows(named=True)
    assert row["healthy"] is True
    assert row["cpu_cores"] == row["engine_cpu_cores"] - 0.5 < 4096
    assert row["memory_mb"] == row["engine_memory_mb"] < 1048576
    assert f"4096/{row['engine_cpu_cores']:.4g}/{row['cpu_cores']:.4g}" in out
