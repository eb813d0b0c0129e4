"""Activation outcomes written to the warehouse by a child process of the API.

Opening the warehouse read-write and closing it (DuckDB checkpoints on close) costs about
50 ms, much of it holding the GIL: written by a thread of the API process, every flush of
the outcome recorder (`api.recorder`, about twice a second under load) stalled every
request for tens of milliseconds. So the API hands each batch to a small child process
(`python -m api.outcome_writer <warehouse>`) over a pipe and waits for its answer in the
recorder's thread, which holds no lock and no GIL while it waits.

- **One batch at a time**, one transaction each (`warehouse.activations.write_activations`).
- **The change signal** (`api.stamp`): the child compares the files with what the API last
  saw once it holds the write lock, and reports how it left them, so the API's snapshots
  stay current across its own writes (and go stale when someone else's write came first).
- **Lifetime.** Started with the app (or by the first batch), it ends when its pipe closes
  (the API stopped or died: nothing is left running), or after `idle_s` without a batch;
  the next batch starts another. A batch whose child went away unanswered is retried
  (`WriterGone` is a `PrewarmError`, which the recorder retries); only a child killed
  between committing and answering could then write a batch twice.
- **Errors** come back as the exception the write raised when it is a `PrewarmError`
  (a busy warehouse is retried by the recorder), else as a `PrewarmError` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from api.stamp import WarehouseStamp, warehouse_signature
from core.errors import PrewarmError
from warehouse.activations import Activation, write_activations
from warehouse.db import connect

log = logging.getLogger("api.app")

DEFAULT_IDLE_S = 10.0
# How long past its lock wait a write may take before the child is given up for stuck.
_ANSWER_SLACK_S = 30.0


class WriterGone(PrewarmError):
    """The outcome writer process ended before it answered (the batch is tried again)."""


class OutcomeWriter:
    """The API's side: hands batches to the child process, starting it when needed."""

    def __init__(self, path: Path, stamp: WarehouseStamp, idle_s: float = DEFAULT_IDLE_S) -> None:
        self._path = Path(path)
        self._stamp = stamp
        self._idle_s = idle_s
        self._lock = threading.Lock()  # one batch at a time; guards the child
        self._child: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child now (it takes about a second to import), so the first batch
        does not wait for it."""
        with self._lock:
            self._running_child()

    def write(self, batch: Sequence[tuple[Activation, datetime]], *, wait_s: float) -> None:
        """Write `batch` in one transaction, waiting at most `wait_s` for the write lock."""
        with self._lock:
            child = self._running_child()
            try:
                self._send(child, (list(batch), wait_s))
                locked = self._answer(child, wait_s + _ANSWER_SLACK_S)
                if locked[0] == "error":
                    raise locked[1]
                # The child holds the write lock: from here to its answer, the files change
                # only by this write.
                self._stamp.begin_own_write(at_lock=locked[1])
                done: tuple[Any, ...] | None = None
                try:
                    self._send(child, "write")
                    done = self._answer(child, _ANSWER_SLACK_S)
                finally:
                    self._stamp.end_own_write(after=done[1] if done and done[0] == "ok" else None)
            except (OSError, EOFError, pickle.UnpicklingError) as error:
                self._discard(child, timeout_s=0.0)
                if self._child is child:
                    self._child = None
                raise WriterGone(f"the outcome writer process ended: {error}") from error
        if done[0] != "ok":
            raise done[1]

    @staticmethod
    def _send(child: subprocess.Popen[bytes], message: Any) -> None:
        assert child.stdin is not None
        pickle.dump(message, child.stdin)
        child.stdin.flush()

    @staticmethod
    def _answer(child: subprocess.Popen[bytes], timeout_s: float) -> tuple[Any, ...]:
        assert child.stdout is not None
        if not select.select([child.stdout], [], [], timeout_s)[0]:
            raise OSError(f"no answer within {timeout_s:g} s")
        answer: tuple[Any, ...] = pickle.load(child.stdout)
        return answer

    def close(self, timeout_s: float = 5.0) -> None:
        """Let the child finish and end (its pipe closes)."""
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            self._discard(child, timeout_s)

    def _running_child(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if child is not None:
            self._discard(child)
        # Its own interpreter (not a fork of this threaded one); stderr shared for its logs.
        self._child = subprocess.Popen(
            [sys.executable, "-m", "api.outcome_writer", str(self._path), str(self._idle_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self._child

    @staticmethod
    def _discard(child: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
        """Close its pipe (it ends on its own); killed if it has not ended in `timeout_s`."""
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _portable(error: Exception) -> PrewarmError:
    """The error as the API can receive it."""
    if isinstance(error, PrewarmError):
        try:
            pickle.dumps(error)
        except Exception:  # an attribute that does not pickle: keep the message
            return PrewarmError(str(error))
        return error
    return PrewarmError(f"{type(error).__name__}: {error}")


def serve(path: Path, idle_s: float, requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop, until the pipe closes or `idle_s` pass without a batch: a batch
    comes in; once the write lock is held, the files as they are go back ("locked"); on
    "write", the batch is written in one transaction and the files as the closed connection
    left them go back ("ok"). Any failure goes back instead ("error")."""

    def reply(*message: Any) -> None:
        pickle.dump(message, replies)
        replies.flush()

    while True:
        if not select.select([requests], [], [], idle_s)[0]:
            return
        try:
            batch, wait_s = pickle.load(requests)
        except EOFError:
            return
        try:
            with connect(path, wait_s=wait_s) as con:
                reply("locked", warehouse_signature(path))
                if pickle.load(requests) != "write":
                    return
                write_activations(con, batch)
        except EOFError:
            return
        except Exception as error:  # every failure goes back to the API, which decides
            reply("error", _portable(error))
            continue
        reply("ok", warehouse_signature(path))


def _main() -> None:
    logging.basicConfig(level=logging.WARNING)  # to stderr, shared with the API
    # The answers get their own copy of stdout; anything printed goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(Path(sys.argv[1]), float(sys.argv[2]), sys.stdin.buffer, replies)


if __name__ == "__main__":
    _main()
