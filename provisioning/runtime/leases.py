"""Leases: which pool members serve a request right now, shared by every process of a pool.

A member claimed for a request is *busy* until its lease ends. The apply step never releases
or pauses a busy member (it drains: the member stays until it is idle), and a claim never
hands a busy member to a second request (a *share* does, on purpose: requests with one
routing affinity join one member's lease). A member the apply step is about to release or
pause is *reserved* for that moment, so a request cannot claim or share it in between. When
a lease ends the book remembers when the member was last *used*: the apply step keeps a
member used within the scale-down delay even if no plan wants it yet (the need that used it
reaches the warehouse only with the next ingest).

The book is one small file per member (`<id>.lease`: its lease end, reservation end and
last use) in a directory beside the book's path (`leases-<pool>-members/` under the data
directory), and that file is also the member's flock (`member_files.MemberLocks`, as the
process runtime's records): the API, a cycle's apply step and a soak's traffic driver all
see the same leases. A change to a member locks that member alone, so changes to different
members never wait for one another, and a call costs the same whatever the number of leases.
A claim or share locks its candidates one at a time, in order, waiting for a candidate
another call holds (for the microseconds of a read and a write) and taking the first free
one: per member the test and the lease are one step, so a member is never leased to two
claimers.

An entry is one fixed-width line with a checksum, rewritten in place under the lock. Not a
temporary file renamed over the old one: on ext4 a rename over a file (or a truncation)
first writes the new data out (`auto_da_alloc`), ~0.2 ms a change, which dominated an
activation's bookkeeping. `busy`, `used_within` and `seconds_left` read the files without any
lock; a read that catches a write half done fails its checksum and reads again.

Expired leases become the member's last use and old reservations and uses are dropped on
every change; a member whose entry holds nothing live (no lease, no reservation, no use
within `USED_MEMORY_S`) loses its file, there and opportunistically in `busy` and
`used_within`, so the directory holds only members busy, in transition or used within the
day: its size is bounded by the pool. The single JSON file of before (the whole book under
one flock, at the book's path) is migrated into member files on first use and removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from provisioning.runtime.member_files import MemberLocks, is_member_id, read_small

# A reservation outlives the runtime call it guards (a release takes well under a second);
# after this it is dropped, so a crashed apply cannot reserve a member forever.
RESERVATION_S = 60.0
# How long the book remembers when a member was last used (longer than any sane delay).
USED_MEMORY_S = 24 * 3600.0

_T = TypeVar("_T")
_SUFFIX = ".lease"
# An entry's line: three times (or "-") and a checksum, padded to a fixed width so that a
# rewrite in place always covers the whole of the last one.
_WIDTH = 96
_READ_SIZE = 2 * _WIDTH
_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class _Entry:
    """One member's file: when its lease ends, its reservation lapses, it was last used."""

    lease: float | None = None
    reserved: float | None = None
    used: float | None = None

    def settled(self, now: float) -> _Entry:
        """The entry as of `now`: a lease that ran out is a use until then, stale parts gone."""
        lease, used = self.lease, self.used
        if lease is not None and lease <= now:
            used = lease if used is None else max(used, lease)
            lease = None
        reserved = self.reserved if self.reserved is not None and self.reserved > now else None
        if used is not None and used < now - USED_MEMORY_S:
            used = None
        return _Entry(lease, reserved, used)

    @property
    def empty(self) -> bool:
        return self.lease is None and self.reserved is None and self.used is None


