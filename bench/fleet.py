"""Fleet benchmark: placement, activation per host and recovery from a lost engine.

Run with `python bench/fleet.py` (or `make bench-fleet`; needs root, `dockerd`, `ip` and
`openssl`, like tests/fleet). Writes bench/results/fleet.json. Three extra Docker Engines
are started on this machine with the tests' own code (`tests.fleet.conftest`: a bridge, an
address pool and a data root each; node-3 over tcp://127.0.0.1 with TLS) and used as the
hosts node-1..3 of one `FleetRuntime`. Every daemon and bridge started is stopped and
removed at the end, also on failure. The machine's own dockerd is only used for the
baseline, under a plan label of its own (`bench-fleet-...`) whose members are all released.

  placement       30 shadow members (created, healthy, paused), spread over the three hosts
                  by their specs' `prewarm.host` label; then a plain client of each engine
                  lists the plan's containers: the share of members found on the engine of
                  their host and on no other (target 100%).
  activation      every member activated (unpaused) `--rounds` times through the fleet,
                  re-paused between by the fleet's `shadow`; ms of the `activate` call
                  (it returns once /health answered), p50/p90 per host. Baseline: the same
                  on the LOCAL engine with a plain `DockerRuntime`, interleaved member by
                  member with the hosts so drift hits all alike. `ratio_to_local` = host
                  p50 / local p50 (target <= 1.5x).
  recovery        node-1's daemon is stopped (SIGTERM, as `ExtraEngine.stop`, in a thread:
                  the daemon takes seconds to shut its paused containers down, and the
                  fleet is listed every 50 ms meanwhile); from the SIGTERM until (a)
                  `FleetRuntime.list()` names node-1 in `down` and (b) as many shadow
                  members as node-1 held are created on node-2/node-3 (as the plan would
                  move them): `recovery_s`, with its parts. Then node-1 is
                  started again: `listed_again` = its old members the fleet lists again;
                  they are released (the plan moved them, as the reconciler would) and a
                  plain client counts the bench's containers left on node-1:
                  `orphans_after_return` (target 0).

p50 is the median; p90 is nearest-rank (an observed sample).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fleet.conftest

from provisioning.runtime.base import (  # noqa: E402
    LABEL_HOST,  # noqa: E402
    LABEL_PLAN,
    ContainerSpec,
    RuntimeUnavailable,
    Tier,
)
from provisioning.runtime.docker_runtime import DockerRuntime  # noqa: E402
from provisioning.runtime.fleet import FleetRuntime  # noqa: E402
from provisioning.runtime.images import WORKER_IMAGE, build_image  # noqa: E402
from provisioning.runtime.select import docker_unavailable_reason  # noqa: E402
from tests.fleet.conftest import EnginesUnavailable, ExtraEngine, started_engines  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fleet.json"
HOSTS = ("node-1", "node-2", "node-3")
CLIENT = "bench-fleet"
TARGET_SHARE = 1.0
TARGET_RATIO = 1.5
TARGET_ORPHANS = 0
DOWN_TIMEOUT_S = 60.0
POLL_S = 0.05  # between two lists while waiting for the stopped engine to be down


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed sample, no interpolation."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _spec(plan_id: str, host: str | None, tier: Tier = "shadow") -> ContainerSpec:
    labels = {LABEL_HOST: host} if host is not None else {}
    return ContainerSpec(CLIENT, plan_id, tier, WORKER_IMAGE, 0.1, 32, labels=labels)


def _ids_on(engine: ExtraEngine, plan_id: str) -> set[str]:
    """The plan's containers on `engine`, asked of a plain client (not the fleet)."""
    client = engine.client()
    try:
        found = client.api.containers(all=True, filters={"label": [f"{LABEL_PLAN}={plan_id}"]})
        return {c["Id"] for c in found}
    finally:
        client.close()


def _timed_activate(runtime: FleetRuntime | DockerRuntime, member_id: str) -> float:
    """ms of one activate call (unpause + /health); the member is re-paused after."""
    began = time.perf_counter()
    member, _ = runtime.activate(member_id)
    elapsed = (time.perf_counter() - began) * 1000
    assert member.tier == "active", member
    runtime.shadow(member_id)
    return elapsed


