"""The operator's commands keep stored data safe: usage errors, hostile client ids, malformed
inventory and cost files, an unusable data directory or warehouse, and a lost or corrupt
MLflow registry each give one clear message and a non-zero exit, never a traceback, and
never change what is stored. Driven through the real `prewarm` CLI where that is the layer."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
import typer
from pydantic import Field, TypeAdapter, ValidationError

from core.errors import PrewarmError
from models.registry import RegistryUnavailable, current_aliases, ensure_experiment
from provisioning.costs import CostConfigError, load_cost_model
from tests.security.cli import PREWARM, isolated_env
from warehouse.api_keys import issue_key
from warehouse.db import connect, fetch_value
from warehouse.validation import CLIENT_ID_PATTERN, is_client_id

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def prewarm(tmp_path: Path) -> Run:
    """Run the real CLI in a fresh home: data dir, registry and Prefect state under tmp_path."""
    env = isolated_env(tmp_path)

    def run(*args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PREWARM, *args],
            env={**env, **extra_env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def _one_clear_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return result.stderr


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nosuch"], "No such command 'nosuch'"),
        (["ingest", "--clients", "abc"], "Invalid value for '--clients'"),
        (["sql", "--format", "xml", "select 1"], "Invalid value for '--format'"),
    ],
)
def test_usage_errors_print_usage_and_exit_2(prewarm: Run, args: list[str], says: str):
    result = prewarm(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Usage: prewarm")
    assert f"Error: {says}" in result.stderr
    assert len(result.stderr.splitlines()) <= 6


def test_help_still_exits_0(prewarm: Run):
    result = prewarm("--help")
    assert result.returncode == 0 and "Usage: prewarm" in result.stdout and not result.stderr
    result = prewarm("clients", "add", "--help")
    assert result.returncode == 0 and "API key" in result.stdout


def test_a_command_exit_code_reaches_the_shell(monkeypatch: pytest.MonkeyPatch):
    """`raise typer.Exit(1)` inside a command (provision with failed actions, a cycle with
    failures) must exit 1, not 0: outside standalone mode typer returns it instead."""
    from flows import cli

    def failing() -> None:
        raise typer.Exit(3)

    cli.app.command("test-fails")(failing)
    try:
        monkeypatch.setattr(sys, "argv", ["prewarm", "test-fails"])
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 3
    finally:
        cli.app.registered_commands.pop()


# -- client ids -----------------------------------------------------------------------------

HOSTILE_IDS = {
    "trailing newline": "evil\n",
    "embedded newline": "a\nb",
    "path": "../x",
    "300 characters": "a" * 300,
    "empty": "",
    "space": "a b",
}


@pytest.mark.parametrize("client_id", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
def test_hostile_client_id_stores_nothing(prewarm: Run, tmp_path: Path, client_id: str):
    stderr = _one_clear_error(prewarm("clients", "add", client_id))
    assert "is not a valid client id" in stderr
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    if warehouse.exists():
        with connect(warehouse, read_only=True) as con:
            assert fetch_value(con, "SELECT count(*) FROM clients") == 0
            assert fetch_value(con, "SELECT count(*) FROM api_keys") == 0


def test_valid_client_id_is_stored_with_its_key(prewarm: Run, tmp_path: Path):
    result = prewarm("clients", "add", "tenant-1.eu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("pw_")
    with connect(tmp_path / "data" / "warehouse.duckdb", read_only=True) as con:
        assert con.execute("SELECT client_id FROM clients").fetchall() == [("tenant-1.eu",)]
        assert fetch_value(con, "SELECT count(*) FROM api_keys") == 1


def test_nul_in_a_client_id_stores_nothing(tmp_path: Path):
    # argv cannot carry a NUL byte, so this goes to the function the CLI and API call.
    path = tmp_path / "warehouse.duckdb"
    with pytest.raises(PrewarmError, match="not a valid client id"):
        issue_key(path, "a\x00b", create_client=True)
    assert not path.exists()


def test_every_check_of_a_client_id_agrees():
    api = TypeAdapter(Annotated[str, Field(pattern=CLIENT_ID_PATTERN)])
    for text in [*HOSTILE_IDS.values(), "a\x00b", "a\r", "-a", "a/b", "a" * 129]:
        assert not is_client_id(text), repr(text)
        with pytest.raises(ValidationError):
            api.validate_python(text)
    for text in ["a", "A9", "tenant-1.eu", "x:y@z", "a" * 128]:
        assert is_client_id(text) and api.validate_python(text) == text


def test_ingest_quarantines_a_client_id_with_a_trailing_newline():
    import polars as pl

    from warehouse.sources.base import ExtractedBatch
    from warehouse.validation import validate_batch

    rows = pl.DataFrame(
        {
            "client_id": ["good", "evil\n"],
            "ts": [datetime(2026, 1, 5), datetime(2026, 1, 5)],
            "requests": [1.0, 2.0],
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))
    batch = ExtractedBatch(
        source="test", location="t.csv", content_hash="h", freq_seconds=300, rows=rows
    )
    report = validate_batch(batch, now=datetime(2026, 1, 6))
    assert report.good.get_column("client_id").to_list() == ["good"]


# -- inventory and cost files ---------------------------------------------------------------

GOOD_INVENTORY = '[[hosts]]\nname = "node-a"\ncpu_cores = 4\nmemory_mb = 8192\n'
BAD_FILES: dict[str, bytes] = {
    "not UTF-8": b'[[hosts]]\nname = "n\xff\xfe"\ncpu_cores = 4\nmemory_mb = 8192\n',
    "5000 deep": b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "5000 deep tables": b"a = " + b"{b = " * 5000 + b"}" * 5000 + b"\n",
    "hosts is a string": b'hosts = "node-a"\n',
    "cores is text": b'[[hosts]]\nname = "n"\ncpu_cores = "4"\nmemory_mb = 8192\n',
    "cores overflow": b'[[hosts]]\nname = "n"\ncpu_cores = 1' + b"0" * 400 + b"\nmemory_mb = 1\n",
    "name is a table": b"[[hosts]]\nname = {x = 1}\ncpu_cores = 4\nmemory_mb = 8192\n",
    "defaults is a list": b"host_defaults = [1]\n[[hosts]]\nname = 'n'\ncpu_cores = 1\n",
    "not TOML": b"[[hosts]\nname = \n",
}


@pytest.mark.parametrize("content", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_inventory_file_is_one_clear_error_and_keeps_the_stored_one(
    prewarm: Run, tmp_path: Path, content: bytes
):
    good = tmp_path / "good.toml"
    good.write_text(GOOD_INVENTORY)
    assert prewarm("inventory", "load", str(good)).returncode == 0
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    with connect(warehouse, read_only=True) as con:
        stored = con.execute("SELECT host, cpu_cores, memory_mb FROM inventory").fetchall()
    assert stored == [("node-a", 4.0, 8192.0)]
    bad = tmp_path / "bad.toml"
    bad.write_bytes(content)
    stderr = _one_clear_error(prewarm("inventory", "load", str(bad)))
    assert f"invalid inventory {bad}" in stderr
    with connect(warehouse, read_only=True) as con:
        assert con.execute("SELECT host, cpu_cores, memory_mb FROM inventory").fetchall() == stored


def test_inventory_path_that_is_a_directory_or_missing(prewarm: Run, tmp_path: Path):
    (tmp_path / "adir").mkdir()
    assert "is a directory" in _one_clear_error(prewarm("inventory", "load", "adir"))
    assert "file not found" in _one_clear_error(prewarm("inventory", "load", "nope.toml"))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[costs]\ncore_minute = 0.\xff\n", "not UTF-8 text (byte 0xff at offset 24)"),
        (b"[costs]\nx = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"[costs]\ncore_minute = 1" + b"0" * 400 + b"\n", "costs.core_minute: too large"),
        (b"[costs]\ncold_start_penalty = {free = 1" + b"0" * 400 + b"}\n", "too large"),
        (b"[costs]\ncore_minute = [1, 2]\n", "expected a number, got list"),
        (b"costs = 5\n", "[costs] must be a table"),
    ],
)
def test_bad_costs_file_is_one_clear_error(tmp_path: Path, content: bytes, says: str):
    path = tmp_path / "costs.toml"
    path.write_bytes(content)
    with pytest.raises(CostConfigError) as error:
        load_cost_model(path)
    assert says in str(error.value) and str(path) in str(error.value)


def test_costs_path_that_is_a_directory(tmp_path: Path):
    with pytest.raises(CostConfigError, match="is a directory"):
        load_cost_model(tmp_path)


# -- data directory and warehouse -----------------------------------------------------------


def test_data_dir_that_is_a_file(prewarm: Run, tmp_path: Path):
    """Root ignores file modes, so an unwritable data dir is made the other way: a file."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory\n")
    for args in (["sql", "select 1"], ["ingest", "--clients", "1", "--days", "1"]):
        stderr = _one_clear_error(prewarm(*args))
        assert f"The data directory {blocker} is a file, not a directory" in stderr
        assert "PREWARM_DATA_DIR" in stderr
    stderr = _one_clear_error(prewarm("sql", "select 1", PREWARM_DATA_DIR=str(blocker / "sub")))
    assert f"The data directory {blocker / 'sub'} cannot be created" in stderr
    assert blocker.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-555 directory anyway")
