"""Small shared pieces of fitting and prediction: the clients frame, the one-client check,
a datetime's bucket index and per-series scales."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from models.features import FeatureSpec, make_feature_spec
from models.forecaster.config import ForecastConfig

_EPOCH = datetime(1970, 1, 1)


def _step_of_datetime(moment: datetime, freq_seconds: int) -> int:
    """Bucket index of a naive UTC datetime (datetime.timestamp would assume local time)."""
    return (moment - _EPOCH) // timedelta(seconds=1) // freq_seconds


def _only_client(history: pl.DataFrame) -> str:
    ids = history.get_column("client_id").unique().to_list()
    if len(ids) != 1:
        raise ValueError(f"history must hold exactly one client, found {len(ids)}")
    return str(ids[0])


def client_frame(client_id: str, client: dict | None) -> pl.DataFrame | None:
    """A one-row clients frame from an attribute dict (missing attributes are null)."""
    if not client:
        return None
    return pl.DataFrame(
        {
            "client_id": [client_id],
            "tier": [client.get("tier")],
            "region": [client.get("region")],
            "service": [client.get("service")],
            "container_cpu": [client.get("container_cpu")],
            "container_memory_mb": [client.get("container_memory_mb")],
        },
        schema={
            "client_id": pl.String,
            "tier": pl.String,
            "region": pl.String,
            "service": pl.String,
            "container_cpu": pl.Float64,
            "container_memory_mb": pl.Float64,
        },
    )


def _scales(long: pl.DataFrame) -> pl.DataFrame:
    """Per (client, metric) scale: mean absolute value (1 when that is 0 or unknown)."""
    mean_abs = pl.col("value").abs().mean()
    return long.group_by("client_id", "metric").agg(
        pl.when(mean_abs > 0).then(mean_abs).otherwise(1.0).alias("scale")
    )


def feature_spec(
    config: ForecastConfig,
    train_steps: int,
    clients: pl.DataFrame | None,
    calendar: pl.DataFrame | None,
    metrics: list[str],
    reaches: bool = False,
) -> FeatureSpec:
    """The feature layout a model of `config` learns on (own and global models alike); with
    `reaches`, far enough for the profile's reach too (its seasonal look-ups must stay at or
    before the origin)."""
    return make_feature_spec(
        config.freq_seconds,
        config.profile_steps if reaches else config.horizon_steps,
        train_steps,
        clients,
        calendar,
        metrics if config.cross_metric_features else (),
    )
