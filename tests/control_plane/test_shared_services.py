"""prewarm on a shared control plane: training on a real Dask scheduler with two worker
processes, registering to a real `mlflow server` on PostgreSQL, runs reported to a Prefect
server on PostgreSQL, and `prewarm up --services external --check` against them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mlflow import MlflowClient

from tests.control_plane.conftest import ControlPlane

CLIENTS = ["c0000", "c0001", "c0002", "c0003"]


@dataclass
class Trained:
    env: dict[str, str]
    data_dir: Path
    train_output: str
    train_log: str


def _prewarm(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def _rows(plane: ControlPlane, database: str, sql: str) -> list[tuple]:
    url = plane.postgres.url(database, "psycopg").replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def trained(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Four synthetic clients ingested and trained with every service shared."""
    data_dir = tmp_path_factory.mktemp("shared") / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREWARM_"))},
        **control_plane.environment(),
        "PREWARM_DATA_DIR": str(data_dir),
        "COLUMNS": "200",
    }
    ingest = _prewarm(env, "ingest", "--clients", "4", "--days", "10", "--end", "2026-01-19")
    assert ingest.returncode == 0, ingest.stderr
    log = control_plane.root / "logs" / "dask-workers.log"
    before = log.stat().st_size
    train = _prewarm(env, "train")
    assert train.returncode == 0, train.stderr
    with log.open() as handle:
        handle.seek(before)
        return Trained(env, data_dir, train.stdout, handle.read())


def test_every_client_is_registered_on_the_tracking_server_and_its_postgres(
    control_plane: ControlPlane, trained: Trained
):
    client = MlflowClient(control_plane.mlflow_url, registry_uri=control_plane.mlflow_url)
    models = {m.name: m for m in client.search_registered_models()}
    assert sorted(models) == [f"forecaster-{c}" for c in CLIENTS]
    assert all("champion" in m.aliases for m in models.values())
    # The registry is the PostgreSQL database behind the server, not a file of ours.
    stored = _rows(control_plane, "mlflow", "SELECT name FROM registered_models ORDER BY name")
    assert [name for (name,) in stored] == sorted(models)
    assert not list(trained.data_dir.parent.rglob("mlflow.db"))
    # Every version's model lives on the server's shared artifact path.
    stored_models = list(control_plane.artifacts.rglob("MLmodel"))
    assert len(stored_models) == len(CLIENTS)
    assert control_plane.mlflow_url in trained.train_output  # where to review them


def test_clients_trained_on_the_dask_workers(trained: Trained):
    # The worker processes (their shared log) ran the training tasks, not this machine's
    # process pool: one a client, since so few clients go one to a batch (flows.train._batches).
    finished = re.findall(
        r"Task run 'train_clients-\w+' - Finished in state Completed", trained.train_log
    )
    assert len(finished) == len(CLIENTS)


def test_runs_are_recorded_by_the_postgres_backed_prefect_server(
    control_plane: ControlPlane, trained: Trained
):
    runs = _rows(
        control_plane,
        "prefect",
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id",
    )
    assert ("ingest-usage", "COMPLETED") in runs
    assert ("train-forecasters", "COMPLETED") in runs
    tasks = _rows(
        control_plane,
        "prefect",
        "SELECT count(*) FROM task_run"
        " WHERE name LIKE 'train_clients-%' AND state_type = 'COMPLETED'",
    )
    assert tasks == [(len(CLIENTS),)]


def test_predict_loads_every_champion_back_from_the_server(trained: Trained):
    result = _prewarm(trained.env, "predict")
    assert result.returncode == 0, result.stderr
    import duckdb

    with duckdb.connect(str(trained.data_dir / "warehouse.duckdb"), read_only=True) as con:
        clients = con.execute("SELECT DISTINCT client_id FROM forecasts ORDER BY 1").fetchall()
    assert [c for (c,) in clients] == CLIENTS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_up_with_external_services_checks_them_and_starts_only_its_own(
    control_plane: ControlPlane, trained: Trained
):
    env = {**trained.env, "PREWARM_API_PORT": str(_free_port())}
    env.pop("PREWARM_SERVICES")  # chosen by the flag this time
    result = _prewarm(env, "up", "--services", "external", "--check", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "shared: Prefect 3." in out and control_plane.prefect_api_url in out
    assert "shared: MLflow 3." in out and control_plane.mlflow_url in out
    assert f"shared: Dask at {control_plane.dask_address}: 2 workers" in out
    assert "scheduled: prewarm-cycle: every 5 min" in out
    assert "check passed" in out
    # Only the API and the deployment server ran here: no Prefect or MLflow of its own.
    logs = sorted(p.name for p in (trained.data_dir / "logs").iterdir())
    assert logs == ["api.log", "deployments.log"]
    deployments = _rows(control_plane, "prefect", "SELECT name FROM deployment ORDER BY name")
    assert {name for (name,) in deployments} >= {"prewarm-cycle", "train-forecasters"}
