"""provision-pools end to end on real processes and real Docker containers.

Forecasts are written by hand (the layer below is tested elsewhere): one busy client that
certainly needs 2 instances, one that needs 1 with P 0.3, one idle client, so the plan is
known in advance. Each test uses its own pool name, so it never touches other members.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import polars as pl
import pytest

from flows.ingest import ingest_usage
from flows.provision import provision_pools
from flows.runtime import open_pool_runtime as open_runtime
from flows.settings import Settings
from provisioning.apply import release_all
from provisioning.runtime.base import ContainerSpec
from provisioning.runtime.select import docker_unavailable_reason
from warehouse.clients import set_client_mode
from warehouse.db import connect, fetch_value
from warehouse.predictions import write_predictions

END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)


def _seed_forecasts(settings: Settings) -> None:
    """c0000 needs 2 instances for sure, c0001 one instance with P 0.3, c0002 nothing."""
    origin = END - STEP
    rows, exceed = [], []
    for client, need, p_one in (("c0000", 2.0, 1.0), ("c0001", 0.0, 0.3), ("c0002", 0.0, 0.0)):
        for h in range(1, 25):
            ts = origin + STEP * h
            rows.append((client, "concurrency", origin, ts, h, need, need, need))
            for level in range(1, 5):
                p = 1.0 if level <= need else (p_one if level == 1 else 0.0)
                exceed.append((client, origin, ts, h, level, p))
    stamp = datetime(2026, 1, 19, 0, 1)
    forecasts = pl.DataFrame(
        rows,
        schema=["client_id", "metric", "origin", "ts", "horizon", "p10", "p50", "p90"],
        orient="row",
    ).with_columns(
        pl.lit("forecaster-x").alias("model_name"),
        pl.lit("1").alias("model_version"),
        pl.lit(stamp).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")),
        pl.col("horizon").cast(pl.Int32),
    )
    exceedance = pl.DataFrame(
        exceed, schema=["client_id", "origin", "ts", "horizon", "level", "p_exceed"], orient="row"
    ).with_columns(
        pl.lit("1").alias("model_version"),
        pl.lit(stamp).alias("generated_at"),
        pl.col("origin", "ts").cast(pl.Datetime("us")),
    )
    write_predictions(settings.warehouse_path, forecasts, pl.DataFrame(), exceedance)


def seeded_pool(monkeypatch: pytest.MonkeyPatch, runtime: str) -> Settings:
    """Three synthetic clients with the forecasts above, a unique pool on `runtime`. The
    hand-made forecasts alone decide the pool: no need observed lately (the floor), which
    test_the_need_just_observed_is_kept_warm covers."""
    monkeypatch.setenv("PREWARM_RUNTIME", runtime)
    monkeypatch.setenv("PREWARM_POOL", f"test-{uuid.uuid4().hex[:8]}")
    ingest_usage(source="synthetic", clients=3, days=2, seed=3, end=END)
    settings = Settings()
    _seed_forecasts(settings)
    with connect(settings.warehouse_path) as con:
        con.execute("UPDATE usage SET concurrency = 0 WHERE ts >= ?", [END - timedelta(hours=1)])
    return settings


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def pool_settings(request, prefect_harness, data_dir, monkeypatch):
    """A seeded warehouse, a unique pool on the chosen runtime, everything released after."""
    if request.param == "docker" and (reason := docker_unavailable_reason(timeout_s=2.0)):
        pytest.skip(f"needs a Docker daemon: {reason}")
    settings = seeded_pool(monkeypatch, request.param)
    yield settings
    release_all(open_runtime(settings), settings.pool_scope)


def _members(settings: Settings) -> dict[str, dict[str, int]]:
    runtime = open_runtime(settings)
    counts: dict[str, dict[str, int]] = {}
    for member in runtime.list({"prewarm.managed": "1", **settings.pool_scope}):
        counts.setdefault(member.client_id, {}).setdefault(member.tier, 0)
        counts[member.client_id][member.tier] += 1
    return counts


def _recorded(settings: Settings) -> set[str]:
    with connect(settings.warehouse_path, read_only=True) as con:
        rows = con.execute(
            "SELECT member_id FROM pool_members WHERE released_at IS NULL"
        ).fetchall()
    return {r[0] for r in rows}


def test_provision_creates_the_planned_pool_and_is_idempotent(pool_settings):
    summary = provision_pools()
    members = _members(pool_settings)
    # Two certain instances are worth keeping running; the 0.3 chance of one call is worth
    # a cheaper warm tier; the idle client gets nothing.
    assert sum(members["c0000"].values()) == 2
    assert sum(members["c0001"].values()) == 1 and "active" not in members["c0001"]
    assert "c0002" not in members
    assert summary.actions == {"create": 3}
    runtime = open_runtime(pool_settings)
    live = {m.id for m in runtime.list({"prewarm.managed": "1", **pool_settings.pool_scope})}
    assert _recorded(pool_settings) == live
    again = provision_pools()
    assert again.actions == {}
    assert _members(pool_settings) == members


def test_dry_run_records_the_plan_and_touches_nothing(pool_settings):
    summary = provision_pools(dry_run=True)
    assert _members(pool_settings) == {}
    with connect(pool_settings.warehouse_path, read_only=True) as con:
        dry = fetch_value(con, "SELECT dry_run FROM plans WHERE plan_id = ?", [summary.plan_id])
        allocated = fetch_value(
            con,
            "SELECT sum(count) FROM allocations WHERE plan_id = ? AND client_id = 'c0000'"
            " AND window_start = (SELECT first_window FROM plans WHERE plan_id = ?)",
            [summary.plan_id, summary.plan_id],
        )
    assert dry is True
    assert allocated == 2


def test_forecast_only_client_is_planned_but_untouched(pool_settings):
    set_client_mode(pool_settings.warehouse_path, "c0000", "forecast-only")
    summary = provision_pools()
    assert "c0000" not in _members(pool_settings)
    assert summary.forecast_only == ["c0000"]
    with connect(pool_settings.warehouse_path, read_only=True) as con:
        modes = fetch_value(
            con,
            "SELECT count(*) FROM allocations WHERE client_id = 'c0000' AND mode = 'forecast-only'",
        )
    assert modes > 0


def test_orphans_are_released_and_a_crash_is_healed(pool_settings):
    provision_pools()
    runtime = open_runtime(pool_settings)
    scope = {"prewarm.managed": "1", **pool_settings.pool_scope}
    orphan = runtime.create(
        ContainerSpec(
            client_id="ghost",
            plan_id="old-plan",
            tier="shadow",
            image="prewarm/worker:latest",
            cpu=0.25,
            memory_mb=64,
            env={},
            labels=dict(pool_settings.pool_scope),
        )
    )
    # A crash midway: one of c0000's planned members is gone.
    victim = next(m for m in runtime.list(scope) if m.client_id == "c0000")
    runtime.release(victim.id)
    summary = provision_pools()
    members = _members(pool_settings)
    assert "ghost" not in members
    assert sum(members["c0000"].values()) == 2
    assert summary.actions.get("release") == 1 and summary.actions.get("create") == 1
    assert orphan.id not in _recorded(pool_settings)


def test_members_of_another_pool_are_never_touched(pool_settings, monkeypatch):
    provision_pools()
    mine = _members(pool_settings)
    monkeypatch.setenv("PREWARM_POOL", f"other-{uuid.uuid4().hex[:6]}")
    other = Settings()
    try:
        set_client_mode(other.warehouse_path, "c0000", "forecast-only")
        provision_pools()
        assert _members(pool_settings) == mine
    finally:
        release_all(open_runtime(other), other.pool_scope)


def test_the_need_just_observed_is_kept_warm(pool_settings):
    """The reactive safety net is an input to the plan: the idle-forecast client that needed
    3 instances in the newest bucket keeps 3 warm (shadow), and a second run changes nothing."""
    with connect(pool_settings.warehouse_path) as con:
        con.execute(
            "UPDATE usage SET concurrency = 3 WHERE client_id = 'c0002' AND ts = ?",
            [END - STEP],
        )
    provision_pools()
    members = _members(pool_settings)
    assert members["c0002"] == {"shadow": 3}
    with connect(pool_settings.warehouse_path, read_only=True) as con:
        floor, reason = con.execute(
            "SELECT floor_need, reason FROM plan_targets WHERE client_id = 'c0002'"
        ).fetchone()
    assert floor == 3 and reason.startswith("floor")
    assert provision_pools().actions == {}


def _store_raw_extension(settings: Settings, client_id: str, name: str, document: str) -> None:
    """An extension as if stored before documents were checked (straight into the table)."""
    with connect(settings.warehouse_path) as con:
        con.execute(
            "INSERT INTO client_schema_extensions VALUES (?, ?, 0, ?::JSON, now())",
            [client_id, name, document],
        )


def test_a_client_with_an_unsafe_stored_schema_gets_no_member_and_others_are_served(
    pool_settings,
):
    """A preload library in one client's stored schema, and a document too deep to parse in
    another's: neither reaches the runtime, and the third client is provisioned as usual."""
    preload = {"name": "evil", "workload": {"env": {"LD_PRELOAD": "/tmp/evil.so"}}}
    _store_raw_extension(pool_settings, "c0000", "evil", json.dumps(preload))
    deep = "[" * 100_000 + "]" * 100_000
    _store_raw_extension(pool_settings, "c0001", "deep", '{"name": "deep", "x": ' + deep + "}")
    summary = provision_pools()
    assert _members(pool_settings) == {}  # c0002 is idle: nothing was wanted for it
    assert summary.actions == {}
    with connect(pool_settings.warehouse_path) as con:
        con.execute("DELETE FROM client_schema_extensions WHERE client_id = 'c0001'")
    provision_pools()
    members = _members(pool_settings)
    assert "c0000" not in members  # still refused
    assert sum(members["c0001"].values()) == 1  # served again once its schema is readable
