"""What the API answers from memory, and how it stays true: keys and client views read again
once the warehouse changes (here, changed by another process, as the cycle and the CLI do),
and activation outcomes written by the background writer within its bound, on shutdown,
and refused, counted and logged past its queue's limit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.context import AppContext
from api.stamp import WarehouseStamp, warehouse_signature
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.api.conftest import GENERATED_AT, World
from tests.api.helpers import bearer, count_rows, wait_for_rows
from warehouse.db import connect, fetch_frame


def _in_another_process(code: str, *args: str) -> str:
    """Run `code` (Python, `args` in sys.argv[1:]) as another process would; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def _context(app: FastAPI) -> AppContext:
    return app.state.prewarm


# --- the change signal ----------------------------------------------------------------------


def test_the_stamp_counts_other_writes_and_adopts_its_own(world: World) -> None:
    stamp = WarehouseStamp(world.path)
    first = stamp.version()
    assert stamp.version() == first  # nothing changed

    with connect(world.path) as con:  # someone else's write
        con.execute("UPDATE clients SET region = 'north' WHERE client_id = 'b'")
    assert stamp.version() == first + 1

    # An own write that found the files as last seen: adopted, no new version.
    stamp.begin_own_write(at_lock=warehouse_signature(world.path))
    with connect(world.path) as con:
        con.execute("UPDATE clients SET region = 'south' WHERE client_id = 'b'")
    stamp.end_own_write(after=warehouse_signature(world.path))
    assert stamp.version() == first + 1

    # Someone else wrote just before an own write took the lock: a new version at once,
    # even while the own write is under way.
    with connect(world.path) as con:
        con.execute("UPDATE clients SET region = 'east' WHERE client_id = 'b'")
    stamp.begin_own_write(at_lock=warehouse_signature(world.path))
    assert stamp.version() == first + 2
    stamp.end_own_write(after=warehouse_signature(world.path))
    assert stamp.version() == first + 2


# --- keys -----------------------------------------------------------------------------------


def test_a_key_revoked_by_another_process_is_refused_from_the_next_request(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app())
    assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 200

    new_key = _in_another_process(
        """
        import sys
        from warehouse.api_keys import rotate_key
        print(rotate_key(sys.argv[1], "a"))
        """,
        str(world.path),
    )

    assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 401
    assert client.get("/v1/clients/a/profile", headers=bearer(new_key)).status_code == 200
    assert client.get("/v1/clients/b/profile", headers=bearer(world.key_b)).status_code == 200


def test_keys_and_views_are_not_read_again_while_nothing_changes(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    app = make_app()
    client = TestClient(app)
    made_up = "pw_" + "1" * 16 + "_" + "y" * 43
    version = _context(app).stamp.version()

    for _ in range(5):
        assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 200
        assert client.get("/v1/clients/a/profile", headers=bearer(made_up)).status_code == 401

    assert _context(app).views.reads == 1  # one read of a's view, then memory
    assert _context(app).stamp.version() == version


# --- client views ---------------------------------------------------------------------------


def test_a_new_profile_and_extension_from_another_process_are_served_next(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app())
    before = client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).json()
    assert before["generated_at"] == GENERATED_AT.isoformat() + "Z"
    assert client.get("/v1/clients/a/schema", headers=bearer(world.key_a)).json()["extensions"] == [
        "big-cache"
    ]

    _in_another_process(
        """
        import json, sys
        from warehouse.db import connect
        with connect(sys.argv[1]) as con:
            con.execute(
                "INSERT INTO profiles (client_id, generated_at, origin, window_start,"
                " window_end, duration_minutes, concurrency_p50, concurrency_p90, confidence,"
                " model_name, model_version) VALUES ('a', TIMESTAMP '2024-05-02 12:00:00',"
                " TIMESTAMP '2024-05-02 12:00:00', TIMESTAMP '2024-05-02 13:00:00',"
                " TIMESTAMP '2024-05-02 14:00:00', 60, 1.0, 2.0, 0.5, 'lightgbm-quantile', '8')"
            )
            con.execute(
                "UPDATE latest_runs SET generated_at = TIMESTAMP '2024-05-02 12:00:00'"
                " WHERE client_id = 'a'"
            )
            document = {
                "name": "small-cache",
                "precedence": 50,
                "workload": {"cache": {"ttl_seconds": 5}},
            }
            con.execute(
                "INSERT INTO client_schema_extensions VALUES ('a', 'small-cache', 50, ?::JSON,"
                " now())",
                [json.dumps(document)],
            )
        """,
        str(world.path),
    )

    after = client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).json()
    schema = client.get("/v1/clients/a/schema", headers=bearer(world.key_a)).json()
    assert after["generated_at"] == "2024-05-02T12:00:00Z"
    assert [w["model_version"] for w in after["windows"]] == ["8"]
    assert sorted(schema["extensions"]) == ["big-cache", "small-cache"]
    assert schema["cache"]["ttl_seconds"] == 5  # the new extension takes precedence


