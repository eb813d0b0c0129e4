"""The one definition of "the latest": each client's newest prediction run, and the newest
applied plan by sequence, never by the data clock, never a dry run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from warehouse.activations import read_activation_terms
from warehouse.db import connect
from warehouse.plans import (
    latest_applied_plan,
    planned_host,
    read_applied_config,
    read_applied_targets,
    read_recent_sizes,
    read_recent_targets,
    write_plan,
)
from warehouse.predictions import (
    latest_run,
    read_latest_forecasts,
    read_latest_profile,
    record_latest_runs,
    write_predictions,
)
from warehouse.scores import read_planned_capacity

T0 = datetime(2026, 1, 19, 12, 0)


def _forecast_row(generated_at: datetime) -> dict:
    return {
        "client_id": "a",
        "metric": "concurrency",
        "origin": T0,
        "ts": T0 + timedelta(minutes=5),
        "horizon": 1,
        "p10": 0.0,
        "p50": 0.0,
        "p90": 0.0,
        "model_name": "forecaster-a",
        "model_version": "1",
        "generated_at": generated_at,
    }


def test_a_run_without_a_demand_window_is_not_shadowed_by_an_older_window(warehouse_path):
    """The older run had a window (low confidence); the newest found none: no profile."""
    early, late = T0, T0 + timedelta(minutes=5)
    with connect(warehouse_path) as con:
        forecasts = pl.DataFrame([_forecast_row(early), _forecast_row(late)])
        con.register("f", forecasts.to_arrow())
        con.execute("INSERT INTO forecasts SELECT * FROM f")
        record_latest_runs(con, [forecasts.select("client_id", "generated_at")])
        con.execute(
            "INSERT INTO profiles (client_id, generated_at, origin, window_start, window_end,"
            " duration_minutes, confidence, model_name, model_version)"
            " VALUES ('a', ?, ?, ?, ?, 5, 0.2, 'forecaster-a', '1')",
            [early, T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)],
        )
    quantiles, _, profiles = read_latest_forecasts(warehouse_path)
    assert profiles.height == 0
    assert quantiles.height == 1


@dataclass
class _Plan:
    plan_id: str
    created_at: datetime
    desired: pl.DataFrame
    unserved: pl.DataFrame
    first_window: datetime = T0
    tick_seconds: int = 300
    windows: int = 1
    buffer_seconds: float = 0.0
    totals: dict | None = None


def _plan(plan_id: str, created_at: datetime, members: int) -> _Plan:
    """A plan holding `members` active members of client a in the window at T0."""
    desired = pl.DataFrame(
        {
            "plan_id": [plan_id],
            "client_id": ["a"],
            "window_start": [T0],
            "window_end": [T0 + timedelta(minutes=5)],
            "tier": ["active"],
            "count": [members],
            "host": ["h"],
            "mode": ["provision"],
            "expected_cost": [0.0],
            "expected_cold_starts": [0.0],
            "priority": [1.0],
        },
    )
    return _Plan(plan_id, created_at, desired, pl.DataFrame(), totals={})


def _record(path: Path, plan_id: str, members: int, dry_run: bool, hours: int = 0) -> int:
    """Record the plan with its targets (host h-<plan>) and a config naming it."""
    targets = pl.DataFrame(
        {
            "client_id": ["a"],
            "host": [f"h-{plan_id}"],
            "active": [members],
            "shadow": [0],
            "cold": [0],
            "hold": [members],
            "floor_need": [0],
            "reason": [None],
        },
        schema_overrides={"reason": pl.String},
    )
    plan = _plan(plan_id, T0 + timedelta(hours=hours), members)
    return write_plan(path, plan, dry_run, {"a": {"image": f"img-{plan_id}"}}, targets)


def test_the_latest_plan_is_the_newest_applied_one_by_sequence(warehouse_path: Path):
    """Every reader of "the plan" sees p-2: not p-1 (same data clock, older sequence), not the
    dry run p-3 recorded after it (a later data clock too)."""
    seqs = [
        _record(warehouse_path, "p-1", 1, False),
        _record(warehouse_path, "p-2", 2, False),
        _record(warehouse_path, "p-3", 5, True, hours=1),
    ]
    assert seqs == [1, 2, 3]
    with connect(warehouse_path, read_only=True) as con:
        assert latest_applied_plan(con) == "p-2"
        assert planned_host(con, "a") == "h-p-2"
        assert read_applied_config(con, "a") == {"image": "img-p-2"}
        assert read_applied_config(con, "b") is None  # no plan for b
    plan_id, targets, configs = read_applied_targets(warehouse_path)
    assert (plan_id, targets.get_column("active").to_list()) == ("p-2", [2])
    assert configs == {"a": {"image": "img-p-2"}}
    assert read_activation_terms(warehouse_path, "a").planned_members == 2
    capacity = read_planned_capacity(warehouse_path, since=T0)
    assert capacity.select("client_id", "active").rows() == [("a", 2)]
    # Scoring buckets from the window's end on reads no window of it.
    assert read_planned_capacity(warehouse_path, since=T0 + timedelta(minutes=5)).height == 0
    recent = read_recent_targets(warehouse_path, T0 - timedelta(days=1))
    assert sorted(recent.select("host", "total").rows()) == [("h-p-1", 1), ("h-p-2", 2)]


def test_recent_sizes_are_those_of_each_applied_plan_since_a_moment(warehouse_path: Path):
    """Per applied plan, each client's member size from its config, from the plan in force
    at the moment on; dry runs do not count."""
    sizes = {"p-1": (0.5, 512.0), "p-2": (1.0, 512.0), "p-3": (4.0, 4096.0)}
    for plan_id, dry_run in (("p-1", False), ("p-2", False), ("p-3", True)):
        cpu, memory = sizes[plan_id]
        config = {"image": "img", "cpu": cpu, "memory_mb": memory}
        write_plan(warehouse_path, _plan(plan_id, T0, 1), dry_run, {"a": config})
    since = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    # No plan was in force an hour ago: an empty one stands for it.
    assert read_recent_sizes(warehouse_path, since) == [
        {},
        {"a": sizes["p-1"]},
        {"a": sizes["p-2"]},
    ]
    # Since a moment after both: only the plan in force then.
    assert read_recent_sizes(warehouse_path, since + timedelta(days=1)) == [{"a": sizes["p-2"]}]


def test_old_prediction_runs_are_pruned_but_each_clients_latest_is_kept(warehouse_path):
    runs = [T0, T0 + timedelta(days=1), T0 + timedelta(days=3)]
    rows = [_forecast_row(at) for at in runs] + [
        {**_forecast_row(T0), "client_id": "b", "model_name": "forecaster-b"}
    ]
    with connect(warehouse_path) as con:
        con.register("f", pl.DataFrame(rows).to_arrow())
        con.execute("INSERT INTO forecasts SELECT * FROM f")
        record_latest_runs(con, [pl.DataFrame(rows).select("client_id", "generated_at")])
    from warehouse.predictions import prune_predictions

    assert prune_predictions(warehouse_path, T0 + timedelta(days=2)) == 2
    with connect(warehouse_path, read_only=True) as con:
        kept = con.execute("SELECT client_id, generated_at FROM forecasts ORDER BY 1, 2").fetchall()
    # a keeps only its newest run; b's only run is its current forecast, however old
    assert kept == [("a", runs[2]), ("b", T0)]
    assert prune_predictions(warehouse_path, T0 + timedelta(days=2)) == 0  # converged


def test_prediction_records_each_clients_latest_run_with_it(warehouse_path: Path):
    """`write_predictions` keeps `latest_runs` (what every "latest run" read looks up): the
    newest run's profile is served, a run that found no window serves none, and a run
    written late with an older stamp does not take the place of a newer one."""
    early, late = T0, T0 + timedelta(minutes=5)
    profile = pl.DataFrame(
        {
            "client_id": ["a"],
            "generated_at": [early],
            "origin": [T0],
            "window_start": [T0 + timedelta(minutes=5)],
            "window_end": [T0 + timedelta(minutes=10)],
            "duration_minutes": [5.0],
            "confidence": [0.9],
            "model_name": ["forecaster-a"],
            "model_version": ["1"],
        }
    )
    write_predictions(warehouse_path, pl.DataFrame([_forecast_row(early)]), profile)
    with connect(warehouse_path, read_only=True) as con:
        assert [r["confidence"] for r in read_latest_profile(con, "a")] == [0.9]
        assert read_latest_profile(con, "b") == []  # never predicted

    newest = pl.DataFrame([{**_forecast_row(late), "p50": 2.0}])
    write_predictions(warehouse_path, newest, profile.clear())
    older = early - timedelta(hours=1)
    write_predictions(  # an older run written late: not the latest
        warehouse_path,
        pl.DataFrame([_forecast_row(older)]),
        profile.with_columns(pl.lit(older).alias("generated_at")),
    )
    with connect(warehouse_path, read_only=True) as con:
        assert read_latest_profile(con, "a") == []
        assert latest_run(con, "a") == late
    quantiles, _, profiles = read_latest_forecasts(warehouse_path)
    assert profiles.height == 0
    assert quantiles.rows() == [("a", "concurrency", T0, T0 + timedelta(minutes=5), 0.0, 2.0, 0.0)]


def test_each_client_s_latest_run_says_which_model_version_made_it(warehouse_path):
    from warehouse.predictions import read_latest_runs

    early, late = T0, T0 + timedelta(minutes=5)
    older = _forecast_row(early)
    newer = {**_forecast_row(late), "model_version": "2"}
    with connect(warehouse_path) as con:
        forecasts = pl.DataFrame([older, newer])
        con.register("f", forecasts.to_arrow())
        con.execute("INSERT INTO forecasts SELECT * FROM f")
        runs = [forecasts.select("client_id", "generated_at")]
        # b's latest run wrote no forecast rows (only its run is recorded here).
        runs.append(pl.DataFrame({"client_id": ["b"], "generated_at": [early]}))
        record_latest_runs(con, runs)
    latest = read_latest_runs(warehouse_path).sort("client_id")
    assert latest.rows() == [("a", late, "2"), ("b", early, None)]


def _ten_days_of_two_clients(warehouse_path) -> None:
    rows = []
    levels = [0.0, 0.4, 1.0, 2.5, None, 7.0, 40.0]  # fractions round up; 40 is past the top
    for client, last in (("a", T0), ("b", T0 - timedelta(days=3))):  # b stopped 3 days ago
        for step in range(0, 10 * 288, 7):  # ten days, every 35 min
            ts = last - timedelta(minutes=5 * step)
            need = levels[(step // 7) % len(levels)] if client == "a" else float(step % 5)
            rows.append((client, ts, 1.0, need, 0.1, 64.0, 1.0, 2.0, "batch"))
    with connect(warehouse_path) as con:
        con.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def test_the_planner_s_usage_is_the_recent_window_s_concurrency(warehouse_path):
    from warehouse.usage import read_recent_concurrency, read_recent_usage

    _ten_days_of_two_clients(warehouse_path)
    since = T0 - timedelta(days=8)
    narrow = read_recent_concurrency(warehouse_path, 7, since).sort("client_id", "ts")
    whole = read_recent_usage(warehouse_path, 7).select("client_id", "ts", "concurrency")
    assert narrow.columns == ["client_id", "ts", "concurrency"]
    assert narrow.equals(whole.filter(pl.col("ts") >= since))
    # Seven days back from each client's own newest bucket, b's too, and not before `since`.
    firsts = dict(narrow.group_by("client_id").agg(pl.col("ts").min()).iter_rows())
    assert T0 - timedelta(days=7) < firsts["a"] <= T0 - timedelta(days=7) + timedelta(minutes=35)
    assert since <= firsts["b"] <= since + timedelta(minutes=35)


def test_the_planner_s_need_levels_are_counted_as_the_planner_counts_them(warehouse_path):
    from provisioning.planner import base_rates, need_levels
    from warehouse.usage import read_need_levels, read_recent_usage

    _ten_days_of_two_clients(warehouse_path)
    window = read_recent_usage(warehouse_path, 7)
    counted = read_need_levels(warehouse_path, 7, max_level=16).sort("client_id", "n")
    expected = need_levels(window, max_level=16).sort("client_id", "n")
    assert counted.rows() == expected.rows()
    # a's levels by hand: 0 and the missing bucket as 0, 0.4 -> 1, 2.5 -> 3, 40 -> 16.
    assert {n for c, n, _ in counted.rows() if c == "a"} == {0, 1, 3, 7, 16}
    assert (
        sum(b for c, _, b in counted.rows() if c == "b")
        == window.filter(pl.col("client_id") == "b").height
    )
    assert base_rates(counted, 16).equals(base_rates(expected, 16))
