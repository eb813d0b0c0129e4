"""A cycle predicts at most PREWARM_PREDICT_CLIENTS_PER_CYCLE clients: those without a
forecast first, then those whose serving model changed, then the oldest forecasts; up to the
budget, everyone. The order on hand-made runs; the registry and warehouse reads on real
trained models are in tests/flows/test_train_predict.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from flows.predict_budget import PredictChoice, choose_clients
from flows.settings import Settings

T0 = datetime(2026, 1, 19)


def _runs(rows: list[tuple[str, int, str | None]]) -> pl.DataFrame:
    """(client, minutes after T0 its latest run was generated, its model version)."""
    return pl.DataFrame(
        {
            "client_id": [r[0] for r in rows],
            "generated_at": [T0 + timedelta(minutes=r[1]) for r in rows],
            "model_version": [r[2] for r in rows],
        },
        schema={
            "client_id": pl.String,
            "generated_at": pl.Datetime("us"),
            "model_version": pl.String,
        },
    )


def test_up_to_the_budget_every_client_is_predicted() -> None:
    serving = {"a": "1", "b": "1", "c": "2"}
    choice = choose_clients(serving, _runs([("a", 0, "1")]), budget=3)
    assert choice == PredictChoice(None, 3)
    assert choice.left_for_later == 0


def test_new_clients_then_new_models_then_the_oldest_forecasts() -> None:
    serving = {"old": "1", "older": "1", "oldest": "1", "retrained": "2", "new": "1"}
    runs = _runs([("old", 20, "1"), ("older", 10, "1"), ("oldest", 0, "1"), ("retrained", 30, "1")])
    order = [choose_clients(serving, runs, budget=k).clients for k in range(1, 5)]
    assert order == [
        ["new"],
        ["new", "retrained"],
        ["new", "retrained", "oldest"],
        ["new", "retrained", "oldest", "older"],
    ]
    assert choose_clients(serving, runs, budget=2).left_for_later == 3


def test_ties_go_by_client_id_so_a_rerun_picks_the_same_clients() -> None:
    serving = {c: "1" for c in ("d", "b", "a", "c")}
    runs = _runs([(c, 0, "1") for c in ("c", "a", "d", "b")])
    assert choose_clients(serving, runs, budget=2).clients == ["a", "b"]
    assert choose_clients(dict(reversed(serving.items())), runs, budget=2).clients == ["a", "b"]


def test_a_run_that_wrote_no_forecast_rows_counts_as_another_model() -> None:
    serving = {"a": "1", "b": "1"}
    runs = _runs([("a", 0, "1"), ("b", 10, None)])
    assert choose_clients(serving, runs, budget=1).clients == ["b"]


def test_turning_through_the_budget_reaches_every_client_within_its_turns() -> None:
    serving = {f"c{i:02d}": "1" for i in range(10)}
    runs = _runs([])
    seen: list[list[str]] = []
    for minute in range(0, 25, 5):  # five cycles, budget 3: a turn is ceil(10 / 3) = 4
        chosen = choose_clients(serving, runs, budget=3).clients
        assert chosen is not None and len(chosen) == 3
        seen.append(chosen)
        runs = pl.concat(
            [
                runs.filter(~pl.col("client_id").is_in(chosen)),
                _runs([(c, minute, "1") for c in chosen]),
            ]
        )
    assert set().union(*seen[:4]) == set(serving)
    # The fourth cycle: the last client never predicted, then the two predicted first.
    assert seen[3] == ["c09", "c00", "c01"]
    assert seen[4] == ["c02", "c03", "c04"]  # the oldest forecasts left


def test_the_describe_line_says_how_often_a_client_s_turn_comes() -> None:
    line = PredictChoice(["a", "b"], 5).describe(2)
    assert "2 of 5 clients" in line and "every 3 cycles" in line
    assert PredictChoice(None, 5).describe(10) == "all 5 clients with a model"


@pytest.mark.parametrize("value", ["0", "-3", "2000000", "many"])
def test_the_budget_is_range_checked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PREWARM_PREDICT_CLIENTS_PER_CYCLE", value)
    with pytest.raises(ValueError, match="predict_clients_per_cycle"):
        Settings()


def test_the_cycle_says_how_many_clients_it_predicted_and_how_many_wait() -> None:
    from flows.artifacts import cycle_markdown
    from flows.cycle import CycleSummary

    summary = CycleSummary("cycle-1", "none", "2026-01-19T00:00:00")
    assert summary.prediction_text() == "no new data or model: forecasts current"
    summary.predicted, summary.predicted_clients = True, 40
    assert summary.prediction_text() == "predicted 40 clients"
    summary.predicted_clients, summary.predict_left = 2_000, 8_000
    said = summary.prediction_text()
    assert "predicted 2000 clients" in said and "8000 keep theirs" in said
    assert said in cycle_markdown(summary)


def test_a_turn_longer_than_the_horizon_is_said_with_the_budget_that_would_do() -> None:
    hour, cycle = 3600, 300
    # 10,000 clients at 2,000 a cycle: a turn every 5 cycles (25 min), within an hour.
    assert PredictChoice(["a"] * 2_000, 10_000).too_old_for(2_000, cycle, hour) is None
    assert PredictChoice(None, 10_000).too_old_for(10_000, cycle, hour) is None
    # 30,000 clients: every 15 cycles (75 min); 11 cycles + the next fit in an hour.
    said = PredictChoice(["a"] * 2_000, 30_000).too_old_for(2_000, cycle, hour)
    assert said is not None and "every 75 min" in said and "at least 2728" in said
    assert PredictChoice(["a"] * 2_728, 30_000).too_old_for(2_728, cycle, hour) is None
