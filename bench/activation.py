"""Activation benchmark: time to a member's first HTTP answer, per tier, Docker and processes.

Run with `python bench/activation.py` (or `--n 30`, `--runtimes process`). Writes
bench/results/activation.json. Three ways to get a member answering, each timed from the
first runtime call to the first successful GET /health:

  cold_create_start  nothing exists: create (cold) + activate, i.e. create + start
  created_start      a cold member exists (Docker: created container; processes: a record
                     only, so this spawns the worker): activate = start
  paused_unpause     a shadow member exists (Docker: paused; processes: SIGSTOPped):
                     activate = unpause / SIGCONT

`ratio_to_cold` = p50 of cold_create_start / p50 of the row, i.e. how many times faster
than starting from nothing (1.0 for cold_create_start itself). An answer only counts once
the resume call (Docker API / signal) has returned too: that is when `activate()` knows the
member is active. `resume_call_p50_ms` is the resume call's own share. The baseline is
measured in the same run, interleaved sample by sample with the other rows, so drift hits
all rows alike.
Targets from the issue: paused_unpause >= 15x on Docker, >= 50x on processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioning.runtime.base import (
    LABEL_PLAN,
    ContainerRuntime,
    ContainerSpec,
    Tier,
    probe_once,
)
from provisioning.runtime.docker_network import Reach
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.images import WORKER_IMAGE, build_image
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.select import docker_unavailable_reason

RESULTS = Path(__file__).parent / "results" / "activation.json"
SCENARIOS = ("cold_create_start", "created_start", "paused_unpause")
TARGETS = {"docker": 15.0, "process": 50.0}


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed sample, no interpolation."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _spec(plan_id: str, tier: Tier, image: str) -> ContainerSpec:
    return ContainerSpec("bench", plan_id, tier, image, cpu=0.5, memory_mb=64)


def _sample(runtime: ContainerRuntime, scenario: str, plan_id: str, image: str) -> dict[str, float]:
    """One timed activation; returns total ms and the resume step's ms."""
    create_ms = 0.0
    if scenario == "cold_create_start":
        began = time.perf_counter()
        member = runtime.create(_spec(plan_id, "cold", image))
        create_ms = (time.perf_counter() - began) * 1000
    else:
        tier: Tier = "cold" if scenario == "created_start" else "shadow"
        member = runtime.create(_spec(plan_id, tier, image))
    member, activate_ms = runtime.activate(member.id)
    assert member.tier == "active" and member.endpoint and probe_once(member.endpoint, 2.0)
    resume_ms = member.details["timings_ms"]["resume"]
    runtime.release(member.id)
    return {"total_ms": create_ms + activate_ms, "resume_ms": resume_ms}


def _floors(runtime: ContainerRuntime, plan_id: str, image: str, n: int) -> dict[str, float]:
    """Round trips no activation can beat: a warm HTTP GET, and (Docker) an API ping."""
    member = runtime.create(_spec(plan_id, "active", image))
    assert member.endpoint
    http_ms = []
    for _ in range(n):
        began = time.perf_counter()
        probe_once(member.endpoint, 2.0)
        http_ms.append((time.perf_counter() - began) * 1000)
    floors = {"http_get_warm_p50_ms": round(statistics.median(http_ms), 3)}
    client = getattr(runtime, "client", None)
    if client is not None:
        ping_ms = []
        for _ in range(n):
            began = time.perf_counter()
            client.ping()
            ping_ms.append((time.perf_counter() - began) * 1000)
        floors["api_ping_p50_ms"] = round(statistics.median(ping_ms), 3)
    runtime.release(member.id)
    return floors


def bench_runtime(runtime: ContainerRuntime, image: str, n: int) -> dict[str, Any]:
    """All scenarios on one runtime, interleaved, plus the floors; releases everything."""
    plan_id = f"bench-{uuid.uuid4().hex[:8]}"
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
    try:
        for scenario in SCENARIOS:  # warm-up: first start of an image / interpreter is slower
            _sample(runtime, scenario, plan_id, image)
        for _ in range(n):
            for scenario in SCENARIOS:
                samples[scenario].append(_sample(runtime, scenario, plan_id, image))
        floors = _floors(runtime, plan_id, image, n)
    finally:
        for member in runtime.list({LABEL_PLAN: plan_id}):
            runtime.release(member.id)
    return {"tiers": _summarise(samples), "floors": floors}


