"""The HTTP API end to end, what a client reads and writes: FastAPI's TestClient on a real
warehouse file. Profile and schema numbers, feedback rows (and invalid, unreadable or
SQL-looking feedback), health, docs, and how failures answer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.composite import client_composite
from api.models import Metric
from core.errors import PrewarmError
from core.vocabulary import METRICS
from tests.api.conftest import GENERATED_AT, WINDOW_1, WINDOW_2, World
from tests.api.helpers import (
    MALFORMED_JSON,
    WELL_FORMED_UNKNOWN_KEY,
    bearer,
    call_api,
    count_rows,
    feedback_body,
)
from warehouse.db import connect, fetch_frame, fetch_value


def _naive_utc(text: str) -> datetime:
    """An ISO time as the warehouse stores it: naive UTC."""
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


# --- reading what the models said ---------------------------------------------------------


def test_own_key_reads_the_latest_profile(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/a/profile", headers=bearer(world.key_a))

    assert response.status_code == 200
    profile = response.json()
    assert profile["client_id"] == "a"
    assert profile["generated_at"] == GENERATED_AT.isoformat() + "Z"
    # Only the latest run, by window start; the superseded run (10x bigger) is not served.
    first, second = profile["windows"]
    assert (first["start"], first["end"]) == tuple(t.isoformat() + "Z" for t in WINDOW_1)
    assert (second["start"], second["end"]) == tuple(t.isoformat() + "Z" for t in WINDOW_2)
    assert first["duration_minutes"] == 90.0
    assert first["peaks"]["concurrency"] == {"p50": 2.0, "p90": 3.4, "confidence": 0.75}
    assert first["peaks"]["requests"] == {"p50": 100.0, "p90": 150.0, "confidence": 0.7}
    assert first["peaks"]["net_mbps"] == {"p50": None, "p90": None, "confidence": None}
    assert second["peaks"]["memory_mb"] == {"p50": 512.0, "p90": 600.0, "confidence": 0.9}
    assert set(first["peaks"]) == set(METRICS)
    assert (first["p_active"], first["confidence"]) == (0.9, 0.75)
    assert (first["model_name"], first["model_version"]) == ("lightgbm-quantile", "7")


def test_a_client_never_predicted_has_no_windows(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/b/profile", headers=bearer(world.key_b))

    assert response.status_code == 200
    assert response.json() == {"client_id": "b", "generated_at": None, "windows": []}


def test_own_key_reads_the_composite_schema(client: TestClient, world: World) -> None:
    response = client.get("/v1/clients/a/schema", headers={"X-API-Key": world.key_a})

    assert response.status_code == 200
    schema = response.json()
    assert schema["client_id"] == "a"
    assert schema["extensions"] == ["big-cache"]
    assert (schema["cpu"], schema["memory_mb"]) == (0.25, 64.0)  # the clients row
    assert schema["cache"]["ttl_seconds"] == 600  # the extension
    anticipated = schema["anticipated"]
    assert anticipated["window_start"] == WINDOW_1[0].isoformat() + "Z"
    # No plan applied yet: the profile's own guess, round(concurrency p90 3.4), and it says so.
    assert (anticipated["recommended_pool_size"], anticipated["source"]) == (3, "profile")
    assert anticipated["peak"]["concurrency"] == {"p50": 2.0, "p90": 3.4, "confidence": 0.75}
    assert anticipated["confidence"] == 0.75


def test_composite_of_an_unknown_client_is_a_clear_error(world: World) -> None:
    with pytest.raises(PrewarmError, match="No client 'nobody'"):
        client_composite(world.path, "nobody")


def test_metric_names_are_the_usage_metrics() -> None:
    assert set(Metric.__args__) == set(METRICS)


# --- feedback -----------------------------------------------------------------------------


def test_feedback_is_stored_as_posted(client: TestClient, world: World) -> None:
    body = feedback_body(
        window_start=(datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0).isoformat(),
        window_end=(datetime.now(UTC) - timedelta(hours=20)).replace(microsecond=0).isoformat(),
    )
    response = client.post("/v1/clients/a/feedback", headers=bearer(world.key_a), json=body)

    assert response.status_code == 201
    feedback_id = response.json()["feedback_id"]
    with connect(world.path, read_only=True) as con:
        rows = fetch_frame(con, "SELECT *, actual::VARCHAR AS actual_text FROM feedback").to_dicts()
    [row] = rows
    assert row["feedback_id"] == feedback_id
    assert row["client_id"] == "a"
    assert row["score"] == 4
    assert row["comment"] == "the afternoon peak came early"
    assert json.loads(row["actual_text"]) == {"concurrency": 3.0, "cpu_cores": 0.75}
    assert row["window_start"] == _naive_utc(body["window_start"])
    assert row["window_end"] == _naive_utc(body["window_end"])
    received = row["received_at"].replace(tzinfo=UTC)
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=1)


def test_feedback_offsets_are_stored_as_utc(client: TestClient, world: World) -> None:
    day = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    body = feedback_body(
        window_start=f"{day}T10:00:00+02:00", window_end=f"{day}T09:30:00Z", actual=None
    )
    response = client.post("/v1/clients/a/feedback", headers=bearer(world.key_a), json=body)

    assert response.status_code == 201
    with connect(world.path, read_only=True) as con:
        start, end, actual = con.execute(
            "SELECT window_start, window_end, actual FROM feedback"
        ).fetchall()[0]
    assert (start.hour, end.hour, end.minute) == (8, 9, 30)
    assert actual is None


INVALID_BODIES = [
    pytest.param({"score": 0}, "body.score", id="score-0"),
    pytest.param({"score": 6}, "body.score", id="score-6"),
    pytest.param({"score": "5"}, "body.score", id="score-string"),
    pytest.param({"score": 4.5}, "body.score", id="score-float"),
    pytest.param({"score": True}, "body.score", id="score-bool"),
    pytest.param({"score": None}, "body.score", id="score-null"),
    pytest.param({"window_end": "2020-01-01T00:00:00Z"}, "window_end", id="end-before-start"),
    pytest.param({"window_start": 1714564800}, "body.window_start", id="start-unix-number"),
    pytest.param({"window_start": "yesterday"}, "body.window_start", id="start-not-a-date"),
    pytest.param(
        {"window_start": "2099-01-01T00:00:00Z", "window_end": "2099-01-02T00:00:00Z"},
        "window_start",
        id="window-far-future",
    ),
    pytest.param({"surprise": 1}, "body.surprise", id="unknown-field"),
    pytest.param({"actual": {"cpu_cores": -1}}, "body.actual.cpu_cores", id="negative-actual"),
    pytest.param({"actual": {"gpus": 1}}, "body.actual.gpus", id="unknown-metric"),
    pytest.param({"actual": {"cpu_cores": "1"}}, "body.actual.cpu_cores", id="actual-string"),
    pytest.param({"actual": [1, 2]}, "body.actual", id="actual-list"),
    pytest.param({"comment": "x" * 2001}, "body.comment", id="comment-too-long"),
    pytest.param({"comment": 7}, "body.comment", id="comment-number"),
]


@pytest.mark.parametrize(("change", "field"), INVALID_BODIES)
def test_invalid_feedback_is_422_naming_the_field(
    client: TestClient, world: World, change: dict[str, Any], field: str
) -> None:
    response = client.post(
        "/v1/clients/a/feedback", headers=bearer(world.key_a), json=feedback_body(**change)
    )

    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert any(field in f"{e['field']}: {e['message']}" for e in response.json()["errors"])
    assert count_rows(world.path, "feedback") == 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"NaN", "body.actual.cpu_cores"),
        (b"Infinity", "body.actual.cpu_cores"),
        (b"-Infinity", "body.actual.cpu_cores"),
    ],
)
def test_non_finite_actuals_in_raw_json_are_422(
    client: TestClient, world: World, raw: bytes, field: str
) -> None:
    body = json.dumps(feedback_body(actual={"cpu_cores": 1.0})).replace("1.0", raw.decode())
    response = call_api(
        client, "POST", "/v1/clients/a/feedback", bearer(world.key_a), body.encode()
    )

    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert "finite" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (MALFORMED_JSON, "not valid JSON"),
        (b"[1, 2]", "body: expected a JSON object"),
        (b"", "body: Field required"),
        (b'{"comment": "\xff\xfe"}', "not valid UTF-8 JSON"),
    ],
)
def test_unreadable_bodies_are_422(
    client: TestClient, world: World, raw: bytes, message: str
) -> None:
    response = call_api(client, "POST", "/v1/clients/a/feedback", bearer(world.key_a), raw)

    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_a_body_not_sent_as_json_is_422(client: TestClient, world: World) -> None:
    response = client.post(
        "/v1/clients/a/feedback",
        headers={**bearer(world.key_a), "Content-Type": "text/plain"},
        content=json.dumps(feedback_body()),
    )

    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["detail"]


def test_an_integral_float_score_is_an_integer(client: TestClient, world: World) -> None:
    response = client.post(
        "/v1/clients/a/feedback", headers=bearer(world.key_a), json=feedback_body(score=5.0)
    )

    assert response.status_code == 201  # JSON Schema's integer: 5.0 is 5
    with connect(world.path, read_only=True) as con:
        assert fetch_value(con, "SELECT score FROM feedback") == 5


def test_sql_looking_comments_are_stored_literally(client: TestClient, world: World) -> None:
    comment = "'); DROP TABLE feedback; -- \" OR 1=1; SELECT * FROM api_keys"
    response = client.post(
        "/v1/clients/a/feedback", headers=bearer(world.key_a), json=feedback_body(comment=comment)
    )

    assert response.status_code == 201
    with connect(world.path, read_only=True) as con:
        assert fetch_value(con, "SELECT comment FROM feedback") == comment
        assert fetch_value(con, "SELECT count(*) FROM api_keys") == 2


# --- health, docs, failures ---------------------------------------------------------------


def test_health_needs_no_key_and_reports_the_warehouse(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "warehouse": True}

    missing = TestClient(create_app(tmp_path / "absent.duckdb", None, {}))
    assert missing.get("/healthz").json() == {"status": "ok", "warehouse": False}
    response = missing.get("/v1/clients/a/profile", headers=bearer(WELL_FORMED_UNKNOWN_KEY))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert set(spec["paths"]) == {
        "/healthz",
        "/v1/clients/{client_id}/profile",
        "/v1/clients/{client_id}/schema",
        "/v1/clients/{client_id}/feedback",
        "/v1/clients/{client_id}/activate",
        "/v1/clients/{client_id}/attributes",
        "/v1/clients/{client_id}/schema/extensions",
        "/v1/clients/{client_id}/schema/extensions/{name}",
    }
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert client.get("/docs").status_code == 200


def test_concurrent_reads_and_writes_all_succeed(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    # DuckDB refuses read-only and read-write connections to one file at once in a process:
    # the app serialises its warehouse calls, so threads mixing both never see that error.
    def one(i: int) -> int:
        if i % 2:
            return client.post(
                "/v1/clients/a/feedback", headers=headers, json=feedback_body()
            ).status_code
        return client.get("/v1/clients/a/schema", headers=headers).status_code

    headers = bearer(world.key_a)
    with TestClient(make_app()) as client, ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(one, range(12)))

    assert codes == [200, 201] * 6
    assert count_rows(world.path, "feedback") == 6


def test_a_locked_warehouse_is_503_with_retry_after(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]);"
            " print('locked', flush=True); time.sleep(30)",
            str(world.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        client = TestClient(make_app(lock_wait_s=0.2))

        response = client.get("/v1/clients/a/profile", headers=bearer(world.key_a))

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "busy" in response.json()["detail"]
        assert client.get("/healthz").json() == {"status": "ok", "warehouse": False}
    finally:
        holder.kill()
        holder.wait()


def test_unexpected_errors_are_a_generic_500_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"this is not a DuckDB file" * 100)
    client = TestClient(create_app(corrupt, None, {}))

    response = client.get("/v1/clients/a/schema", headers=bearer(WELL_FORMED_UNKNOWN_KEY))

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error; it has been logged."}
    assert "Traceback" not in response.text and "duckdb" not in response.text.lower()
    assert any(r.exc_info for r in caplog.records if r.name == "api.app")
