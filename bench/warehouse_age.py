"""Warehouse-age benchmark: what the cycle's reads of its own history cost as it piles up.

Run with `make bench-warehouse-age` (or `python bench/warehouse_age.py --clients 1000
--runs 4,96,288,576,2016 --baseline REF`). Writes bench/results/warehouse_age.json.

`make bench-cycle` times cycles on a warehouse four cycles old. A served warehouse keeps
every prediction run of its retention (`PREWARM_PREDICTION_RETENTION`, 2 days: 576 runs of
5 minutes, 118 forecast rows a client each) and the cycle's history (plans, scores: 7 days
since `PREWARM_HISTORY_RETENTION`, for ever before), so a read that scans all of it costs
more every cycle. Here a warehouse of `--clients` synthetic clients x 14 days is aged to
each `--runs` count of cycles, one every 5 minutes up to the newest bucket: their prediction
runs (at most the 576 the prediction retention keeps; forecasts of 6 metrics x 20 steps,
exceedance of 12 steps a client and run; values random, shapes those of real runs), every
bucket before the newest scored, and an applied plan a cycle (12 windows of a member a
client, with its config). Then each code version (this checkout: `after`; `--baseline REF`:
`before`), each in a fresh interpreter, times the cycle's reads of those tables, median of 3:

  read_unscored           scoring: the buckets waiting, with their latest forecast
  read_planned_capacity   scoring: the members the plans held for those buckets
  read_score_history      drift detection: the recent scores
  read_latest_forecasts   planning: every client's newest run
  read_recent_sizes       planning: the member sizes of the plans in the scale-down delay
  api_views_50            the API: 50 clients' views (profile, composite, plan terms), as
                          it re-reads each client's on its first request after a cycle

`growth` is each read's time at the most runs over its time at the fewest, per version."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runtime_pool import checkout, measure_in  # bench/ is the script's directory

RESULTS = Path(__file__).parent / "results" / "warehouse_age.json"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 1, 19)
STEP = timedelta(minutes=5)
READS = (
    "read_unscored",
    "read_latest_forecasts",
    "read_planned_capacity",
    "read_score_history",
    "read_recent_sizes",
    "api_views_50",
)
PREDICTION_RUNS = 576  # PREWARM_PREDICTION_RETENTION (2 days) of 5-minute cycles
VIEWED = [f"c{i:04d}" for i in range(0, 1000, 20)]  # 50 clients' API views


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
    path: Path,
    runs: int,
    aged: int,
    newest: datetime,
    issued: datetime | None = None,
    plans: bool = True,
) -> int:
    """Add cycles `aged`..`runs - 1` back from the newest bucket (cycle k's origin is k + 1
    buckets before it): their prediction runs (up to the prediction retention's
    `PREDICTION_RUNS`), their scored buckets and, with `plans`, their applied plans (12
    windows a client, its member's config; sequence numbers below any real plan's).
    Returns the forecast rows. Runs are issued a minute after their origin, or 5 minutes
    apart before `issued` (the wall clock a served cycle prunes them by)."""
    import duckdb

    from core.vocabulary import METRICS

    metrics = ", ".join(f"'{m}'" for m in METRICS)
    origin = f"TIMESTAMP '{newest}' - INTERVAL 5 MINUTE * (r.range + 1)"
    generated = (
        f"{origin} + INTERVAL 1 MINUTE"
        if issued is None
        else f"TIMESTAMP '{issued}' - INTERVAL 5 MINUTE * (r.range + 1)"
    )
    runs_sql = f"range({min(aged, PREDICTION_RUNS)}, {min(runs, PREDICTION_RUNS)}) r"
    history_sql = f"range({aged}, {runs}) r"
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
                                         covered, pinball, scored_at)
            SELECT c.client_id, {origin}, {origin} + INTERVAL 5 MINUTE, m.metric, 1.0,
                   random() < 0.8, random(), {generated} + INTERVAL 5 MINUTE
            FROM {history_sql}, {clients}, (SELECT unnest([{metrics}]) AS metric) m
            ORDER BY r.range DESC
            """
        )
        if plans:
            _age_plans(con, history_sql, origin, generated)
        _record_latest_runs(con)
        row = con.execute("SELECT count(*) FROM forecasts").fetchone()
    return int(row[0]) if row else 0


