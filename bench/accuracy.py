"""Forecast accuracy benchmark: rolling-origin backtests on real datacenter traces.

Runs `backtest_series` (1-hour horizon, 7 test days, shortened with a note where a trace is
too short) on each bare CSV in ../shared/traces/datacenter and prints, per file, a markdown
table: the LightGBM p50 wMAPE against the best baseline on the same points (naive, seasonal
naive day or week), the ratio, the p10-p90 coverage and the mean pinball loss. Targets: ratio
<= 1 on every column and <= 0.9 on average; coverage within [0.75, 0.85] on every column.
Also times `fit_client_forecaster` on seeded synthetic clients (14 days, 6 metrics).
Writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from models.backtest import backtest_series, read_bare_csv
from models.forecaster import ForecastConfig, fit_client_forecaster, needs_fallback
from warehouse.sources.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces" / "datacenter"
FILES = ("alibaba2018_300s.csv", "google2019_300s.csv")
RESULTS = Path(__file__).parent / "results" / "accuracy.json"
COVERAGE_RANGE = (0.75, 0.85)
MEAN_RATIO_TARGET = 0.9


def _summarise(result: dict) -> tuple[list[dict], dict]:
    """Per-column rows (model vs best baseline) and the file's verdict."""
    rows = []
    for column, scores in result["metrics"].items():
        baselines = {k: v["wmape"] for k, v in scores.items() if k != "lightgbm"}
        best = min(baselines, key=baselines.__getitem__)
        model = scores["lightgbm"]
        rows.append(
            {
                "column": column,
                "lightgbm_wmape": model["wmape"],
                "best_baseline": best,
                "best_baseline_wmape": baselines[best],
                "ratio": model["wmape"] / baselines[best],
                "coverage_80": model["coverage_80"],
                "pinball": model["pinball"],
            }
        )
    ratios = [r["ratio"] for r in rows]
    coverages = [r["coverage_80"] for r in rows]
    verdict = {
        "mean_ratio": statistics.mean(ratios),
        "max_ratio": max(ratios),
        "min_coverage": min(coverages),
        "max_coverage": max(coverages),
        "never_worse_than_best_baseline": max(ratios) <= 1.0,
        "mean_ratio_ok": statistics.mean(ratios) <= MEAN_RATIO_TARGET,
        "coverage_ok": all(COVERAGE_RANGE[0] <= c <= COVERAGE_RANGE[1] for c in coverages),
    }
    return rows, verdict


def _markdown(name: str, result: dict, rows: list[dict], verdict: dict) -> str:
    lines = [
        f"### {name} (test days: {result.get('test_days', '7')}, {result['runtime_s']:.0f} s)",
        "",
        "| column | lightgbm wmape | best baseline | baseline wmape | ratio | coverage 80"
        " | pinball |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['column']} | {r['lightgbm_wmape']:.4f} | {r['best_baseline']} |"
            f" {r['best_baseline_wmape']:.4f} | {r['ratio']:.3f} | {r['coverage_80']:.3f} |"
            f" {r['pinball']:.4g} |"
        )
    lines.append(
        f"| **mean** | | | | **{verdict['mean_ratio']:.3f}** |"
        f" {verdict['min_coverage']:.3f}..{verdict['max_coverage']:.3f} | |"
    )
    for note in result.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)


def _fit_seconds(clients: int) -> dict:
    """CPU and wall seconds of one fit per synthetic client (14 days, 6 metrics, 5 min)."""
    batch = generate_synthetic(clients, 14, datetime(2026, 1, 19), freq_seconds=300, seed=7)
    config = ForecastConfig()
    attributes = {r["client_id"]: r for r in batch.clients.to_dicts()}
    cpu, wall = [], []
    for (client_id,), history in batch.rows.partition_by("client_id", as_dict=True).items():
        if needs_fallback(history, config):
            continue
        started, started_cpu = time.perf_counter(), time.process_time()
        fit_client_forecaster(history, config, batch.calendar, attributes[client_id])
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return {
        "clients_fitted": len(cpu),
        "cpu_s_median": round(statistics.median(cpu), 3),
        "wall_s_median": round(statistics.median(wall), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES)
    parser.add_argument("--test-days", type=float, default=7)
    parser.add_argument("--fit-clients", type=int, default=10, help="0 skips the fit timing")
    args = parser.parse_args()

    report: dict = {"files": {}}
    for name in FILES:
        frame = read_bare_csv(args.traces / name, 300)
        result = backtest_series(frame, 300, horizon_steps=12, test_days=args.test_days)
        rows, verdict = _summarise(result)
        print(_markdown(name, result, rows, verdict) + "\n", flush=True)
        report["files"][name] = {"backtest": result, "table": rows, "verdict": verdict}
    if args.fit_clients:
        report["fit_per_client"] = _fit_seconds(args.fit_clients)
        print(f"fit_client_forecaster: {json.dumps(report['fit_per_client'])}")
    report["config"] = {
        k: v for k, v in ForecastConfig().__dict__.items() if isinstance(v, int | float | bool)
    }
    report["machine"] = f"{platform.machine()}, {platform.python_version()}"
    report["measured_at"] = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    pl.Config.set_tbl_rows(50)
    main()
