"""The shared services a fleet's control plane runs on, checked before `prewarm up` uses them.

    Prefect server      PREWARM_PREFECT_API_URL       (its database: PostgreSQL)
    MLflow tracking     PREWARM_MLFLOW_TRACKING_URI   (http(s); PostgreSQL behind it, the
                                                       artifacts on a path the server shares)
    Dask scheduler      PREWARM_DASK_ADDRESS          (optional: training's workers)

prewarm never starts or stops these (docs/SCALING.md shows how to run them): it only asks
each one whether it answers, once, and says in one line what does not.
"""

from __future__ import annotations

import httpx

from flows.settings import Settings

TIMEOUT_S = 5.0


def check_shared_services(settings: Settings) -> tuple[list[str], list[str]]:
    """(one line per service that answers, one line per problem)."""
    lines: list[str] = []
    problems: list[str] = []
    for check in (_prefect, _mlflow, _dask):
        line, problem = check(settings)
        if line:
            lines.append(line)
        if problem:
            problems.append(problem)
    return lines, problems


def _version(url: str) -> str | None:
    """The body of a version endpoint, or None when it does not answer."""
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return response.text.strip().strip('"') if response.status_code == 200 else None


def _healthy(url: str) -> str | None:
    """None when `url` answers 200, else why not."""
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as error:
        return f"does not answer ({type(error).__name__})"
    return None if response.status_code == 200 else f"answers HTTP {response.status_code}"


def _prefect(settings: Settings) -> tuple[str | None, str | None]:
    url = settings.prefect_api_url
    assert url is not None  # Settings refuses services=external without it
    problem = _healthy(f"{url}/health")
    if problem:
        return None, f"the Prefect server at {url} (PREWARM_PREFECT_API_URL) {problem}"
    return f"Prefect {_version(f'{url}/admin/version') or '?'} at {url}", None


def _mlflow(settings: Settings) -> tuple[str | None, str | None]:
    url = settings.mlflow_tracking_uri.rstrip("/")
    problem = _healthy(f"{url}/health")
    if problem:
        return None, (
            f"the MLflow tracking server at {url} (PREWARM_MLFLOW_TRACKING_URI) {problem}"
        )
    return f"MLflow {_version(f'{url}/version') or '?'} at {url}", None


def _dask(settings: Settings) -> tuple[str | None, str | None]:
    if not settings.dask_address:
        return f"training on this machine ({settings.train_workers} worker processes)", None
    from distributed import Client

    where = f"the Dask scheduler at {settings.dask_address} (PREWARM_DASK_ADDRESS)"
    try:
        with Client(settings.dask_address, timeout=TIMEOUT_S) as client:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError) as error:
        return None, f"{where} does not answer ({type(error).__name__})"
    if workers == 0:
        return None, f"{where} has no workers: training would wait forever; start some"
    return f"Dask at {settings.dask_address}: {workers} workers", None
