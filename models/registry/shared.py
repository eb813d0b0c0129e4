"""The shared exceedance model of a training run, stored once: the artifact of a run of its own
(`exceedance-<freq>s`, tagged `prewarm.kind=exceedance`) that every forecaster version trained
with it names (its tag and pyfunc model config `exceedance_run_id`). A process reads each
one once, however many clients' forecasters it serves."""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import mlflow
from mlflow.entities import Param

from models.exceedance import ExceedanceModel, exceedance_from_bytes, exceedance_to_bytes
from models.registry.store import (
    LOCK,
    ensure_sqlite_dir,
    experiment_id,
    mlflow_client,
    model_name,
    use_registry,
)

EXCEEDANCE_RUN_TAG = "exceedance_run_id"  # on a forecaster version: the run of its shared model
KIND_TAG = "prewarm.kind"  # on a run holding a shared model
EXCEEDANCE_KIND = "exceedance"
_ARTIFACT_DIR = "exceedance"
_ARTIFACT = f"{_ARTIFACT_DIR}/exceedance.json.gz"
# A long-running process meets one new shared model per training run: the last few are kept.
_CACHE_SIZE = 8
_CACHE: OrderedDict[str, ExceedanceModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def log_exceedance(model: ExceedanceModel, tracking_uri: str, artifacts_dir: Path) -> str:
    """Store a shared exceedance model once, as the artifact of a run of its own; its run id."""
    with LOCK:
        ensure_sqlite_dir(tracking_uri)
        use_registry(tracking_uri)
        client = mlflow_client(tracking_uri)
        run = client.create_run(
            experiment_id(client, artifacts_dir),
            run_name=f"exceedance-{model.config.freq_seconds}s",
            tags={KIND_TAG: EXCEEDANCE_KIND},
        )
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(_ARTIFACT).name
            path.write_bytes(exceedance_to_bytes(model))
            client.log_artifact(run_id, str(path), artifact_path=_ARTIFACT_DIR)
        config = model.config
        client.log_batch(
            run_id,
            params=[
                Param("freq_seconds", str(config.freq_seconds)),
                Param("horizon_steps", str(config.horizon_steps)),
                Param("max_level", str(config.max_level)),
                Param("training_rows", str(model.training_rows)),
            ],
        )
        client.set_terminated(run_id)
    return run_id


def load_exceedance(run_id: str, tracking_uri: str) -> ExceedanceModel:
    """The shared exceedance model stored by `log_exceedance`, read once per process."""
    with _CACHE_LOCK:
        cached = _CACHE.get(run_id)
        if cached is not None:
            _CACHE.move_to_end(run_id)
            return cached
    with LOCK, tempfile.TemporaryDirectory() as tmp:
        use_registry(tracking_uri)  # a tracking server's artifact URIs resolve against it
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=_ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        model = exceedance_from_bytes(Path(local).read_bytes())
    with _CACHE_LOCK:
        _CACHE[run_id] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model


def exceedance_run_of(client_id: str, version: str, tracking_uri: str) -> str | None:
    """The run holding the shared exceedance model of `forecaster-<id>` version `version`
    (None without one, or for a version that carries its own copy: registered before)."""
    with LOCK:
        found = mlflow_client(tracking_uri).get_model_version(model_name(client_id), version)
    return (found.tags or {}).get(EXCEEDANCE_RUN_TAG)