def _record_latest_runs(con: Any) -> None:
    """Each client's newest run, recorded as prediction records it."""
    from warehouse.db import fetch_frame
    from warehouse.predictions import record_latest_runs

    newest = "SELECT client_id, max(generated_at) AS generated_at FROM forecasts GROUP BY 1"
    record_latest_runs(con, [fetch_frame(con, newest)])


def _age_plans(con: Any, history_sql: str, origin: str, generated: str) -> None:
    """One applied plan a cycle: 12 windows of one shadow member a client, as the planner
    records them, with the rendered config sizing reads."""
    plan = "'aged-' || r.range::VARCHAR"
    con.execute(
        f"""
        INSERT INTO plans (plan_id, created_at, first_window, tick_seconds, windows,
                           buffer_seconds, dry_run, totals, seq, recorded_at)
        SELECT {plan}, {origin}, {origin}, 300, 12, 0, false, '{{}}', -1 - r.range, {generated}
        FROM {history_sql} ORDER BY r.range DESC
        """
    )
    con.execute(
        f"""
        INSERT INTO allocations (plan_id, client_id, window_start, window_end, tier, count,
                                 host, mode, expected_cost, expected_cold_starts, priority,
                                 config, member_cpu, member_memory_mb)
        SELECT {plan}, c.client_id, {origin} + INTERVAL 5 MINUTE * w.range,
               {origin} + INTERVAL 5 MINUTE * (w.range + 1), 'shadow', 1, 'h', 'provision',
               random(), random(), 1, '{{"cpu": 0.5, "memory_mb": 512, "cache": "lru"}}',
               0.5, 512
        FROM {history_sql}, (SELECT client_id FROM clients) c, range(12) w
        ORDER BY r.range DESC
        """
    )
    con.execute(
        f"""
        INSERT INTO plan_targets
        SELECT {plan}, c.client_id, 'h', 0, 1, 0, 1, 0, NULL
        FROM {history_sql}, (SELECT client_id FROM clients) c ORDER BY r.range DESC
        """
    )


def measure(path: Path, repeats: int) -> dict[str, Any]:
    """Each read's median seconds and rows, in this interpreter's prewarm."""
    # bench/ comes first on a script's sys.path, and its api.py would stand in for the
    # `api` package measured here.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import inspect

    import duckdb

    import warehouse
    from api.views import read_client_views
    from warehouse import scores
    from warehouse.plans import read_recent_sizes
    from warehouse.predictions import read_latest_forecasts
    from warehouse.scores import read_unscored

    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute("SELECT max(ts), now()::TIMESTAMP FROM usage").fetchone()
    newest, issued = row if row else (None, None)
    # Each version's own signature: the bounded reads take what bounds them.
    read_planned_capacity: Any = scores.read_planned_capacity
    read_score_history: Any = scores.read_score_history
    bounded = "since" in inspect.signature(read_planned_capacity).parameters
    calls = {
        "read_unscored": lambda: read_unscored(path).height,
        "read_latest_forecasts": lambda: sum(f.height for f in read_latest_forecasts(path)),
        "read_planned_capacity": lambda: (
            (read_planned_capacity(path, newest) if bounded else read_planned_capacity(path)).height
        ),
        "read_score_history": lambda: (
            (read_score_history(path, 36) if bounded else read_score_history(path)).height
        ),
        "read_recent_sizes": lambda: len(read_recent_sizes(path, issued - timedelta(minutes=10))),
        # What the API re-reads for each client after a cycle changed the warehouse.
        "api_views_50": lambda: len(read_client_views(path, VIEWED, None)),
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
    return measure_in(Path(__file__), code, ["--measure", str(path), "--repeats", str(repeats)])


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
