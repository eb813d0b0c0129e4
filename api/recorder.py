"""Activation outcomes written in batches by one thread, off the request path.

Every request that reaches activation leaves a `pool_events` row (served, cold-started,
refused or failed). Writing each in its own transaction would make the recording the
bottleneck of a flood (a warehouse open per request, about 20 ms of CPU) and make requests
wait for it, so a request only queues its outcome; one writer thread takes everything queued
and writes it in one transaction (`warehouse.activations.write_activations`).

- **When.** With `linger_s` (the API passes 0.5 s), the writer collects outcomes until the
  oldest queued one is `linger_s` old (or `max_batch` are queued), so a busy API writes
  about twice a second whatever its rate, and every outcome is written within `linger_s`
  plus one write. `flush` and `close` write at once. `submit` returns a future that says
  when the outcome is written (True) or dropped (False).
- **A busy warehouse.** A batch that could not be written (another process holds the file)
  goes back to the front of the queue and is retried with a growing pause (at most
  `max_retry_s`), in order.
- **Bounded.** At most `max_queued` outcomes wait; past that, new ones are refused: not
  queued, their future False at once, counted in `dropped` and logged (the first, then at
  most one line every `_DROP_LOG_EVERY_S` with the count), so memory stays bounded while the
  warehouse is locked for long. `close` flushes what it can within its timeout; the rest is
  counted and logged as dropped.
- **What a crash loses.** Only what is queued and not yet written: at most `linger_s` plus
  one write's worth of outcomes (more only while the warehouse is locked, and never more
  than `max_queued`). A clean stop (`close`) loses none while the warehouse can be written.
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

# Refusals past the bound are logged the first time, then at most this often (with a count).
_DROP_LOG_EVERY_S = 10.0


class ActivationRecorder:
    """Queue activation outcomes; one thread writes them in batches (see the module doc)."""

    def __init__(
        self,
        write: WriteBatch,
        max_queued: int = 10_000,
        max_batch: int = 500,
        max_retry_s: float = 2.0,
        retryable: tuple[type[Exception], ...] = (PrewarmError,),
        *,
        linger_s: float = 0.0,
    ) -> None:
        self._write = write
        self._max_queued = max_queued
        self._max_batch = max_batch
        self._max_retry_s = max_retry_s
        self._retryable = retryable
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: deque[tuple[Activation, datetime, Future[bool], float]] = deque()
        self._writing = 0
        self._flushing = 0  # callers of flush/close waiting: write at once
        self._closed = False
        self._thread: threading.Thread | None = None
        self._drop_logged_at: float | None = None
        self.dropped = 0
        self.written = 0

    def submit(self, activation: Activation) -> Future[bool]:
        """Queue one outcome; the future is True once written, False if it was dropped."""
        done: Future[bool] = Future()
        with self._cond:
            if self._closed or len(self._queue) >= self._max_queued:
                self._count_drop(activation.client_id, "closed" if self._closed else "full")
                done.set_result(False)
                return done
            self._queue.append((activation, utc_now(), done, time.monotonic()))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="activation-recorder", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return done

    @property
    def queued(self) -> int:
        """Outcomes waiting to be written (the one batch being written included)."""
        return len(self._queue) + self._writing

    def _count_drop(self, client_id: str, why: str) -> None:
        """Count a refused outcome; log the first, then at most one line every so often."""
        self.dropped += 1
        now = time.monotonic()
        if self._drop_logged_at is None or now - self._drop_logged_at >= _DROP_LOG_EVERY_S:
            self._drop_logged_at = now
            log.warning(
                "activation outcome for %s not recorded: the queue is %s (at most %d wait);"
                " %d dropped so far",
                client_id,
                why,
                self._max_queued,
                self.dropped,
            )

    def flush(self, timeout_s: float) -> bool:
        """Write everything queued so far, at once; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._queue or self._writing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout_s: float) -> None:
        """Flush within `timeout_s`, then stop the writer; what is left is dropped (logged)."""
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _, _, done, _ in left:
            done.set_result(False)
        if left:
            self.dropped += len(left)
            log.warning("%d activation outcome(s) not recorded at shutdown", len(left))

    def reopen(self) -> None:
        """Accept outcomes again after `close` (an app started again in one process)."""
        with self._cond:
            self._closed = False

    def _lingering(self) -> float:
        """Seconds to wait for more outcomes before writing (0: write now). Under the lock."""
        if self._flushing or self._closed or not self._queue:
            return 0.0
        if len(self._queue) >= self._max_batch:
            return 0.0
        return self._queue[0][3] + self._linger_s - time.monotonic()

    def _run(self) -> None:
        pause = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                while (wait := self._lingering()) > 0:
                    self._cond.wait(wait)
                if not self._queue:
                    self._thread = None
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
                self._writing = len(batch)
            try:
                self._write([(activation, at) for activation, at, _, _ in batch])
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
        self, batch: list[tuple[Activation, datetime, Future[bool], float]], written: bool
    ) -> None:
        for _, _, done, _ in batch:
            done.set_result(written)
        with self._cond:
            if written:
                self.written += len(batch)
            else:
                self.dropped += len(batch)
            self._writing = 0
            self._cond.notify_all()
