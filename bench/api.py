"""API benchmark: what the client-facing API adds on top of the runtime it activates.

Run with `python bench/api.py` (`make bench-api`). Writes bench/results/api.json:
`{"activate_warm": {"p50_ms", "p99_ms", "rps"}, "profile": {"p50_ms", "p99_ms", "rps"},
"runtime_activation_ms": {"p50"}, "concurrency": n}`, and the rest of what it measured
(health, errors, the Docker paused-vs-cold ratios, the settings) in
bench/results/api-details.json.

Everything runs on 127.0.0.1: a small warehouse of synthetic clients (a profile, a schema
extension, an applied plan with one shadow member each, a key each) in a temporary
directory, the API in its own process as `prewarm api` runs it (uvicorn, one worker), and
`--concurrency` callers (8) on keep-alive connections from this process, each its own client.

- **profile**: `GET /v1/clients/{id}/profile`, `--profile-requests` in all.
- **activate_warm**: `POST /v1/clients/{id}/activate` on the process runtime, in rounds of
  one request per caller, all at once, each finding its client's member paused
  (SIGSTOPped); between rounds every member is paused again and its lease ended, as the
  apply step would (not timed: `rps` counts the rounds' time only). `--activate-requests` in
  all. **runtime_activation_ms** is the runtime's own activation: the same rounds right
  after, at the same concurrency, with the runtime called directly (no API), each call's
  `activation_ms` (the resume and the member's first health answer). Not the
  `activation_ms` the API's answers report (in the details): the API resumes a shadow on
  its event loop, where the wait for the answer also holds the other requests' turns.
- **Docker** (when `docker info` answers and `--docker` is on): one caller, the same warm
  activation, and a cold start through the API (no member: 409 `cold-start`), against the
  runtime alone (unpause; create + start) on the same image: the paused-vs-cold ratio through
  the API and without it. Members carry a pool label of their own and are all removed.

The process-runtime rounds (profile, health, warm activation) run twice: alone, then
beside the real `prewarm-cycle` flow on `--cycle-clients` (100) cached synthetic clients
running back to back in a process of its own (`bench/cycle.py --background`, its own
warehouse and pool; the cache is built by training on first use), as the issue asks. The
headline numbers are those beside the cycle; `alone` in the details. After each server's
clean stop, every activation it answered must have its `pool_events` row, or the benchmark
fails.

Latencies are measured by the caller from the request's first byte sent to the answer's
last byte read; `rps` is requests over the wall time of the run. Targets from issue 16:
warm activation p50 within 5 ms of the runtime's own (p99 within 20 ms); `/profile` p50
<= 5 ms and >= 1,000 requests/s on 2 cores; the API's paused-vs-cold ratio within 1.5x of
the runtime's on Docker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

# Run as a script, this file's folder comes first on sys.path, and this file would stand in
# for the `api` package it measures. The checkout this file is in comes first instead, not
# whichever one the environment installed: the API process (run from that folder) imports
# it too, and both must share one runtime.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from provisioning.apply import release_all  # noqa: E402
from provisioning.reconciler import build_spec  # noqa: E402
from provisioning.runtime.base import ContainerRuntime  # noqa: E402
from provisioning.runtime.leases import LeaseBook  # noqa: E402
from provisioning.runtime.process_runtime import ProcessRuntime  # noqa: E402
from warehouse.api_keys import issue_key  # noqa: E402
from warehouse.db import connect  # noqa: E402
from warehouse.predictions import record_latest_runs  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "api.json"
POOL_LABEL = "prewarm.pool"
PLAN_ID = "bench-api-plan"
# Rate limits out of the way: the benchmark measures the path, not the limiter's refusals.
KNOBS = {"activate_rate": 1_000_000.0, "activate_burst": 1_000_000}

# The API in its own process, as `prewarm api` runs it (one uvicorn worker).
SERVER = """
import json, sys
from pathlib import Path

from api.app import create_app
from api.server import serve
from provisioning.runtime.leases import LeaseBook

config = json.loads(sys.argv[1])
if config["runtime"] == "docker":
    from provisioning.runtime.docker_runtime import DockerRuntime
    runtime = DockerRuntime()
else:
    from provisioning.runtime.process_runtime import ProcessRuntime
    runtime = ProcessRuntime(Path(config["state"]), grace_s=0.5)
