"""Cycle benchmark: what one pass of the loop costs against the client count (issue 16).

Run with `make bench-cycle` (or `python bench/cycle.py --clients 1000 3000 10000`). Writes
bench/results/cycle.json.

For each client count N: a warehouse of N synthetic clients x 14 days at 5 min that follows
the synthetic feed, with one forecaster per client trained for real by the `train-forecasters`
flow. That state is built once and cached under bench/.cache/cycle/N<N>/ (git-ignored; delete
it to rebuild; `--rebuild` does): training costs ~2.1 s of a core per client (1,000 clients:
36 minutes on 2 cores; 10,000: hours).

`--models-from M` builds a missing cache of N > M clients without training: the warehouse is
ingested from the synthetic feed as above, and each client's registered version is written
from the trained N<M> cache's forecasters (bench/cycle_copies.py: ~0.15 s a client with its
check, N3000 in 8 minutes; N10000 should take about 25).
The first M clients are N<M>'s very clients (same ids, attributes and history: checked) and
keep the forecasters trained on them; each other client gets a copy of the forecaster of an
N<M> client of its archetype, with its own id, attributes and level (scales), registered as
version 1 of its own model. The cycle's cost per client is the same as with trained models:
each client loads its own registered version and scores its own history with it. But the
copied clients' forecasts come from a model trained on another synthetic client, so their
accuracy, and the pool sizes planned from them, are not what training would give: every
run says what its models were (`models`: "1000 trained, 9000 copies of them").

Each run copies the cached warehouse and registry database (the artifacts are read in
place: a cycle never writes them) and runs the real `prewarm-cycle` flow on the process
runtime, with an inventory of `--hosts` hosts of 32 cores and `--host-memory-gb` each (2 x 64
GiB: several hundred members; process members are real processes of ~15 MB each, so an
inventory of thousands would exhaust this machine's 24 GiB):

  warm-up cycles  clock = the history's end, then 5, 10, ... minutes later: until every
                  client with a model has a forecast (`latest_runs`), at most
                  ceil(N / budget) + 1 cycles, where the budget is
                  PREWARM_PREDICT_CLIENTS_PER_CYCLE (default 2,000: a cycle predicts at
                  most that many clients, the oldest forecasts first; up to it, one cycle
                  predicts every client). Each advances the clock: a cycle on the watermark
                  and models of the last prediction predicts nothing. The first creates the
                  pool. Reported apart, not in the median: `first_cycle_s` is their summed
                  time, `warmup_cycles` their number (`warmup_cycles_s` each one's,
                  `warmup_predicted` the clients with a forecast after each).
  cycles 1..3     clock = 5, 10, 15 minutes after the last warm-up: each ingests the newest
                  5-minute bucket of every client from the feed, predicts, plans, applies
                  (only what changed) and scores. `cycle_s` is their median, `steps` the
                  median of each step, `ratio_to_interval` = cycle_s / 300 s.

`growth_exponent`: the slope of log(cycle_s) against log(clients) over the counts run (1 =
linear). `peak_rss_mb`: the peak resident memory of the run's process (each count runs in
a process of its own; the cycle runs in it; members are processes of their own: `members`
and `members_rss_mb` say what they held). Every member is released at the end of a run,
also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).parent / "results" / "cycle.json"
CACHE = Path(__file__).resolve().parent / ".cache" / "cycle"
END = datetime(2026, 1, 19)  # the cached history's end: the warm-up cycle's clock
DAYS = 14
INTERVAL_S = 300
CYCLES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--hosts", type=int, default=2, help="inventory hosts, 32 cores each")
    parser.add_argument("--host-memory-gb", type=int, default=64, help="memory of each host")
    parser.add_argument("--workers", type=int, default=2, help="training workers (cache)")
    parser.add_argument("--rebuild", action="store_true", help="retrain the cached models")
    parser.add_argument(
        "--models-from",
        type=int,
        metavar="M",
        help="build a missing cache of more than M clients without training: its forecasters "
        "are copies of the trained N<M> cache's (bench/cycle_copies.py); counts up to M train",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--aged-runs",
        type=int,
        default=0,
        help="age each copied warehouse first: this many prediction runs retained, every "
        "bucket before the newest scored (576: a served warehouse at the 2-day retention; "
        "see bench/warehouse_age.py)",
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="load for another benchmark: after the warm-up print READY, then run cycles "
        "back to back until SIGUSR1 or SIGTERM (one client count; nothing is written)",
    )
    args = parser.parse_args()
    if args.background:
        if len(args.clients) != 1:
            parser.error("--background takes one client count")
        with tempfile.TemporaryDirectory() as prefect_home:
            os.environ["PREFECT_HOME"] = prefect_home
            cached = _cached_state(args.clients[0], args.workers, args.rebuild, args.models_from)
            _run_until_stopped(args.clients[0], cached, args.hosts, args.host_memory_gb)
        return

    if len(args.clients) > 1:
        # A process per count: prediction's model cache lives as long as its process (keyed
        # by client and version, which a count shares with the smaller ones), and the peak
        # RSS reported is the process's.
        runs = [_run_in_child(clients, sys.argv[1:]) for clients in args.clients]
    else:
        with tempfile.TemporaryDirectory() as prefect_home:
            os.environ["PREFECT_HOME"] = prefect_home
            clients = args.clients[0]
            cached = _cached_state(clients, args.workers, args.rebuild, args.models_from)
            runs = [_run(clients, cached, args.hosts, args.host_memory_gb, args.aged_runs)]
            print(json.dumps(runs[-1], indent=2), flush=True)
    result = {
        "runs": runs,
        "growth_exponent": _growth_exponent(runs),
        "interval_s": INTERVAL_S,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "measured_at": datetime.now().isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(
            f"{run['clients']:>6} clients: cycle {run['cycle_s']:.1f} s "
            f"({run['ratio_to_interval']:.2f} of {INTERVAL_S} s), steps {run['steps']}, "
            f"warm-up {run['first_cycle_s']:.1f} s in {run['warmup_cycles']} cycles, "
            f"peak RSS {run['peak_rss_mb']:.0f} MB; models: {run['models']}"
        )
    print(f"growth exponent {result['growth_exponent']}")


def _run_in_child(clients: int, argv: list[str]) -> dict[str, Any]:
    """One count's run by this script in a process of its own (`argv`: this run's options,
    whose --clients and --out are replaced)."""
    kept, skipping = [], False
    for arg in argv:
        if arg in ("--clients", "--out"):
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        kept.append(arg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, __file__, *kept, "--clients", str(clients), "--out", str(out)]
        subprocess.run(command, check=True)
        run: dict[str, Any] = json.loads(out.read_text())["runs"][0]
        return run


def _environment(home: Path, clients: int, artifacts: Path) -> dict[str, str]:
    """The settings one client count runs under (read by the flows from the environment)."""
    return {
        "PREWARM_DATA_DIR": str(home / "data"),
        "PREWARM_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREWARM_MLFLOW_ARTIFACTS_DIR": str(artifacts),
        "PREWARM_SYNTHETIC_CLIENTS": str(clients),
        "PREWARM_SYNTHETIC_DAYS": str(DAYS),
        "PREWARM_RUNTIME": "process",
        "PREWARM_POOL": f"bench-cycle-{clients}",
    }


def _configure(env: dict[str, str]) -> Any:
    os.environ.update(env)
    from flows.prefect_api import prefect_api_url
    from flows.settings import Settings, configure_environment

    settings = Settings()
    configure_environment(settings)
    configure_environment(settings, prefect_api_url=prefect_api_url(settings))
    return settings


def _cached_state(
    clients: int, workers: int, rebuild: bool, models_from: int | None = None
) -> Path:
    """The cached warehouse + registry of `clients` synthetic clients, built if missing:
    trained, or with `models_from` < `clients` copied from that trained cache (built first
    if missing; `rebuild` rebuilds only this one)."""
    home = CACHE / f"N{clients}"
    done = home / "ready.json"
    if done.exists() and not rebuild:
        return home
    source = None
    if models_from is not None and models_from < clients:
        source = _cached_state(models_from, workers, rebuild=False)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = _environment(home, clients, home / "artifacts")
    env["PREWARM_TRAIN_WORKERS"] = str(workers)
    settings = _configure(env)
    from flows.feed import complete_feed, ingest_feed
    from flows.train import train_flow
    from warehouse.feeds import follow_feed, parse_feed

    started = time.perf_counter()
    feed = follow_feed(
        settings.warehouse_path, complete_feed(parse_feed("synthetic"), settings), now=END
    )
    ingested = ingest_feed(settings, feed, END)
    ingest_s = round(time.perf_counter() - started, 1)
    if source is None:
        print(f"N={clients}: {ingested.rows_loaded:,} usage rows; training...", flush=True)
        summary = train_flow(settings)()
        meta: dict[str, Any] = {
            "clients": clients,
            "registered": len(summary.registrations),
            "failed": len(summary.failures),
            "train_s": round(time.perf_counter() - started, 1),
        }
    else:
        from cycle_copies import copy_models

        print(
            f"N={clients}: {ingested.rows_loaded:,} usage rows in {ingest_s} s; copying the "
            f"forecasters of {source}...",
            flush=True,
        )
        meta = {"clients": clients, "ingest_s": ingest_s, **copy_models(settings, source)}
        meta["build_s"] = round(time.perf_counter() - started, 1)
    meta["built_at"] = datetime.now().isoformat(timespec="seconds")
    done.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"N={clients}: cached in {home} ({meta})", flush=True)
    return home


def _models_note(cached: Path) -> str:
    """What the cache's forecasters are: trained, or copies (`--models-from`)."""
    meta = json.loads((cached / "ready.json").read_text())
    if meta.get("models_from"):
        return (
            f"{meta['trained']} trained, {meta['copied']} copies of them (forecasters of "
            f"N{meta['models_from']}, see bench/cycle_copies.py)"
        )
    return f"{meta.get('registered', '?')} trained"


