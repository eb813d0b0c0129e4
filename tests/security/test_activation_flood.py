"""Activation floods against a real API: uvicorn on 127.0.0.1 (its own process), the process
runtime (real worker processes), a small real warehouse.

What one client's key can do to the host and to other clients: at most the members its
plan gives it plus the burst allowance, 429 with Retry-After past that, a forecast-only
client gets nothing, every outcome is recorded, another client's answers stay fast, bad keys
are refused without queueing good ones, and a warehouse locked by another process makes
requests answer 503 within `lock_wait_s`, concurrently.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning.apply import release_all
from provisioning.runtime.base import LABEL_CLIENT, LABEL_MANAGED
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.security.flood_world import PLANNED_FOR_A, FloodWorld, activation_events

POOL_LABEL = "prewarm.pool"
# The API in its own process, as `prewarm api` runs it, on the process runtime.
SERVER = """
import json, sys
from pathlib import Path

import uvicorn

from api.app import create_app
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.process_runtime import ProcessRuntime

config = json.loads(sys.argv[1])
runtime = ProcessRuntime(Path(config["state"]), grace_s=0.5)
app = create_app(
    Path(config["warehouse"]), lambda: runtime, config["scope"],
    leases=LeaseBook(Path(config["leases"])), **config["knobs"],
)
uvicorn.run(app, host="127.0.0.1", port=config["port"], log_level="warning")
"""
# The attacker, in a process of its own (its threads never compete with the test's probe for
# a GIL): POSTs /activate with each key given, on `threads` keep-alive connections, and
# prints status, Retry-After and body of each answer as JSON.
ATTACKER = """
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor

import httpx

url, path, keys, threads = json.loads(sys.argv[1])
local = threading.local()

def one(key):
    if not hasattr(local, "client"):
        local.client = httpx.Client(base_url=url, timeout=60)
    response = local.client.post(path, headers={"Authorization": f"Bearer {key}"})
    return [response.status_code, response.headers.get("Retry-After"), response.json()]

with ThreadPoolExecutor(max_workers=threads) as pool:
    print(json.dumps(list(pool.map(one, keys))))
"""


@dataclass(frozen=True)
class Server:
    url: str
    state: Path
    scope: dict[str, str]

    def members(self, client_id: str) -> list[Any]:
        """The client's running members, as the runtime lists them now."""
        runtime = ProcessRuntime(self.state, grace_s=0.5)
        return runtime.list({LABEL_MANAGED: "1", **self.scope, LABEL_CLIENT: client_id})


@pytest.fixture
def serve(world: FloodWorld, tmp_path: Path) -> Iterator[Callable[..., AbstractContextManager]]:
    """`with serve(**create_app knobs) as server:` runs the API until the block ends (a
    graceful stop: queued outcomes are written); every member it started is released."""
    scope = {POOL_LABEL: f"test-{uuid.uuid4().hex[:10]}"}
    state = tmp_path / "process-pool.json"

    @contextmanager
    def run(**knobs: Any) -> Iterator[Server]:
        port = _free_port()
        config = {
            "warehouse": str(world.path),
            "state": str(state),
            "leases": str(tmp_path / "leases.json"),
            "scope": scope,
            "port": port,
            "knobs": knobs,
        }
        process = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(config)])
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, process)
            yield Server(url, state, scope)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    yield run
    release_all(ProcessRuntime(state, grace_s=0.5), scope)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the API server exited while starting"
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"the API at {url} did not start within 60 s")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Answer:
    status_code: int
    retry_after: str | None
    body: dict[str, Any]


