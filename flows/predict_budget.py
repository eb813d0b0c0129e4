"""Which clients a cycle predicts: at most PREWARM_PREDICT_CLIENTS_PER_CYCLE of them.

Prediction costs ~20 ms of CPU a client (issue 16), every cycle, so a cycle that refreshes
every client grows with the fleet until it no longer fits its interval (10,000 clients:
~4 minutes of a 5-minute slot on 2 cores, before planning). Past the budget, a cycle
refreshes the clients that most need it and the others keep their latest forecast, which
still reaches the horizon ahead of its origin; every client's turn comes within
ceil(clients / budget) cycles. The order:

1. clients with no forecast yet (new ones, or a warehouse just created);
2. clients whose serving model is not the one their latest forecast came from (a new
   champion: after the daily retrain, the new versions roll out over a few cycles instead
   of all in one, which would also load every model at once);
3. then the oldest forecasts first (ties by client id, so a re-run picks the same ones).

Up to the budget, every client is predicted every cycle, as before it existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from flows.settings import Settings
from models.registry import current_aliases, serving_version
from warehouse.predictions import has_model_runs, read_latest_runs


@dataclass(frozen=True)
class PredictChoice:
    """The clients one cycle predicts (None: every client with a model) and how many
    clients with a model there are."""

    clients: list[str] | None
    with_model: int

    @property
    def left_for_later(self) -> int:
        return 0 if self.clients is None else self.with_model - len(self.clients)

    def turns(self, budget: int) -> int:
        """Cycles between a client's turns, about (new clients and models come first)."""
        return 1 if self.clients is None else math.ceil(self.with_model / budget)

    def too_old_for(self, budget: int, cycle_seconds: int, horizon_seconds: int) -> str | None:
        """Why forecasts would age past the horizon before their turn, or None. The plan
        reads the next cycle of a client's forecast; a forecast older than its horizon no
        longer reaches it at every bucket."""
        oldest = self.turns(budget) * cycle_seconds
        if oldest + cycle_seconds <= horizon_seconds:
            return None
        enough = math.ceil(
            self.with_model * cycle_seconds / max(1, horizon_seconds - cycle_seconds)
        )
        return (
            f"a client's forecast is refreshed about every {oldest // 60} min, but reaches only"
            f" {horizon_seconds // 60} min ahead at every bucket: raise PREWARM_PREDICT_CLIENTS"
            f"_PER_CYCLE to at least {enough} (more CPU a cycle), or PREWARM_HORIZON"
        )

    def describe(self, budget: int) -> str:
        """One line for the cycle's log."""
        if self.clients is None:
            return f"all {self.with_model} clients with a model"
        turns = self.turns(budget)
        return (
            f"{len(self.clients)} of {self.with_model} clients with a model (PREWARM_PREDICT_"
            f"CLIENTS_PER_CYCLE={budget}), the oldest forecasts first: each client's turn"
            f" comes about every {turns} cycles"
        )


def clients_to_predict(settings: Settings) -> PredictChoice:
    """This cycle's choice over the registry and the warehouse `settings` name (the latest
    runs are read only when more clients have a model than the budget)."""
    path = settings.warehouse_path
    aliases = current_aliases(settings.mlflow_tracking_uri, models_expected=has_model_runs(path))
    budget = settings.predict_clients_per_cycle
    serving = _serving(aliases)
    if len(serving) <= budget:
        return PredictChoice(None, len(serving))
    return choose_clients(serving, read_latest_runs(path), budget)


def choose_clients(
    serving: dict[str, str], latest_runs: pl.DataFrame, budget: int
) -> PredictChoice:
    """The `budget` clients of `serving` (client -> the model version it predicts with) to
    predict, in the module's order; `latest_runs` as `warehouse.predictions.read_latest_runs`."""
    if len(serving) <= budget:
        return PredictChoice(None, len(serving))
    candidates = pl.DataFrame(
        {"client_id": list(serving), "serving": list(serving.values())},
        schema={"client_id": pl.String, "serving": pl.String},
    )
    ranked = (
        candidates.join(
            latest_runs.select("client_id", "generated_at", "model_version"),
            on="client_id",
            how="left",
        )
        .with_columns(
            pl.col("generated_at").is_not_null().alias("has_forecast"),
            (pl.col("model_version") == pl.col("serving")).fill_null(False).alias("same_model"),
        )
        .sort(["has_forecast", "same_model", "generated_at", "client_id"], nulls_last=False)
    )
    return PredictChoice(ranked.head(budget).get_column("client_id").to_list(), len(serving))


def _serving(aliases: dict[str, dict[str, str]]) -> dict[str, str]:
    return {
        client: found[1]
        for client, known in aliases.items()
        if (found := serving_version(known)) is not None
    }
