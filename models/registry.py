"""The one MLflow adapter: log, register, promote and load per-client forecasters.

Each client has a registered model `forecaster-<client_id>`. A version is a pyfunc wrapping the
client's fitted forecaster (boosters for every metric, feature spec, calibration), so
`mlflow.pyfunc.load_model("models:/forecaster-<id>@champion").predict(history)` turns a
history frame into a forecast frame. A new version gets the alias `challenger`; the caller's
promotion decision (see models/promotion.py) may also give it `champion`.

MLflow's fluent API keeps global state (tracking URI, active run), so every call here runs
under one lock: training may run in threads, registration is serialised.
"""

from __future__ import annotations

import logging
import pickle
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.pyfunc import PythonModel
from sqlalchemy.exc import SQLAlchemyError

from core.errors import PrewarmError

log = logging.getLogger(__name__)

EXPERIMENT = "prewarm-forecasters"
CHAMPION = "champion"
CHALLENGER = "challenger"
_LOCK = threading.RLock()
# What a serving environment needs besides the prewarm package itself (pip install -e .):
# pinned to what trained the model. Given explicitly: auto-detection costs ~10 s per model.
_REQUIREMENTS = ("lightgbm", "polars", "pandas", "numpy", "pyarrow", "cloudpickle")


def model_name(client_id: str) -> str:
    """The registered model name of a client's forecaster."""
    return f"forecaster-{client_id}"


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
    plot_png: bytes | None = None
    input_example: pd.DataFrame | None = None
    output_example: pd.DataFrame | None = None


# PythonModel imported by name: to mypy, `mlflow.pyfunc` is the LazyLoader attribute
# mlflow/__init__.py defines, which hides the submodule's classes.
class ForecasterPyfunc(PythonModel):
    """pyfunc face of a fitted forecaster: history frame in, forecast frame out.

    `params={"output": "exceedance"}` returns P(concurrency >= k) rows instead, when the
    forecaster carries an exceedance model.
    """

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["forecaster"], "rb") as handle:
            self.forecaster = pickle.load(handle)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        import polars as pl

        history = pl.from_pandas(model_input)
        if "ts" in history.columns:
            history = history.with_columns(pl.col("ts").cast(pl.Datetime("us")))
        if (params or {}).get("output") == "exceedance":
            result = self.forecaster.predict_exceedance(history)
        else:
            result = self.forecaster.predict(history)
        return result.to_pandas()


class _PyfuncFlavor:
    """`mlflow.pyfunc` as the flavor `Model.log` saves with, taking the switch Model.log reads,
    `validate_serving_input`, which `pyfunc.save_model` itself rejects (MLflow's transformers
    flavor passes it the same way). `pyfunc.log_model` always loads every new version back to
    serve its input example: 0.1 s, a third of a registration. The example, signature and
    serving path are the same for every version, so the test suite checks them once instead
    (tests/flows/test_train_predict.py: round trip, signature, input example)."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs: Any) -> None:
        mlflow.pyfunc.save_model(**kwargs)


def _requirements() -> list[str]:
    pins = []
    for package in _REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _experiment_id(client: MlflowClient, artifacts_dir: Path) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    if _is_server(client.tracking_uri):
        # A tracking server keeps the artifacts where it was told to (its shared path, served
        # to every worker over HTTP); a local directory here would be this machine's alone.
        return str(client.create_experiment(EXPERIMENT))
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    return str(
        client.create_experiment(EXPERIMENT, artifact_location=artifacts_dir.resolve().as_uri())
    )


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


class RegistryUnavailable(PrewarmError):
    """The MLflow registry cannot be read, or has lost the forecasters the warehouse records."""

    def __init__(self, where: Path | str, problem: str) -> None:
        if isinstance(where, str) and _is_server(where):
            super().__init__(
                f"The MLflow tracking server at {where} cannot be read ({problem}). Check that it "
                "runs and answers /health, or that PREWARM_MLFLOW_TRACKING_URI names it."
            )
            return
        recover = "run `prewarm train` to retrain every client"
        if isinstance(where, Path) and where.exists():
            recover = "move it aside and " + recover
        super().__init__(
            f"The MLflow registry at {where} is missing or corrupt ({problem}). Restore it "
            f"from a backup, or {recover}."
        )


_SQLITE_MAGIC = b"SQLite format 3\x00"
_NOT_SQLITE = "is not an SQLite database"


def _sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])


def _sqlite_file_problem(path: Path) -> str | None:
    """What is wrong with the registry file on its face (its header), or None."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"
    if not header:
        return "the file is empty"
    return None if header == _SQLITE_MAGIC else _NOT_SQLITE


