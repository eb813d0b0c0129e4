"""`prewarm api` and `prewarm up`: the long-running services."""

from __future__ import annotations

import signal
import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from core.errors import PrewarmError
from flows.cli.common import console, load_settings
from flows.settings import Settings, export_settings


class Services(StrEnum):
    embedded = "embedded"
    external = "external"


def api(
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default PREWARM_API_PORT, 8000).")] = None,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="Print a line per request (off by default: every activation is already "
            "recorded in pool_events, and under `prewarm up` this output is a log file "
            "that is not rotated).",
        ),
    ] = False,
) -> None:
    """Serve the client API (FastAPI; OpenAPI docs at /docs) until interrupted."""
    settings = load_settings()
    from api.app import create_app
    from api.server import serve
    from flows.runtime import open_pool_runtime
    from provisioning.runtime.leases import LeaseBook, lease_book_path

    app_ = create_app(
        settings.warehouse_path,
        lambda: open_pool_runtime(settings),
        settings.pool_scope,
        leases=LeaseBook(lease_book_path(settings.data_dir, settings.pool)),
        lease_seconds=settings.activation_lease_seconds,
        burst_max=settings.burst_max,
        activate_rate=settings.activate_rate,
        activate_burst=settings.activate_burst,
        allowed_images=settings.allowed_image_list,
        max_clients=settings.api_max_clients,
        max_queued_outcomes=settings.api_max_queued_outcomes,
    )
    serve(app_, host=host, port=port or settings.api_port, access_log=access_log)


def up(
    check: Annotated[
        bool,
        typer.Option("--check", help="Start everything, verify health and schedules, stop."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service.")] = 120.0,
    services_: Annotated[
        Services | None,
        typer.Option(
            "--services",
            help="embedded: start Prefect and MLflow here on SQLite files (the default). "
            "external: use the shared servers named by PREWARM_PREFECT_API_URL, "
            "PREWARM_MLFLOW_TRACKING_URI and PREWARM_DASK_ADDRESS (default PREWARM_SERVICES).",
        ),
    ] = None,
) -> None:
    """Start the stack: Prefect UI :4200, MLflow UI :5000, API :8000, the schedules.

    Runs the Prefect server, the MLflow UI, the client API and the deployments (prewarm-cycle
    every PREWARM_CYCLE, daily training, on-demand flows) as child processes (logs in
    data/logs); Ctrl-C stops everything cleanly. With --services external, Prefect, MLflow
    (and Dask, for training) are shared servers on PostgreSQL that someone else runs
    (docs/SCALING.md): they are checked, and only the API and the deployments start here.
    With --check it starts everything, verifies every health endpoint and every
    deployment's schedule through the Prefect API, stops, and exits 0 or says what failed.
    """
    if services_ is not None:
        export_settings({"services": services_.value})
    settings = load_settings()
    from flows import stack

    if settings.services == "external":
        _use_shared_services(settings)
    elif stack.prefect_server_running(settings):
        raise PrewarmError(
            f"Something already answers on port {settings.prefect_port} (another `prewarm up`?). "
            "Stop it first, or set PREWARM_PREFECT_PORT."
        )
    services = stack.services(settings)
    problems: list[str] = []

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # `kill` (SIGTERM), e.g. from a service manager, stops the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for service in services:
            console.print(f"starting {service.name} ...")
            stack.start(service)
            problem = stack.wait_healthy(service, timeout)
            if problem:
                problems.append(problem)
                break
            if service.name == "prefect":
                from flows.locks import ensure_limit

                ensure_limit(stack.prefect_api_url(settings))
        if not problems:
            lines, missing = stack.check_deployments(settings, timeout)
            problems += missing
            for line in lines:
                console.print(f"  scheduled: {line}")
        if problems:
            for problem in problems:
                console.print(f"[red]problem:[/] {problem}")
            raise typer.Exit(1)
        prefect_ui = stack.prefect_api_url(settings).removesuffix("/api")
        console.print(
            f"[green]healthy[/]: Prefect UI {prefect_ui}, "
            f"MLflow UI {stack.mlflow_ui_url(settings)}, "
            f"API http://127.0.0.1:{settings.api_port}/docs; logs in {settings.data_dir / 'logs'}"
        )
        if check:
            console.print(
                "check passed: the cycle and training schedules, the on-demand deployments, "
                "MLflow and the API are healthy."
            )
            return
        console.print("Press Ctrl-C to stop.")
        while all(s.process is not None and s.process.poll() is None for s in services):
            time.sleep(1.0)
        dead = [s for s in services if s.process is not None and s.process.poll() is not None]
        for service in dead:
            code = service.process.returncode if service.process else None
            console.print(f"[red]{service.name} stopped[/] (exit {code}); see {service.log_path}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        for service in reversed(services):
            stack.stop(service)
        console.print("stopped.")


def _use_shared_services(settings: Settings) -> None:
    """Check the shared Prefect, MLflow and Dask (one line each; exit 1 on any problem,
    nothing started) and give the shared Prefect the warehouse-write limit."""
    from flows import stack
    from flows.locks import ensure_limit
    from flows.shared_services import check_shared_services

    if stack.api_running(settings):
        raise PrewarmError(
            f"Something already answers on port {settings.api_port} (another `prewarm up`?)."
            " Stop it first, or set PREWARM_API_PORT."
        )
    lines, problems = check_shared_services(settings)
    for line in lines:
        console.print(f"  shared: {line}")
    for problem in problems:
        console.print(f"[red]problem:[/] {problem}")
    if problems:
        raise typer.Exit(1)
    ensure_limit(stack.prefect_api_url(settings))
