"""Freed heap memory goes back to the system (core.memory), as prediction relies on between
its chunks."""

from __future__ import annotations

import os

import numpy as np

from core.memory import release_freed_memory


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_holes_between_kept_arrays_are_returned():
    # Arrays of 16 KB (below glibc's mmap threshold: they live in the heap), every other
    # one freed: 200 MB of holes between the ones kept, which free() alone keeps mapped.
    arrays = [np.ones(2048) for _ in range(25_000)]
    del arrays[::2]
    before = _rss()
    assert release_freed_memory() is True
    assert before - _rss() > 100 * 2**20
    assert all(a[0] == 1.0 for a in arrays)  # what was kept is intact