@contextmanager
def _readable_registry(tracking_uri: str, models_expected: bool = False) -> Iterator[Path | None]:
    """Refuse a registry file that is not SQLite (or is gone while `models_expected`) before
    MLflow opens it (it would create or migrate one), and turn a database error inside the
    block into RegistryUnavailable; yields the file (None for a non-SQLite store)."""
    path = _sqlite_file(tracking_uri)
    if path is not None:
        problem = _sqlite_file_problem(path)
        # A missing or empty file is a new project (MLflow creates its tables), unless
        # models were trained: then it is a lost registry, and is left untouched.
        if problem == _NOT_SQLITE or (problem and models_expected):
            raise RegistryUnavailable(path, problem)
    try:
        yield path
    except (MlflowException, SQLAlchemyError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise RegistryUnavailable(path or tracking_uri, f"cannot be read: {detail}") from None


def ensure_experiment(tracking_uri: str, artifacts_dir: Path) -> str:
    """The forecasters' experiment id, created (with its artifact location) if missing."""
    with _LOCK:
        _ensure_sqlite_dir(tracking_uri)
        with _readable_registry(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            return _experiment_id(client, artifacts_dir)


def _ensure_sqlite_dir(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def register_forecaster(
    forecaster: Any,
    client_id: str,
    card: ModelCard,
    promote: bool,
    reason: str,
    tracking_uri: str,
    artifacts_dir: Path,
) -> Registration:
    """Log a fitted forecaster as a new version of `forecaster-<client_id>`.

    The version becomes `challenger`; with `promote` it also becomes `champion`, otherwise
    `reason` is tagged on it (`promotion`), so a reviewer sees why it was held back.
    """
    name = model_name(client_id)
    with _LOCK:
        started = time.perf_counter()
        _ensure_sqlite_dir(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        experiment_id = _experiment_id(client, artifacts_dir)
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
        now_ms = int(time.time() * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            pickled = Path(tmp) / "forecaster.pkl"
            pickled.write_bytes(pickle.dumps(forecaster, protocol=pickle.HIGHEST_PROTOCOL))
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=f"train-{client_id}"
            ) as run:
                if card.plot_png:
                    plot = Path(tmp) / "holdout_forecast.png"
                    plot.write_bytes(card.plot_png)
                    mlflow.log_artifact(str(plot), artifact_path="plots")
                # `tags` land on the logged model and on the new registered version alike.
                info = Model.log(
                    artifact_path=None,
                    flavor=_PyfuncFlavor,
                    flavor_name="pyfunc.CustomPythonModel",  # what pyfunc.log_model records
                    validate_serving_input=False,
                    name="forecaster",
                    python_model=ForecasterPyfunc(),
                    artifacts={"forecaster": str(pickled)},
                    pip_requirements=_requirements(),
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
    name = model_name(client_id)
    with _LOCK:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        model = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    return model.unwrap_python_model().forecaster, str(version.version)


def load_forecaster_version(client_id: str, version: str, tracking_uri: str) -> Any:
    """The forecaster registered as `forecaster-<id>` version `version` (not an alias, which
    may move between reading it and loading it)."""
    with _LOCK:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{model_name(client_id)}/{version}")
    return model.unwrap_python_model().forecaster


def current_aliases(tracking_uri: str, models_expected: bool = False) -> dict[str, dict[str, str]]:
    """For every registered forecaster: client id -> {alias: version}.

    Raises RegistryUnavailable when the registry cannot be read, and, with `models_expected`
    (the warehouse records trained models), when it is missing or holds no forecaster: an
    empty answer would silently leave every client without a forecast.
    """
    models: list[Any] = []
    with _LOCK, _readable_registry(tracking_uri, models_expected) as path:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        token = None
        while True:
            page = client.search_registered_models(max_results=1000, page_token=token)
            models += list(page)
            token = page.token
            if not token:
                break
    prefix = "forecaster-"
    aliases = {
        m.name.removeprefix(prefix): {alias: str(v) for alias, v in (m.aliases or {}).items()}
        for m in models
        if m.name.startswith(prefix)
    }
    if models_expected and not aliases:
        raise RegistryUnavailable(path or tracking_uri, "holds no registered forecaster")
    return aliases
