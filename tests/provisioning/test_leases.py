"""The lease book: busy members, reservations, and when a member was last used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioning.runtime.leases import RESERVATION_S, USED_MEMORY_S, LeaseBook

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_claim_takes_the_first_idle_candidate_and_never_a_busy_one(tmp_path: Path):
    clock = Clock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    assert book.claim(["a", "b"], 10) == "a"
    assert book.claim(["a", "b"], 10) == "b"
    assert book.claim(["a", "b"], 10) is None
    assert book.busy() == {"a", "b"}
    clock.now += 11  # leases run out: idle again, and remembered as used until then
    assert book.busy() == set()
    assert book.claim(["a"], 10) == "a"
    assert book.used_within(5) == {"a", "b"}  # a is busy, b was used 1 s ago


def test_a_reserved_member_is_never_claimed_and_a_busy_one_never_reserved(tmp_path: Path):
    book = LeaseBook(tmp_path / "leases.json", Clock())
    assert book.reserve("a") is True
    assert book.claim(["a", "b"], 10) == "b"
    assert book.reserve("b") is False  # serving a request
    book.unreserve("a")
    assert book.claim(["a"], 10) == "a"


def test_ending_a_lease_records_the_use_and_old_uses_are_forgotten(tmp_path: Path):
    clock = Clock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    book.lease("a", 60)
    clock.now += 5
    book.end("a")
    assert book.busy() == set()
    assert book.used_within(1) == {"a"}
    clock.now += 30
    assert book.used_within(10) == set() and book.used_within(60) == {"a"}
    clock.now += 2 * 24 * 3600
    assert book.used_within(3 * 24 * 3600) == set()  # older than a day: forgotten
    assert not (book.directory / "a.lease").exists()  # and its file dropped on the way


def test_concurrent_claims_share_nothing(tmp_path: Path):
    book = LeaseBook(tmp_path / "leases.json")
    candidates = [f"m{i}" for i in range(20)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda _: book.claim(candidates, 60), range(30)))
    taken = [m for m in won if m is not None]
    assert sorted(taken) == sorted(candidates) and won.count(None) == 10


def test_a_torn_book_starts_empty_instead_of_failing(tmp_path: Path):
    path = tmp_path / "leases.json"
    path.write_text("{not json")
    book = LeaseBook(path)
    assert book.busy() == set() and book.claim(["a"], 10) == "a"


def test_a_share_joins_a_busy_lease_extending_it_and_skips_a_reserved_member(tmp_path: Path):
    clock = Clock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    assert book.share(["a", "b"], 10) == ("a", False)  # idle: a plain lease
    clock.now += 8
    assert book.share(["a", "b"], 10) == ("a", True)  # busy: joined, now ends at +18
    assert book.share(["a"], 1) == ("a", True)  # a shorter ask never shortens it
    clock.now += 5  # the first lease would have ended by now; the joined one has not
    assert book.busy() == {"a"} and book.seconds_left(["a"]) == 5
    assert book.claim(["a"], 10) is None  # a claim still never takes a busy member
    assert book.reserve("b") is True
    assert book.share(["b", "a"], 10) == ("a", True)  # b is being released or paused
    assert book.share(["b"], 10) is None


def test_a_reservation_blocks_claims_and_shares_until_it_is_lifted_or_lapses(tmp_path: Path):
    clock = Clock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    assert book.reserve("a") is True and book.reserve("a") is False
    assert book.claim(["a"], 10) is None and book.share(["a"], 10) is None
    book.unreserve("a")
    assert book.share(["a"], 10) == ("a", False)
    book.end("a")
    assert book.reserve("a") is True
    clock.now += RESERVATION_S + 1  # a crashed apply never unreserved it: it lapses
    assert book.claim(["a"], 10) == "a"


def _in_thread(call):
    """Run `call` in a thread; the thread and a list that gets its result."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


class HeldClock:
    """A clock that stops the thread named `held` when it reads the time: a book change reads
    it with its member's lock held, so that thread holds the lock until `go` is set."""

    def __init__(self) -> None:
        self.held: str | None = None
        self.reading = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> float:
        if threading.current_thread().name == self.held:
            self.reading.set()
            assert self.go.wait(timeout=10)
        return 1000.0