class LeaseBook:
    """Busy members and reservations of one pool, one locked file per member."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.directory = members_dir(self.path)
        self._clock = clock
        self._files = MemberLocks(self.directory, _SUFFIX)
        self._migrated = False

    def busy(self) -> set[str]:
        """Members whose lease has not ended."""
        return {m for m, entry in self._scan().items() if entry.lease is not None}

    def claim(self, candidates: Iterable[str], seconds: float) -> str | None:
        """Lease the first candidate that is neither busy nor reserved; None when none is."""

        def take(entry: _Entry, now: float) -> tuple[_Entry, bool]:
            if entry.lease is not None or entry.reserved is not None:
                return entry, False
            return replace(entry, lease=now + seconds), True

        for member_id in candidates:
            if self._change(member_id, take):
                return member_id
        return None

    def share(self, candidates: Iterable[str], seconds: float) -> tuple[str, bool] | None:
        """Lease the first candidate that is not reserved, joining the lease of a busy one
        (it then ends no sooner than `seconds` from now); the member and whether it was busy.

        For requests that share a member (routing affinity). The lease is one per member: it
        ends at the latest end asked for, or when `end` is called for any of its requests."""

        def join(entry: _Entry, now: float) -> tuple[_Entry, bool | None]:
            if entry.reserved is not None:
                return entry, None
            held, until = entry.lease, now + seconds
            joined = replace(entry, lease=until if held is None else max(held, until))
            return joined, held is not None

        for member_id in candidates:
            joined = self._change(member_id, join)
            if joined is not None:
                return member_id, joined
        return None

    def lease(self, member_id: str, seconds: float) -> None:
        """Mark a member busy (a member created for a request: nobody could claim it yet)."""
        self._change(member_id, lambda entry, now: (replace(entry, lease=now + seconds), None))

    def end(self, member_id: str) -> None:
        """The request a member served is done: the member is idle again."""

        def idle(entry: _Entry, now: float) -> tuple[_Entry, None]:
            if entry.lease is None:
                return entry, None
            return replace(entry, lease=None, used=now), None

        self._change(member_id, idle)

    def seconds_left(self, member_ids: Iterable[str]) -> float | None:
        """Seconds until the first lease among `member_ids` ends; None when none is leased."""
        self._migrate()
        now = self._clock()
        ends = []
        for member_id in member_ids:
            entry = self._read(member_id) if is_member_id(member_id) else None
            lease = entry.settled(now).lease if entry is not None else None
            if lease is not None:
                ends.append(lease)
        return max(0.0, min(ends) - now) if ends else None

    def used_within(self, seconds: float) -> set[str]:
        """Members busy now or used in the last `seconds`."""
        since = self._clock() - seconds
        return {
            member_id
            for member_id, entry in self._scan().items()
            if entry.lease is not None or (entry.used is not None and entry.used >= since)
        }

    def reserve(self, member_id: str) -> bool:
        """Reserve an idle member for a release or pause; False when it is busy or reserved."""

        def hold(entry: _Entry, now: float) -> tuple[_Entry, bool]:
            if entry.lease is not None or entry.reserved is not None:
                return entry, False
            return replace(entry, reserved=now + RESERVATION_S), True

        return self._change(member_id, hold)

    def unreserve(self, member_id: str) -> None:
        """Let requests claim the member again (its pause is done, or it failed)."""
        self._change(member_id, lambda entry, now: (replace(entry, reserved=None), None))

    # --- one member's file ----------------------------------------------------------------

    def _change(self, member_id: str, change: Callable[[_Entry, float], tuple[_Entry, _T]]) -> _T:
        """Apply `change` to the member's settled entry under its lock; write what changed."""
        self._migrate()
        if not is_member_id(member_id):
            raise ValueError(f"{member_id!r} is not a member id")
        return self._change_locked(member_id, change)

    def _change_locked(
        self, member_id: str, change: Callable[[_Entry, float], tuple[_Entry, _T]]
    ) -> _T:
        with self._files.locked(member_id) as fd:
            now = self._clock()
            stored = _decode(os.pread(fd, _READ_SIZE, 0))  # whole: its writers hold the lock
            current = stored.settled(now) if stored is not None else _Entry()
            updated, result = change(current, now)
            if updated.empty:
                self._files.remove(member_id)  # nothing live: no file (the directory stays small)
            elif updated != stored:
                os.pwrite(fd, _encode(updated), 0)
            return result

    def _read(self, member_id: str) -> _Entry | None:
        """The member's entry, read without its lock; None: no file, or none in it."""
        try:
            for _ in range(_READ_ATTEMPTS):
                data = read_small(str(self.directory / f"{member_id}{_SUFFIX}"))
                entry = _decode(data)
                if entry is not None or not data:
                    return entry
                # Caught a write half done (or the file is torn: no lease worth keeping).
        except FileNotFoundError:
            pass
        return None

    # --- the whole book -------------------------------------------------------------------

    def _scan(self) -> dict[str, _Entry]:
        """Every member with something live, read without locks; stale files are tidied."""
        self._migrate()
        now = self._clock()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return {}
        live: dict[str, _Entry] = {}
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            member_id = name[: -len(_SUFFIX)]
            entry = self._read(member_id)
            settled = entry.settled(now) if entry is not None else _Entry()
            if not settled.empty:
                live[member_id] = settled
            elif is_member_id(member_id):  # stale, empty or torn: a killed call's leftover
                self._tidy(member_id)
        return live

    def _tidy(self, member_id: str) -> None:
        """Drop a member's file if nobody holds its lock now and it holds nothing live."""
        with self._files.try_locked(member_id) as held:
            if held:
                entry = self._read(member_id)
                if entry is None or entry.settled(self._clock()).empty:
                    self._files.remove(member_id)

    def _migrate(self) -> None:
        """Move the single-file book of before (`self.path`) into member files, once."""
        if self._migrated:
            return
        if self.path.exists():
            lock_path = self.path.with_name(self.path.name + ".lock")
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # as the old book's writers did
                for member_id, entry in _load_single_file(self.path).items():
                    if is_member_id(member_id):
                        self._merge(member_id, entry)
                self.path.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
        self._migrated = True

    def _merge(self, member_id: str, old: _Entry) -> None:
        """Merge an entry of the single-file book into the member's file (the later wins)."""

        def merge(entry: _Entry, now: float) -> tuple[_Entry, None]:
            merged = _Entry(
                _later(entry.lease, old.lease),
                _later(entry.reserved, old.reserved),
                _later(entry.used, old.used),
            )
            return merged.settled(now), None

        self._change_locked(member_id, merge)


