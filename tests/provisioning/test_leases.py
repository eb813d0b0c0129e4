"""The lease book: busy members, reservations, and when a member was last used."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provisioning.runtime.leases import LeaseBook


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
    book.lease("b", 1)  # any write prunes what is older than a day
    assert '"a"' not in (tmp_path / "leases.json").read_text()


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
