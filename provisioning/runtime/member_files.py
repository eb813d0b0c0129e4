"""Per-member files in one directory, each member with its own flock: the mechanism the
process runtime's records (`process_records.py`) and the lease book (`leases.py`) share,
so a call on one member costs the same whatever the number of members and calls on
different members never wait for one another.

A holder may delete its member's lock file while holding it (a release); whoever was
waiting for that lock then holds a lock on a file nobody else can open, so `locked` checks,
once it has the lock, that the path still names the file it locked, and opens it again if
not.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Member ids are `prewarm-<client>-<hex>` (`safe_name_part`): anything else names no file.
_MEMBER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def is_member_id(member_id: str) -> bool:
    """True when `member_id` can name a record file (no path separators, no dot files)."""
    return _MEMBER_ID.fullmatch(member_id) is not None


class MemberLocks:
    """One directory of per-member files, each member with its own lock file `<id><suffix>`
    (the process runtime's records subclass it; the lease book's lock file also holds the
    member's entry)."""

    def __init__(self, directory: Path, suffix: str = ".lock") -> None:
        self.directory = directory
        self.suffix = suffix

    def remove(self, member_id: str) -> None:
        """Delete the member's lock file; only while holding that lock."""
        (self.directory / f"{member_id}{self.suffix}").unlink(missing_ok=True)

    @contextmanager
    def locked(self, member_id: str, *, new: bool = False) -> Iterator[int]:
        """Hold the member's lock, waiting for it; yields the lock file, open for reading and
        writing. `new`: the member is being created, so its lock file must not exist yet."""
        fd = self._acquire(member_id, new=new, wait=True)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def try_locked(self, member_id: str) -> Iterator[bool]:
        """Hold the member's lock if it is free now (True), else yield False at once."""
        try:
            fd = self._acquire(member_id, new=False, wait=False)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)

    def _acquire(self, member_id: str, *, new: bool, wait: bool) -> int:
        path = self.directory / f"{member_id}{self.suffix}"
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if new else 0)
        while True:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:  # the first member of the directory
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                if _names(path, fd):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # released (and unlinked) while we waited: lock the current file


def read_small(path: str) -> bytes:
    """A small file's bytes in one read: without the buffered text layer, as a listing reads
    two files a member (its record and its /proc stat)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """True when `path` is still the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