def members_dir(path: Path) -> Path:
    """Where the member files of a lease book live (`<book>-members`)."""
    return path.with_name(path.stem + "-members")


def lease_book_path(data_dir: Path, pool: str) -> Path:
    """Where a pool's lease book lives (its members beside it: `members_dir`)."""
    return Path(data_dir) / f"leases-{pool}.json"


def _load_single_file(path: Path) -> dict[str, _Entry]:
    """The entries of a single-file book: `{"leases", "reserved", "used"}`, member -> time."""
    try:
        data = json.loads(path.read_text())
        sections = {
            section: {str(k): float(v) for k, v in (data.get(section) or {}).items()}
            for section in ("leases", "reserved", "used")
        }
    except (OSError, ValueError, TypeError, AttributeError):
        # A torn or foreign file holds no lease worth keeping: start over rather than
        # refuse every request of the pool.
        return {}
    members = set().union(*sections.values())
    return {
        m: _Entry(sections["leases"].get(m), sections["reserved"].get(m), sections["used"].get(m))
        for m in members
    }


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _encode(entry: _Entry) -> bytes:
    """The entry as one fixed-width line: `<lease> <reserved> <used> <crc32>`."""
    times = " ".join(
        "-" if t is None else repr(t) for t in (entry.lease, entry.reserved, entry.used)
    )
    line = f"{times} {zlib.crc32(times.encode()):08x}"
    return line.ljust(_WIDTH - 1).encode() + b"\n"


def _decode(data: bytes) -> _Entry | None:
    """The entry of a line `_encode` wrote; None when empty, torn or foreign."""
    try:
        *times, crc = data.decode("ascii").split()
        if len(times) != 3 or int(crc, 16) != zlib.crc32(" ".join(times).encode()):
            return None
        lease, reserved, used = (None if t == "-" else float(t) for t in times)
    except ValueError:
        return None
    return _Entry(lease, reserved, used)
