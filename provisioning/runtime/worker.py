"""The tiny HTTP worker the process runtime runs: answers `/health`, `/config` (the composite
it was created from) and a small index.

Stdlib only, so it starts with `python -I -S` (no site-packages, quickest interpreter start)
and stands in for a container when no Docker daemon is available. It either binds
`--port` itself or serves a listening socket inherited from its parent (`--fd`): with an
inherited socket the parent knows the endpoint before the worker runs and early requests
wait in the kernel's backlog instead of being refused.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a script without -I, Python puts this directory first on sys.path, where the
    # sibling select.py would shadow the stdlib `select` that socketserver imports.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
from http.server import BaseHTTPRequestHandler, HTTPServer  # noqa: E402

HEALTH_BODY = b"ok\n"


class WorkerHandler(BaseHTTPRequestHandler):
    """Answers /health with `ok`, /config with its composite and / with who this worker is;
    everything else is 404."""

    server: WorkerServer
    server_version = "prewarm-worker/1"
    # One request at a time (no thread per request: a resumed worker answers ~0.3 ms
    # sooner); the timeout keeps a client that never sends its request from blocking it.
    timeout = 2.0

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, "text/plain", HEALTH_BODY)
        elif self.path == "/config":
            # The composite this member was created from (the schema's rendered settings).
            body = os.environ.get("PREWARM_CONFIG", "null").encode()
            self._answer(200, "application/json", body)
        elif self.path == "/":
            about = {"member": self.server.member, "pid": os.getpid()}
            self._answer(200, "application/json", json.dumps(about).encode())
        else:
            self._answer(404, "text/plain", b"not found\n")

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Health probes arrive every few ms during activation; access logs would be noise.
        return


class WorkerServer(HTTPServer):
    """An HTTPServer that knows its member id, optionally on an inherited listening socket."""

    def __init__(
        self, address: tuple[str, int], member: str, listening: socket.socket | None = None
    ) -> None:
        super().__init__(address, WorkerHandler, bind_and_activate=listening is None)
        self.member = member
        if listening is not None:
            self.socket.close()
            self.socket = listening


def build_server(args: argparse.Namespace) -> WorkerServer:
    """A server on the inherited socket `--fd`, else bound to --host:--port."""
    if args.fd is not None:
        listening = socket.socket(fileno=args.fd)
        return WorkerServer(listening.getsockname()[:2], args.member, listening)
    if args.port is None:
        raise SystemExit("worker: give --port or --fd")
    return WorkerServer((args.host, args.port), args.member)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description="prewarm process-runtime worker")
    parser.add_argument("--port", type=int, help="bind this port on --host")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fd", type=int, help="serve this inherited listening socket")
    parser.add_argument("--member", default="", help="member id shown on the index page")
    # Unused by the worker: it marks whose pool state owns it, so a worker left running by a
    # process killed between spawning it and recording it can be found and stopped.
    parser.add_argument("--state", default="", help="the process runtime's state file")
    server = build_server(parser.parse_args(argv))
    # The poll interval only bounds how fast shutdown() is noticed; we never call it (the
    # runtime signals the process), so wake up as rarely as possible while idle.
    server.serve_forever(poll_interval=3600)


if __name__ == "__main__":
    main()
