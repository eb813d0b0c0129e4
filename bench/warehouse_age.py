"""Warehouse-age benchmark: what the cycle's reads of prediction runs cost as runs pile up.

Run with `make bench-warehouse-age` (or `python bench/warehouse_age.py --clients 1000
--runs 4,96,288,576 --baseline REF`). Writes bench/results/warehouse_age.json.

`make bench-cycle` times cycles on a warehouse that is four cycles old. A served warehouse
keeps every prediction run of its retention (`PREWARM_PREDICTION_RETENTION`, 2 days: 576
runs of 5 minutes, 118 forecast rows a client each), so a read that scans every run costs
more every cycle until the retention's end. Here a warehouse of `--clients` synthetic
clients x 14 days is aged to each `--runs` count: that many prediction runs, one every 5
minutes up to the newest bucket (forecasts of 6 metrics x 20 steps, exceedance of 12 steps a
client and run; values random, shapes those of real runs), and every bucket before the
newest scored. Then each code version (this checkout: `after`; `--baseline REF`: `before`),
each in a fresh interpreter, times the cycle's reads of those tables, median of 3:

  read_unscored           scoring: the buckets waiting, with their latest forecast
  read_latest_forecasts   planning: every client's newest run

`growth` is each read's time at the most runs over its time at the fewest, per version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runtime_pool import checkout  # bench/ is the script's directory

RESULTS = Path(__file__).parent / "results" / "warehouse_age.json"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)
READS = ("read_unscored", "read_latest_forecasts")


def build_warehouse(path: Path, clients: int, days: int) -> datetime:
    """A warehouse of synthetic usage, as ingest loads it; returns its newest bucket."""
    from core.times import utc_now
    from warehouse.ingest import BatchRecord, load_batch
    from warehouse.sources.synthetic import generate_synthetic

    batch = generate_synthetic(clients, days, END, freq_seconds=300, seed=7)
    record = BatchRecord("bench-age", "loaded", batch.rows.height, batch.rows.height, 0, "")
    load_batch(path, batch, batch.rows, batch.rows.clear(), record, utc_now())
    newest: datetime = batch.rows.get_column("ts").max()  # type: ignore[assignment]
    return newest


def age_to(
    path: Path, runs: int, aged: int, newest: datetime, issued: datetime | None = None
) -> int:
    """Add prediction runs `aged`..`runs - 1` back from the newest bucket (run k's origin
    is k + 1 buckets before it) and score their buckets; returns the forecast rows. Runs
    are issued a minute after their origin, or 5 minutes apart before `issued` (the wall
    clock a served cycle prunes them by)."""
    import duckdb

    from core.vocabulary import METRICS

    metrics = ", ".join(f"'{m}'" for m in METRICS)
    origin = f"TIMESTAMP '{newest}' - INTERVAL 5 MINUTE * (r.range + 1)"
    generated = (
        f"{origin} + INTERVAL 1 MINUTE"
        if issued is None
        else f"TIMESTAMP '{issued}' - INTERVAL 5 MINUTE * (r.range + 1)"
    )
    runs_sql = f"range({aged}, {runs}) r"
    clients = "(SELECT client_id FROM clients) c"
    with duckdb.connect(str(path)) as con:
        con.execute(
            f"""
            INSERT INTO forecasts
            SELECT c.client_id, m.metric, {origin}, {origin} + INTERVAL 5 MINUTE * h.range,
                   h.range::INTEGER, random(), 1 + random(), 2 + random(),
                   'forecaster-' || c.client_id, '1', {generated}
            FROM {runs_sql}, {clients}, (SELECT unnest([{metrics}]) AS metric) m,
                 range(1, 21) h
            ORDER BY r.range DESC
            """
        )
        con.execute(
            f"""
            INSERT INTO forecast_exceedance
                (client_id, origin, ts, horizon, level, p_exceed, model_version, generated_at)
            SELECT c.client_id, {origin}, {origin} + INTERVAL 5 MINUTE * h.range,
                   h.range::INTEGER, 1.0, random(), '1', {generated}
            FROM {runs_sql}, {clients}, range(1, 13) h
            ORDER BY r.range DESC
            """
        )
        con.execute(
            f"""
            INSERT INTO forecast_scores (client_id, window_start, window_end, metric, actual,
                                         scored_at)
            SELECT c.client_id, {origin}, {origin} + INTERVAL 5 MINUTE, m.metric, 1.0,
                   {origin} + INTERVAL 5 MINUTE
            FROM {runs_sql}, {clients}, (SELECT unnest([{metrics}]) AS metric) m
            ORDER BY r.range DESC
            """
        )
        row = con.execute("SELECT count(*) FROM forecasts").fetchone()
    return int(row[0]) if row else 0


def measure(path: Path, repeats: int) -> dict[str, Any]:
    """Each read's median seconds and rows, in this interpreter's prewarm."""
    import warehouse
    from warehouse.predictions import read_latest_forecasts
    from warehouse.scores import read_unscored

    calls = {
        "read_unscored": lambda: read_unscored(path).height,
        "read_latest_forecasts": lambda: sum(f.height for f in read_latest_forecasts(path)),
    }
    result: dict[str, Any] = {"imported": str(Path(warehouse.__file__).resolve().parent.parent)}
    for name, call in calls.items():
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            rows = call()
            seconds.append(time.perf_counter() - started)
        result[name] = {"s": round(statistics.median(seconds), 3), "rows": rows}
    return result


def run_measure(code: Path, path: Path, repeats: int) -> dict[str, Any]:
    """`measure` in a fresh interpreter that imports prewarm from `code`."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(path)]
        + ["--repeats", str(repeats)],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {code} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if Path(result.pop("imported")) != code.resolve():
        raise RuntimeError(f"measured other code than {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--runs", default="4,96,288,576", help="prediction runs retained")
    parser.add_argument("--baseline", help="a git ref whose code is measured as 'before'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.repeats)))
        return

    counts = sorted(int(n) for n in args.runs.split(","))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warehouse-age-") as work:
        codes = {"after": REPO}
        if args.baseline:
            codes["before"] = checkout(args.baseline, Path(work) / "before-code")
        path = Path(work) / "warehouse.duckdb"
        started = time.perf_counter()
        newest = build_warehouse(path, args.clients, args.days)
        print(f"{args.clients} clients x {args.days} days in {time.perf_counter() - started:.0f} s")
        aged = 0
        for runs in counts:
            forecast_rows = age_to(path, runs, aged, newest)
            aged = runs
            row: dict[str, Any] = {"retained_runs": runs, "forecast_rows": forecast_rows}
            for name, code in codes.items():
                row[name] = run_measure(code, path, args.repeats)
            rows.append(row)
            print(_line(row), flush=True)
    result = {
        "clients": args.clients,
        "runs": rows,
        "growth": {
            name: {read: _growth(rows, name, read) for read in READS}
            for name in (["after", "before"] if args.baseline else ["after"])
        },
        "baseline": args.baseline,
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"growth from {counts[0]} to {counts[-1]} runs: {result['growth']}; wrote {RESULTS}")


def _growth(rows: list[dict[str, Any]], code: str, read: str) -> float:
    return round(rows[-1][code][read]["s"] / max(rows[0][code][read]["s"], 1e-3), 1)


def _line(row: dict[str, Any]) -> str:
    parts = [f"{row['retained_runs']:>4} runs ({row['forecast_rows']:,} forecast rows):"]
    for read in READS:
        times = ", ".join(
            f"{code} {row[code][read]['s']:.2f} s" for code in ("before", "after") if code in row
        )
        parts.append(f"{read} {times}")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
