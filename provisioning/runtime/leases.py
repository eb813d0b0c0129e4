"""Leases: which pool members serve a request right now, shared by every process of a pool.

A member claimed for a request is *busy* until its lease ends. The apply step never releases
or pauses a busy member (it drains: the member stays until it is idle), and a claim never
hands a busy member to a second request (a *share* does, on purpose: requests with one
routing affinity join one member's lease). A member the apply step is about to release or
pause is *reserved* for that moment, so a request cannot claim or share it in between. When
a lease ends the book remembers when the member was last *used*: the apply step keeps a
member used within the scale-down delay even if no plan wants it yet (the need that used it
reaches the warehouse only with the next ingest).

The book is one small JSON file per pool (under the data directory), guarded by an flock:
the API, a cycle's apply step and a soak's traffic driver all see the same leases. Expired
leases and old reservations are dropped on every write, so the file holds only members busy
or in transition right now, and its size is bounded by the pool.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# A reservation outlives the runtime call it guards (a release takes well under a second);
# after this it is dropped, so a crashed apply cannot reserve a member forever.
RESERVATION_S = 60.0
# How long the book remembers when a member was last used (longer than any sane delay).
USED_MEMORY_S = 24 * 3600.0


class LeaseBook:
    """Busy members and reservations of one pool, persisted in a locked JSON file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock

    def busy(self) -> set[str]:
        """Members whose lease has not ended."""
        with self._book(write=False) as book:
            return set(book["leases"])

    def claim(self, candidates: Iterable[str], seconds: float) -> str | None:
        """Lease the first candidate that is neither busy nor reserved; None when none is."""
        with self._book() as book:
            for member_id in candidates:
                if member_id in book["leases"] or member_id in book["reserved"]:
                    continue
                book["leases"][member_id] = self._clock() + seconds
                return member_id
        return None

    def share(self, candidates: Iterable[str], seconds: float) -> tuple[str, bool] | None:
        """Lease the first candidate that is not reserved, joining the lease of a busy one
        (it then ends no sooner than `seconds` from now); the member and whether it was busy.

        For requests that share a member (routing affinity). The lease is one per member: it
        ends at the latest end asked for, or when `end` is called for any of its requests."""
        with self._book() as book:
            for member_id in candidates:
                if member_id in book["reserved"]:
                    continue
                held = book["leases"].get(member_id)
                until = self._clock() + seconds
                book["leases"][member_id] = until if held is None else max(held, until)
                return member_id, held is not None
        return None

    def lease(self, member_id: str, seconds: float) -> None:
        """Mark a member busy (a member created for a request: nobody could claim it yet)."""
        with self._book() as book:
            book["leases"][member_id] = self._clock() + seconds

    def end(self, member_id: str) -> None:
        """The request a member served is done: the member is idle again."""
        with self._book() as book:
            if book["leases"].pop(member_id, None) is not None:
                book["used"][member_id] = self._clock()

    def seconds_left(self, member_ids: Iterable[str]) -> float | None:
        """Seconds until the first lease among `member_ids` ends; None when none is leased."""
        with self._book(write=False) as book:
            ends = [book["leases"][m] for m in member_ids if m in book["leases"]]
            return max(0.0, min(ends) - self._clock()) if ends else None

    def used_within(self, seconds: float) -> set[str]:
        """Members busy now or used in the last `seconds`."""
        with self._book(write=False) as book:
            since = self._clock() - seconds
            return set(book["leases"]) | {m for m, at in book["used"].items() if at >= since}

    def reserve(self, member_id: str) -> bool:
        """Reserve an idle member for a release or pause; False when it is busy or reserved."""
        with self._book() as book:
            if member_id in book["leases"] or member_id in book["reserved"]:
                return False
            book["reserved"][member_id] = self._clock() + RESERVATION_S
            return True

    def unreserve(self, member_id: str) -> None:
        """Let requests claim the member again (its pause is done, or it failed)."""
        with self._book() as book:
            book["reserved"].pop(member_id, None)

    @contextmanager
    def _book(self, write: bool = True) -> Iterator[dict[str, dict[str, float]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            now = self._clock()
            book = self._load()
            for section in ("leases", "reserved"):
                for member_id, until in list(book[section].items()):
                    if until <= now:
                        del book[section][member_id]
                        if section == "leases":  # a lease that ran out: used until then
                            book["used"][member_id] = until
            for member_id in [m for m, at in book["used"].items() if at < now - USED_MEMORY_S]:
                del book["used"][member_id]
            yield book
            if write:
                self._save(book)

    def _load(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            # A torn or foreign file holds no lease worth keeping: start over rather than
            # refuse every request of the pool.
            data = {}
        return {
            section: {str(k): float(v) for k, v in (data.get(section) or {}).items()}
            for section in ("leases", "reserved", "used")
        }

    def _save(self, book: dict[str, dict[str, float]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(book))
        os.replace(tmp, self.path)


def lease_book_path(data_dir: Path, pool: str) -> Path:
    """Where a pool's lease book lives."""
    return Path(data_dir) / f"leases-{pool}.json"
