"""Shared services misnamed, down or empty: one clear message, a non-zero exit, nothing
started and no temporary server standing in for the shared one."""

from __future__ import annotations

import socket

import pytest

from flows.settings import Settings
from flows.shared_services import check_shared_services
from models.registry import RegistryUnavailable, current_aliases


def _closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def shared_env(monkeypatch, data_dir):
    """Every shared service named, none of them running."""
    urls = {
        "prefect": f"http://127.0.0.1:{_closed_port()}/api",
        "mlflow": f"http://127.0.0.1:{_closed_port()}",
        "dask": f"tcp://127.0.0.1:{_closed_port()}",
    }
    monkeypatch.setenv("PREWARM_SERVICES", "embedded")  # restored after the CLI sets it
    monkeypatch.setenv("PREWARM_PREFECT_API_URL", urls["prefect"])
    monkeypatch.setenv("PREWARM_MLFLOW_TRACKING_URI", urls["mlflow"])
    monkeypatch.setenv("PREWARM_DASK_ADDRESS", urls["dask"])
    return urls


def test_external_services_without_a_prefect_server_are_refused(run_cli, monkeypatch):
    monkeypatch.setenv("PREWARM_SERVICES", "embedded")
    monkeypatch.delenv("PREWARM_PREFECT_API_URL", raising=False)
    code, out, err = run_cli("up", "--services", "external", "--check")
    assert code == 2
    assert "services=external needs PREWARM_PREFECT_API_URL" in err
    assert "Traceback" not in err + out


def test_external_services_with_a_registry_file_are_refused(run_cli, monkeypatch):
    monkeypatch.setenv("PREWARM_SERVICES", "external")
    monkeypatch.setenv("PREWARM_PREFECT_API_URL", "http://prefect.internal:4200/api")
    code, _, err = run_cli("up", "--check")  # data_dir's registry is an SQLite file
    assert code == 2
    assert "PREWARM_MLFLOW_TRACKING_URI to name the shared MLflow tracking server" in err


def test_up_says_which_shared_service_does_not_answer_and_starts_nothing(
    run_cli, shared_env, data_dir
):
    code, out, _ = run_cli("up", "--services", "external", "--check")
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, out
    assert f"the Prefect server at {shared_env['prefect']}" in problems[0]
    assert f"the MLflow tracking server at {shared_env['mlflow']}" in problems[1]
    assert f"the Dask scheduler at {shared_env['dask']}" in problems[2]
    assert all("does not answer" in p for p in problems)
    assert not (data_dir / "logs" / "api.log").exists()  # nothing of ours was started


def test_a_dask_scheduler_without_workers_is_a_problem(shared_env, monkeypatch):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("PREWARM_DASK_ADDRESS", cluster.scheduler_address)
        _, problems = check_shared_services(Settings(services="external"))
    assert any(
        p.startswith(f"the Dask scheduler at {cluster.scheduler_address}") and "has no workers" in p
        for p in problems
    ), problems


def test_a_run_never_falls_back_to_a_temporary_prefect_when_the_shared_one_is_down(
    run_cli, shared_env
):
    code, out, err = run_cli("train")
    assert code == 1
    assert f"The shared Prefect server at {shared_env['prefect']}" in err
    assert "does not answer its /health" in err
    assert "Registered" not in out


def test_an_unreachable_tracking_server_names_itself(shared_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryUnavailable) as raised:
        current_aliases(shared_env["mlflow"])
    message = str(raised.value)
    assert message.startswith(f"The MLflow tracking server at {shared_env['mlflow']}")
    assert "PREWARM_MLFLOW_TRACKING_URI" in message
