"""The scheduled deployments, served from one long-running process (`prewarm up` starts it).

    ingest-usage        every 5 min  (source from PREWARM_INGEST_SOURCE / _PATH)
    predict-profiles    every 5 min
    provision-pools     every 5 min
    reconcile-pools     every 5 min
    train-forecasters   daily at 02:00 UTC

Each scheduled run executes in its own process; they share the warehouse file safely (see
flows/locks.py). Run `python -m flows.deployments` against a Prefect server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flows.settings import Settings

EVERY_5_MIN = timedelta(minutes=5)
DAILY_0200_UTC = "0 2 * * *"
# (deployment name, schedule) as the UI and `prewarm up --check` show them.
SCHEDULES: dict[str, str] = {
    "ingest-usage": "every 5 minutes",
    "predict-profiles": "every 5 minutes",
    "provision-pools": "every 5 minutes",
    "reconcile-pools": "every 5 minutes",
    "train-forecasters": "daily at 02:00 UTC",
}


def build_deployments(settings: Settings) -> list[Any]:
    """The five RunnerDeployments, parameterised from settings."""
    from prefect.schedules import Cron

    from flows.ingest import ingest_usage
    from flows.predict import predict_profiles
    from flows.provision import provision_pools
    from flows.reconcile import reconcile_pools
    from flows.train import train_flow

    ingest_parameters: dict[str, Any] = {"source": settings.ingest_source}
    if settings.ingest_path is not None:
        ingest_parameters["path"] = str(settings.ingest_path)
    if settings.ingest_source == "synthetic":
        # The live synthetic feed: regenerate only the latest hour each time (overlapping
        # buckets upsert), not the whole history.
        ingest_parameters["only_last_minutes"] = 60
    tags = ["prewarm"]
    return [
        ingest_usage.to_deployment(
            name="ingest-usage", interval=EVERY_5_MIN, parameters=ingest_parameters, tags=tags,
            description="Extract, validate (Great Expectations) and load new usage.",
        ),
        predict_profiles.to_deployment(
            name="predict-profiles", interval=EVERY_5_MIN, tags=tags,
            description="Forecasts and predicted profiles from the latest usage.",
        ),
        provision_pools.to_deployment(
            name="provision-pools", interval=EVERY_5_MIN, tags=tags,
            description="Plan warm pools and make the runtime match.",
        ),
        reconcile_pools.to_deployment(
            name="reconcile-pools", interval=EVERY_5_MIN, tags=tags,
            description="Predicted vs actual, pool corrections, drift-triggered retraining.",
        ),
        train_flow(settings).to_deployment(
            name="train-forecasters",
            schedules=[Cron(DAILY_0200_UTC, timezone="UTC")],
            tags=tags,
            description="Fit, score, register and gate every client's forecaster.",
        ),
    ]  # fmt: skip


def main() -> None:
    """Serve every deployment until interrupted."""
    from prefect import serve

    from flows.logs import hide_expected_tracebacks
    from flows.settings import configure_environment

    settings = Settings()
    configure_environment(settings)
    hide_expected_tracebacks()
    serve(*build_deployments(settings), limit=4)


if __name__ == "__main__":
    main()
