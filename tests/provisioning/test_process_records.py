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