def _inventory(path: Path, hosts: int, memory_gb: int) -> Path:
    lines = []
    for i in range(hosts):
        lines += [
            "[[hosts]]",
            f'name = "bench-{i + 1}"',
            "cpu_cores = 32",
            f"memory_mb = {memory_gb * 1024}",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


@contextlib.contextmanager
def _copied_state(
    clients: int,
    cached: Path,
    hosts: int,
    memory_gb: int,
    pool: str | None = None,
    aged_runs: int = 0,
) -> Iterator[Any]:
    """Settings over a temporary copy of the cached warehouse and registry database (the
    artifacts are read in place: a cycle never writes them) and the bench inventory; the
    copy aged by `aged_runs` prediction runs (`warehouse_age.age_to`)."""
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        home = Path(tmp)
        (home / "data").mkdir()
        shutil.copy2(cached / "data" / "warehouse.duckdb", home / "data" / "warehouse.duckdb")
        shutil.copy2(cached / "mlflow.db", home / "mlflow.db")
        if aged_runs:
            from warehouse_age import age_to

            from core.times import utc_now

            warehouse = home / "data" / "warehouse.duckdb"
            newest = END - timedelta(seconds=INTERVAL_S)
            # No aged plans: their sizes would be the recent ones the first cycles size by.
            age_to(warehouse, aged_runs, 0, newest, utc_now(), plans=False)
        env = _environment(home, clients, cached / "artifacts")
        if pool is not None:
            env["PREWARM_POOL"] = pool
        env["PREWARM_INVENTORY_PATH"] = str(_inventory(home / "inventory.toml", hosts, memory_gb))
        yield _configure(env)


def _run(
    clients: int, cached: Path, hosts: int, memory_gb: int, aged_runs: int = 0
) -> dict[str, Any]:
    """Copy the cached state, run the warm-up and the timed cycles, release the pool."""
    with _copied_state(clients, cached, hosts, memory_gb, aged_runs=aged_runs) as settings:
        from flows.cycle import prewarm_cycle
        from flows.pool_admin import release_everything

        try:
            warmup = _warm_up(prewarm_cycle, settings)
            timed = [
                _timed_cycle(prewarm_cycle, END + timedelta(seconds=INTERVAL_S * k))
                for k in range(len(warmup), len(warmup) + CYCLES)
            ]
            members, members_rss = _members(settings)
            # The timed cycles' (the warm-up's are mostly creates).
            reasons = _reasons(settings, [c["plan_id"] for c in timed])
        finally:
            release_everything(settings)
    steps = {
        name: round(statistics.median(c["steps"][name] for c in timed), 3)
        for name in timed[0]["steps"]
    }
    cycle_s = round(statistics.median(c["seconds"] for c in timed), 2)
    return {
        "clients": clients,
        "models": _models_note(cached),
        "aged_runs": aged_runs,
        "cycle_s": cycle_s,
        "steps": steps,
        "ratio_to_interval": round(cycle_s / INTERVAL_S, 3),
        "cycles_s": [c["seconds"] for c in timed],
        "first_cycle_s": round(sum(c["seconds"] for c in warmup), 2),
        "warmup_cycles": len(warmup),
        "warmup_cycles_s": [c["seconds"] for c in warmup],
        "warmup_predicted": [c["forecast_clients"] for c in warmup],
        "first_cycle_steps": _summed(c["steps"] for c in warmup),
        "actions": [c["actions"] for c in timed],
        "first_cycle_actions": _summed(c["actions"] for c in warmup),
        "reasons": reasons,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "members": members,
        "members_rss_mb": members_rss,
    }


def _run_until_stopped(clients: int, cached: Path, hosts: int, memory_gb: int) -> None:
    """The warm-up cycles, READY on stdout, then cycles 5 minutes of clock apart until
    SIGUSR1 (or SIGTERM) or until the process that started it is gone; the pool is released
    either way (a cycle under way is finished first)."""
    # At the priority `prewarm up` runs its flows at: below the API the benchmark measures.
    from flows.deployments import run_as_batch
    from flows.settings import Settings

    settings = Settings()
    run_as_batch(settings.batch_nice, settings.batch_idle)
    stop = threading.Event()
    # SIGUSR1 is what a benchmark sends: a SIGTERM arriving while a flow runs goes to
    # Prefect's own handler instead of this one, and may be lost (seen once in five runs).
    for stop_signal in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: stop.set())
    parent = os.getppid()  # a benchmark killed with -9 sends no SIGTERM: its loss stops us too
    pool = f"bench-cycle-background-{clients}"
    with _copied_state(clients, cached, hosts, memory_gb, pool=pool) as settings:
        from flows.cycle import prewarm_cycle
        from flows.pool_admin import release_everything

        try:
            k = len(_warm_up(prewarm_cycle, settings)) - 1
            print("READY", flush=True)
            while not stop.is_set() and os.getppid() == parent:
                k += 1
                done = _timed_cycle(prewarm_cycle, END + timedelta(seconds=INTERVAL_S * k))
                print(f"cycle {k}: {done['seconds']} s", flush=True)
        finally:
            release_everything(settings)


