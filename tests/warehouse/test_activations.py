"""Activation outcomes are written a batch at a time: every event kept in order, and each
member served left as upserting its activations one by one would leave it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from api.recorder import ActivationRecorder
from warehouse.activations import Activation, record_activations, write_activations
from warehouse.db import connect, fetch_frame

T0 = datetime(2026, 1, 19, 12, 0)
MEMBER_COLUMNS = (
    "member_id, client_id, plan_id, runtime, tier, host, endpoint, created_at, released_at,"
    " activations, last_activation_ms, observed_at"
)


def _served(member: str, ms: float, *, host: str | None, endpoint: str | None, plan: str = "p1"):
    return Activation(
        client_id="a",
        runtime="process",
        ms=ms,
        reason="request: from shadow",
        member_id=member,
        plan_id=plan,
        host=host,
        endpoint=endpoint,
        created_at=T0 - timedelta(hours=1),
    )


def test_a_batch_keeps_every_event_and_each_members_last_state(warehouse_path: Path) -> None:
    with connect(warehouse_path) as con:  # m1 was released by an apply step before
        con.execute(
            "INSERT INTO pool_members VALUES ('m1', 'a', 'p0', 'process', 'released', 'h0',"
            " 'http://old', ?, ?, 5, 9.0, ?)",
            [T0 - timedelta(days=1), T0 - timedelta(hours=2), T0 - timedelta(hours=2)],
        )
    refused = Activation(
        client_id="a", runtime="process", ms=0.4, reason="request: refused", ok=False, error="x"
    )
    batch = [
        (_served("m1", 1.0, host=None, endpoint="http://a"), T0),
        (refused, T0 + timedelta(seconds=1)),
        (_served("m2", 2.0, host="h2", endpoint="http://b", plan="p2"), T0 + timedelta(seconds=2)),
        (_served("m1", 3.0, host="h1", endpoint="http://c"), T0 + timedelta(seconds=3)),
        (_served("m2", 4.0, host=None, endpoint=None, plan="p9"), T0 + timedelta(seconds=4)),
    ]

    record_activations(warehouse_path, batch)

    with connect(warehouse_path, read_only=True) as con:
        events = fetch_frame(con, "SELECT * FROM pool_events ORDER BY happened_at").to_dicts()
        members = {
            m["member_id"]: m
            for m in fetch_frame(con, f"SELECT {MEMBER_COLUMNS} FROM pool_members").to_dicts()
        }
    assert [(e["member_id"], e["ms"], e["ok"], e["action"]) for e in events] == [
        ("m1", 1.0, True, "activate"),
        (None, 0.4, False, "activate"),
        ("m2", 2.0, True, "activate"),
        ("m1", 3.0, True, "activate"),
        ("m2", 4.0, True, "activate"),
    ]
    assert events[1]["error"] == "x" and events[2]["host"] == "h2" and events[2]["plan_id"] == "p2"
    # m1 existed: 5 activations before, two now; its last outcome's endpoint and host; no
    # longer released; its plan and creation time untouched.
    assert members["m1"] == {
        "member_id": "m1",
        "client_id": "a",
        "plan_id": "p0",
        "runtime": "process",
        "tier": "active",
        "host": "h1",
        "endpoint": "http://c",
        "created_at": T0 - timedelta(days=1),
        "released_at": None,
        "activations": 7,
        "last_activation_ms": 3.0,
        "observed_at": T0 + timedelta(seconds=3),
    }
    # m2 is new: its first outcome's plan, the last known host, the last endpoint (none).
    assert members["m2"]["plan_id"] == "p2" and members["m2"]["host"] == "h2"
    assert members["m2"]["endpoint"] is None and members["m2"]["activations"] == 2
    assert members["m2"]["last_activation_ms"] == 4.0
    assert members["m2"]["observed_at"] == T0 + timedelta(seconds=4)
    assert members["m2"]["created_at"] == T0 - timedelta(hours=1)


def _one_by_one(con: duckdb.DuckDBPyConnection, a: Activation, at: datetime) -> None:
    """The semantics of a batch: each outcome written alone, in order (the old writer)."""
    con.execute(
        "INSERT INTO pool_events (member_id, client_id, plan_id, runtime, action, tier,"
        " host, ms, ok, error, reason, happened_at)"
        " VALUES (?, ?, ?, ?, 'activate', 'active', ?, ?, ?, ?, ?, ?)",
        [a.member_id, a.client_id, a.plan_id, a.runtime, a.host, a.ms, a.ok, a.error, a.reason, at],
    )
    if a.ok and a.member_id is not None:
        con.execute(
            """
            INSERT INTO pool_members (member_id, client_id, plan_id, runtime, tier, host,
                                      endpoint, created_at, activations,
                                      last_activation_ms, observed_at)
            VALUES (?, ?, ?, ?, 'active', ?, ?, ?, 1, ?, ?)
            ON CONFLICT (member_id) DO UPDATE SET
                tier = 'active', endpoint = excluded.endpoint,
                host = coalesce(excluded.host, pool_members.host), released_at = NULL,
                activations = pool_members.activations + 1,
                last_activation_ms = excluded.last_activation_ms,
                observed_at = excluded.observed_at
            """,
            [a.member_id, a.client_id, a.plan_id, a.runtime, a.host, a.endpoint, a.created_at]
            + [a.ms, at],
        )


def test_random_batches_match_writing_each_outcome_alone(tmp_path: Path) -> None:
    rng = random.Random(7)
    batches = []
    for b in range(6):
        batch = []
        for i in range(rng.randint(1, 60)):
            ok = rng.random() < 0.8
            batch.append(
                (
                    Activation(
                        client_id=rng.choice("ab"),
                        runtime="process",
                        ms=round(rng.uniform(0, 20), 3),
                        reason="r",
                        member_id=rng.choice(["m1", "m2", "m3", "m4", None]) if ok else None,
                        plan_id=rng.choice(["p1", "p2", None]),
                        host=rng.choice(["h1", "h2", None]),
                        endpoint=rng.choice(["http://x", "http://y", None]),
                        created_at=rng.choice([T0, T0 + timedelta(minutes=1), None]),
                        ok=ok,
                        error=None if ok else "no",
                    ),
                    T0 + timedelta(minutes=b, seconds=i),
                )
            )
        batches.append(batch)
    tables = {}
    for name in ("batched", "alone"):
        path = tmp_path / name / "warehouse.duckdb"
        path.parent.mkdir()
        for batch in batches:
            with connect(path) as con:
                if name == "batched":
                    write_activations(con, batch)
                else:
                    for activation, at in batch:
                        _one_by_one(con, activation, at)
        with connect(path, read_only=True) as con:
            events = fetch_frame(con, "SELECT * FROM pool_events ORDER BY happened_at")
            members = fetch_frame(con, f"SELECT {MEMBER_COLUMNS} FROM pool_members ORDER BY 1")
            tables[name] = (events.to_dicts(), members.to_dicts())
    assert len(tables["alone"][0]) == sum(len(b) for b in batches)
    assert len(tables["alone"][1]) >= 3
    assert tables["batched"] == tables["alone"]


def test_a_clean_stop_writes_a_flood_of_outcomes_within_its_timeout(warehouse_path: Path) -> None:
    # 5,000 outcomes queued at once, as a busy API leaves them at a stop: one statement an
    # outcome took ~30 s here, past the stop's wait, and the rest was dropped.
    recorder = ActivationRecorder(lambda batch: record_activations(warehouse_path, batch))
    for i in range(5000):
        recorder.submit(_served(f"m{i % 40}", float(i), host="h", endpoint="http://e"))
    recorder.close(5.0)

    assert recorder.dropped == 0 and recorder.written == 5000
    with connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pool_events").fetchone() == (5000,)
        assert con.execute(
            "SELECT count(*), sum(activations), max(last_activation_ms) FROM pool_members"
        ).fetchone() == (40, 5000, 4999.0)