def _holding(clock: HeldClock, call):
    """Start `call` in a thread that stops with the lock of the member it changes held."""
    clock.held = f"holder-{id(call)}"
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()), name=clock.held, daemon=True)
    thread.start()
    assert clock.reading.wait(timeout=10)
    return thread, result


def test_a_claim_locks_one_member_at_a_time_so_others_proceed(tmp_path: Path):
    clock = HeldClock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    holder, held = _holding(clock, lambda: book.claim(["a"], 60))  # holds a's lock
    claim, result = _in_thread(lambda: book.claim(["b"], 60))
    claim.join(timeout=10)
    assert result == ["b"]  # b's claim never waited for a's lock
    book.lease("c", 60)
    book.end("c")
    assert book.busy() == {"b"}  # reads take no lock at all
    waiting, got = _in_thread(lambda: book.claim(["a", "c"], 60))
    waiting.join(timeout=0.3)
    assert waiting.is_alive() and got == []  # a comes first: the claim waits for its lock
    clock.go.set()
    holder.join(timeout=10)
    waiting.join(timeout=10)
    assert held == ["a"] and got == ["c"]  # a went to the holder: the claim took the next
    assert book.busy() == {"a", "b", "c"}


def test_a_claim_waiting_for_a_held_candidate_takes_it_when_it_stays_free(tmp_path: Path):
    clock = HeldClock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    book.lease("a", 60)
    holder, _ = _holding(clock, lambda: book.end("a"))  # a's request ends meanwhile
    waiting, got = _in_thread(lambda: book.claim(["a", "b"], 60))
    waiting.join(timeout=0.3)
    assert waiting.is_alive()  # not skipped: a free first choice is worth the microseconds
    clock.go.set()
    holder.join(timeout=10)
    waiting.join(timeout=10)
    assert got == ["a"] and book.busy() == {"a"}


_CLAIMER = """
import json, sys, time
from pathlib import Path
from provisioning.runtime.leases import LeaseBook

book, go, rounds, size = LeaseBook(Path(sys.argv[1])), Path(sys.argv[2]), *map(int, sys.argv[3:5])
(go.parent / f"ready-{sys.argv[5]}").touch()
while not go.exists():
    time.sleep(0.001)
won = []
for r in range(rounds):
    candidates = [f"r{r}-m{i}" for i in range(size)]
    won.append([m for m in iter(lambda: book.claim(candidates, 600), None)])
print(json.dumps(won))
"""


