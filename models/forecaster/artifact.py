"""A client's forecaster as one compact file (`models.compact`): its boosters in LightGBM's
own model text, their scales and calibrations, its config, feature spec and holdout report,
gzip-compressed JSON. The shared exceedance model is not in it: it is stored once per
training run and attached by whoever reads the file (`models.registry`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from models.compact import as_tuples, pack, unpack
from models.features import CLIENT_FEATURES, FeatureSpec
from models.forecaster.calibration import Calibration, MetricModel
from models.forecaster.client_model import ClientForecaster
from models.forecaster.config import ForecastConfig
from models.forecaster.training import QuantileBoosters

FORMAT = "prewarm.forecaster/1"


def forecaster_to_bytes(forecaster: ClientForecaster) -> bytes:
    """The file of a fitted forecaster (its `exceedance` left out)."""
    client = forecaster.client
    return pack(
        {
            "client_id": forecaster.client_id,
            "config": asdict(forecaster.config),
            "feature_spec": asdict(forecaster.feature_spec),
            "metrics": forecaster.metrics,
            "fallback": forecaster.fallback,
            "trained_until": forecaster.trained_until.isoformat(),
            "holdout": forecaster.holdout,
            # Only the attributes prediction reads (`client_frame`): a client row holds more.
            "client": {k: client.get(k) for k in CLIENT_FEATURES} if client else None,
            "bias": forecaster.bias,
            "models": _models_doc(forecaster.models),
            "reach": _models_doc(forecaster.reach) if forecaster.reach is not None else None,
            "reach_holdout": forecaster.reach_holdout,
        },
        FORMAT,
    )


def forecaster_from_bytes(data: bytes, forests: bool = False) -> ClientForecaster:
    """The forecaster `forecaster_to_bytes` stored, without an exceedance model; with
    `forests`, its boosters as the `Forest`s prediction scores with (it cannot be stored
    again: `QuantileBoosters.from_model_texts`)."""
    doc = unpack(data, FORMAT)
    return ClientForecaster(
        client_id=doc["client_id"],
        config=ForecastConfig(**as_tuples(doc["config"])),
        feature_spec=FeatureSpec(**as_tuples(doc["feature_spec"])),
        metrics=list(doc["metrics"]),
        fallback=doc["fallback"],
        trained_until=datetime.fromisoformat(doc["trained_until"]),
        holdout=doc["holdout"],
        models=_models(doc["models"], forests),
        client=doc["client"],
        bias=doc["bias"],
        reach=_models(doc["reach"], forests) if doc["reach"] is not None else None,
        reach_holdout=doc["reach_holdout"],
    )


def _models_doc(models: dict[str, MetricModel]) -> dict[str, dict[str, Any]]:
    return {
        metric: {
            "boosters": model.boosters.model_texts(),
            "horizon_scale": model.boosters.horizon_scale.tolist(),
            "scale": model.scale,
            "calibration": asdict(model.calibration),
        }
        for metric, model in models.items()
    }


def _models(doc: dict[str, dict[str, Any]], forests: bool) -> dict[str, MetricModel]:
    return {
        metric: MetricModel(
            boosters=QuantileBoosters.from_model_texts(
                part["boosters"], part["horizon_scale"], forests
            ),
            scale=part["scale"],
            calibration=Calibration(**as_tuples(part["calibration"])),
        )
        for metric, part in doc.items()
    }
