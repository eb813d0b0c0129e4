"""The process runtime's state file: one record per member, JSON, guarded by an flock.

The pool is persisted so that a new ProcessRuntime on the same file (a restarted prewarm)
finds its workers again. Every access loads the file under an exclusive lock and saves it
back before letting go, so concurrent prewarms on one file see each other's members.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_VERSION = 1


@dataclass
class _Record:
    """One member as persisted in the state file."""

    id: str
    client_id: str
    plan_id: str
    labels: dict[str, str]
    env: dict[str, str]
    cpu: float
    memory_mb: int
    port: int
    created_at: str
    pid: int | None = None
    pid_start: int | None = None
    endpoint: str | None = None
    log_path: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Declared port (as text: JSON keys) -> endpoint; the first is `endpoint`.
    ports: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None  # the worker's own writable directory (its database)


@contextmanager
def locked(state_path: Path) -> Iterator[None]:
    """Hold the exclusive lock of a state file (its directory is created if need be)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state_path.with_name(state_path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_records(state_path: Path) -> dict[str, _Record]:
    if not state_path.exists():
        return {}
    data = json.loads(state_path.read_text())
    return {m["id"]: _Record(**m) for m in data.get("members", [])}


def save_records(state_path: Path, pool: dict[str, _Record]) -> None:
    payload = {"version": STATE_VERSION, "members": [asdict(r) for r in pool.values()]}
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, state_path)
