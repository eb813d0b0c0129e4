"""The warehouse's change signal, which the API's in-memory snapshots are stamped with.

The API answers from memory (the live keys, each client's view: `api.views`), while other
processes (the cycle, the CLI) write the warehouse. DuckDB writes every commit to the
file's write-ahead log (`<file>.wal`) and folds the log into the file at a checkpoint, so a
write by anyone changes the size, modification time or inode of one of the two files.
`WarehouseStamp.version` stats both (two system calls, microseconds: cheap enough to ask on
every request) and counts a new version whenever they differ from the last look. A snapshot
stamped with an older version is stale and is read again before it is used, so a change is
seen by the first request after it lands. A change this process makes to what the
snapshots hold (a schema extension, attributes) also bumps the version (`invalidate`), not
relying on the file system.

The API's own writes that change nothing a snapshot holds (activation rows, every half
second under load, by its outcome writer: `api.outcome_writer`) would otherwise make every
snapshot stale at each flush. So the writer reports the files as it found them once it
held the write lock (`begin_own_write`: if someone else changed them, that counts as a new
version at once) and as its closed connection left them (`end_own_write`: adopted without
a new version). No other process can write while the lock is held, so nothing is hidden;
versions stay put only meanwhile, a write of a few milliseconds. (Once the lock is let go,
another process needs a connection of its own, tens of milliseconds, before it can write
and close: far longer than the stat that follows the close.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

FileSignature = tuple[int, int, int] | None  # inode, size, mtime in ns; None: no such file
Signature = tuple[FileSignature, FileSignature]  # the file, its write-ahead log


class WarehouseStamp:
    """A version number that grows whenever the warehouse files change (see module doc)."""

    def __init__(self, path: Path) -> None:
        self._files = _files_of(Path(path))  # as strings once: stat'ed twice a request
        self._mutex = threading.Lock()  # held for comparisons only, never for I/O
        self._seen = self._signature()
        self._version = 0
        self._own_writes = 0  # own writes under way, holding the write lock

    def version(self) -> int:
        """The current version: a new one when the files changed since the last look."""
        signature = self._signature()
        with self._mutex:
            if self._own_writes == 0 and signature != self._seen:
                self._seen = signature
                self._version += 1
            return self._version

    def invalidate(self) -> None:
        """This process changed something a snapshot holds: every snapshot is stale now."""
        with self._mutex:
            self._version += 1

    def begin_own_write(self, at_lock: Signature) -> None:
        """A write that changes nothing a snapshot holds holds the write lock now (in this
        process or its outcome writer), and found the files as `at_lock`: a change of
        someone else's there counts now; then versions stay put until `end_own_write`."""
        with self._mutex:
            if at_lock != self._seen:
                self._seen = at_lock
                self._version += 1
            self._own_writes += 1

    def end_own_write(self, after: Signature | None) -> None:
        """That write ended and left the files as `after` (None: unknown, or it failed)."""
        with self._mutex:
            self._own_writes -= 1
            if after is not None:
                self._seen = after

    def _signature(self) -> Signature:
        return _signature_of(self._files)


def warehouse_signature(path: Path) -> Signature:
    """The warehouse file and its write-ahead log as `os.stat` sees them now."""
    return _signature_of(_files_of(Path(path)))


def _files_of(path: Path) -> tuple[str, str]:
    """The warehouse file and its write-ahead log."""
    return str(path), str(path.with_name(path.name + ".wal"))


def _signature_of(files: tuple[str, str]) -> Signature:
    return _file_signature(files[0]), _file_signature(files[1])


def _file_signature(path: str) -> FileSignature:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
