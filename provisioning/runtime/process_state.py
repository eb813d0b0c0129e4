"""The process runtime's state file: a version marker, and the move from version 1.

Version 1 kept every member in the state file itself, loaded and saved whole under one
flock by every call. Version 2 keeps each member in a record file of its own
(`process_records.py`); the state file only says so, and stays the path that names the pool
(workers carry it as `--state`). A version-1 file is migrated the first time a ProcessRuntime
uses it, under the state file's lock, so two prewarms never migrate at once: the records are
written first and the marker last, so one killed half way leaves a version-1 file whose next
migration writes the same records again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from provisioning.runtime.process_records import MemberRecords, _Record

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")

STATE_VERSION = 2


def prepare_state(state_path: Path, records: MemberRecords) -> int:
    """Make `state_path` a version-2 state file; return how many members were migrated."""
    if _version(state_path) == STATE_VERSION:
        return 0  # the common case, decided without the lock
    with _locked(state_path):
        if _version(state_path) == STATE_VERSION:
            return 0  # another prewarm migrated it while we waited
        members = _version_1_members(state_path)
        for member in members:
            records.write(_Record(**member))
        _write_marker(state_path, records)
    if members:
        log.info("moved %d member(s) of %s into %s", len(members), state_path, records.directory)
    return len(members)


def _version(state_path: Path) -> int | None:
    try:
        return int(json.loads(state_path.read_text()).get("version", 1))
    except FileNotFoundError:
        return None


def _version_1_members(state_path: Path) -> list[dict]:
    try:
        return list(json.loads(state_path.read_text()).get("members", []))
    except FileNotFoundError:
        return []


def _write_marker(state_path: Path, records: MemberRecords) -> None:
    # No "members" key: a version-1 prewarm reading this file finds an empty pool, not a crash.
    payload = {"version": STATE_VERSION, "records": records.directory.name}
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, state_path)


@contextmanager
def _locked(state_path: Path) -> Iterator[None]:
    """Hold the exclusive lock of a state file (its directory is created if need be)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(state_path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