app = create_app(
    Path(config["warehouse"]), lambda: runtime, config["scope"],
    leases=LeaseBook(Path(config["leases"])), **config["knobs"],
)
serve(app, "127.0.0.1", config["port"])  # as `prewarm api` runs it
"""


# --- the warehouse --------------------------------------------------------------------------


def build_warehouse(path: Path, n_clients: int) -> dict[str, str]:
    """Clients c000.. with a profile run, an extension, one planned shadow member; their keys."""
    clients = [f"c{i:03d}" for i in range(n_clients)]
    now = datetime.now().replace(microsecond=0)
    with connect(path) as con:
        con.executemany(
            "INSERT INTO clients (client_id, tier, region, service, container_cpu,"
            " container_memory_mb, freq_seconds, source) VALUES (?, 'premium', 'eu', 'api',"
            " 0.25, 64, 300, 'bench')",
            [[c] for c in clients],
        )
        profile_rows = []
        for c in clients:
            for hours, scale in ((1, 1.0), (6, 2.0)):
                start = now + timedelta(hours=hours)
                profile_rows.append(
                    [c, now, now, start, start + timedelta(minutes=90), 90.0]
                    + [100 * scale, 150 * scale, 2 * scale, 3.4 * scale, 0.5 * scale]
                    + [0.8 * scale, 256 * scale, 300 * scale, None, None, 10 * scale]
                    + [20 * scale, 0.9, 0.75, "lightgbm-quantile", "7"]
                    + [0.7, 0.75, 0.6, 0.9, None, 0.4]
                )
        con.executemany(f"INSERT INTO profiles VALUES ({', '.join('?' * 28)})", profile_rows)
        record_latest_runs(
            con, [pl.DataFrame({"client_id": clients, "generated_at": [now] * n_clients})]
        )
        extension = {"name": "cache", "precedence": 10, "workload": {"cache": {"ttl_seconds": 600}}}
        con.executemany(
            "INSERT INTO client_schema_extensions VALUES (?, 'cache', 10, ?::JSON, ?)",
            [[c, json.dumps(extension), now] for c in clients],
        )
        con.execute(
            "INSERT INTO plans (plan_id, seq, created_at, recorded_at, first_window,"
            " tick_seconds, windows, buffer_seconds, dry_run, totals)"
            " VALUES (?, 1, ?, ?, ?, 300, 1, 0, false, '{}')",
            [PLAN_ID, now, now, now],
        )
        con.executemany(
            "INSERT INTO plan_targets VALUES (?, ?, 'h1', 0, 1, 0, 0, 0, NULL)",
            [[PLAN_ID, c] for c in clients],
        )
    return {c: issue_key(path, c, False) for c in clients}


def shadow_member(runtime: ContainerRuntime, path: Path, client_id: str, scope: dict) -> str:
    """One paused member of the client, built from its composite as the apply step would."""
    from api.composite import client_composite
    from provisioning.schema_render import render_container_config

    config = render_container_config(client_composite(path, client_id))
    return runtime.create(build_spec(client_id, "shadow", "h1", config, PLAN_ID, scope)).id


def count_activation_rows(path: Path) -> int:
    with connect(path, read_only=True) as con:
        row = con.execute("SELECT count(*) FROM pool_events WHERE action = 'activate'").fetchone()
    return int(row[0]) if row else 0


# --- the API process ------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    host: str
    port: int
    pid: int

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds used so far by the API process, and by its children (the outcome
        writer), from /proc: (api, writer)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return _cpu_s(self.pid), sum(_cpu_s(int(child)) for child in children)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve(config: dict[str, Any]) -> Iterator[Server]:
    """Run the API until the block ends; stop it as an operator would (SIGINT: graceful)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, json.dumps({**config, "port": port})],
        cwd=_HERE.parent,  # `-c` imports from the working folder first
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError("the API server exited while starting")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the API did not start within 60 s") from None
                time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{port}", "127.0.0.1", port, process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- a lean HTTP/1.1 client (so the callers cost the shared CPUs as little as possible) ------