def _timed_cycle(prewarm_cycle: Any, clock: datetime) -> dict[str, Any]:
    # The lead is pinned (0): the plan starts at the clock, so runs are comparable.
    summary = prewarm_cycle(at=clock, lead_seconds=0.0)
    if not summary.predicted and clock != END:
        raise RuntimeError(f"the cycle at {clock} predicted nothing: no new bucket came in")
    return {
        "seconds": round(summary.seconds, 2),
        "steps": summary.step_seconds,
        "actions": summary.actions,
        "plan_id": summary.plan_id,
    }


def _warm_up(prewarm_cycle: Any, settings: Any) -> list[dict[str, Any]]:
    """Cycles 5 minutes of clock apart from END until every client with a model has a
    forecast, at most ceil(clients / budget) + 1 of them: a cycle predicts at most
    PREWARM_PREDICT_CLIENTS_PER_CYCLE clients (`predict_clients_per_cycle`; every client
    where the setting does not exist). Each advances the clock: a cycle on the watermark
    and models of the last prediction predicts nothing (`flows.cycle._prediction_due`)."""
    from models.registry import current_aliases

    with_model = sum(
        1
        for known in current_aliases(settings.mlflow_tracking_uri).values()
        if {"champion", "challenger"} & set(known)
    )
    budget = getattr(settings, "predict_clients_per_cycle", None) or max(with_model, 1)
    limit = math.ceil(with_model / budget) + 1
    cycles: list[dict[str, Any]] = []
    while len(cycles) < limit:
        cycle = _timed_cycle(prewarm_cycle, END + timedelta(seconds=INTERVAL_S * len(cycles)))
        cycle["forecast_clients"] = _forecast_clients(settings)
        cycles.append(cycle)
        print(
            f"warm-up {len(cycles)}: {cycle['seconds']} s, {cycle['forecast_clients']} of "
            f"{with_model} clients with a model have a forecast",
            flush=True,
        )
        if cycle["forecast_clients"] >= with_model:
            return cycles
    raise RuntimeError(
        f"after {limit} warm-up cycles {cycles[-1]['forecast_clients']} of {with_model} "
        f"clients with a model have a forecast (budget {budget} a cycle)"
    )