def bench_placement(
    fleet: FleetRuntime, engines: dict[str, ExtraEngine], plan_id: str, n: int
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """n shadow members round-robin over the hosts; the share found where they belong."""
    placed: dict[str, list[str]] = {host: [] for host in HOSTS}
    create_ms = []
    for index in range(n):
        host = HOSTS[index % len(HOSTS)]
        began = time.perf_counter()
        member = fleet.create(_spec(plan_id, host))
        create_ms.append((time.perf_counter() - began) * 1000)
        assert member.tier == "shadow", member
        placed[host].append(member.id)
    on = {host: _ids_on(engine, plan_id) for host, engine in engines.items()}
    right = sum(
        1
        for host, ids in placed.items()
        for member_id in ids
        if member_id in on[host] and all(member_id not in on[o] for o in HOSTS if o != host)
    )
    return placed, {
        "members": n,
        "on_their_host": right,
        "share": right / n,
        "per_host": {host: len(ids) for host, ids in placed.items()},
        "create_shadow_p50_ms": round(statistics.median(create_ms), 1),
    }


def bench_activation(
    fleet: FleetRuntime,
    local: DockerRuntime,
    placed: dict[str, list[str]],
    local_ids: list[str],
    rounds: int,
) -> tuple[dict[str, dict[str, float]], float, float]:
    """Every member `rounds` times, interleaved: member j of node-1, node-2, node-3, local."""
    samples: dict[str, list[float]] = {host: [] for host in HOSTS}
    local_samples: list[float] = []
    for host in HOSTS:  # warm-up: the first call of each engine's client is slower
        _timed_activate(fleet, placed[host][0])
    _timed_activate(local, local_ids[0])
    for _ in range(rounds):
        for index, local_id in enumerate(local_ids):
            for host in HOSTS:
                samples[host].append(_timed_activate(fleet, placed[host][index]))
            local_samples.append(_timed_activate(local, local_id))
    local_p50 = statistics.median(local_samples)
    rows = {}
    for host, runs in samples.items():
        p50 = statistics.median(runs)
        rows[host] = {
            "p50": round(p50, 2),
            "p90": round(percentile(runs, 90), 2),
            "ratio_to_local": round(p50 / local_p50, 2),
            "n": len(runs),
        }
    return rows, round(local_p50, 2), round(percentile(local_samples, 90), 2)


def bench_recovery(
    fleet: FleetRuntime,
    engines: dict[str, ExtraEngine],
    placed: dict[str, list[str]],
    plan_id: str,
) -> dict[str, Any]:
    """Stop node-1, detect, replace its members on node-2/3; bring it back and clean up."""
    lost = placed["node-1"]
    survivors = [h for h in HOSTS if h != "node-1"]
    # The stop (SIGTERM, then the daemon's own shutdown of its containers) runs in a thread;
    # the fleet is polled from the signal on, as a reconciler cycle would find it.
    stopper = threading.Thread(target=engines["node-1"].stop)
    began = time.perf_counter()
    stopper.start()
    while "node-1" not in fleet.down:
        with contextlib.suppress(RuntimeUnavailable):
            fleet.list({LABEL_PLAN: plan_id})
        if time.perf_counter() - began > DOWN_TIMEOUT_S:
            stopper.join()
            raise RuntimeError(f"node-1 not down after {DOWN_TIMEOUT_S:g} s")
        time.sleep(POLL_S)
    detected = time.perf_counter()
    replacements = []
    for index in range(len(lost)):
        host = survivors[index % len(survivors)]
        replacements.append(fleet.create(_spec(plan_id, host)))
    replaced = time.perf_counter()
    stopper.join()
    stopped = time.perf_counter()
    placed["node-1"] = []
    for member in replacements:
        placed[member.labels[LABEL_HOST]].append(member.id)

    back_began = time.perf_counter()
    engines["node-1"].start()
    started = time.perf_counter()
    listed = fleet.list({LABEL_PLAN: plan_id})
    still_down = "node-1" in fleet.down
    again = [m.id for m in listed if m.details.get("host") == "node-1"]
    for member_id in again:  # the plan moved them: the reconciler would release them
        fleet.release(member_id)
    orphans = len(_ids_on(engines["node-1"], plan_id))
    return {
        "members_lost": len(lost),
        "down_after_s": round(detected - began, 3),
        "replace_s": round(replaced - detected, 3),
        "stop_call_done_after_s": round(stopped - began, 3),
        "recovery_s": round(replaced - began, 3),
        "restart_s": round(started - back_began, 3),
        "down_after_restart": still_down,
        "listed_again": len(again),
        "listed_again_ids_match": set(again) == set(lost),
        "orphans_after_return": orphans,
    }


def _release_all(runtime: FleetRuntime | DockerRuntime, plan_id: str) -> int:
    """Release every member of the plan the runtime can see; how many were released."""
    count = 0
    with contextlib.suppress(Exception):
        for member in runtime.list({LABEL_PLAN: plan_id}):
            with contextlib.suppress(Exception):
                runtime.release(member.id)
                count += 1
    return count


@contextlib.contextmanager
def _local_runtime(plan_id: str) -> Iterator[DockerRuntime]:
    reason = docker_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"the local Docker engine is needed for the baseline: {reason}")
    build_image(WORKER_IMAGE)
    runtime = DockerRuntime()
    try:
        yield runtime
    finally:
        _release_all(runtime, plan_id)
        runtime.close()


