"""The member's cache: bounded in bytes, evicting by its policy, expiring by its TTL.

When a write would take the cache past its capacity (keys and values count by their bytes;
the interpreter's own overhead does not), the policy picks who goes:

- `lru`: the entry least recently read or written;
- `lfu`: the entry read or written the fewest times (ties: the least recently used of them);
- `ttl`: the entry closest to expiring, which with one TTL for all is the oldest write.

`ttl_seconds` > 0 expires an entry that long after its last write under every policy (the
schema calls it the entries' TTL, whatever decides eviction); 0 keeps entries until evicted.
Warm keys are loaded at start with an empty value and do not expire: a shadow member may
wait longer than a TTL for its window, and they must still be there when it comes. They are
evicted like any other entry when the cache fills, and a write to one makes it an entry like
any other.

Stdlib only (it runs inside the worker). Every operation is O(1), but lfu's choice of a
victim, which is O(the number of distinct use counts).
"""

from __future__ import annotations

import time
from collections import OrderedDict

# typing would cost every member's start a few ms (and dataclasses, tens): the type checker
# reads this block, the interpreter never does.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

POLICIES = ("lru", "lfu", "ttl")
# A key longer than this is refused (memcached's bound); the schema holds warm keys to it.
MAX_KEY_BYTES = 250


class CacheRefused(ValueError):
    """A key or value the cache cannot take (the HTTP side answers 4xx with its message)."""


class _Order:
    """Which key a policy evicts next, kept up to date as keys are written, used, removed.

    `uses` counts reads and writes of a key (lfu's order; the others ignore it): `remove`
    returns it so an overwrite, a remove and an add, keeps the key's count.
    """

    def add(self, key: str, uses: int) -> None:
        raise NotImplementedError

    def use(self, key: str) -> None:
        raise NotImplementedError

    def remove(self, key: str) -> int:
        raise NotImplementedError

    def victim(self) -> str:
        raise NotImplementedError


class _Recency(_Order):
    """lru: least recently used first."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str, uses: int) -> None:
        self._keys[key] = None

    def use(self, key: str) -> None:
        self._keys.move_to_end(key)

    def remove(self, key: str) -> int:
        del self._keys[key]
        return 0

    def victim(self) -> str:
        return next(iter(self._keys))


class _Writes(_Recency):
    """ttl: oldest write first; reads do not reorder."""

    def use(self, key: str) -> None:
        return


class _Frequency(_Order):
    """lfu: keys grouped by use count, each group least recently used first."""

    def __init__(self) -> None:
        self._uses: dict[str, int] = {}
        self._groups: dict[int, OrderedDict[str, None]] = {}

    def add(self, key: str, uses: int) -> None:
        self._uses[key] = uses
        self._groups.setdefault(uses, OrderedDict())[key] = None

    def use(self, key: str) -> None:
        count = self._uses[key]
        self._leave(key, count)
        self.add(key, count + 1)

    def remove(self, key: str) -> int:
        count = self._uses.pop(key)
        self._leave(key, count)
        return count

    def victim(self) -> str:
        # As many groups as distinct use counts: few, since counts of evictable keys stay low.
        return next(iter(self._groups[min(self._groups)]))

    def _leave(self, key: str, count: int) -> None:
        group = self._groups[count]
        del group[key]
        if not group:
            del self._groups[count]


_ORDERS: dict[str, Callable[[], _Order]] = {"lru": _Recency, "lfu": _Frequency, "ttl": _Writes}


class Cache:
    """A byte-bounded key/value cache with one eviction policy and one TTL."""

    def __init__(
        self,
        policy: str,
        capacity_bytes: int,
        ttl_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in _ORDERS:
            raise CacheRefused(f"cache policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.capacity_bytes = capacity_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: dict[str, bytes] = {}
        self._order = _ORDERS[policy]()
        # When each entry that expires does, oldest write first: with one TTL for all, that
        # is expiry order, so expiring is popping from the front.
        self._expiring: OrderedDict[str, float] = OrderedDict()
        self.used_bytes = 0
        self.hits = self.misses = self.evictions = self.expirations = 0

    def preload(self, keys: Iterable[str]) -> int:
        """Load warm keys with an empty value that never expires; return how many fit."""
        loaded = list(keys)
        for key in loaded:
            self._store(key, b"", expires_at=None)
        return sum(1 for key in loaded if key in self._entries)

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired (counted as a hit or a miss)."""
        self._expire()
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._order.use(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        """Store `value`, evicting by the policy until it fits; refuse what never could."""
        check_key(key)
        size = _size(key, value)
        if size > self.capacity_bytes:
            raise CacheRefused(
                f"{size} bytes (key and value) do not fit a cache of {self.capacity_bytes} bytes"
            )
        self._expire()
        expires_at = self._clock() + self.ttl_seconds if self.ttl_seconds > 0 else None
        self._store(key, value, expires_at)

    def stats(self) -> dict[str, object]:
        """What the cache holds and how it has been used."""
        self._expire()
        return {
            "policy": self.policy,
            "size_mb": self.capacity_bytes / 2**20,
            "capacity_bytes": self.capacity_bytes,
            "ttl_seconds": self.ttl_seconds,
            "used_bytes": self.used_bytes,
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expirations": self.expirations,
        }

    def _store(self, key: str, value: bytes, expires_at: float | None) -> None:
        size = _size(key, value)
        if size > self.capacity_bytes:
            return  # only a warm key gets here (put refuses first): it could never fit
        # An overwrite is a use too: it keeps the key's count (lfu) and counts one more.
        uses = self._drop(key) + 1 if key in self._entries else 1
        while self.used_bytes + size > self.capacity_bytes:
            self._drop(self._order.victim())
            self.evictions += 1
        self._entries[key] = value
        self.used_bytes += size
        self._order.add(key, uses)
        if expires_at is not None:
            self._expiring[key] = expires_at

    def _drop(self, key: str) -> int:
        """Forget a key; return its use count (see `_Order`)."""
        self.used_bytes -= _size(key, self._entries.pop(key))
        self._expiring.pop(key, None)
        return self._order.remove(key)

    def _expire(self) -> None:
        now = self._clock()
        while self._expiring:
            key, expires_at = next(iter(self._expiring.items()))
            if expires_at > now:
                return
            self._drop(key)
            self.expirations += 1


def check_key(key: str) -> None:
    """Refuse an empty key or one longer than MAX_KEY_BYTES in UTF-8."""
    size = len(key.encode("utf-8", "surrogateescape"))
    if size == 0:
        raise CacheRefused("empty key")
    if size > MAX_KEY_BYTES:
        raise CacheRefused(f"key of {size} bytes, more than {MAX_KEY_BYTES}")


def _size(key: str, value: bytes) -> int:
    return len(key.encode("utf-8", "surrogateescape")) + len(value)
