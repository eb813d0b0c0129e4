"""Which Prefect API a CLI run reports to, shared with the worker processes it starts.

Prefect starts a temporary API for a process that has none, but worker processes (training
runs fits in a process pool) cannot see it and would each start their own. So the CLI
decides once: `prewarm up`'s server when it answers, else one temporary server started
here, whose URL goes into the environment every child inherits.

The temporary server (~240 MB) dies with the command that started it, even when that
command is killed with SIGKILL and no atexit hook runs: it is started through a tiny
wrapper that asks the kernel for PR_SET_PDEATHSIG (SIGKILL when its parent dies) before it
execs the server. Prefect's own `SubprocessASGIServer` has no such tie, so it is not used.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from functools import cache

import httpx

from core.errors import PrewarmError
from flows import stack
from flows.settings import Settings, child_environment

# Like PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS in flows/settings.py: on a busy
# 2-core machine the server can take a minute to start. (Prefect is not imported here: its
# settings are frozen at its import, and PREFECT_API_URL does not name this server yet.)
STARTUP_TIMEOUT_S = 120.0

# Run by a fresh interpreter that then *becomes* the server (the death signal survives
# exec). A parent that died before prctl took effect is caught by the ppid check.
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent gone before the server started")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


# Serves Prefect's API on the inherited listening socket. Not `uvicorn --fd`: that path
# takes every socket for AF_UNIX, so asyncio never sets TCP_NODELAY on the connections it
# accepts, and each request after the first on a kept-alive connection waits ~40 ms for the
# client's delayed ACK (Nagle's algorithm), on every task-run state change a flow reports.
# `socket(fileno=)` reads the real family and protocol from the descriptor.
_SERVE_ON_FD = """\
import socket, sys, uvicorn
listener = socket.socket(fileno=int(sys.argv[1]))
config = uvicorn.Config(
    "prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on"
)
uvicorn.Server(config).run(sockets=[listener])
"""


def prefect_api_url(settings: Settings) -> str:
    """The running stack's API, else a temporary one for this process and its children; a
    shared server (PREWARM_PREFECT_API_URL) that does not answer is an error, never silently
    replaced by a temporary one whose runs nobody would see."""
    if stack.prefect_server_running(settings):
        return stack.prefect_api_url(settings)
    if settings.prefect_api_url:
        raise PrewarmError(
            f"The shared Prefect server at {settings.prefect_api_url} (PREWARM_PREFECT_API_URL) "
            "does not answer its /health: start it, or unset PREWARM_PREFECT_API_URL to run "
            "on this machine alone."
        )
    return _temporary_api()


@cache
def _temporary_api() -> str:
    server = TemporaryServer()
    server.start()
    atexit.register(server.stop)
    return server.api_url


class TemporaryServer:
    """A Prefect API (no UI) on a random local port that dies with the process starting it.

    The death signal is tied to the *thread* that starts the server (a Linux rule): start
    it from the main thread, as the CLI does.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Start the server and wait until its health endpoint answers."""

        # Bound here and inherited: the port is ours before the server runs (no race for a
        # free port with another command starting at the same time).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())),
                    *self._server_args(listener.fileno()),
                ],
                pass_fds=(listener.fileno(),),
                stdin=subprocess.DEVNULL,
                env=child_environment(
                    # What Prefect's own temporary server sets: no UI, ephemeral mode.
                    PREFECT_UI_ENABLED="0",
                    PREFECT__SERVER_EPHEMERAL="1",
                    PREFECT__SERVER_FINAL="1",
                ),
            )
        finally:
            listener.close()
        self._await_health(STARTUP_TIMEOUT_S)

    @staticmethod
    def _server_args(fd: int) -> list[str]:
        return ["-c", _SERVE_ON_FD, str(fd)]

    def _await_health(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    self.process = None
                    raise PrewarmError(
                        f"The temporary Prefect API exited with code {code} while starting; "
                        "its errors are above. Start a lasting one with `prewarm up`."
                    )
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise PrewarmError(
            f"The temporary Prefect API did not answer within {timeout_s:.0f} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); is the machine overloaded?"
        )

    def stop(self) -> None:
        """Terminate the server (SIGKILL after 5 s) and reap it; stopping twice is fine."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
