"""Registering a client's forecaster as a new version, and loading a version back.

A version's files are its forecaster file (`models.registry.pyfunc`) and what MLflow writes
around it; the shared exceedance model is named by run id, not copied (`shared`).
`load_forecaster_version` reads the forecaster file directly, without MLflow's pyfunc
machinery (a tenth of the time); a version registered before the compact format loads
through its pyfunc, as it always did.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from models.forecaster import forecaster_to_bytes
from models.forecaster.artifact import FORMAT
from models.registry.pyfunc import (
    FORECASTER_FILE,
    ForecasterPyfunc,
    PyfuncFlavor,
    read_forecaster,
    requirements,
)
from models.registry.shared import EXCEEDANCE_RUN_TAG, log_exceedance
from models.registry.store import (
    CHALLENGER,
    CHAMPION,
    LOCK,
    ensure_sqlite_dir,
    experiment_id,
    local_path,
    mlflow_client,
    model_name,
    use_registry,
    versions_in_database,
)

FORMAT_TAG = "artifact_format"  # on a version: how its forecaster is stored (none: a pickle)


@dataclass
class Registration:
    """What registering one forecaster did."""

    client_id: str
    name: str
    version: str
    promoted: bool
    reason: str
    run_id: str
    mlflow_seconds: float  # wall time spent inside MLflow calls


@dataclass
class ModelCard:
    """Everything logged next to the model for a reviewer in the MLflow UI."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    plot_svg: bytes | None = None
    input_example: pd.DataFrame | None = None
    output_example: pd.DataFrame | None = None


def register_forecaster(
    forecaster: Any,
    client_id: str,
    card: ModelCard,
    promote: bool,
    reason: str,
    tracking_uri: str,
    artifacts_dir: Path,
    exceedance_run_id: str | None = None,
) -> Registration:
    """Log a fitted forecaster as a new version of `forecaster-<client_id>`.

    The version becomes `challenger`; with `promote` it also becomes `champion`, otherwise
    `reason` is tagged on it (`promotion`), so a reviewer sees why it was held back. It names
    the shared exceedance model stored by `log_exceedance` (`exceedance_run_id`); one the
    forecaster carries with no run given is stored first, for this version alone.
    """
    name = model_name(client_id)
    started = time.perf_counter()
    if exceedance_run_id is None and getattr(forecaster, "exceedance", None) is not None:
        exceedance_run_id = log_exceedance(forecaster.exceedance, tracking_uri, artifacts_dir)
    data = forecaster_to_bytes(forecaster)
    with LOCK:
        ensure_sqlite_dir(tracking_uri)
        use_registry(tracking_uri)
        client = mlflow_client(tracking_uri)
        experiment = experiment_id(client, artifacts_dir)
        signature = None
        if card.input_example is not None and card.output_example is not None:
            # Declaring the params lets callers ask for {"output": "exceedance"}. MLflow warns
            # about integer columns that could hold missing values; the forecast's `horizon`
            # never does, and the warning would repeat for every client.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
                signature = infer_signature(
                    card.input_example, card.output_example, params={"output": "forecast"}
                )
        version_tags = {"client_id": client_id, **card.tags, "promotion": reason}
        version_tags[FORMAT_TAG] = FORMAT
        if exceedance_run_id:
            version_tags[EXCEEDANCE_RUN_TAG] = exceedance_run_id
        now_ms = int(time.time() * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            stored = Path(tmp) / FORECASTER_FILE
            stored.write_bytes(data)
            with mlflow.start_run(experiment_id=experiment, run_name=f"train-{client_id}") as run:
                if card.plot_svg:
                    plot = Path(tmp) / "holdout_forecast.svg"
                    plot.write_bytes(card.plot_svg)
                    mlflow.log_artifact(str(plot), artifact_path="plots")
                # `tags` land on the logged model and on the new registered version alike.
                info = Model.log(
                    artifact_path=None,
                    flavor=PyfuncFlavor,
                    flavor_name="pyfunc.CustomPythonModel",  # what pyfunc.log_model records
                    validate_serving_input=False,
                    name="forecaster",
                    python_model=ForecasterPyfunc(),
                    artifacts={"forecaster": str(stored)},
                    model_config={EXCEEDANCE_RUN_TAG: exceedance_run_id}
                    if exceedance_run_id
                    else None,
                    pip_requirements=list(requirements()),
                    signature=signature,
                    input_example=card.input_example,
                    registered_model_name=name,
                    await_registration_for=0,
                    tags=version_tags,
                )
                # Logged after the model, bound to it, in one batch: metrics already on the
                # run when `log_model` runs are linked by reading each one's history back
                # (one query per metric, 0.18 s per version).
                client.log_batch(
                    run.info.run_id,
                    metrics=[
                        Metric(k, float(v), now_ms, 0, model_id=info.model_id)
                        for k, v in card.metrics.items()
                    ],
                    params=[Param(k, str(v)[:500]) for k, v in card.params.items()],
                    tags=[RunTag(k, str(v)) for k, v in version_tags.items()],
                )
        version = str(info.registered_model_version)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version)
    elapsed = time.perf_counter() - started
    return Registration(client_id, name, version, promote, reason, run.info.run_id, elapsed)


