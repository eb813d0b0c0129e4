"""The worker's parts on their own: the cache's policies on a fake clock, and the SQLite
store's indexes and refusals (the members running them are tested in
test_member_settings.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from provisioning.runtime.worker.cache import Cache, CacheRefused
from provisioning.runtime.worker.member import (
    CompositeRefused,
    MemberState,
    apply_composite,
    load_composite,
)
from provisioning.runtime.worker.store import Store, StoreRefused


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cache(policy: str, capacity: int = 30, ttl_seconds: int = 0) -> tuple[Cache, Clock]:
    clock = Clock()
    return Cache(policy, capacity, ttl_seconds, clock), clock


def _keys(cache: Cache, *keys: str) -> set[str]:
    return {key for key in keys if cache.get(key) is not None}


# Entries of 10 bytes (1-byte key, 9-byte value): three fill a 30-byte cache.
VALUE = b"v" * 9


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("lru", {"a", "c", "d"}),  # b was used least recently (a was read after it)
        ("lfu", {"a", "c", "d"}),  # b and c were read once, a three times: b is older
        ("ttl", {"b", "c", "d"}),  # a was written first, reads do not count
    ],
)
def test_each_policy_evicts_its_own_victim(policy: str, kept: set[str]) -> None:
    cache, _ = _cache(policy)
    for key in "abc":
        cache.put(key, VALUE)
    for key in "abaac":
        assert cache.get(key) == VALUE

    cache.put("d", VALUE)

    assert _keys(cache, "a", "b", "c", "d") == kept
    assert cache.evictions == 1 and cache.used_bytes == 30


def test_lfu_keeps_a_keys_count_across_overwrites_and_breaks_ties_by_recency() -> None:
    cache, _ = _cache("lfu")
    cache.put("a", VALUE)
    cache.put("b", VALUE)
    cache.put("a", b"w" * 9)  # a's second use
    cache.put("c", VALUE)
    cache.put("d", VALUE)  # b and c have one use each: b, the older, goes

    assert cache.get("b") is None and cache.get("a") == b"w" * 9
    assert _keys(cache, "c", "d") == {"c", "d"}


def test_entries_expire_after_the_ttl_under_every_policy_but_warm_keys_stay() -> None:
    for policy in ("lru", "lfu", "ttl"):
        cache, clock = _cache(policy, capacity=100, ttl_seconds=5)
        assert cache.preload(["warm"]) == 1
        cache.put("a", VALUE)
        clock.now = 4.9
        cache.put("b", VALUE)
        assert _keys(cache, "a", "b", "warm") == {"a", "b", "warm"}
        clock.now = 5.0
        assert _keys(cache, "a", "b", "warm") == {"b", "warm"}
        clock.now = 3600.0
        assert _keys(cache, "a", "b", "warm") == {"warm"}
        assert cache.get("warm") == b""
        assert cache.expirations == 2 and cache.used_bytes == len("warm")


def test_counters_and_refusals() -> None:
    cache, _ = _cache("lru", capacity=20)
    cache.put("a", VALUE)
    cache.get("a")
    cache.get("zz")
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["used_bytes"]) == (1, 1, 1, 10)

    with pytest.raises(CacheRefused, match="21 bytes .* do not fit a cache of 20 bytes"):
        cache.put("b", b"v" * 20)
    with pytest.raises(CacheRefused, match="empty key"):
        cache.put("", b"")
    with pytest.raises(CacheRefused, match="key of 251 bytes"):
        cache.put("k" * 251, b"")
    with pytest.raises(CacheRefused, match="not one of lru, lfu, ttl"):
        Cache("fifo", 10, 0)
    assert cache.get("a") == VALUE  # a refused write changes nothing


def test_warm_keys_that_do_not_fit_are_counted_out() -> None:
    cache, _ = _cache("lru", capacity=7)
    assert cache.preload(["abcd", "efgh", "ijklmnopq"]) == 1  # the last is larger than all
    assert _keys(cache, "abcd", "efgh") == {"efgh"}  # lru: the first went for the second


def test_the_store_creates_the_hinted_indexes_and_queries_use_them(tmp_path: Path) -> None:
    path = str(tmp_path / "store.sqlite3")
    hints = [
        {"table": "Orders", "columns": ["customer_id", "created_at"]},
        {"table": "orders", "columns": ["Status"], "unique": True},
    ]
    store = Store(path, hints)

    described = store.describe()
    assert described["tables"] == {"Orders": ["customer_id", "created_at", "Status"]}
    assert [(i["name"], i["columns"], i["unique"]) for i in described["indexes"]] == [
        ("ix0_Orders_customer_id_created_at", ["customer_id", "created_at"], False),
        ("ix1_orders_Status", ["Status"], True),
    ]
    plan = store.explain("ORDERS", "status")["plan"]
    assert plan == ["SEARCH Orders USING INDEX ix1_orders_Status (Status=?)"]
    # Another connection sees the same file: the indexes are really there.
    with sqlite3.connect(path) as other:
        names = {row[0] for row in other.execute("SELECT name FROM sqlite_master")}
    assert {"Orders", "ix0_Orders_customer_id_created_at", "ix1_orders_Status"} <= names
    with pytest.raises(StoreRefused, match="no column 'id'"):
        store.explain("orders", "id")
    with pytest.raises(StoreRefused, match="no table 'users'"):
        store.explain("users", "id")


@pytest.mark.parametrize(
    ("hint", "says"),
    [
        ({"table": 'x"; DROP TABLE y; --', "columns": ["a"]}, "not a plain identifier"),
        ({"table": "t", "columns": ["a b"]}, "not a plain identifier"),
        ({"table": "sqlite_stat1", "columns": ["a"]}, "are SQLite's"),
        ({"table": "t", "columns": []}, "no columns"),
    ],
)
def test_the_store_refuses_what_the_schema_would_have(tmp_path: Path, hint: dict, says: str):
    with pytest.raises(StoreRefused, match=says):
        Store(str(tmp_path / "store.sqlite3"), [hint])


def test_a_composite_must_be_a_json_object() -> None:
    assert load_composite(None) is None and load_composite("null") is None
    assert load_composite('{"ports": [1]}') == {"ports": [1]}
    with pytest.raises(CompositeRefused, match="not JSON"):
        load_composite("{")
    with pytest.raises(CompositeRefused, match="not a JSON object"):
        load_composite("[1]")


def test_a_cache_never_takes_more_than_half_the_members_memory(tmp_path: Path, monkeypatch):
    composite = {"cache": {"policy": "lru", "size_mb": 64.0, "ttl_seconds": 0}}
    monkeypatch.setenv("PREWARM_MEMORY_MB", "64")
    member = MemberState("m1", composite)
    apply_composite(member, str(tmp_path))
    assert member.report()["applied"]["cache"]["size_mb"] == 32.0  # 64 MB asked, 64 MB member
    monkeypatch.setenv("PREWARM_MEMORY_MB", "1024")
    roomy = MemberState("m2", composite)
    apply_composite(roomy, str(tmp_path / "m2"))
    assert roomy.report()["applied"]["cache"]["size_mb"] == 64.0  # as asked: it fits
