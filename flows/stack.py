"""`prewarm up`: the local stack an operator watches, as child processes.

    Prefect server + UI   http://127.0.0.1:4200   (state under data/prefect)
    MLflow UI             http://127.0.0.1:5000   (mlruns/mlflow.db, mlruns/artifacts)
    prewarm API           http://127.0.0.1:8000   (/docs)
    deployment server     serves the deployments: prewarm-cycle on its interval, daily
                          training, and the on-demand ones (flows/deployments.py)

With PREWARM_SERVICES=external (`prewarm up --services external`) Prefect and MLflow are
shared servers someone else runs (flows/shared_services.py checks them): only the API and
the deployment server start here, reporting to them.

Each child runs in its own process group with its output in data/logs/<name>.log, so a stop
(Ctrl-C, or the end of `--check`) takes down everything it started and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flows.deployments import ON_DEMAND, SCHEDULED
from flows.settings import Settings, child_environment

HOST = "127.0.0.1"


@dataclass
class Service:
    """One child process of the stack and how to tell it is healthy."""

    name: str
    command: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    healthy: Callable[[httpx.Response], bool] = field(default=lambda r: r.status_code == 200)


def prefect_api_url(settings: Settings) -> str:
    """The shared Prefect server's API when one is named, else the embedded one's."""
    return settings.prefect_api_url or f"http://{HOST}:{settings.prefect_port}/api"


def mlflow_ui_url(settings: Settings) -> str:
    """Where people review models: the tracking server models go to, else the embedded UI."""
    if settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        return settings.mlflow_tracking_uri
    return f"http://{HOST}:{settings.mlflow_port}"


def _bin(name: str) -> str:
    """A console script of this environment (the venv the CLI runs from)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def services(settings: Settings) -> list[Service]:
    """The stack's services, in start order (external Prefect and MLflow are not ours)."""
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_url = prefect_api_url(settings)
    env = child_environment(PREFECT_API_URL=api_url, PYTHONUNBUFFERED="1")
    ours = [
        Service(
            "api",
            [
                sys.executable,
                "-m",
                "flows.cli",
                "api",
                "--host",
                HOST,
                "--port",
                str(settings.api_port),
            ],
            f"http://{HOST}:{settings.api_port}/healthz",
            logs / "api.log",
            env,
        ),
        Service(
            "deployments",
            [sys.executable, "-m", "flows.deployments"],
            f"{api_url}/health",
            logs / "deployments.log",
            env,
        ),
    ]
    if settings.services == "external":
        return ours
    artifacts = settings.mlflow_artifacts_dir.resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return [
        Service(
            "prefect",
            [
                _bin("prefect"),
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(settings.prefect_port),
            ],
            f"{api_url}/health",
            logs / "prefect.log",
            {
                **{k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                # The UI calls the API at this URL: it must follow a non-default port.
                "PREFECT_UI_API_URL": api_url,
                "PREFECT_SERVER_API_HOST": HOST,
                "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            },
        ),
        Service(
            "mlflow",
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                settings.mlflow_tracking_uri,
                "--default-artifact-root",
                artifacts.as_uri(),
                "--host",
                HOST,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            f"http://{HOST}:{settings.mlflow_port}/health",
            logs / "mlflow.log",
            # MLflow 3 starts a job runner and seven huey consumers (~2 GB of RSS together,
            # measured) for its GenAI jobs; prewarm runs none of them.
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        *ours,
    ]


def start(service: Service) -> None:
    """Start a service in its own process group, output to its log file."""
    handle = service.log_path.open("ab")
    service.process = subprocess.Popen(
        service.command,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=service.env,
        start_new_session=True,
    )
    handle.close()


def wait_healthy(service: Service, timeout_s: float) -> str | None:
    """None once the service answers healthy, else why not (died, or timed out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            return (
                f"{service.name} exited with code {service.process.returncode}; "
                f"see {service.log_path}"
            )
        try:
            if service.healthy(httpx.get(service.health_url, timeout=2.0)):
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return (
        f"{service.name} did not answer {service.health_url} within {timeout_s:.0f} s; "
        f"see {service.log_path}"
    )


def deployment_schedules(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Deployment name -> its active schedules, as the Prefect API reports them."""
    response = httpx.post(f"{prefect_api_url(settings)}/deployments/filter", json={}, timeout=10)
    response.raise_for_status()
    return {
        d["name"]: [s["schedule"] for s in d.get("schedules", []) if s.get("active", True)]
        for d in response.json()
    }


def check_deployments(settings: Settings, timeout_s: float) -> tuple[list[str], list[str]]:
    """(lines describing each expected deployment, problems) once the scheduled ones are
    registered with a schedule and the on-demand ones are registered, or at the timeout."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        try:
            found = deployment_schedules(settings)
        except httpx.HTTPError:
            found = {}
        if all(found.get(name) for name in SCHEDULED) and all(n in found for n in ON_DEMAND):
            break
        time.sleep(1.0)
    lines, problems = [], []
    for name in SCHEDULED:
        schedules = found.get(name)
        if not schedules:
            problems.append(
                f"deployment {name!r} {'has no schedule' if name in found else 'is missing'}"
            )
            continue
        lines.append(f"{name}: {', '.join(_describe(s) for s in schedules)}")
    for name in ON_DEMAND:
        if name in found:
            lines.append(f"{name}: on demand")
        else:
            problems.append(f"deployment {name!r} is missing")
    return lines, problems


def _describe(schedule: dict[str, Any]) -> str:
    if schedule.get("interval") is not None:
        return f"every {float(schedule['interval']) / 60:g} min"
    if schedule.get("cron"):
        return f"cron {schedule['cron']} {schedule.get('timezone') or 'UTC'}"
    return str(schedule)


def stop(service: Service, grace_s: float = 10.0) -> None:
    """Stop a service and everything it started (its process group)."""
    process = service.process
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def prefect_server_running(settings: Settings) -> bool:
    """Whether the stack's Prefect server answers (then CLI runs use it): a shared one gets
    longer than a local one to say so."""
    timeout = 5.0 if settings.prefect_api_url else 0.3
    try:
        return httpx.get(f"{prefect_api_url(settings)}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def api_running(settings: Settings) -> bool:
    """Whether something already answers on the API's port (another `prewarm up`?)."""
    try:
        httpx.get(f"http://{HOST}:{settings.api_port}/healthz", timeout=0.3)
    except httpx.HTTPError:
        return False
    return True
