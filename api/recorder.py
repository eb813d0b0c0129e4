"""Activation outcomes written in batches by one thread, off the request path.

Every request that reaches activation leaves a `pool_events` row (served, cold-started,
refused or failed). Writing each in its own transaction would make the recording the
bottleneck of a flood (a warehouse open per request) and make requests wait for it, so a
request only queues its outcome; one writer thread takes everything queued and writes it in
one transaction (`warehouse.activations.record_activations`).

- **Waiting for it.** `submit` returns a future the request may await after its response is
  sent (the API does, bounded, without holding a thread), so a client reading the warehouse
  after an activation finds its row.
- **A busy warehouse.** A batch that could not be written (another process holds the file)
  goes back to the front of the queue and is retried with a growing pause (at most
  `max_retry_s`), in order.
- **Bounded.** At most `max_queued` outcomes wait; past that, new ones are dropped and
  counted (`dropped`, logged): memory stays bounded while the warehouse is locked for long.
  `close` flushes what it can within its timeout; the rest is logged as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime

from core.errors import PrewarmError
from core.times import utc_now
from warehouse.activations import Activation

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[tuple[Activation, datetime]]], None]


class ActivationRecorder:
    """Queue activation outcomes; one thread writes them in batches (see the module doc)."""

    def __init__(
        self,
        write: WriteBatch,
        max_queued: int = 10_000,
        max_batch: int = 500,
        max_retry_s: float = 2.0,
        retryable: tuple[type[Exception], ...] = (PrewarmError,),
    ) -> None:
        self._write = write
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._max_retry_s = max_retry_s
        self._retryable = retryable
        self._cond = threading.Condition()
        self._queue: deque[tuple[Activation, datetime, Future[bool]]] = deque()
        self._writing = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, activation: Activation) -> Future[bool]:
        """Queue one outcome; the future is True once written, False if it was dropped."""
        done: Future[bool] = Future()
        with self._cond:
            if self._closed or len(self._queue) >= self._max_queued:
                self.dropped += 1
                log.warning(
                    "activation outcome for %s not recorded: the queue is %s (%d dropped)",
                    activation.client_id,
                    "closed" if self._closed else "full",
                    self.dropped,
                )
                done.set_result(False)
                return done
            self._queue.append((activation, utc_now(), done))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="activation-recorder", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return done

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float) -> None:
        """Flush within `timeout_s`, then stop the writer; what is left is dropped (logged)."""
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _, _, done in left:
            done.set_result(False)
        if left:
            self.dropped += len(left)
            log.warning("%d activation outcome(s) not recorded at shutdown", len(left))

    def _run(self) -> None:
        pause = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
                self._writing = len(batch)
            try:
                self._write([(activation, at) for activation, at, _ in batch])
            except self._retryable as error:
                log.warning("%d activation outcome(s) wait to be recorded: %s", len(batch), error)
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    self._writing = 0
                    self._cond.notify_all()
                time.sleep(pause)
                pause = min(pause * 2, self._max_retry_s)
                continue
            except Exception:  # not the warehouse being busy: retrying would loop forever
                log.exception("%d activation outcome(s) could not be recorded", len(batch))
                self._finish(batch, written=False)
                continue
            pause = 0.05
            self._finish(batch, written=True)

    def _finish(
        self, batch: list[tuple[Activation, datetime, Future[bool]]], written: bool
    ) -> None:
        for _, _, done in batch:
            done.set_result(written)
        with self._cond:
            if not written:
                self.dropped += len(batch)
            self._writing = 0
            self._cond.notify_all()
