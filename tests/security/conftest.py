"""Fixtures of the security tests: the activation warehouse, copied per test."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from tests.api.conftest import World, build_warehouse
from tests.security.flood_world import PLANNED_FOR_A, FloodWorld
from warehouse.api_keys import issue_key
from warehouse.clients import set_client_mode
from warehouse.db import connect


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FloodWorld:
    world: World = build_warehouse(tmp_path_factory.mktemp("flood") / "warehouse.duckdb")
    key_f = issue_key(world.path, "f", create_client=True)
    set_client_mode(world.path, "f", "forecast-only")
    now = datetime.now()
    with connect(world.path) as con:
        con.execute(
            "INSERT INTO plans (plan_id, seq, created_at, recorded_at, first_window,"
            " tick_seconds, windows, buffer_seconds, dry_run, totals)"
            " VALUES ('test-plan', 1, ?, ?, ?, 300, 1, 0, false, '{}')",
            [now, now, now],
        )
        con.execute(
            "INSERT INTO plan_targets VALUES ('test-plan', 'a', 'h1', ?, 0, 0, 0, 0, NULL)",
            [PLANNED_FOR_A],
        )
    return FloodWorld(world.path, world.key_a, world.key_b, key_f)


@pytest.fixture
def world(template: FloodWorld, tmp_path: Path) -> FloodWorld:
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(template.path, path)
    return replace(template, path=path)
