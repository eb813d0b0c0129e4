"""Console logging for people: expected failures read as one message, not a traceback, and a
long command's diagnostic output in its log file rather than on the console."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from core.errors import PrewarmError

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _HideExpectedTracebacks(logging.Filter):
    """Drop the traceback of a PrewarmError: its message already says everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] and issubclass(record.exc_info[0], PrewarmError):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_expected_tracebacks() -> None:
    """Filter the loggers Prefect's engines log run failures on (idempotent)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideExpectedTracebacks) for f in logger.filters):
            logger.addFilter(_HideExpectedTracebacks())


@contextlib.contextmanager
def output_to_log(log_path: Path) -> Iterator[None]:
    """Write everything this block sends to stderr into `log_path` (overwritten): Prefect's
    INFO lines, library warnings, MLflow's messages, from this process and from the worker
    processes the block starts. Warnings and errors of flow and task runs still show on the
    console too; stdout (progress bars, results) is untouched.

    The process's stderr descriptor is redirected, not just `sys.stderr`: worker processes
    inherit the descriptor, and their output is most of the noise.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    console_fd = os.dup(2)
    with (
        open(log_path, "w", encoding="utf-8", buffering=1) as log,
        os.fdopen(console_fd, "w", buffering=1) as console,
    ):
        shown = logging.StreamHandler(console)
        shown.setLevel(logging.WARNING)
        shown.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        run_loggers = [logging.getLogger(name) for name in _RUN_LOGGERS]
        for logger in run_loggers:
            logger.addHandler(shown)
        os.dup2(log.fileno(), 2)
        try:
            # Also `sys.stderr` itself, for when it is not descriptor 2 (e.g. under pytest).
            with contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stderr.flush()
            os.dup2(console_fd, 2)
            for logger in run_loggers:
                logger.removeHandler(shown)
