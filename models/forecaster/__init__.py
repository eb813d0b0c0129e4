"""Per-client quantile forecasters (p10/p50/p90 per metric) and the global fallback.

Each metric gets three LightGBM quantile boosters trained on direct multi-horizon rows (see
`models.features`). The target is the change from the last value in units of a per-series
scale (so the level can follow a trend and one model can serve clients of any size), divided
by the typical change at that horizon (so a leaf mixing near and far horizons still suits
each of them). The p10/p90 boosters get fewer rounds than p50: calibration corrects them.

A client's history is cut in time into three slices:

    train (boosters) | calibration | holdout (honest evaluation)

On the calibration slice, per horizon bucket, the predicted change is shrunk toward 0 (the
naive forecast) by the factor that minimises absolute error, so p50 is rarely worse than
naive, and each tail of the interval gets a conformal offset (conformalised quantile
regression) because raw quantile boosters under-cover badly on real data. The holdout slice
then measures the result against naive and seasonal naive on the same points, and the
calibration is re-estimated on calibration + holdout (the boosters are not refit: the time
budget does not allow it) so the deployed model is calibrated on the most recent data.

Calibration still lags a change in volatility, so at prediction the interval also moves by
half the conformal offset measured on the model's own forecasts whose targets fell in the
last day before the origin (sliding-window conformal). The holdout is scored that way too.

Clients whose own history would starve a model (too short, too sparse) get a
`GlobalForecaster` trained across clients with client attributes as features.

Past the horizon (every step of it: what the planner reads), a profile reaches further
(`ForecastConfig.profile_steps`, a day by default in the flows) on boosters of its own,
forecast every `profile_stride` steps: see `reach`.

Modules: `config` (ForecastConfig, Adjustments), `slicing` (time slices, sampled pairs),
`training` (boosters), `calibration` (shrink, conformal offsets, recalibration), `holdout`
(the honest evaluation), `client_model` (a client's own model), `global_model` (the
fallback), `reach` (a profile's far steps), `prediction` (forecasts from fitted models),
`batch_scoring` (the latest origin of many clients scored at once), `artifact` (a client's
forecaster as a compact file), `frames` (small shared helpers).
Everything public is importable from `models.forecaster`.
"""

from __future__ import annotations

from models.forecaster.artifact import forecaster_from_bytes, forecaster_to_bytes
from models.forecaster.calibration import Calibration, MetricModel
from models.forecaster.client_model import (
    ClientForecaster,
    fit_client_forecaster,
    needs_fallback,
    present_metrics,
)
from models.forecaster.config import QUANTILES, WAREHOUSE_METRICS, Adjustments, ForecastConfig
from models.forecaster.frames import client_frame
from models.forecaster.global_model import (
    GlobalForecaster,
    _ClientState,
    _GlobalInputs,
    fit_global_forecaster,
)
from models.forecaster.holdout import HOLDOUT_KEYS, point_metrics
from models.forecaster.prediction import FORECAST_SCHEMA, forecast_latest, forecast_origins
from models.forecaster.slicing import min_fit_steps
from models.forecaster.training import QuantileBoosters

# Fitted forecasters are pickled (by reference) into MLflow, and a pickle records each
# class's module. These classes lived in the single module `models.forecaster` before it
# became this package: keeping that as their module keeps registered pickles loadable both
# ways (by this code, and by code from before the split) and new pickles byte-identical.
for _cls in (
    ForecastConfig,
    Adjustments,
    Calibration,
    QuantileBoosters,
    MetricModel,
    ClientForecaster,
    GlobalForecaster,
    _ClientState,
    _GlobalInputs,
):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "FORECAST_SCHEMA",
    "HOLDOUT_KEYS",
    "QUANTILES",
    "WAREHOUSE_METRICS",
    "Adjustments",
    "Calibration",
    "ClientForecaster",
    "ForecastConfig",
    "GlobalForecaster",
    "MetricModel",
    "QuantileBoosters",
    "client_frame",
    "fit_client_forecaster",
    "fit_global_forecaster",
    "forecast_latest",
    "forecaster_from_bytes",
    "forecaster_to_bytes",
    "forecast_origins",
    "min_fit_steps",
    "needs_fallback",
    "point_metrics",
    "present_metrics",
]
