"""API key checks from memory: a flood of bad keys costs microseconds, not warehouse opens.

The API keeps a snapshot of the live keys (`warehouse.live_keys`) and checks each request's
key against it. Freshness, and what it costs:

- in the API, the snapshot is stamped with the warehouse's version (`api.stamp`) and read
  again when the warehouse changed: a rotated or revoked key stops working from the first
  request after the change lands (the warehouse itself retires it at once), and a new key
  works from then. A made-up key never causes a reload: it cannot be live unless the
  warehouse changed. `cached_client_of` answers from memory whenever the snapshot is current,
  so the common case needs no thread and no I/O;
- without a version (`version=None`), the snapshot is reloaded when older than `max_age_s`
  (default 2 s), and a key whose id it does not know triggers a reload only when it is older
  than `miss_reload_s` (0.5 s): a flood of made-up keys costs at most two reloads a second;
- one reload at a time: concurrent requests wait for the reload under way (never longer
  than their own deadline) instead of each opening the warehouse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from warehouse.errors import WarehouseBusy
from warehouse.live_keys import LiveKeys

DEFAULT_MAX_AGE_S = 2.0
DEFAULT_MISS_RELOAD_S = 0.5


class KeyCache:
    """The live keys, reloaded by `load` when stale or when an unknown key id shows up."""

    def __init__(
        self,
        load: Callable[[], LiveKeys],
        max_age_s: float = DEFAULT_MAX_AGE_S,
        miss_reload_s: float = DEFAULT_MISS_RELOAD_S,
        clock: Callable[[], float] = time.monotonic,
        version: Callable[[], int] | None = None,
    ) -> None:
        self._load = load
        self._max_age_s = max_age_s
        self._miss_reload_s = miss_reload_s
        self._clock = clock
        self._version = version
        self._mutex = threading.Lock()  # guards the two fields below, never held for I/O
        self._snapshot: _Snapshot | None = None
        self._reloading: Future[_Snapshot] | None = None

    def cached_client_of(self, key: str) -> tuple[bool, str | None]:
        """From memory only: (True, the key's client or None) when the snapshot can answer,
        (False, None) when a reload is needed first (`client_of`, in a thread)."""
        snapshot = self._snapshot
        if snapshot is None or not self._current(snapshot, self._max_age_s):
            return False, None
        client_id = snapshot.keys.client_of(key)
        if client_id is None and self._needs_miss_reload(snapshot, key):
            return False, None
        return True, client_id

    def client_of(self, key: str, wait_s: float) -> str | None:
        """The key's client, or None; WarehouseBusy when a needed reload took over `wait_s`."""
        snapshot = self._fresh(self._max_age_s, wait_s)
        client_id = snapshot.keys.client_of(key)
        if client_id is None and self._needs_miss_reload(snapshot, key):
            client_id = self._fresh(self._miss_reload_s, wait_s).keys.client_of(key)
        return client_id

    def _needs_miss_reload(self, snapshot: _Snapshot, key: str) -> bool:
        """An unknown key id: worth a reload only without a version (see the module doc)."""
        if self._version is not None or snapshot.keys.knows(key):
            return False
        return self._clock() - snapshot.loaded_at >= self._miss_reload_s

    def _current(self, snapshot: _Snapshot, max_age_s: float) -> bool:
        if self._version is not None:
            return snapshot.version == self._version()
        return self._clock() - snapshot.loaded_at < max_age_s

    def _fresh(self, max_age_s: float, wait_s: float) -> _Snapshot:
        """A current snapshot: the one held, or the next reload's."""
        with self._mutex:
            snapshot = self._snapshot
            if snapshot is not None and self._current(snapshot, max_age_s):
                return snapshot
            future = self._reloading
            leading = future is None
            if future is None:
                future = self._reloading = Future()
        if leading:
            self._reload(future)
        try:
            return future.result(timeout=wait_s)
        except FutureTimeout as error:
            raise WarehouseBusy(
                "API keys could not be read in time (a reload is waiting)"
            ) from error

    def _reload(self, future: Future[_Snapshot]) -> None:
        started = self._clock()
        # The version before the read: a change landing during it makes this one stale.
        version = self._version() if self._version is not None else 0
        try:
            snapshot = _Snapshot(started, version, self._load())
        except BaseException as error:  # every waiter gets the same failure (e.g. busy)
            future.set_exception(error)
        else:
            future.set_result(snapshot)
            with self._mutex:
                self._snapshot = snapshot
        finally:
            with self._mutex:
                self._reloading = None


@dataclass(frozen=True)
class _Snapshot:
    loaded_at: float  # by the cache's clock
    version: int  # the warehouse version it was read at (0 without one)
    keys: LiveKeys
