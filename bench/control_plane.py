"""Control-plane benchmark: training on shared services against the embedded default.

Run with `python bench/control_plane.py` (or `make bench-fleet`; needs Debian's `postgresql`,
like tests/control_plane). Writes bench/results/control_plane.json.

One synthetic warehouse (`--clients`, 200 by default, x `--days` days) is trained twice with
`prewarm train`, each in a fresh registry, from the same copy of the warehouse:

  embedded   the default: a process pool of PREWARM_TRAIN_WORKERS=2 on this machine,
             MLflow on an SQLite file, a temporary Prefect API
  shared     the tests' control plane (`tests.control_plane.conftest`): a Dask scheduler
             with two worker processes, `mlflow server` on PostgreSQL with its artifacts on
             a shared path, and a Prefect server on PostgreSQL

For each: the flow's own wall time ("in X s" of its summary: fits, scoring, registration),
the command's wall time (with interpreter and Prefect start-up), clients per minute, and
the holdout wMAPE every client got (from `model_runs`). `ratio_clients_per_min` =
shared / embedded; `max_wmape_difference` is the largest per-client gap (the fits are
deterministic: the same data must give the same model wherever it is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.control_plane.conftest

import duckdb  # noqa: E402

from tests.control_plane.conftest import (  # noqa: E402
    ControlPlaneUnavailable,
    started_control_plane,
)

RESULTS = Path(__file__).parent / "results" / "control_plane.json"
END = "2026-01-19"
SUMMARY = re.compile(r"Registered (\d+) forecasters .* in ([\d.]+) s; MLflow ([\d.]+) s")


def _env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PREWARM_"))}
    return {**base, "PREWARM_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra}


def _prewarm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
    )
    if result.returncode != 0:
        raise SystemExit(f"prewarm {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def _train(data_dir: Path, extra: dict[str, str]) -> dict[str, Any]:
    env = _env(data_dir, extra)
    began = time.perf_counter()
    result = _prewarm(env, "train")
    command_s = time.perf_counter() - began
    match = SUMMARY.search(result.stdout)
    if match is None:
        raise SystemExit(f"no training summary in:\n{result.stdout[-2000:]}")
    clients, flow_s, mlflow_s = int(match[1]), float(match[2]), float(match[3])
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        wmape = dict(con.execute("SELECT client_id, wmape FROM model_runs").fetchall())
    return {
        "clients": clients,
        "flow_s": flow_s,
        "command_s": round(command_s, 1),
        "mlflow_s": mlflow_s,
        "clients_per_min": round(clients / flow_s * 60, 1),
        "mean_wmape": round(statistics.fmean(w for w in wmape.values() if w is not None), 4),
        "wmape": wmape,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)

    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prewarm-bench-cp-"))
    try:
        seed_dir = work / "seed"
        _prewarm(
            _env(seed_dir, {}),
            *("ingest", "--clients", str(args.clients), "--days", str(args.days), "--end", END),
        )
        dirs = {name: work / name / "data" for name in ("embedded", "shared")}
        for target in dirs.values():
            shutil.copytree(seed_dir, target)
        print(f"training {args.clients} clients on the embedded default ...", flush=True)
        embedded = _train(
            dirs["embedded"],
            {
                "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{work / 'embedded' / 'mlflow.db'}",
                "PREWARM_MLFLOW_ARTIFACTS_DIR": str(work / "embedded" / "artifacts"),
            },
        )
        print(f"  {embedded['clients_per_min']} clients/min", flush=True)
        try:
            with started_control_plane() as plane:
                print("training on Dask + MLflow server + Prefect, on PostgreSQL ...", flush=True)
                shared = _train(dirs["shared"], plane.environment())
        except ControlPlaneUnavailable as reason:
            raise SystemExit(f"cannot run the shared control plane here: {reason}") from None
        print(f"  {shared['clients_per_min']} clients/min", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common = sorted(set(embedded["wmape"]) & set(shared["wmape"]))
    gaps = [
        abs(embedded["wmape"][c] - shared["wmape"][c])
        for c in common
        if embedded["wmape"][c] is not None and shared["wmape"][c] is not None
    ]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "clients": args.clients,
        "days": args.days,
        "embedded": {k: v for k, v in embedded.items() if k != "wmape"},
        "shared": {k: v for k, v in shared.items() if k != "wmape"},
        "ratio_clients_per_min": round(shared["clients_per_min"] / embedded["clients_per_min"], 3),
        "clients_compared": len(common),
        "max_wmape_difference": round(max(gaps), 6) if gaps else None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
