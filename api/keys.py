"""API key checks from memory: a flood of bad keys costs microseconds, not warehouse opens.

The API keeps a snapshot of the live keys (`warehouse.live_keys`) and checks each request's
key against it. Freshness, and what it costs:

- the snapshot is reloaded when older than `max_age_s` (default 2 s), so a rotated or
  revoked key stops working within that long in a running API (the warehouse itself
  retires it at once);
- a key whose id the snapshot does not know (a key issued a moment ago, or a made-up one)
  triggers a reload only when the snapshot is older than `miss_reload_s` (0.5 s): a flood of
  made-up keys costs at most two reloads a second, all refused from memory in between;
- one reload at a time: concurrent requests wait for the reload under way (never longer
  than their own deadline) instead of each opening the warehouse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

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
    ) -> None:
        self._load = load
        self._max_age_s = max_age_s
        self._miss_reload_s = miss_reload_s
        self._clock = clock
        self._mutex = threading.Lock()  # guards the two fields below, never held for I/O
        self._snapshot: tuple[float, LiveKeys] | None = None
        self._reloading: Future[tuple[float, LiveKeys]] | None = None

    def client_of(self, key: str, wait_s: float) -> str | None:
        """The key's client, or None; WarehouseBusy when a needed reload took over `wait_s`."""
        loaded_at, keys = self._fresh(self._max_age_s, wait_s)
        client_id = keys.client_of(key)
        unknown = client_id is None and not keys.knows(key)
        if unknown and self._clock() - loaded_at >= self._miss_reload_s:
            client_id = self._fresh(self._miss_reload_s, wait_s)[1].client_of(key)
        return client_id

    def _fresh(self, max_age_s: float, wait_s: float) -> tuple[float, LiveKeys]:
        """A snapshot younger than `max_age_s`: the current one, or the next reload's."""
        with self._mutex:
            snapshot = self._snapshot
            if snapshot is not None and self._clock() - snapshot[0] < max_age_s:
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

    def _reload(self, future: Future[tuple[float, LiveKeys]]) -> None:
        started = self._clock()
        try:
            snapshot = (started, self._load())
        except BaseException as error:  # every waiter gets the same failure (e.g. busy)
            future.set_exception(error)
        else:
            future.set_result(snapshot)
            with self._mutex:
                self._snapshot = snapshot
        finally:
            with self._mutex:
                self._reloading = None