def _machine() -> dict[str, Any]:
    """The machine, and whether other work (a pytest run) shared it."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    others = []
    for line in ps.splitlines()[1:]:
        pid, _, command = line.strip().partition(" ")
        words = command.split()
        if (
            int(pid) != os.getpid()
            and words
            and (words[0].endswith("pytest") or " -m pytest" in command)
        ):
            others.append(command)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "shared_with_pytest": bool(others),
        "other_pytest_processes": len(others),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=30, help="members over the 3 hosts")
    parser.add_argument("--rounds", type=int, default=10, help="activations per member")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.members % len(HOSTS):
        parser.error(f"--members must be a multiple of {len(HOSTS)}")
    per_host = args.members // len(HOSTS)

    machine_before = _machine()
    plan_id = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    print(f"plan {plan_id}: starting three extra engines ...", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="prewarm-bench-fleet-") as base,
        _local_runtime(plan_id) as local,
        contextlib.ExitStack() as stack,
    ):
        try:
            extra = stack.enter_context(started_engines(Path(base)))
        except EnginesUnavailable as error:
            raise SystemExit(f"fleet benchmark skipped: {error}") from error
        engines = dict(zip(HOSTS, extra, strict=True))
        fleet = FleetRuntime({host: e.engine(host) for host, e in engines.items()})
        try:
            print(f"placement: {args.members} shadow members ...", flush=True)
            placed, placement = bench_placement(fleet, engines, plan_id, args.members)
            local_ids = [local.create(_spec(plan_id, None)).id for _ in range(per_host)]
            print(
                f"activation: {per_host} members x {args.rounds} rounds x "
                f"{len(HOSTS)} hosts + local ...",
                flush=True,
            )
            rows, local_p50, local_p90 = bench_activation(
                fleet, local, placed, local_ids, args.rounds
            )
            print("recovery: stopping node-1 ...", flush=True)
            recovery = bench_recovery(fleet, engines, placed, plan_id)
        finally:
            _release_all(fleet, plan_id)
            fleet.close()

    payload = {
        "benchmark": "fleet",
        "placement_share": placement["share"],
        "activation_ms": rows,
        "local_p50_ms": local_p50,
        "recovery_s": recovery["recovery_s"],
        "listed_again": recovery["listed_again"],
        "orphans_after_return": recovery["orphans_after_return"],
        "machine": {**machine_before, "loadavg_after": list(_machine()["loadavg"])},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "details": {
            "placement": placement,
            "local_p90_ms": local_p90,
            "recovery": recovery,
            "hosts": {h: ("tls " if e.tls else "") + e.address for h, e in engines.items()},
        },
        "targets": {
            "placement_share": TARGET_SHARE,
            "ratio_to_local_max": TARGET_RATIO,
            "orphans_after_return": TARGET_ORPHANS,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    _print_summary(payload)
    print(f"\nwrote {args.out}")


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _print_summary(payload: dict[str, Any]) -> None:
    placement = payload["details"]["placement"]
    recovery = payload["details"]["recovery"]
    share = payload["placement_share"]
    print(
        f"\nplacement: {placement['on_their_host']}/{placement['members']} members on their "
        f"host's engine ({share:.0%}, target 100%: {_verdict(share >= TARGET_SHARE)})"
    )
    print(f"\n{'host':8} {'p50 ms':>8} {'p90 ms':>8} {'x local':>8} {'n':>4}")
    for host, row in payload["activation_ms"].items():
        print(
            f"{host:8} {row['p50']:8.2f} {row['p90']:8.2f} {row['ratio_to_local']:8.2f} "
            f"{row['n']:4d}"
        )
    print(f"{'local':8} {payload['local_p50_ms']:8.2f} {payload['details']['local_p90_ms']:8.2f}")
    worst = max(row["ratio_to_local"] for row in payload["activation_ms"].values())
    print(f"target p50 <= {TARGET_RATIO}x local: {_verdict(worst <= TARGET_RATIO)}")
    print(
        f"\nnode-1 stopped: in `down` after {recovery['down_after_s']:.2f} s (the daemon's "
        f"shutdown ended after {recovery['stop_call_done_after_s']:.2f} s), "
        f"{recovery['members_lost']} replacements on node-2/3 in {recovery['replace_s']:.2f} s: "
        f"recovery {payload['recovery_s']:.2f} s"
    )
    print(
        f"node-1 back (restart {recovery['restart_s']:.2f} s): {payload['listed_again']} old "
        f"members listed again; after releasing them, orphans "
        f"{payload['orphans_after_return']} (target 0: "
        f"{_verdict(payload['orphans_after_return'] == TARGET_ORPHANS)})"
    )
    machine = payload["machine"]
    if machine["shared_with_pytest"]:
        others = machine["other_pytest_processes"]
        print(f"\nnote: shared the machine with {others} pytest process(es)")


if __name__ == "__main__":
    main()
