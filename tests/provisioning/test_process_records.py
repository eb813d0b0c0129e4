"""The process runtime's record directory: listings by member-id prefix, the directory's
names read again whenever it changed, and reused only once it had settled."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.runtime import process_records
from provisioning.runtime.process_records import MemberRecords, _Record


def _record(member_id: str, client_id: str) -> _Record:
    return _Record(
        id=member_id,
        client_id=client_id,
        plan_id="p",
        labels={},
        env={},
        cpu=0.25,
        memory_mb=64,
        port=0,
        created_at="2026-01-01T00:00:00",
    )


def _ids(records: MemberRecords, prefix: str = "") -> list[str]:
    return [r.id for r in records.read_all(prefix)]


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The directories listed (every `os.scandir` call while the test runs)."""
    listed: list[str] = []
    scandir = os.scandir

    def counted(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        listed.append(str(path))
        return scandir(path)

    monkeypatch.setattr(process_records.os, "scandir", counted)
    yield listed


def test_records_written_right_after_a_listing_are_in_the_next(tmp_path: Path) -> None:
    records = MemberRecords(tmp_path / "members")
    assert _ids(records) == []

    records.write(_record("prewarm-a-01", "a"))
    assert _ids(records, "prewarm-a-") == ["prewarm-a-01"]
    # Within the same clock tick as the write before: the directory's mtime may not move.
    records.write(_record("prewarm-a-02", "a"))
    records.write(_record("prewarm-ab-01", "ab"))
    assert _ids(records, "prewarm-a-") == ["prewarm-a-01", "prewarm-a-02"]
    assert _ids(records, "prewarm-ab-") == ["prewarm-ab-01"]
    records.discard("prewarm-a-01")
    assert _ids(records, "prewarm-a-") == ["prewarm-a-02"]
    assert _ids(records) == ["prewarm-a-02", "prewarm-ab-01"]


def test_a_settled_directory_is_read_once_until_it_changes(
    tmp_path: Path, scans: list[str]
) -> None:
    records = MemberRecords(tmp_path / "members")
    for member_id, client in (("prewarm-b-01", "b"), ("prewarm-a-02", "a"), ("prewarm-a-01", "a")):
        records.write(_record(member_id, client))
    with records.locked("prewarm-a-01"):  # a lock file beside the records: not a record
        pass
    past = time.time() - 10  # nothing changed for 10 s
    os.utime(records.directory, (past, past))

    assert _ids(records, "prewarm-a-") == ["prewarm-a-01", "prewarm-a-02"]
    assert _ids(records, "prewarm-b-") == ["prewarm-b-01"]
    assert _ids(records, "prewarm-c-") == []
    assert _ids(records) == ["prewarm-a-01", "prewarm-a-02", "prewarm-b-01"]
    assert len(scans) == 1  # the names were read once

    records.write(_record("prewarm-c-01", "c"))  # the directory changed

    assert _ids(records, "prewarm-c-") == ["prewarm-c-01"]
    assert len(scans) == 2
    # Just changed: not settled, so the names are read again until it has.
    assert _ids(records, "prewarm-c-") == ["prewarm-c-01"] and len(scans) == 3


def test_a_directory_not_there_lists_nothing(tmp_path: Path) -> None:
    records = MemberRecords(tmp_path / "never-made")
    assert _ids(records) == [] and _ids(records, "prewarm-a-") == []


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The record files parsed (every `_load` while the test runs)."""
    parsed: list[str] = []
    load = process_records._load

    def counted(path: str) -> _Record | None:
        parsed.append(Path(path).name)
        return load(path)

    monkeypatch.setattr(process_records, "_load", counted)
    yield parsed


def _settle(records: MemberRecords, member_id: str) -> None:
    past = time.time() - 10  # written 10 s ago
    os.utime(records.directory / f"{member_id}.json", (past, past))


def test_a_settled_record_is_parsed_once_until_it_is_written_again(
    tmp_path: Path, parses: list[str]
) -> None:
    records = MemberRecords(tmp_path / "members")
    records.write(_record("prewarm-a-01", "a"))
    _settle(records, "prewarm-a-01")

    first = records.read("prewarm-a-01")
    assert first is not None and first.pid is None
    assert _ids(records, "prewarm-a-") == ["prewarm-a-01"]
    assert records.read("prewarm-a-01") == first
    assert parses == ["prewarm-a-01.json"]

    # Written by another process (its own MemberRecords), the way every write is made.
    changed = _record("prewarm-a-01", "a")
    changed.pid = 4242
    MemberRecords(records.directory).write(changed)

    again = records.read("prewarm-a-01")
    assert again is not None and again.pid == 4242
    assert len(parses) == 2
    # Just written: not settled, so parsed on every read until it has.
    assert records.read("prewarm-a-01") == again and len(parses) == 3


def test_a_kept_record_is_handed_out_as_a_copy(tmp_path: Path) -> None:
    records = MemberRecords(tmp_path / "members")
    records.write(_record("prewarm-a-01", "a"))
    _settle(records, "prewarm-a-01")

    assert records.read("prewarm-a-01") is not None  # parsed, and kept
    mine = records.read("prewarm-a-01")  # from memory
    assert mine is not None
    mine.labels["prewarm.tier"] = "active"
    mine.timings_ms["first_answer"] = 1.0
    mine.pid = 7

    fresh = records.read("prewarm-a-01")
    assert fresh is not None
    assert (fresh.labels, fresh.timings_ms, fresh.pid) == ({}, {}, None)


def test_a_record_released_elsewhere_is_not_read_from_memory(tmp_path: Path) -> None:
    records = MemberRecords(tmp_path / "members")
    records.write(_record("prewarm-a-01", "a"))
    _settle(records, "prewarm-a-01")
    assert records.read("prewarm-a-01") is not None

    other = MemberRecords(records.directory)
    with other.locked("prewarm-a-01"):
        other.discard("prewarm-a-01")

    assert records.read("prewarm-a-01") is None
    assert _ids(records) == []


def test_past_the_bound_the_records_kept_stay_kept_and_released_ones_are_forgotten(
    tmp_path: Path, parses: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool larger than the bound keeps parsing only what is past it (it once dropped every
    record kept and parsed the whole pool on every listing), and a whole listing forgets
    released members, so the bound is spent on the pool as it is."""
    monkeypatch.setattr(process_records, "_MAX_PARSED", 3)
    records = MemberRecords(tmp_path / "members")
    ids = [f"prewarm-a-{i:02d}" for i in range(5)]
    for member_id in ids:
        records.write(_record(member_id, "a"))
        _settle(records, member_id)

    assert _ids(records) == ids
    assert _ids(records) == ids
    # The first three stay kept; the two past the bound are parsed on every listing.
    assert parses == [f"{m}.json" for m in ids] + [f"{m}.json" for m in ids[3:]]

    other = MemberRecords(records.directory)
    for member_id in ids[:2]:  # released by another process
        with other.locked(member_id):
            other.discard(member_id)
    parses.clear()
    assert _ids(records) == ids[2:]
    # The two released were forgotten: the records past the bound are kept now.
    assert set(records._parsed.kept) == {f"{m}.json" for m in ids[2:]}
    parses.clear()
    assert _ids(records) == ids[2:]
    assert parses == []


def test_records_parsed_by_one_runtime_are_not_parsed_again_by_the_next(
    tmp_path: Path, parses: list[str]
) -> None:
    """A cycle opens the runtime anew for its plan and for its apply: the second does not
    parse the pool again, and a record written since is parsed again by either."""
    first = MemberRecords(tmp_path / "members")
    for member_id in ("prewarm-a-01", "prewarm-b-01"):
        first.write(_record(member_id, member_id[8]))
        _settle(first, member_id)
    assert _ids(first) == ["prewarm-a-01", "prewarm-b-01"]
    assert len(parses) == 2

    changed = _record("prewarm-b-01", "b")
    changed.pid = 4242
    first.write(changed)
    _settle(first, "prewarm-b-01")
    later = MemberRecords(tmp_path / "members")  # the next runtime opened on the same pool
    assert [r.pid for r in later.read_all()] == [None, 4242]
    assert parses == ["prewarm-a-01.json", "prewarm-b-01.json", "prewarm-b-01.json"]
