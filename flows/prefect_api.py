"""Which Prefect API a CLI run reports to, shared with the worker processes it starts.

Prefect starts a temporary API for a process that has none, but worker processes (training
runs fits in a process pool) cannot see it and would each start their own. So the CLI
decides once: `prewarm up`'s server when it answers, else one temporary server started
here, whose URL goes into the environment every child inherits.
"""

from __future__ import annotations

import atexit
from functools import cache

from flows import stack
from flows.settings import Settings


def prefect_api_url(settings: Settings) -> str:
    """The running stack's API, else a temporary one for this process and its children."""
    if stack.prefect_server_running(settings):
        return stack.prefect_api_url(settings)
    return _temporary_api()


@cache
def _temporary_api() -> str:
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    atexit.register(server.stop)
    return server.api_url
