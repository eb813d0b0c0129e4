"""Training benchmark: 200 synthetic clients x 14 days at 5 min, all six metrics, through the
real `train-forecasters` flow (fit, holdout scoring, plot, MLflow registration and gate).

Run with `make bench-train`. Reports wall time of train + register, clients per minute and
the share of that time spent inside MLflow calls, for each of `--repeat` runs (each on a
fresh warehouse and MLflow store) and their median: this machine's speed drifts by 10-20 %
over minutes, so one run says little. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train.json"
END = datetime(2026, 1, 19)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as prefect_home:
        # One Prefect home (and temporary API) for all runs.
        os.environ["PREFECT_HOME"] = prefect_home
        runs = [_one_run(args, i) for i in range(args.repeat)]
    median = sorted(runs, key=lambda r: r["clients_per_minute"])[len(runs) // 2]
    result = {
        "clients": args.clients,
        "days": args.days,
        "workers": args.workers,
        "median_run": median,
        "clients_per_minute_runs": [r["clients_per_minute"] for r in runs],
        "mlflow_share_of_worker_time_runs": [r["mlflow_share_of_worker_time"] for r in runs],
        "runs": runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "measured_at": datetime.now().isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    per_minute = result["clients_per_minute_runs"]
    print(
        f"{median['clients_per_minute']} clients/min, median of {len(runs)} runs"
        f" ({min(per_minute)}..{max(per_minute)}; target >= 100); MLflow"
        f" {median['mlflow_share']:.0%} of the wall time,"
        f" {median['mlflow_share_of_worker_time']:.0%} of the workers' time (target <= 25%)"
    )


def _one_run(args: argparse.Namespace, index: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        # The flow and its worker processes read their settings from the environment.
        os.environ.update(
            {
                "PREWARM_DATA_DIR": str(home / "data"),
                "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                "PREWARM_MLFLOW_ARTIFACTS_DIR": str(home / "artifacts"),
                "PREWARM_TRAIN_WORKERS": str(args.workers),
            }
        )
        from flows.settings import Settings, configure_environment

        settings = Settings()
        configure_environment(settings)
        from flows.prefect_api import prefect_api_url

        # One Prefect API for this process and the fit workers it starts (as the CLI does).
        configure_environment(settings, prefect_api_url=prefect_api_url(settings))
        from core.times import utc_now
        from flows.train import train_flow
        from warehouse.ingest import BatchRecord, load_batch
        from warehouse.sources.synthetic import generate_synthetic
        from warehouse.validation import validate_batch

        batch = generate_synthetic(args.clients, args.days, END, freq_seconds=300, seed=7)
        report = validate_batch(batch)
        record = BatchRecord("bench", "loaded", report.rows_in, report.good.height, 0, "")
        load_batch(
            settings.warehouse_path, batch, report.good, report.quarantine, record, utc_now()
        )
        print(f"run {index + 1}: {report.good.height:,} rows for {args.clients} clients")

        started = time.perf_counter()
        summary = train_flow(settings)()
        wall_with_prefect_startup = time.perf_counter() - started

    registered = len(summary.registrations)
    return {
        "registered": registered,
        "failed": len(summary.failures),
        "promoted": summary.promoted,
        "global_fallback": len(summary.fallbacks),
        "flow_wall_s": round(summary.wall_seconds, 2),
        "wall_with_prefect_startup_s": round(wall_with_prefect_startup, 2),
        "clients_per_minute": round(registered / summary.wall_seconds * 60, 1),
        "fit_s_total": round(summary.fit_seconds, 2),
        "mlflow_s": round(summary.mlflow_seconds, 2),
        # MLflow calls run inside the workers, in parallel: their summed time against the wall
        # clock, and against the workers' time (wall x workers), are both reported.
        "mlflow_share": round(summary.mlflow_seconds / summary.wall_seconds, 3),
        "mlflow_share_of_worker_time": round(
            summary.mlflow_seconds / (summary.wall_seconds * args.workers), 3
        ),
    }


if __name__ == "__main__":
    main()
