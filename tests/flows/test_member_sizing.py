"""provision-pools sizes members from the forecast, on real processes and real Docker: when
a client's predicted memory doubles, its members are replaced by bigger ones (the container
is created with the new limit), and planning the same forecast again changes nothing."""

from __future__ import annotations

from datetime import timedelta

import docker
import polars as pl

from flows.provision import provision_pools
from flows.runtime import open_pool_runtime as open_runtime
from flows.settings import Settings
from provisioning.runtime.base import Member
from tests.flows.test_provision_flow import END, STEP, pool_settings  # noqa: F401 (fixture)
from warehouse.clients import read_clients
from warehouse.db import connect, fetch_frame
from warehouse.predictions import write_predictions

BUSY = "c0000"  # needs two instances for sure (see test_provision_flow)


def _predict_memory(settings: Settings, memory_mb_p90: float, minute: int) -> None:
    """A new prediction run: the seeded forecasts again, and a profile window for the busy
    client over the next two hours with two instances and `memory_mb_p90` in all."""
    with connect(settings.warehouse_path, read_only=True) as con:
        forecasts = fetch_frame(
            con,
            "SELECT * FROM forecasts WHERE generated_at = "
            "(SELECT min(generated_at) FROM forecasts)",
        )
        exceedance = fetch_frame(
            con,
            "SELECT * FROM forecast_exceedance WHERE generated_at = "
            "(SELECT min(generated_at) FROM forecast_exceedance)",
        )
    stamp = END + timedelta(minutes=minute)
    profile = pl.DataFrame(
        [
            {
                "client_id": BUSY,
                "generated_at": stamp,
                "origin": END - STEP,
                "window_start": END,
                "window_end": END + timedelta(hours=2),
                "duration_minutes": 120.0,
                "concurrency_p50": 2.0,
                "concurrency_p90": 2.0,
                "memory_mb_p50": memory_mb_p90,
                "memory_mb_p90": memory_mb_p90,
                "memory_mb_confidence": 1.0,
                "confidence": 1.0,
                "model_name": "forecaster-x",
                "model_version": "1",
            }
        ]
    )
    write_predictions(
        settings.warehouse_path,
        forecasts.with_columns(pl.lit(stamp).alias("generated_at")),
        profile,
        exceedance.with_columns(pl.lit(stamp).alias("generated_at")),
    )


def _memory_limit_mb(member: Member) -> float:
    """The memory limit the member was created with, as its runtime holds it."""
    if member.runtime == "process":
        return float(member.details["memory_mb"])
    client = docker.from_env()
    try:
        limit = client.api.inspect_container(member.id)["HostConfig"]["Memory"]
    finally:
        client.close()
    return limit / 2**20


def _busy_members(settings: Settings) -> list[Member]:
    runtime = open_runtime(settings)
    listed = runtime.list({"prewarm.managed": "1", **settings.pool_scope})
    return [m for m in listed if m.client_id == BUSY]


def test_members_grow_when_predicted_memory_doubles(pool_settings):  # noqa: F811
    declared = read_clients(pool_settings.warehouse_path).filter(pl.col("client_id") == BUSY)[
        "container_memory_mb"
    ][0]
    # One instance is predicted to use 0.8x its declared memory: well inside the bounds.
    _predict_memory(pool_settings, 2 * 0.8 * declared, minute=2)
    provision_pools()
    first = _busy_members(pool_settings)
    assert len(first) == 2
    small = {_memory_limit_mb(m) for m in first}
    assert len(small) == 1
    (small_mb,) = small
    assert 0.8 * declared <= small_mb <= 0.8 * declared * 1.5  # covers it, a rung above

    assert provision_pools().actions == {}  # the same forecast: nothing to do

    _predict_memory(pool_settings, 2 * 1.6 * declared, minute=3)
    summary = provision_pools()
    second = _busy_members(pool_settings)
    assert len(second) == 2
    assert {m.id for m in second}.isdisjoint({m.id for m in first})  # replaced, not resized
    assert [_memory_limit_mb(m) for m in second] == [2 * small_mb] * 2  # the ladder scales
    assert summary.actions.get("create", 0) >= 2
    assert provision_pools().actions == {}


def test_members_just_grown_are_not_shrunk_back_within_the_scale_down_delay(pool_settings):  # noqa: F811
    """A forecast that swings back right after a resize would replace the members twice
    (the churn of a loop left running): a size shrinks only once it held for the delay."""
    declared = read_clients(pool_settings.warehouse_path).filter(pl.col("client_id") == BUSY)[
        "container_memory_mb"
    ][0]
    _predict_memory(pool_settings, 2 * 0.8 * declared, minute=2)
    provision_pools()
    _predict_memory(pool_settings, 2 * 1.6 * declared, minute=3)
    provision_pools()
    grown = _busy_members(pool_settings)
    assert len({_memory_limit_mb(m) for m in grown}) == 1

    # A third of the grown size an instance: it would shrink, but it was resized just now.
    _predict_memory(pool_settings, 2 * 0.5 * declared, minute=4)
    assert provision_pools().actions == {}
    assert {m.id for m in _busy_members(pool_settings)} == {m.id for m in grown}
