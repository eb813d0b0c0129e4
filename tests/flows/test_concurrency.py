"""Overlapping runs are safe: two processes ingest into one warehouse file at once while a
third keeps querying it; both finish, nothing is lost or duplicated, queries answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from warehouse.db import connect, fetch_value

PREWARM = str(Path(sys.executable).with_name("prewarm"))
START = datetime(2026, 1, 5)


def _events(path: Path, client: str, buckets: int) -> Path:
    lines = ["client_id,ts,requests"]
    for i in range(buckets):
        ts = START + timedelta(minutes=5 * i)
        lines.append(f"{client},{ts:%Y-%m-%dT%H:%M:%S},{i % 13}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_writers_and_a_reader_at_once(tmp_path: Path):
    env = {
        **os.environ,
        "PREWARM_DATA_DIR": str(tmp_path / "data"),
        "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    env.pop("PREFECT_API_URL", None)  # each CLI run brings its own temporary Prefect API
    buckets = 20_000  # ~70 days of 5-minute rows per client
    files = [_events(tmp_path / f"{c}.csv", c, buckets) for c in ("left", "right")]
    writers = [
        subprocess.Popen(
            [PREWARM, "ingest", "--source", "events", "--path", str(f)],
            env={**env, "PREFECT_HOME": str(tmp_path / f"prefect-{i}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, f in enumerate(files)
    ]
    answers = 0
    deadline = time.monotonic() + 240
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        query = subprocess.run(
            [PREWARM, "sql", "select count(*) as n from usage", "--format", "csv"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Before the first writer created the file there is nothing to read yet.
        if query.returncode == 0:
            answers += 1
        else:
            assert "No warehouse at" in query.stderr, query.stderr
    outputs = [w.communicate(timeout=240)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    path = tmp_path / "data" / "warehouse.duckdb"
    with connect(path, read_only=True) as con:
        rows = fetch_value(con, "SELECT count(*) FROM usage")
        distinct = fetch_value(con, "SELECT count(DISTINCT (client_id, ts)) FROM usage")
        loaded = fetch_value(con, "SELECT count(*) FROM ingest_batches WHERE status = 'loaded'")
        total = fetch_value(con, "SELECT sum(requests) FROM usage")
    assert rows == distinct == 2 * buckets
    assert loaded == 2
    assert total == 2 * sum(i % 13 for i in range(buckets))
    assert answers >= 1  # prewarm sql answered while the writers ran