def _forecast_clients(settings: Any) -> int:
    """How many clients have a forecast (a latest prediction run)."""
    from warehouse.db import connect, fetch_value

    with connect(settings.warehouse_path, read_only=True) as con:
        return int(fetch_value(con, "SELECT count(*) FROM latest_runs") or 0)


def _summed(parts: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the sum over the warm-up cycles (their steps' seconds, their actions)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = round(total.get(key, 0) + value, 3)
    return total


def _reasons(settings: Any, plan_ids: list[str | None]) -> list[dict[str, int]]:
    """Each of the given plans' applied actions by why the reconciler took them ("release:
    scale down"), in their order (an empty one for a plan that did nothing): what the churn
    is made of."""
    from warehouse.db import connect, fetch_frame

    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con,
            "SELECT plan_id, action || ': ' || coalesce(reason, '') AS why, count(*) AS n"
            " FROM pool_events WHERE ok AND plan_id IS NOT NULL GROUP BY plan_id, why",
        )
    return [
        {r["why"]: r["n"] for r in rows.filter(pl.col("plan_id") == plan).sort("why").to_dicts()}
        for plan in plan_ids
    ]


def _members(settings: Any) -> tuple[int, float]:
    """How many members the pool holds and their resident memory (MB)."""
    from flows.pool_admin import view_pool

    pids = []
    view = view_pool(settings)
    for member in view.members:
        pid = member.details.get("pid")
        if pid:
            pids.append(pid)
    rss = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        rss += int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return len(view.members), round(rss, 1)


def _growth_exponent(runs: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of log(cycle_s) on log(clients)."""
    points = [(math.log(r["clients"]), math.log(r["cycle_s"])) for r in runs if r["cycle_s"] > 0]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return round(slope, 3)


if __name__ == "__main__":
    main()
