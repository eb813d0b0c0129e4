"""The buckets scoring reads (`read_unscored`): each measured bucket after the client's last
scored one, with the latest forecast issued before it, and nothing already scored, however
many prediction runs forecast it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from warehouse.db import connect
from warehouse.scores import read_score_history, read_unscored

T0 = datetime(2026, 1, 19, 12, 0)
BUCKET = timedelta(minutes=5)


def _bucket(k: int) -> datetime:
    return T0 + k * BUCKET


def _forecast(con, client: str, origin: int, ts: int, p50: float, generated: int) -> None:
    con.execute(
        "INSERT INTO forecasts VALUES (?, 'concurrency', ?, ?, ?, 0, ?, 0, 'm', '1', ?)",
        [
            client,
            _bucket(origin),
            _bucket(ts),
            ts - origin,
            p50,
            _bucket(origin) + generated * BUCKET,
        ],
    )


def test_each_waiting_bucket_comes_with_its_latest_forecast(warehouse_path: Path):
    with connect(warehouse_path) as con:
        for client in ("a", "b"):
            con.execute(
                "INSERT INTO clients (client_id, freq_seconds, source) VALUES (?, 300, 'test')",
                [client],
            )
        for k in range(1, 5):  # a measured 1..4, requests unmeasured
            con.execute(
                "INSERT INTO usage (client_id, ts, concurrency, batch_id) VALUES ('a', ?, ?, 'x')",
                [_bucket(k), float(k)],
            )
        con.execute(
            "INSERT INTO usage (client_id, ts, concurrency, batch_id) VALUES ('b', ?, 7, 'x')",
            [_bucket(1)],
        )
        # Runs from origins 0, 1 and 2, each 3 buckets ahead; origin 2 issued twice.
        for origin, p50 in ((0, 10.0), (1, 20.0), (2, 30.0)):
            for ts in range(origin + 1, origin + 4):
                _forecast(con, "a", origin, ts, p50 + ts, generated=0)
        for ts in (3, 4, 5):
            _forecast(con, "a", 2, ts, 40.0 + ts, generated=1)  # the reissue wins
        _forecast(con, "a", 4, 4, 99.0, generated=0)  # origin == ts: not a forecast of it
        _forecast(con, "b", 0, 1, 5.0, generated=0)
        con.execute(
            "INSERT INTO forecast_scores (client_id, window_start, window_end, metric, actual,"
            " scored_at) VALUES ('a', ?, ?, 'concurrency', 2, ?)",
            [_bucket(2), _bucket(3), _bucket(3)],
        )

    rows = read_unscored(warehouse_path).select(
        "client_id", "ts", "window_end", "origin", "p50", "actual"
    )

    assert rows.rows() == [
        ("a", _bucket(3), _bucket(4), _bucket(2), 43.0, 3.0),
        ("a", _bucket(4), _bucket(5), _bucket(2), 44.0, 4.0),
        ("b", _bucket(1), _bucket(2), _bucket(0), 5.0, 7.0),
    ]


def test_drift_reads_only_each_series_newest_lookback(warehouse_path: Path):
    """`read_score_history` gives each client and metric its newest `lookback` buckets
    with a coverage (what drift detection judges), not every score ever recorded."""
    with connect(warehouse_path) as con:
        for k in range(10):
            for metric in ("requests", "cpu_cores"):
                covered = None if (metric == "cpu_cores" and k >= 8) else k % 2 == 0
                con.execute(
                    "INSERT INTO forecast_scores (client_id, window_start, window_end, metric,"
                    " actual, covered, scored_at) VALUES ('a', ?, ?, ?, ?, ?, ?)",
                    [_bucket(k), _bucket(k + 1), metric, float(k), covered, _bucket(k + 1)],
                )

    history = read_score_history(warehouse_path, lookback_windows=3).sort("metric", "window_start")

    assert history.select("metric", "actual").rows() == [
        ("cpu_cores", 5.0),
        ("cpu_cores", 6.0),
        ("cpu_cores", 7.0),  # 8 and 9 have no coverage
        ("requests", 7.0),
        ("requests", 8.0),
        ("requests", 9.0),
    ]
