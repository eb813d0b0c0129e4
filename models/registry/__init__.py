"""The one MLflow adapter: log, register, promote, load and prune per-client forecasters.

Each client has a registered model `forecaster-<client_id>`. A version is a pyfunc around the
client's forecaster file (its boosters in LightGBM's own model text, feature spec,
calibration: `models.forecaster.artifact`), so
`mlflow.pyfunc.load_model("models:/forecaster-<id>@champion").predict(history)` turns a
history frame into a forecast frame. The exceedance model shared by the clients of a
training run is stored once, in a run of its own, and named by each version. A new version
gets the alias `challenger`; the caller's promotion decision (see models/promotion.py) may
also give it `champion`. Old versions are pruned: the aliased and the newest few stay.

Modules: `store` (client, experiment, checks, aliases), `versions` (register, load),
`pyfunc` (a version's files), `shared` (the shared exceedance model), `retention` (prune).
"""

from __future__ import annotations

from models.registry.pyfunc import ForecasterPyfunc
from models.registry.retention import (
    SHARED_GRACE,
    PrunedVersion,
    PruneReport,
    prune_registry,
    shared_runs_to_remove,
    versions_to_prune,
)
from models.registry.shared import exceedance_run_of, load_exceedance, log_exceedance
from models.registry.store import (
    CHALLENGER,
    CHAMPION,
    EXPERIMENT,
    RegistryUnavailable,
    current_aliases,
    ensure_experiment,
    model_name,
    serving_version,
)
from models.registry.versions import (
    ModelCard,
    Registration,
    StoredVersion,
    load_forecaster,
    load_forecaster_version,
    locate_versions,
    register_forecaster,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "EXPERIMENT",
    "SHARED_GRACE",
    "ForecasterPyfunc",
    "ModelCard",
    "PruneReport",
    "PrunedVersion",
    "Registration",
    "StoredVersion",
    "RegistryUnavailable",
    "current_aliases",
    "ensure_experiment",
    "exceedance_run_of",
    "load_exceedance",
    "load_forecaster",
    "load_forecaster_version",
    "locate_versions",
    "log_exceedance",
    "model_name",
    "prune_registry",
    "register_forecaster",
    "serving_version",
    "shared_runs_to_remove",
    "versions_to_prune",
]
