"""Process-runtime pool benchmark: what one runtime call costs as the pool grows (issue 16).

Run with `python bench/runtime_pool.py` (`--sizes 50,200,800,2000`, `--baseline REF` to
measure the code of a git ref in the same run, e.g. the commit before per-member records).
Writes bench/results/runtime_pool.json.

At each pool size the pool is filled with shadow members whose processes are SIGSTOPped
`sleep`s: what a call costs depends on the records and their /proc entries, not on what the
process serves, and a real worker holds ~10 MB of its own (2,000 would not fit beside the
rest of this machine's work). Then one fresh process per code version (same fillers, each
version's own state file) measures, on members it creates with real workers:

  create_cold      a record only: the bookkeeping alone
  create_shadow    spawn, first health answer, SIGSTOP
  activate_warm    SIGCONT to the first health answer, one caller (the call's wall time)
  stats, list      one member's; every member (the whole pool)
  list_client      the members of one client (this process's `2 x samples`): what every
                   activation through the API lists first; `_settled`: the same once the
                   pool has not changed for 3 s (as between two apply steps)
  release_cold     forget a record; release_shadow: terminate the worker too
  activate_8       8 callers at once, each warm-activating a member of its own, round after
                   round (p50 and p99 over every activation)

`ratio` is before/after of each p50 at the same size, measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "runtime_pool.json"
PLAN = "bench-runtime-pool"
CALLERS = 8


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed sample, no interpolation."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the measuring process (runs the code under test, found first on PYTHONPATH) -----------


def measure(state: Path, samples: int, rounds: int) -> dict[str, Any]:
    """Time each call on members this process creates in the pool of `state`."""
    from provisioning.runtime.base import LABEL_CLIENT, ContainerSpec
    from provisioning.runtime.process_runtime import ProcessRuntime

    runtime = ProcessRuntime(state, grace_s=0.5)
    runtime.list()  # untimed: imports, and a migration when the state file is version 1
    ms: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[..., Any], *args: Any) -> Any:
        began = time.perf_counter()
        result = call(*args)
        ms.setdefault(name, []).append((time.perf_counter() - began) * 1000)
        return result

    def spec(tier: str) -> ContainerSpec:
        return ContainerSpec("bench", PLAN, tier, "-", 0.5, 64)  # type: ignore[arg-type]

    cold = [timed("create_cold", runtime.create, spec("cold")) for _ in range(samples)]
    shadows = [timed("create_shadow", runtime.create, spec("shadow")) for _ in range(samples)]
    for member in shadows:
        timed("activate_warm", runtime.activate, member.id)
        runtime.shadow(member.id)
        timed("stats", runtime.stats, member.id)
    for _ in range(3):
        timed("list", runtime.list)
    # What every activation through the API lists first: right after this process's
    # members were created, then with the pool unchanged for 3 s (as between applies).
    for _ in range(samples):
        timed("list_client", runtime.list, {LABEL_CLIENT: "bench"})
    time.sleep(3.1)
    for _ in range(samples):
        timed("list_client_settled", runtime.list, {LABEL_CLIENT: "bench"})
    together = _activate_together(runtime, [m.id for m in shadows[:CALLERS]], rounds)
    for member in cold:
        timed("release_cold", runtime.release, member.id)
    for member in shadows:
        timed("release_shadow", runtime.release, member.id)
    return {
        "p50_ms": {name: round(statistics.median(v), 3) for name, v in ms.items()},
        "activate_8": {
            "p50_ms": round(percentile(together, 50), 3),
            "p99_ms": round(percentile(together, 99), 3),
            "activations": len(together),
        },
        "imported": str(Path(sys.modules[ProcessRuntime.__module__].__file__ or "").parents[2]),
    }


def _activate_together(runtime: Any, member_ids: list[str], rounds: int) -> list[float]:
    """Each caller warm-activates its own member, all starting each round at once."""
    start = threading.Barrier(len(member_ids))
    ms: list[float] = []

    def caller(member_id: str) -> None:
        for _ in range(rounds):
            start.wait()
            began = time.perf_counter()
            runtime.activate(member_id)
            ms.append((time.perf_counter() - began) * 1000)
            start.wait()  # every caller done before any member is frozen again
            runtime.shadow(member_id)

    with ThreadPoolExecutor(len(member_ids)) as threads:
        list(threads.map(caller, member_ids))
    return ms


# -- the driving process ---------------------------------------------------------------


class Fillers:
    """The pool's other members: stopped `sleep`s, on record in each state file."""

    def __init__(self) -> None:
        self.sleeps: list[subprocess.Popen[bytes]] = []

    def grow_to(self, size: int) -> None:
        while len(self.sleeps) < size:
            sleep = subprocess.Popen(["sleep", "infinity"], start_new_session=True)
            os.kill(sleep.pid, signal.SIGSTOP)
            self.sleeps.append(sleep)

    def records(self) -> list[Any]:
        from provisioning.runtime.base import ContainerSpec
        from provisioning.runtime.process_control import _read_proc_stat
        from provisioning.runtime.process_records import _Record

        records = []
        for i, sleep in enumerate(self.sleeps):
            stat = _read_proc_stat(sleep.pid)
            spec = ContainerSpec(f"fill{i:05d}", PLAN + "-fill", "shadow", "-", 0.5, 64)
            records.append(
                _Record(
                    id=f"prewarm-fill{i:05d}-{i:08x}",
                    client_id=spec.client_id,
                    plan_id=spec.plan_id,
                    labels=spec.member_labels(),
                    env={},
                    cpu=spec.cpu,
                    memory_mb=spec.memory_mb,
                    port=spec.port,
                    created_at=datetime.now(UTC).isoformat(),
                    pid=sleep.pid,
                    pid_start=stat.start_ticks if stat else None,
                    endpoint="http://127.0.0.1:9",
                )
            )
        return records

    def write(self, state: Path, one_file: bool) -> None:
        """Put the fillers on record: in the state file itself (`one_file`: version 1), or
        one record file each."""
        from provisioning.runtime.process_records import MemberRecords, records_dir

        state.parent.mkdir(parents=True, exist_ok=True)
        records = self.records()
        if one_file:
            members = [{k: v for k, v in asdict(r).items() if k != "spawning"} for r in records]
            state.write_text(json.dumps({"version": 1, "members": members}, indent=1))
            return
        store = MemberRecords(records_dir(state))
        for record in records:
            store.write(record)

    def stop(self) -> None:
        for sleep in self.sleeps:
            sleep.kill()
            sleep.wait()