class Connection:
    """One keep-alive HTTP/1.1 connection; `request` returns status, body and milliseconds."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, bytes, float]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.server.host, self.server.port
            )
        assert self._reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.server.host}:{self.server.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Content-Length: 0", "", ""]
        payload = "\r\n".join(lines).encode()
        started = time.perf_counter()
        self._writer.write(payload)
        status_line = await self._reader.readline()
        length = 0
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        ms = (time.perf_counter() - started) * 1000.0
        return int(status_line.split()[1]), body, ms

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed sample, no interpolation."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(samples: list[float], wall_s: float) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "rps": round(len(samples) / wall_s, 1),
    }


@dataclass
class Run:
    ms: list[float]
    wall_s: float
    errors: dict[str, int]
    runtime_ms: list[float]


async def _callers(
    server: Server,
    jobs: list[tuple[str, str]],
    total: int,
    one: Callable[[Connection, str, str, Run], Any],
) -> Run:
    """`total` requests over `len(jobs)` callers (client id, key), each on its connection."""
    run = Run([], 0.0, {}, [])
    connections = [Connection(server) for _ in jobs]
    per_caller = [total // len(jobs) + (i < total % len(jobs)) for i in range(len(jobs))]

    async def caller(i: int) -> None:
        client_id, key = jobs[i]
        for _ in range(per_caller[i]):
            await one(connections[i], client_id, key, run)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(len(jobs))))
    run.wall_s = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return run


def _error(run: Run, status: int, body: bytes) -> None:
    label = f"{status}: {body[:80].decode(errors='replace')}"
    run.errors[label] = run.errors.get(label, 0) + 1


def bench_reads(server: Server, keys: dict[str, str], path_of: str, total: int, n: int) -> Run:
    """GETs of `path_of` (e.g. /profile; `{c}` is the client id) by `n` callers."""
    jobs = list(keys.items())[:n]

    async def one(connection: Connection, client_id: str, key: str, run: Run) -> None:
        status, body, ms = await connection.request(
            "GET", path_of.format(c=client_id), {"Authorization": f"Bearer {key}"}
        )
        if status != 200:
            _error(run, status, body)
        run.ms.append(ms)

    return asyncio.run(_callers(server, jobs[:n] if jobs else [], total, one))


def bench_warm_activations(
    server: Server,
    keys: dict[str, str],
    members: dict[str, str],
    runtime: ContainerRuntime,
    leases: LeaseBook,
    total: int,
) -> Run:
    """POST /activate in rounds: every caller at once, each finding its client's member
    paused; between rounds (not timed) every member is paused again and its lease ended, as
    the apply step would, so no re-pause competes with a request for the runtime's lock."""
    jobs = [(c, keys[c]) for c in members]
    connections = {c: Connection(server) for c in members}
    run = Run([], 0.0, {}, [])

    def pause_again(member_id: str) -> None:
        runtime.shadow(member_id)
        leases.end(member_id)

    async def one(client_id: str, key: str) -> None:
        status, body, ms = await connections[client_id].request(
            "POST", f"/v1/clients/{client_id}/activate", {"Authorization": f"Bearer {key}"}
        )
        answer = json.loads(body) if body else {}
        if status != 200 or answer.get("tier_before") != "shadow":
            _error(run, status, body)
        else:
            run.ms.append(ms)
            run.runtime_ms.append(float(answer["activation_ms"]))

    async def rounds() -> None:
        left = total
        while left > 0:
            batch = jobs[: min(left, len(jobs))]
            started = time.perf_counter()
            await asyncio.gather(*(one(c, key) for c, key in batch))
            run.wall_s += time.perf_counter() - started
            await asyncio.gather(*(asyncio.to_thread(pause_again, members[c]) for c, _ in batch))
            left -= len(batch)
        for connection in connections.values():
            connection.close()

    asyncio.run(rounds())
    return run


def bench_runtime_alone(members: dict[str, str], runtime: ContainerRuntime, total: int) -> Run:
    """The same rounds without the API: each caller's thread unpauses its member directly
    (`runtime.activate`, timed from the call to its return), all callers at once."""
    run = Run([], 0.0, {}, [])

    def activate(member_id: str) -> None:
        began = time.perf_counter()
        _, inner_ms = runtime.activate(member_id)
        run.ms.append((time.perf_counter() - began) * 1000.0)
        run.runtime_ms.append(inner_ms)

    async def rounds() -> None:
        left = total
        ids = list(members.values())
        while left > 0:
            batch = ids[: min(left, len(ids))]
            started = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(activate, m) for m in batch))
            run.wall_s += time.perf_counter() - started
            await asyncio.gather(*(asyncio.to_thread(runtime.shadow, m) for m in batch))
            left -= len(batch)

    asyncio.run(rounds())
    return run


