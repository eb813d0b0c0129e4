"""A test session killed outright (SIGKILL) runs no teardown: the next one stops what it
left (its services' process groups, its cluster) and removes its files, and leaves the
control plane of a session still running alone."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.control_plane.conftest import ROOT_PREFIX, sweep_abandoned


def _root(owner: int, groups: list[int]) -> Path:
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    (root / "owner").write_text(str(owner))
    (root / "groups").write_text("".join(f"{pid}\n" for pid in groups))
    return root


def test_an_abandoned_control_plane_is_stopped_and_removed_a_live_one_kept():
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process: an owner killed outright
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)
    kept = subprocess.Popen(["sleep", "300"], start_new_session=True)
    abandoned = _root(gone.pid, [left.pid])
    running = _root(os.getpid(), [kept.pid])  # this session owns it: untouched
    try:
        sweep_abandoned()
        assert left.wait(timeout=10) == -9
        assert not abandoned.exists()
        assert kept.poll() is None and running.exists()
    finally:
        for process in (left, kept):
            process.kill()
            process.wait()
        (running / "owner").unlink()
        (running / "groups").unlink()
        running.rmdir()
