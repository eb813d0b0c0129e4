"""Ingest benchmark: synthetic 1000 clients x 14 days at 5 min, validate + load, vs bare DuckDB.

Run with `make bench-ingest`. Writes bench/results/ingest.json; the numbers go into
docs/BENCHMARKS.md. The baseline (DuckDB's own load of the same rows from Parquet into a
fresh file) is measured in the same run, so the ratio is comparable across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import duckdb

from core.times import utc_now
from warehouse.ingest import BatchRecord, load_batch
from warehouse.sources.synthetic import generate_synthetic
from warehouse.validation import _context, validate_batch

RESULTS = Path(__file__).parent / "results" / "ingest.json"
END = datetime(2026, 1, 19)


def _bare_load_seconds(parquet: Path, workdir: Path, run: int) -> float:
    target = workdir / f"bare-{run}.duckdb"
    con = duckdb.connect(str(target))
    started = time.perf_counter()
    con.execute(f"CREATE TABLE usage AS SELECT * FROM read_parquet('{parquet}')")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def _pipeline_seconds(batch, workdir: Path, run: int) -> tuple[float, float, float]:
    """Validate + load into a fresh warehouse; return (total, validate, load) seconds."""
    target = workdir / f"prewarm-{run}.duckdb"
    started = time.perf_counter()
    report = validate_batch(batch)
    validated = time.perf_counter()
    record = BatchRecord(f"bench-{run}", "loaded", report.rows_in, report.good.height, 0, "")
    load_batch(target, batch, report.good, report.quarantine, record, utc_now())
    loaded = time.perf_counter()
    return loaded - started, validated - started, loaded - validated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    batch = generate_synthetic(args.clients, args.days, END, freq_seconds=300, seed=7)
    generate_s = time.perf_counter() - started
    rows = batch.rows.height
    print(
        f"generated {rows:,} rows ({args.clients} clients x {args.days} days) in {generate_s:.2f} s"
    )

    started = time.perf_counter()
    _context()  # importing GX and building its context happens once per process
    gx_startup_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        parquet = workdir / "usage.parquet"
        batch.rows.write_parquet(parquet)
        pipeline, validate, load, bare = [], [], [], []
        for run in range(args.repeats):
            total_s, validate_s, load_s = _pipeline_seconds(batch, workdir, run)
            pipeline.append(total_s)
            validate.append(validate_s)
            load.append(load_s)
            bare.append(_bare_load_seconds(parquet, workdir, run))
            print(
                f"run {run}: prewarm {total_s:.2f} s (validate {validate_s:.2f},"
                f" load {load_s:.2f}), bare DuckDB {bare[-1]:.2f} s"
            )

    pipeline_s = statistics.median(pipeline)
    bare_s = statistics.median(bare)
    result = {
        "clients": args.clients,
        "days": args.days,
        "rows": rows,
        "generate_s": round(generate_s, 3),
        "gx_startup_s": round(gx_startup_s, 3),
        "validate_s": round(statistics.median(validate), 3),
        "load_s": round(statistics.median(load), 3),
        "end_to_end_s": round(pipeline_s, 3),
        "end_to_end_rows_per_s": round(rows / pipeline_s),
        "bare_duckdb_parquet_s": round(bare_s, 3),
        "bare_duckdb_rows_per_s": round(rows / bare_s),
        "ratio_to_bare": round(bare_s / pipeline_s, 3),
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "measured_at": utc_now().isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"end to end {result['end_to_end_rows_per_s']:,} rows/s (target >= 1,000,000);"
        f" {result['ratio_to_bare']:.2f}x bare DuckDB (target >= 0.3)"
    )


if __name__ == "__main__":
    main()
