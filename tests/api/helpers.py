"""Helpers shared by the HTTP API tests: credentials, a feedback body, raw requests, row
counts (and waiting for the ones written in the background)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.composite import client_composite
from provisioning.reconciler import build_spec
from provisioning.runtime.base import ContainerRuntime
from provisioning.schema_render import render_container_config
from warehouse.db import connect, fetch_value

MALFORMED_JSON = b'{"score": 3, "window_start": '
WELL_FORMED_UNKNOWN_KEY = "pw_" + "0" * 16 + "_" + "x" * 43


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def feedback_body(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    body = {
        "window_start": (now - timedelta(hours=2)).isoformat(),
        "window_end": (now - timedelta(hours=1)).isoformat(),
        "score": 4,
        "actual": {"concurrency": 3.0, "cpu_cores": 0.75},
        "comment": "the afternoon peak came early",
    }
    return {**body, **overrides}


def count_rows(path: Path, table: str) -> int:
    with connect(path, read_only=True) as con:
        return int(fetch_value(con, f"SELECT count(*) FROM {table}") or 0)


def wait_for_rows(path: Path, table: str, n: int, timeout_s: float = 5.0) -> int:
    """The table's row count once it holds `n` rows, or when `timeout_s` is up: activation
    outcomes are written in the background (`api.recorder`, within a second)."""
    deadline = time.monotonic() + timeout_s
    while (count := count_rows(path, table)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def call_api(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> httpx.Response:
    """One request; `body` bytes are sent raw (as JSON), anything else as JSON."""
    if isinstance(body, bytes):
        headers = {**(headers or {}), "Content-Type": "application/json"}
        return client.request(method, path, headers=headers, content=body)
    return client.request(method, path, headers=headers, json=body)


def shadow_member(runtime: ContainerRuntime, path: Path, scope: dict[str, str]) -> str:
    """A shadow member of client `a` (its rendered config, host h1) in `scope`; its id."""
    config = render_container_config(client_composite(path, "a"))
    return runtime.create(build_spec("a", "shadow", "h1", config, "test-plan", labels=scope)).id