def _summarise(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    cold_p50 = statistics.median(s["total_ms"] for s in samples["cold_create_start"])
    rows = {}
    for scenario, runs in samples.items():
        totals = [r["total_ms"] for r in runs]
        p50 = statistics.median(totals)
        rows[scenario] = {
            "p50_ms": round(p50, 3),
            "p95_ms": round(percentile(totals, 95), 3),
            "ratio_to_cold": round(cold_p50 / p50, 2),
            "n": len(totals),
            "resume_call_p50_ms": round(statistics.median(r["resume_ms"] for r in runs), 3),
        }
    return rows


def _docker_runtime(reach: Reach) -> tuple[ContainerRuntime | None, str, str]:
    """(runtime, image, reason): runtime None, with the reason, when Docker cannot be used."""
    reason = docker_unavailable_reason()
    if reason is not None:
        return None, "", reason
    build_image(WORKER_IMAGE)
    return DockerRuntime(reach=reach), WORKER_IMAGE, ""


def _explain(name: str, result: dict[str, Any]) -> str:
    tiers, floors = result["tiers"], result["floors"]
    paused, cold = tiers["paused_unpause"], tiers["cold_create_start"]
    created = tiers["created_start"]
    if name == "docker":
        return (
            f"docker: paused->unpause p50 {paused['p50_ms']:.1f} ms. The "
            f"unpause call itself takes {paused['resume_call_p50_ms']:.1f} ms (dockerd -> "
            "containerd -> shim -> `runc resume` thawing the cgroup freezer, then dockerd "
            "checkpoints the container state to disk); an API ping costs "
            f"{floors['api_ping_p50_ms']:.1f} ms and a warm "
            f"HTTP GET {floors['http_get_warm_p50_ms']:.2f} ms, so nearly all of it is daemon "
            "work behind the API round trip. The health request is queued before the unpause "
            "(the kernel accepts while the container is frozen), so its answer is already "
            "waiting when the API call returns. Cold: start alone is "
            f"{created['resume_call_p50_ms']:.0f} ms "
            "(network namespace, veth, cgroups, runc create+start); create+start "
            f"{cold['p50_ms']:.0f} ms."
        )
    return (
        f"process: SIGSTOPped->SIGCONT p50 {paused['p50_ms']:.2f} ms; the signal takes "
        f"{paused['resume_call_p50_ms'] * 1000:.0f} us, the rest is the worker's HTTP answer: "
        "the kernel waking the worker (the request was queued while it was stopped) and "
        "Python's http.server parsing it and answering; a GET on a running worker takes "
        f"{floors['http_get_warm_p50_ms']:.2f} ms back to back. Cold: {cold['p50_ms']:.0f} ms "
        "is the interpreter starting (`python -I -S`), importing http.server and answering; "
        "a cold process member is a record only, so created->start is that same spawn."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25, help="samples per tier and runtime")
    parser.add_argument("--runtimes", default="docker,process")
    parser.add_argument("--reach", default="bridge", choices=["bridge", "published"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="prewarm-bench-") as state_dir:
        factories: dict[str, Callable[[], tuple[ContainerRuntime | None, str, str]]] = {
            "docker": lambda: _docker_runtime(args.reach),
            "process": lambda: (ProcessRuntime(Path(state_dir) / "process-pool.json"), "", ""),
        }
        for name in args.runtimes.split(","):
            runtime, image, reason = factories[name]()
            if runtime is None:
                results[name] = {"available": False, "reason": reason}
                print(f"{name}: skipped ({reason})")
                continue
            print(f"{name}: {args.n} samples x {len(SCENARIOS)} tiers ...", flush=True)
            result = bench_runtime(runtime, image, args.n)
            ratio = result["tiers"]["paused_unpause"]["ratio_to_cold"]
            result["target_ratio"] = TARGETS[name]
            result["target_met"] = ratio >= TARGETS[name]
            if name == "docker":
                result["reach"] = args.reach
            results[name] = {"available": True, **result}
            notes.append(_explain(name, result))

    _print_table(results)
    for note in notes:
        print("\n" + note)
    payload = {
        "benchmark": "activation",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "definition": {
            "metric": "ms from the first runtime call to the first HTTP 200 from /health, "
            "read once the resume call has returned",
            "ratio_to_cold": "p50(cold_create_start) / p50(row): the speed-up over cold",
            "resume_call": "ms inside the resume call itself (start/unpause API, signal)",
            "p95": "nearest-rank",
        },
        "runtimes": results,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _print_table(results: dict[str, Any]) -> None:
    header = f"{'runtime':8} {'tier':18} {'p50 ms':>9} {'p95 ms':>9} {'x cold':>7} {'n':>3}"
    print(f"\n{header} {'resume call p50':>16}")
    for name, result in results.items():
        for scenario, row in result.get("tiers", {}).items():
            print(
                f"{name:8} {scenario:18} {row['p50_ms']:9.2f} {row['p95_ms']:9.2f} "
                f"{row['ratio_to_cold']:7.1f} {row['n']:3d} {row['resume_call_p50_ms']:16.2f}"
            )
        if "target_ratio" in result:
            verdict = "met" if result["target_met"] else "MISSED"
            print(f"{name:8} target paused_unpause >= {result['target_ratio']:.0f}x: {verdict}")


if __name__ == "__main__":
    main()