def test_processes_claiming_the_same_candidates_never_get_the_same_member(tmp_path: Path):
    rounds, size = 150, 6
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_CLAIMER)]
            + [str(tmp_path / "leases.json"), str(go), str(rounds), str(size), str(n)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for n in range(3)
    ]
    # Start them together: on a busy machine one interpreter can be ready, and done with
    # every round, before the others have imported anything; then nothing raced.
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(claimers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    won = [json.loads(c.communicate(timeout=120)[0]) for c in claimers]
    assert all(c.returncode == 0 for c in claimers)
    for r in range(rounds):
        taken = [m for per_process in won for m in per_process[r]]
        assert sorted(taken) == sorted(f"r{r}-m{i}" for i in range(size)), r  # once each
    # Both raced: neither took every member of every round (else this tested nothing).
    assert sum(1 for w in won for per_round in w if per_round) > rounds


def _files(book: LeaseBook) -> set[str]:
    return set(os.listdir(book.directory)) if book.directory.exists() else set()


def test_expired_entries_are_dropped_and_files_do_not_accumulate(tmp_path: Path):
    clock = Clock()
    book = LeaseBook(tmp_path / "leases.json", clock)
    for _ in range(20):  # the same members claimed and ended again and again
        members = [f"m{i}" for i in range(5)]
        assert [book.claim(members, 10) for _member in members] == members
        for member_id in members[:3]:
            book.end(member_id)
        clock.now += 11  # the other two just run out
    assert len(_files(book)) == 5  # one file a member, never more
    book.reserve("gone")
    book.unreserve("gone")  # nothing live: no file left behind
    book.end("never-leased")
    assert _files(book) == {f"m{i}.lease" for i in range(5)}
    # Leftovers of killed callers (a file created, never written) and of a power loss.
    (book.directory / "empty.lease").touch()
    (book.directory / "torn.lease").write_text("1000.0 - 9")
    assert book.busy() == set() and _files(book) == {f"m{i}.lease" for i in range(5)}
    clock.now += USED_MEMORY_S + 60  # uses older than the memory: gone, and their files
    assert book.used_within(USED_MEMORY_S) == set()
    assert _files(book) == set()


def test_a_single_file_book_of_before_is_migrated_on_first_use(tmp_path: Path):
    clock = Clock()
    path = tmp_path / "leases-default.json"
    path.write_text(
        json.dumps(
            {
                "leases": {"busy": 1060.0, "ran-out": 990.0},
                "reserved": {"paused": 1030.0},
                "used": {"idle": 950.0, "ancient": 1000.0 - USED_MEMORY_S - 1},
            }
        )
    )
    (tmp_path / "leases-default.json.lock").touch()
    book = LeaseBook(path, clock)
    assert book.busy() == {"busy"}
    assert not path.exists() and not (tmp_path / "leases-default.json.lock").exists()
    assert book.used_within(60) == {"busy", "ran-out", "idle"}
    assert book.seconds_left(["busy", "idle"]) == 60
    assert book.claim(["busy", "paused", "idle"], 10) == "idle"
    assert book.reserve("paused") is False  # still reserved
    again = LeaseBook(path, clock)  # another process of the pool, after the migration
    assert again.busy() == {"busy", "idle"}
    assert _files(book) == {f"{m}.lease" for m in ("busy", "ran-out", "paused", "idle")}


def test_a_migration_keeps_the_later_of_two_entries(tmp_path: Path):
    clock = Clock()
    path = tmp_path / "leases.json"
    LeaseBook(path, clock).lease("a", 10)  # written by an upgraded process meanwhile
    path.write_text(json.dumps({"leases": {"a": 1060.0}, "used": {"b": 999.0}}))
    book = LeaseBook(path, clock)
    assert book.seconds_left(["a"]) == 60 and book.used_within(5) == {"a", "b"}


@pytest.mark.parametrize("call", ["claim", "share", "end", "reserve", "seconds_left"])
def test_a_call_costs_the_same_whatever_the_number_of_leases(tmp_path: Path, monkeypatch, call):
    book = LeaseBook(tmp_path / "leases.json")

    def touched(tag: str, leased: int) -> list[str]:
        """What one call opens, renames, deletes, lists, reads and writes, `leased` others
        leased."""
        for i in range(leased):
            book.lease(f"other-{tag}-{i}", 600)
        paths: list[str] = []
        for name in ("open", "replace", "unlink", "listdir", "scandir", "stat"):
            real = getattr(os, name)

            def spy(*args, _real=real, _name=name, **kwargs):
                paths.append(f"{_name} {os.path.relpath(args[0], tmp_path) if args else ''}")
                return _real(*args, **kwargs)

            monkeypatch.setattr(os, name, spy)
        for name in ("read", "pread", "write", "pwrite"):  # on files already opened
            real = getattr(os, name)

            def count(*args, _real=real, _name=name, **kwargs):
                paths.append(_name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(os, name, count)
        member = f"x-{tag}"
        if call == "claim":
            assert book.claim([f"busy-{tag}", member], 60) == member
        elif call == "share":
            assert book.share([member], 60) == (member, False)
        elif call == "end":
            book.end(member)
        elif call == "reserve":
            assert book.reserve(member)
        else:
            assert book.seconds_left([member]) is not None
        monkeypatch.undo()
        return [p.replace(tag, "TAG") for p in paths]

    for tag in ("few", "many"):
        book.lease(f"busy-{tag}", 600)
        book.lease(f"x-{tag}", 600)  # end and seconds_left: a lease to end or to read
        if call in ("claim", "share", "reserve"):
            book.end(f"x-{tag}")
    few, many = touched("few", 1), touched("many", 500)
    assert few == many and few  # the same files, as many times: none of the others
    assert all("other" not in p for p in many)
    assert sum(p.startswith("open") for p in many) == (2 if call == "claim" else 1)
