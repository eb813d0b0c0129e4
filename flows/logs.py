"""Console logging for people: expected failures read as one message, not a traceback."""

from __future__ import annotations

import logging

from warehouse.errors import PrewarmError

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