def test_read_only_data_dir(prewarm: Run, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        stderr = _one_clear_error(prewarm("ingest", "--clients", "1", "--days", "1"))
        assert f"The data directory {data} is not writable" in stderr
    finally:
        data.chmod(0o755)


def _unwritable_even_for_root() -> Path | None:
    """A directory this process cannot create files in whatever its uid (sysfs, procfs)."""
    for candidate in (Path("/sys/fs"), Path("/proc/1")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    return None


def test_unwritable_data_dir_even_as_root(prewarm: Run):
    """What a read-only mount does to root: the mode bits let it in, the write fails."""
    data = _unwritable_even_for_root()
    if data is None:
        pytest.skip("no directory here refuses root's writes (sysfs and procfs are writable)")
    stderr = _one_clear_error(
        prewarm("ingest", "--clients", "1", "--days", "1", PREWARM_DATA_DIR=str(data))
    )
    assert f"The data directory {data} is not writable" in stderr
    assert "PREWARM_DATA_DIR" in stderr


def test_warehouse_that_is_not_a_duckdb_file(prewarm: Run, tmp_path: Path):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    warehouse.parent.mkdir()
    warehouse.write_bytes(os.urandom(64 * 1024))
    before = _sha256(warehouse)
    for args in (["sql", "select 1"], ["clients", "add", "tenant"]):
        stderr = _one_clear_error(prewarm(*args))
        assert f"The warehouse {warehouse} cannot be opened" in stderr
    assert _sha256(warehouse) == before


# -- the MLflow registry --------------------------------------------------------------------


def _trained_warehouse(tmp_path: Path, model_runs: bool) -> None:
    """Two clients with a little usage; with `model_runs`, the record of their training."""
    with connect(tmp_path / "data" / "warehouse.duckdb") as con:
        con.execute(
            "INSERT INTO clients (client_id, freq_seconds, source) VALUES"
            " ('a', 300, 'test'), ('b', 300, 'test')"
        )
        con.execute(
            "INSERT INTO usage (client_id, ts, requests, concurrency, batch_id)"
            " SELECT c, TIMESTAMP '2026-01-05' + to_minutes(5 * i), 3, 1, 'b1'"
            " FROM (VALUES ('a'), ('b')) v(c), range(24) r(i)"
        )
        if model_runs:
            con.execute(
                "INSERT INTO model_runs (client_id, model_name, model_version, alias,"
                " trained_until, trained_at) VALUES"
                " ('a', 'forecaster-a', '1', 'champion', TIMESTAMP '2026-01-05 02:00', now()),"
                " ('b', 'forecaster-b', '1', 'champion', TIMESTAMP '2026-01-05 02:00', now())"
            )


def test_predict_with_a_lost_registry_fails_and_says_how_to_recover(prewarm: Run, tmp_path):
    _trained_warehouse(tmp_path, model_runs=True)
    registry = tmp_path / "mlruns" / "mlflow.db"
    stderr = _one_clear_error(prewarm("predict", timeout=300))
    assert f"The MLflow registry at {registry} is missing or corrupt" in stderr
    assert "Restore it from a backup" in stderr and "prewarm train" in stderr
    assert not registry.exists()  # MLflow was not let create an empty one in its place


def test_predict_with_random_bytes_for_a_registry(prewarm: Run, tmp_path: Path):
    _trained_warehouse(tmp_path, model_runs=True)
    registry = tmp_path / "mlruns" / "mlflow.db"
    registry.parent.mkdir()
    registry.write_bytes(os.urandom(200_000))
    before = _sha256(registry)
    stderr = _one_clear_error(prewarm("predict", timeout=300))
    assert f"The MLflow registry at {registry} is missing or corrupt" in stderr
    assert "move it aside" in stderr and "prewarm train" in stderr
    assert _sha256(registry) == before


def test_predict_in_a_new_project_still_works(prewarm: Run, tmp_path: Path):
    _trained_warehouse(tmp_path, model_runs=False)
    result = prewarm("predict", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 clients have no model yet" in result.stdout


@pytest.fixture
def registry(tmp_path: Path) -> tuple[str, Path]:
    """A real, empty MLflow registry (SQLite) and its file."""
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    ensure_experiment(uri, tmp_path / "artifacts")
    return uri, path


def test_registry_states_and_what_current_aliases_makes_of_them(
    registry: tuple[str, Path], tmp_path: Path
):
    uri, path = registry
    assert current_aliases(uri) == {}  # a new project: nothing registered yet, no error
    with pytest.raises(RegistryUnavailable, match="holds no registered forecaster"):
        current_aliases(uri, models_expected=True)
    whole = path.read_bytes()
    cases = {
        "the file is empty": b"",
        "database disk image is malformed": whole[: len(whole) // 3],
        "is not an SQLite database": os.urandom(len(whole)),
    }
    for says, content in cases.items():
        path.write_bytes(content)
        for expected in (False, True):
            if not content and not expected:
                continue  # an empty file is a new project's, MLflow creates its tables
            with pytest.raises(RegistryUnavailable, match=says):
                current_aliases(uri, models_expected=expected)
        if content:
            assert path.read_bytes() == content
    gone = f"sqlite:///{tmp_path / 'gone.db'}"
    with pytest.raises(RegistryUnavailable, match="no such file"):
        current_aliases(gone, models_expected=True)
    assert not (tmp_path / "gone.db").exists()