def load_forecaster(
    client_id: str, tracking_uri: str, alias: str = CHAMPION
) -> tuple[Any, str] | None:
    """The forecaster behind `forecaster-<id>@alias` and its version, or None if unset."""
    with LOCK:
        try:
            found = mlflow_client(tracking_uri).get_model_version_by_alias(
                model_name(client_id), alias
            )
        except MlflowException:
            return None
    version = str(found.version)
    return load_forecaster_version(client_id, version, tracking_uri), version


@dataclass(frozen=True)
class StoredVersion:
    """A compact forecaster version whose file is on this machine: where, and the run of
    the shared exceedance model it names."""

    path: Path
    exceedance_run_id: str | None


def locate_versions(tracking_uri: str, wanted: dict[str, str]) -> dict[str, StoredVersion]:
    """Where the forecaster files of `wanted` (client -> version) are, for the versions an
    SQLite registry holds in the compact format with files on this machine, in one query
    per 500 clients. The others (a tracking server, a version registered before the compact
    format, files elsewhere) are left out: `load_forecaster_version` asks MLflow for them."""
    names = {model_name(client): version for client, version in wanted.items()}
    rows = versions_in_database(tracking_uri, names, (FORMAT_TAG, EXCEEDANCE_RUN_TAG))
    stored = {}
    for client in wanted:
        row = (rows or {}).get(model_name(client))
        if row is None or row.tags.get(FORMAT_TAG) != FORMAT:
            continue
        folder = local_path(row.location)
        if folder is None:
            continue
        stored[client] = StoredVersion(
            folder / "artifacts" / FORECASTER_FILE, row.tags.get(EXCEEDANCE_RUN_TAG)
        )
    return stored


def load_forecaster_version(
    client_id: str, version: str, tracking_uri: str, stored: StoredVersion | None = None
) -> Any:
    """The forecaster registered as `forecaster-<id>` version `version` (not an alias, which
    may move between reading it and loading it); read from `stored` (`locate_versions`)
    when given and still there, without MLflow's lookups and copy."""
    forecaster = _read_version(client_id, version, tracking_uri, stored)
    forecaster.registered_version = version
    return forecaster


def _read_version(
    client_id: str, version: str, tracking_uri: str, stored: StoredVersion | None
) -> Any:
    if stored is not None:
        try:
            data = stored.path.read_bytes()
        except OSError:  # pruned or moved since it was located: MLflow says what happened
            pass
        else:
            return read_forecaster(data, stored.exceedance_run_id, tracking_uri)
    name = model_name(client_id)
    with LOCK:
        client = mlflow_client(tracking_uri)
        found = client.get_model_version(name, version)
        tags = found.tags or {}
        # A tracking server's artifact URIs (mlflow-artifacts:) resolve against this one.
        use_registry(tracking_uri)
        if tags.get(FORMAT_TAG) != FORMAT:  # registered before the compact format
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            return model.unwrap_python_model().forecaster
        location = client.get_model_version_download_uri(name, version)
        with tempfile.TemporaryDirectory() as tmp:
            local = get_artifact_repository(location).download_artifacts(
                f"artifacts/{FORECASTER_FILE}", tmp
            )
            data = Path(local).read_bytes()
    return read_forecaster(data, tags.get(EXCEEDANCE_RUN_TAG), tracking_uri)