def checkout(ref: str, into: Path) -> Path:
    """The tree of a git ref, unpacked (no worktree, nothing left in the repository)."""
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_measure(code: Path, state: Path, samples: int, rounds: int) -> dict[str, Any]:
    """`measure` in a fresh interpreter that imports prewarm from `code`."""
    args = ["--measure", str(state), "--samples", str(samples), "--rounds", str(rounds)]
    return measure_in(Path(__file__), code, args)


def measure_in(script: Path, code: Path, args: list[str]) -> dict[str, Any]:
    """The JSON a benchmark `script` prints last when run with `args` in a fresh
    interpreter importing prewarm from `code` (a checkout of another version); the result
    names the folder it imported prewarm from (`imported`), which must be `code`."""
    done = subprocess.run(
        [sys.executable, str(script.resolve()), *args],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {code} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    imported = Path(result.pop("imported"))
    if imported != code.resolve():
        raise RuntimeError(f"measured the code in {imported}, not {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,800,2000")
    parser.add_argument("--baseline", help="a git ref whose code is measured as 'before'")
    parser.add_argument("--samples", type=int, default=10, help="calls of each kind (>= 8)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 8 activations")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.samples, args.rounds)))
        return

    sizes = sorted(int(size) for size in args.sizes.split(","))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="runtime-pool-") as work:
        codes = {"after": REPO}
        if args.baseline:
            codes["before"] = checkout(args.baseline, Path(work) / "before-code")
        fillers = Fillers()
        try:
            for size in sizes:
                fillers.grow_to(size)
                for name, code in codes.items():
                    state = Path(work) / name / "process-pool.json"
                    one_file = not (code / "provisioning/runtime/process_state.py").exists()
                    fillers.write(state, one_file)
                    result = run_measure(code, state, args.samples, args.rounds)
                    runs.append({"pool": size, "code": name, **result})
                    _print_run(runs[-1])
        finally:
            fillers.stop()
    result = {
        "runs": runs,
        "ratio": _ratios(runs) if args.baseline else {},
        "baseline": args.baseline,
        "samples": args.samples,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def _print_run(run: dict[str, Any]) -> None:
    p50 = "  ".join(f"{name} {ms:.2f}" for name, ms in run["p50_ms"].items())
    together = run["activate_8"]
    print(
        f"pool {run['pool']:>5} {run['code']:>6}: {p50}  "
        f"activate_8 p50 {together['p50_ms']:.2f} p99 {together['p99_ms']:.2f} (ms)",
        flush=True,
    )


def _ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """before/after of every p50 at each pool size."""
    by = {(run["pool"], run["code"]): run for run in runs}
    ratios = {}
    for pool in sorted({run["pool"] for run in runs}):
        before, after = by[(pool, "before")], by[(pool, "after")]
        pairs = {**before["p50_ms"], "activate_8": before["activate_8"]["p50_ms"]}
        mine = {**after["p50_ms"], "activate_8": after["activate_8"]["p50_ms"]}
        ratios[str(pool)] = {name: round(pairs[name] / mine[name], 2) for name in mine}
    return ratios


if __name__ == "__main__":
    main()
