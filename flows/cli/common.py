"""What every `prewarm` command shares: the consoles, the settings loader, output helpers."""

from __future__ import annotations

import sys
from enum import StrEnum

from rich.console import Console

from flows.settings import Settings, configure_environment

# Piped output (logs, CI) gets wide tables instead of an 80-column squeeze.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, soft_wrap=True)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class RuntimeName(StrEnum):
    docker = "docker"
    process = "process"


def load_settings(runs_flows: bool = False) -> Settings:
    """Settings, with the environment set for libraries; a command that runs flows also gets
    its Prefect API: `prewarm up`'s server when it answers (runs show in its UI), else one
    temporary server shared with the worker processes the run starts."""
    settings = Settings()
    configure_environment(settings)
    if runs_flows:
        from flows.prefect_api import prefect_api_url

        configure_environment(settings, prefect_api_url=prefect_api_url(settings))
    from flows.logs import hide_expected_tracebacks

    hide_expected_tracebacks()
    return settings


def fmt(value: object) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
