"""`prewarm api` as an operator runs it: no line per request unless asked for one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import World

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve_and_ask(world: World, tmp_path: Path, *flags: str) -> str:
    """Start `prewarm api` on the test warehouse, ask /healthz three times, stop it as
    Ctrl-C does; everything it printed."""
    port = _free_port()
    env = {
        **os.environ,
        "PREWARM_DATA_DIR": str(tmp_path / "data"),
        "PREWARM_DUCKDB_PATH": str(world.path),
        "PREWARM_RUNTIME": "process",
    }
    out = tmp_path / "api.out"
    with out.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "api", "--port", str(port), *flags],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, out.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"prewarm api did not answer in 60 s: {out.read_text()}")
                    time.sleep(0.2)
            for _ in range(3):
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
    return out.read_text()


def test_no_line_per_request_by_default(world: World, tmp_path: Path) -> None:
    printed = _serve_and_ask(world, tmp_path)
    assert "Uvicorn running on" in printed  # it did print, just not per request
    assert "GET /healthz" not in printed


def test_access_log_prints_a_line_per_request(world: World, tmp_path: Path) -> None:
    printed = _serve_and_ask(world, tmp_path, "--access-log")
    assert printed.count('"GET /healthz HTTP/1.1" 200') >= 3