def test_a_new_plan_from_another_process_bounds_the_next_activation(
    make_app: Callable[..., FastAPI],
    world: World,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
) -> None:
    client = TestClient(make_app(process_runtime, burst_max=0))

    # No plan gives `a` a member and no burst is allowed: nothing may start.
    refused = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
    assert refused.status_code == 429 and "its limit" in refused.json()["detail"]

    _in_another_process(
        """
        import sys
        from warehouse.db import connect
        with connect(sys.argv[1]) as con:
            con.execute(
                "INSERT INTO plans (plan_id, seq, created_at, recorded_at, first_window,"
                " tick_seconds, windows, buffer_seconds, dry_run, totals) VALUES ('p1', 1,"
                " now(), now(), now(), 300, 1, 0, false, '{}')"
            )
            con.execute("INSERT INTO plan_targets VALUES ('p1', 'a', 'h7', 0, 1, 0, 0, 0, NULL)")
        """,
        str(world.path),
    )

    started = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
    assert started.status_code == 409, started.text
    assert started.json()["fallback"] == "cold-start"
    [member] = process_runtime.list(pool_scope)
    assert member.labels["prewarm.host"] == "h7"  # where the new plan placed `a`

    _in_another_process(
        """
        import sys
        from warehouse.clients import set_client_mode
        set_client_mode(sys.argv[1], "a", "forecast-only")
        """,
        str(world.path),
    )
    forecast_only = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
    assert forecast_only.status_code == 409 and "forecast-only" in forecast_only.json()["detail"]


def test_a_change_through_the_api_is_served_at_once(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app())
    assert client.get("/v1/clients/a/schema", headers=bearer(world.key_a)).status_code == 200

    extension = {"name": "tiny", "precedence": 90, "workload": {"cache": {"ttl_seconds": 1}}}
    stored = client.post(
        "/v1/clients/a/schema/extensions", json=extension, headers=bearer(world.key_a)
    )

    assert stored.status_code == 201
    schema = client.get("/v1/clients/a/schema", headers=bearer(world.key_a)).json()
    assert schema["cache"]["ttl_seconds"] == 1


def test_views_are_bounded_least_recently_used_first(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    app = make_app(max_clients=1)
    client = TestClient(app)

    for client_id, key in (("a", world.key_a), ("b", world.key_b), ("a", world.key_a)):
        response = client.get(f"/v1/clients/{client_id}/profile", headers=bearer(key))
        assert response.status_code == 200

    assert len(_context(app).views) == 1
    assert _context(app).views.reads == 3  # `a` was dropped for `b`, so read again


# --- the outcome writer ---------------------------------------------------------------------

LINGER_S = 1.0


def test_outcomes_are_written_in_a_batch_within_the_linger_bound(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    app = make_app(record_linger_s=LINGER_S)  # no runtime: every activation is a 503 row
    with TestClient(app) as client:
        assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 200
        answers = [client.post("/v1/clients/a/activate", headers=bearer(world.key_a))]
        answered_at = time.monotonic()
        answers += [client.post("/v1/clients/a/activate", headers=bearer(world.key_a))]
        assert count_rows(world.path, "pool_events") == 0  # held back to be written together

        assert wait_for_rows(world.path, "pool_events", 2, timeout_s=LINGER_S + 5) == 2
        took = time.monotonic() - answered_at
        version = _context(app).stamp.version()
        views_read = _context(app).views.reads

        # The bound: the linger and one write (plus slack for a loaded machine).
        assert took < LINGER_S + 3.0
        assert [a.status_code for a in answers] == [503, 503]
        assert _context(app).recorder.flush(5.0)  # its count follows the rows by a moment
        assert _context(app).recorder.written == 2 and _context(app).recorder.dropped == 0
        # The API's own write leaves its snapshots current: nothing is read again.
        assert client.get("/v1/clients/a/profile", headers=bearer(world.key_a)).status_code == 200
        assert _context(app).stamp.version() == version
        assert _context(app).views.reads == views_read


def test_a_clean_stop_writes_every_queued_outcome(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    app = make_app(record_linger_s=600.0)  # only the stop writes them
    with TestClient(app) as client:
        codes = [
            client.post("/v1/clients/a/activate", headers=bearer(world.key_a)).status_code
            for _ in range(12)
        ]
        assert count_rows(world.path, "pool_events") == 0

    assert codes == [503] * 12
    assert count_rows(world.path, "pool_events") == 12
    assert _context(app).recorder.dropped == 0


def test_outcomes_past_the_queue_limit_are_refused_counted_and_logged(
    make_app: Callable[..., FastAPI], world: World, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(record_linger_s=600.0, max_queued_outcomes=3)
    with caplog.at_level(logging.WARNING, logger="api.recorder"), TestClient(app) as client:
        codes = [
            client.post("/v1/clients/a/activate", headers=bearer(world.key_a)).status_code
            for _ in range(5)
        ]

    assert codes == [503] * 5  # the answers do not depend on the recording
    assert count_rows(world.path, "pool_events") == 3
    assert _context(app).recorder.dropped == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "api.recorder"]
    assert len(warnings) == 1  # logged once, not once per refusal
    assert "the queue is full (at most 3 wait)" in warnings[0]


def test_the_outcome_writer_process_ends_with_the_app(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    app = make_app()
    with TestClient(app) as client:
        client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
        child = _context(app).outcome_writer._child
        assert child is not None and child.poll() is None

    assert child.wait(timeout=10) == 0
    assert count_rows(world.path, "pool_events") == 1


def test_rows_carry_what_the_request_saw(make_app: Callable[..., FastAPI], world: World) -> None:
    # Refusals keep their reason and detail, as before the writer moved off the request path.
    with TestClient(make_app()) as client:
        client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    rows = _rows(world.path)
    assert [(r["reason"], r["ok"], r["member_id"]) for r in rows] == [
        ("request: failed (no runtime)", False, None)
    ]
    assert "No container runtime is configured" in rows[0]["error"]


def _rows(path: Path) -> list[dict]:
    with connect(path, read_only=True) as con:
        return fetch_frame(con, "SELECT * FROM pool_events ORDER BY happened_at").to_dicts()
