"""What a forecaster version's files are: a pyfunc around the client's forecaster file
(`models.forecaster.artifact`), plus the one shared exceedance model it names by run id.

Versions registered before the compact format hold a pickle of the whole forecaster (its
exceedance model inside) instead; they still load, through the same pyfunc class.
"""

from __future__ import annotations

import functools
import logging
import pickle
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from models.forecaster import ClientForecaster, forecaster_from_bytes
from models.registry.shared import EXCEEDANCE_RUN_TAG, load_exceedance

log = logging.getLogger("models.registry")

FORECASTER_FILE = "forecaster.json.gz"
# What a serving environment needs besides the prewarm package itself (pip install -e .):
# pinned to what trained the model. Given explicitly: auto-detection costs ~10 s per model.
_REQUIREMENTS = ("lightgbm", "polars", "pandas", "numpy", "pyarrow", "cloudpickle")


def read_forecaster(data: bytes, exceedance_run_id: str | None, tracking_uri: str) -> Any:
    """A forecaster file with its shared exceedance model attached. A shared model that
    cannot be read leaves it without one (a warning): its forecasts still serve. Its
    boosters are forests: what is read from the registry predicts, it is never stored again."""
    forecaster: ClientForecaster = forecaster_from_bytes(data, forests=True)
    if exceedance_run_id:
        try:
            forecaster.exceedance = load_exceedance(exceedance_run_id, tracking_uri)
        except (MlflowException, OSError, ValueError) as error:
            log.warning(
                "forecaster of %s: its shared exceedance model (run %s) cannot be read: %s",
                forecaster.client_id,
                exceedance_run_id,
                error,
            )
    return forecaster


# PythonModel imported by name: to mypy, `mlflow.pyfunc` is the LazyLoader attribute
# mlflow/__init__.py defines, which hides the submodule's classes.
class ForecasterPyfunc(PythonModel):
    """pyfunc face of a fitted forecaster: history frame in, forecast frame out.

    `params={"output": "exceedance"}` returns P(concurrency >= k) rows instead, when the
    forecaster carries an exceedance model.
    """

    def load_context(self, context: Any) -> None:
        path = Path(context.artifacts["forecaster"])
        if path.suffix == ".pkl":  # registered before the compact format
            with path.open("rb") as handle:
                self.forecaster = pickle.load(handle)
            return
        run_id = (context.model_config or {}).get(EXCEEDANCE_RUN_TAG)
        self.forecaster = read_forecaster(path.read_bytes(), run_id, mlflow.get_tracking_uri())

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


# Pickled into every version (python_model.pkl) by reference: the name versions registered
# before this module existed recorded, which the package still exports.
ForecasterPyfunc.__module__ = "models.registry"


class PyfuncFlavor:
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


@functools.cache
def requirements() -> tuple[str, ...]:
    """The pip requirements of a version, pinned to what trained it (read once a process:
    the installed metadata is scanned for each package, ~6 ms a registration)."""
    pins = []
    for package in _REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return tuple(pins)
