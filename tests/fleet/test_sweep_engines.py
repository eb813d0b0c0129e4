"""A session killed outright (SIGKILL) runs no teardown: the next one stops the extra
engines it left (by their pidfiles), removes their bridges, mounts, sockets and files, and
leaves a running session's engines alone. No root or Docker needed: the "daemons" here
are sleeps."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.fleet.conftest import RECORD_PREFIX, RECORDS, sweep_abandoned_engines


def _fake_session(owner: int, daemon: subprocess.Popen, tag: str) -> tuple[Path, dict]:
    base = Path(tempfile.mkdtemp(prefix="pw-sweep-"))
    root, exec_root, sock = base / "root", base / "exec", base / "engine.sock"
    root.mkdir()
    exec_root.mkdir()
    sock.write_text("")
    (root / "docker.pid").write_text(str(daemon.pid))
    engine = {
        "pidfile": str(root / "docker.pid"),
        "bridge": f"pwbr9-{tag}",  # never made: removing it fails quietly
        "exec_root": str(exec_root),
        "root": str(root),
        "socket": str(sock),
    }
    record = RECORDS / f"{RECORD_PREFIX}test-{tag}.json"
    record.write_text(json.dumps({"owner": owner, "engines": [engine]}))
    return record, engine


def test_abandoned_engines_are_stopped_and_removed_running_ones_kept():
    gone = subprocess.Popen(["true"])
    gone.wait()  # an owner killed outright: its pid names no process now
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)
    kept = subprocess.Popen(["sleep", "300"], start_new_session=True)
    abandoned, engine = _fake_session(gone.pid, left, f"a{os.getpid()}")
    running, live = _fake_session(os.getpid(), kept, f"b{os.getpid()}")
    try:
        sweep_abandoned_engines()
        assert left.wait(timeout=10) == -9
        assert not abandoned.exists()
        assert not any(Path(engine[k]).exists() for k in ("root", "exec_root", "socket"))
        assert kept.poll() is None and running.exists() and Path(live["root"]).exists()
    finally:
        for process in (left, kept):
            process.kill()
            process.wait()
        running.unlink(missing_ok=True)
        for engine_files in (engine, live):
            subprocess.run(["rm", "-rf", str(Path(engine_files["root"]).parent)], check=False)