def _flood(url: str, path: str, keys: list[str], threads: int = 16) -> list[Answer]:
    """POST `path` once per key from the attacker process, `threads` at a time."""
    done = subprocess.run(
        [sys.executable, "-c", ATTACKER, json.dumps([url, path, keys, threads])],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [Answer(*row) for row in json.loads(done.stdout)]


def _timed_get(client: httpx.Client, path: str, key: str) -> float:
    started = time.perf_counter()
    response = client.get(path, headers=_bearer(key))
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


class _LatencyProbe:
    """Client b reading its profile in a loop (its own connection) until stopped."""

    def __init__(self, url: str, key: str) -> None:
        self._client = httpx.Client(base_url=url, timeout=30)
        self._key = key
        self._stop = threading.Event()
        self.seconds: list[float] = []
        self._thread = threading.Thread(target=self._run)

    def unloaded_p50(self, n: int = 30) -> float:
        for _ in range(5):  # warm the connection and the server's caches
            _timed_get(self._client, "/v1/clients/b/profile", self._key)
        return statistics.median(
            _timed_get(self._client, "/v1/clients/b/profile", self._key) for _ in range(n)
        )

    def __enter__(self) -> _LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seconds.append(_timed_get(self._client, "/v1/clients/b/profile", self._key))
            time.sleep(0.01)


# --- one key cannot exhaust the host -------------------------------------------------------


def test_a_flood_with_one_key_stays_within_plan_and_burst(
    serve: Callable[..., AbstractContextManager], world: FloodWorld
) -> None:
    burst = 2
    limit = PLANNED_FOR_A + burst
    concurrent_n, sequential_n = 160, 100
    with serve(burst_max=burst, activate_rate=1000.0, activate_burst=1000) as server:
        probe = _LatencyProbe(server.url, world.key_b)
        unloaded = probe.unloaded_p50()
        most = 0
        flooding = threading.Event()

        def watch() -> None:
            nonlocal most
            while flooding.is_set():
                most = max(most, len(server.members("a")))
                time.sleep(0.02)

        flooding.set()
        watcher = threading.Thread(target=watch)
        watcher.start()
        path = "/v1/clients/a/activate"
        with probe:
            responses = _flood(server.url, path, [world.key_a] * concurrent_n)
            other = httpx.post(
                f"{server.url}/v1/clients/b/activate", headers=_bearer(world.key_b), timeout=60
            )
        responses += _flood(server.url, path, [world.key_a] * sequential_n, threads=1)
        flooding.clear()
        watcher.join()
        members = server.members("a")
        b_members = server.members("b")

    # The host: never more than plan + burst members for a, whatever the flood did.
    assert most <= limit and len(members) == limit
    started = [r for r in responses if r.status_code in (200, 409)]
    refused = [r for r in responses if r.status_code == 429]
    assert len(started) + len(refused) == concurrent_n + sequential_n
    assert len(started) == limit
    assert all(r.body["fallback"] == "cold-start" for r in started)  # none was warm
    assert {r.body["member_id"] for r in started} == {m.id for m in members}
    for response in refused:
        assert response.retry_after is not None and 1 <= int(response.retry_after) <= 60
        assert "its limit" in response.body["detail"]
    # Another client: still served (its own cold start), and answered fast throughout.
    assert other.status_code == 409 and len(b_members) == 1
    loaded = statistics.median(probe.seconds)
    assert len(probe.seconds) >= 5
    assert loaded < 10 * unloaded, (loaded, unloaded)
    print(f"client b p50: {unloaded * 1000:.1f} ms unloaded, {loaded * 1000:.1f} ms in the flood")
    # Every request that reached activation left its row, the refusals with their reason.
    events = activation_events(world.path, "a")
    assert len(events) == len(responses)
    reasons = [e["reason"] for e in events]
    assert reasons.count("request: cold start (no warm member)") == limit
    assert sum(r.startswith("request: refused (at capacity") for r in reasons) == len(refused)
    assert [e["ok"] for e in events].count(True) == limit


def test_a_key_past_its_rate_is_429_with_retry_after(
    serve: Callable[..., AbstractContextManager], world: FloodWorld
) -> None:
    with serve(burst_max=10, activate_rate=0.5, activate_burst=3) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            responses = [
                client.post("/v1/clients/b/activate", headers=_bearer(world.key_b))
                for _ in range(8)
            ]
        members = server.members("b")

    assert [r.status_code for r in responses] == [409] * 3 + [429] * 5
    for response in responses[3:]:
        assert 1 <= int(response.headers["Retry-After"]) <= 2
        assert "Too many activations" in response.json()["detail"]
    assert len(members) == 3
    reasons = [e["reason"] for e in activation_events(world.path, "b")]
    assert (
        reasons
        == ["request: cold start (no warm member)"] * 3 + ["request: refused (rate limited)"] * 5
    )


def test_a_forecast_only_client_gets_409_and_no_member(
    serve: Callable[..., AbstractContextManager], world: FloodWorld
) -> None:
    with serve() as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            responses = [
                client.post("/v1/clients/f/activate", headers=_bearer(world.key_f))
                for _ in range(3)
            ]
        members = server.members("f")

    assert [r.status_code for r in responses] == [409] * 3
    assert all("forecast-only" in r.json()["detail"] for r in responses)
    assert all("member_id" not in r.json() for r in responses)
    assert members == []
    events = activation_events(world.path, "f")
    assert [(e["reason"], e["ok"], e["member_id"]) for e in events] == [
        ("request: refused (forecast-only)", False, None)
    ] * 3


# --- nothing queues behind bad keys or a locked warehouse ----------------------------------


def test_bad_keys_do_not_slow_down_good_ones(
    serve: Callable[..., AbstractContextManager], world: FloodWorld
) -> None:
    forged = world.key_a[:-1] + ("A" if world.key_a[-1] != "A" else "B")

    keys = [forged if i % 3 == 0 else f"pw_{secrets.token_hex(8)}_{'x' * 43}" for i in range(240)]
    with serve() as server:
        probe = _LatencyProbe(server.url, world.key_b)
        unloaded = probe.unloaded_p50()
        with probe:
            answers = _flood(server.url, "/v1/clients/a/activate", keys)
        members = server.members("a")

    assert [a.status_code for a in answers] == [401] * 240
    loaded = statistics.median(probe.seconds)
    assert len(probe.seconds) >= 5
    assert loaded < 10 * unloaded, (loaded, unloaded)
    print(f"client b p50: {unloaded * 1000:.1f} ms unloaded, {loaded * 1000:.1f} ms in bad keys")
    assert members == [] and activation_events(world.path, "a") == []


def test_a_locked_warehouse_answers_503_concurrently_within_the_wait(
    serve: Callable[..., AbstractContextManager], world: FloodWorld
) -> None:
    lock_wait_s = 1.0
    calls = [("POST", "a", "activate", world.key_a), ("GET", "b", "profile", world.key_b)] * 3

    def one(call: tuple[str, str, str, str]) -> tuple[httpx.Response, float]:
        method, client_id, route, key = call
        started = time.perf_counter()
        response = httpx.request(
            method, f"{server.url}/v1/clients/{client_id}/{route}", headers=_bearer(key), timeout=60
        )
        return response, time.perf_counter() - started

    with serve(lock_wait_s=lock_wait_s) as server:
        # Another process opens the warehouse read-write (a flow writing) and keeps it.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]);"
                " print('locked', flush=True); time.sleep(60)",
                str(world.path),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                answers = list(pool.map(one, calls))
            total = time.perf_counter() - started
        finally:
            holder.kill()
            holder.wait()
        after = httpx.get(
            f"{server.url}/v1/clients/b/profile", headers=_bearer(world.key_b), timeout=60
        )

    for response, seconds in answers:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert "busy" in response.json()["detail"]
        assert seconds < lock_wait_s + 1.0
    assert total < lock_wait_s + 1.0  # together, not one after the other
    assert after.status_code == 200  # and served again as soon as the lock is gone