def bench_health(server: Server, total: int) -> Run:
    async def one(connection: Connection, client_id: str, key: str, run: Run) -> None:
        status, body, ms = await connection.request("GET", "/healthz", {})
        if status != 200:
            _error(run, status, body)
        run.ms.append(ms)

    return asyncio.run(_callers(server, [("", "")], total, one))


# --- runs -----------------------------------------------------------------------------------


def run_process(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Profile, health and warm activation on the process runtime; every member released."""
    workdir.mkdir(parents=True, exist_ok=True)
    warehouse = workdir / "warehouse.duckdb"
    keys = build_warehouse(warehouse, args.clients)
    scope = {POOL_LABEL: f"bench-api-{uuid.uuid4().hex[:8]}"}
    state = workdir / "process-pool.json"
    runtime = ProcessRuntime(state, grace_s=0.5)
    leases = LeaseBook(workdir / "leases.json")
    config = {
        "runtime": "process",
        "warehouse": str(warehouse),
        "state": str(state),
        "leases": str(leases.path),
        "scope": scope,
        "knobs": KNOBS,
    }
    try:
        callers = list(keys)[: args.concurrency]
        members = {c: shadow_member(runtime, warehouse, c, scope) for c in callers}
        with serve(config) as server:
            # Warm-up: the first request of each client (connection, caches, imports).
            bench_reads(server, keys, "/v1/clients/{c}/profile", args.concurrency, args.concurrency)
            bench_warm_activations(server, keys, members, runtime, leases, args.concurrency)
            health = bench_health(server, args.health_requests)
            profile = bench_reads(
                server, keys, "/v1/clients/{c}/profile", args.profile_requests, args.concurrency
            )
            cpu_before = server.cpu_s()
            activate = bench_warm_activations(
                server, keys, members, runtime, leases, args.activate_requests
            )
            cpu_after = server.cpu_s()
        alone = bench_runtime_alone(members, runtime, args.activate_requests)
        # The server stopped gracefully: every activation it answered must have its row.
        answered = args.concurrency + args.activate_requests
        recorded = count_activation_rows(warehouse)
    finally:
        release_all(ProcessRuntime(state, grace_s=0.5), scope)
    return {
        "profile": profile,
        "activate": activate,
        "health": health,
        "runtime_alone": alone,
        # CPU a warm activation costs the API process, and its outcome writer, in ms.
        "cpu_ms_per_activation": {
            name: round((after - before) * 1000.0 / args.activate_requests, 3)
            for name, before, after in zip(
                ("api", "outcome_writer"), cpu_before, cpu_after, strict=True
            )
        },
        "rows": {"activations_answered": answered, "activation_rows": recorded},
    }


@contextlib.contextmanager
def cycle_running(clients: int, workdir: Path) -> Iterator[Callable[[], int]]:
    """The real `prewarm-cycle` flow on `clients` cached synthetic clients, back to back in
    a process of its own (`bench/cycle.py --background`: its own warehouse and pool), for as
    long as the block runs; yields a function counting the cycles finished so far."""
    log = workdir / f"cycle-{clients}.log"
    command = [sys.executable, str(Path(__file__).parent / "cycle.py"), "--clients", str(clients)]
    with open(log, "w") as out:
        cycle = subprocess.Popen([*command, "--background"], stdout=out, stderr=subprocess.STDOUT)

    def finished() -> int:
        return sum(line.startswith("cycle ") for line in log.read_text().splitlines())

    try:
        while "READY" not in log.read_text().splitlines():
            if cycle.poll() is not None:
                raise RuntimeError(f"the background cycle ended before it was ready: see {log}")
            time.sleep(1.0)
        yield finished
    finally:
        cycle.send_signal(signal.SIGUSR1)  # not SIGTERM: Prefect's handler may take it
        try:
            cycle.wait(timeout=900)  # finishes the cycle under way, then releases its pool
        except subprocess.TimeoutExpired:
            cycle.kill()


def run_docker(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One caller: warm and cold activations through the API and on the runtime alone."""
    import docker

    from provisioning.runtime.docker_runtime import DockerRuntime
    from provisioning.runtime.images import WORKER_IMAGE, build_image
    from provisioning.runtime.select import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        return {"available": False, "reason": reason}
    build_image(WORKER_IMAGE)
    warehouse = workdir / "docker-warehouse.duckdb"
    keys = build_warehouse(warehouse, 2)
    scope = {POOL_LABEL: f"bench-api-{uuid.uuid4().hex[:8]}"}
    runtime = DockerRuntime()
    leases = LeaseBook(workdir / "docker-leases.json")
    config = {
        "runtime": "docker",
        "warehouse": str(warehouse),
        "leases": str(leases.path),
        "scope": scope,
        "knobs": KNOBS,
    }
    warm_client, cold_client = list(keys)
    from api.composite import client_composite
    from provisioning.schema_render import render_container_config

    config_of = render_container_config(client_composite(warehouse, cold_client))
    n = args.docker_requests
    try:
        # The runtime alone: unpause a paused member; create + start a new one.
        member = shadow_member(runtime, warehouse, warm_client, scope)
        runtime_warm, runtime_cold = [], []
        for i in range(n + 1):
            began = time.perf_counter()
            runtime.activate(member)
            if i:
                runtime_warm.append((time.perf_counter() - began) * 1000.0)
            runtime.shadow(member)
            spec = build_spec(cold_client, "active", "h1", config_of, PLAN_ID, scope)
            began = time.perf_counter()
            created = runtime.create(spec)
            if i:
                runtime_cold.append((time.perf_counter() - began) * 1000.0)
            runtime.release(created.id)
        with serve(config) as server:
            api_warm, api_cold, api_runtime_ms, errors = [], [], [], {}

            async def requests() -> None:
                warm, cold = Connection(server), Connection(server)
                for i in range(n + 1):
                    status, body, ms = await warm.request(
                        "POST",
                        f"/v1/clients/{warm_client}/activate",
                        {"Authorization": f"Bearer {keys[warm_client]}"},
                    )
                    answer = json.loads(body)
                    if status == 200 and answer["tier_before"] == "shadow":
                        if i:
                            api_warm.append(ms)
                            api_runtime_ms.append(answer["activation_ms"])
                    else:
                        errors[f"warm {status}"] = errors.get(f"warm {status}", 0) + 1
                    await asyncio.to_thread(runtime.shadow, member)
                    await asyncio.to_thread(leases.end, member)
                    status, body, ms = await cold.request(
                        "POST",
                        f"/v1/clients/{cold_client}/activate",
                        {"Authorization": f"Bearer {keys[cold_client]}"},
                    )
                    answer = json.loads(body)
                    if status == 409 and answer.get("fallback") == "cold-start":
                        if i:
                            api_cold.append(ms)
                        await asyncio.to_thread(runtime.release, answer["member_id"])
                    else:
                        errors[f"cold {status}"] = errors.get(f"cold {status}", 0) + 1
                warm.close()
                cold.close()

            asyncio.run(requests())
    finally:
        release_all(runtime, scope)
        client = docker.from_env()
        for container in client.containers.list(
            all=True, filters={"label": [f"{POOL_LABEL}={scope[POOL_LABEL]}"]}
        ):
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
    runtime_ratio = statistics.median(runtime_cold) / statistics.median(runtime_warm)
    api_ratio = statistics.median(api_cold) / statistics.median(api_warm)
    return {
        "available": True,
        "n": n,
        "runtime_only": {
            "paused_unpause_p50_ms": round(statistics.median(runtime_warm), 3),
            "cold_create_start_p50_ms": round(statistics.median(runtime_cold), 3),
            "ratio": round(runtime_ratio, 2),
        },
        "through_api": {
            "warm_p50_ms": round(statistics.median(api_warm), 3),
            "warm_runtime_activation_p50_ms": round(statistics.median(api_runtime_ms), 3),
            "cold_start_p50_ms": round(statistics.median(api_cold), 3),
            "ratio": round(api_ratio, 2),
        },
        "ratio_runtime_over_api": round(runtime_ratio / api_ratio, 2),
        "target_ratio_within": 1.5,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="synthetic clients")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers")
    parser.add_argument("--profile-requests", type=int, default=4000)
    parser.add_argument("--activate-requests", type=int, default=1600)
    parser.add_argument("--health-requests", type=int, default=200)
    parser.add_argument("--docker-requests", type=int, default=20)
    parser.add_argument("--docker", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--cycle-clients",
        type=int,
        default=100,
        help="clients of the cycle run beside the measurement (bench/cycle.py's cache; "
        "0: none). The process-runtime rounds run twice: alone, then beside the cycle",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.clients < args.concurrency:
        parser.error("--clients must be at least --concurrency (one client per caller)")

    with tempfile.TemporaryDirectory(prefix="prewarm-bench-api-") as tmp:
        workdir = Path(tmp)
        print(
            f"process runtime: {args.concurrency} callers, {args.profile_requests} profile reads,"
            f" {args.activate_requests} warm activations ...",
            flush=True,
        )
        quiet = process = run_process(args, workdir / "quiet")
        cycles_during = 0
        if args.cycle_clients > 0:
            print(f"again, beside a cycle of {args.cycle_clients} clients ...", flush=True)
            with cycle_running(args.cycle_clients, workdir) as finished:
                before = finished()
                process = run_process(args, workdir / "beside-a-cycle")
                cycles_during = finished() - before
        docker_result = run_docker(args, workdir) if args.docker else {"available": False}

    profile, activate, health = process["profile"], process["activate"], process["health"]
    for name, run in (("alone", quiet), ("beside the cycle", process)):
        if not run["activate"].runtime_ms:
            raise SystemExit(f"no warm activation succeeded {name}: {run['activate'].errors}")
        rows = run["rows"]
        if rows["activation_rows"] != rows["activations_answered"]:
            # Every answered activation has its row after a clean stop: a loss is a bug.
            raise SystemExit(f"activation outcomes lost {name}: {rows}")
    alone = process["runtime_alone"]
    runtime_p50 = statistics.median(alone.runtime_ms)
    results = {
        "activate_warm": summary(activate.ms, activate.wall_s),
        "profile": summary(profile.ms, profile.wall_s),
        "runtime_activation_ms": {"p50": round(runtime_p50, 3)},
        "concurrency": args.concurrency,
    }
    quiet_activate = quiet["activate"]
    details = {
        # The rounds above ran beside a cycle of `cycle_clients` (0: alone); these alone.
        "cycle_clients": args.cycle_clients,
        "cycles_finished_during_the_rounds": cycles_during,
        "alone": {
            "activate_warm": summary(quiet_activate.ms, quiet_activate.wall_s),
            "profile": summary(quiet["profile"].ms, quiet["profile"].wall_s),
            "runtime_activation_ms": {
                "p50": round(statistics.median(quiet["runtime_alone"].runtime_ms), 3)
            },
            "activation_ms_in_answers_p50": round(statistics.median(quiet_activate.runtime_ms), 3),
            "cpu_ms_per_activation": quiet["cpu_ms_per_activation"],
        },
        "measured_at": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": {
            "profile": len(profile.ms),
            "activate_warm": len(activate.ms),
            "health": len(health.ms),
        },
        "healthz_one_caller": summary(health.ms, health.wall_s),
        "activate_warm_over_runtime_p50_ms": round(
            results["activate_warm"]["p50_ms"] - runtime_p50, 3
        ),
        "activate_warm_over_runtime_p99_ms": round(
            results["activate_warm"]["p99_ms"] - percentile(alone.runtime_ms, 99), 3
        ),
        "activation_ms_in_answers_p50": round(statistics.median(activate.runtime_ms), 3),
        "cpu_ms_per_activation": process["cpu_ms_per_activation"],
        # The runtime called directly, the same rounds at the same concurrency.
        "runtime_alone_activate_call": summary(alone.ms, alone.wall_s),
        "errors": {
            "profile": profile.errors,
            "activate_warm": activate.errors,
            "health": health.errors,
        },
        "activation_rows_after_a_clean_stop": process["rows"],
        "docker": docker_result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_name(args.out.stem + "-details.json").write_text(
        json.dumps(details, indent=2) + "\n"
    )
    print(json.dumps(results, indent=2))
    print(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
