"""The worker's HTTP side: its routes, its sockets (one per declared port) and `main`.

Routes, the same on every port:

  GET /health                          `ok` (the runtimes probe the first declared port)
  GET /config                          the composite and what was applied (member.py)
  GET /                                who this worker is: member id, pid, ports
  GET /cache                           the cache's policy, size, use and counters
  GET /cache/<key>                     200 and the value, or 404
  PUT /cache/<key>                     store the body (Content-Length, <= MAX_VALUE_BYTES)
  GET /db/explain?table=T&column=C     SQLite's plan for `SELECT * FROM T WHERE C = ?`

Sockets: the first declared port is `--fd` (a listening socket the process runtime bound and
handed down, so it knew the endpoint before the worker ran and early requests wait in the
kernel's backlog instead of being refused) or `--port` on `--host` (default $PORT, which the
Docker runtime sets). Every other declared port is `--port-fd DECLARED=FD` when handed down
(process members share the host's ports, so the runtime maps each to a free one), else bound
on `--host` at its own number (a container's ports are its own). The composite is applied
before the first request is answered: a member that answers its health has its settings.

One thread serves every port, a request at a time: no locks around the cache or database,
and no thread per request (a resumed worker answers ~0.3 ms sooner).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .cache import Cache, CacheRefused, check_key
from .member import CompositeRefused, MemberState, apply_composite, declared_ports, load_composite
from .store import StoreRefused

TYPE_CHECKING = False  # typing costs a member's start: see cache.py
if TYPE_CHECKING:
    from typing import Any

HEALTH_BODY = b"ok\n"
MAX_VALUE_BYTES = 1 << 20  # one cached value; a cache holds as many as its size allows
# Connections a frozen member's sockets hold until it thaws (the kernel caps it at somaxconn).
LISTEN_BACKLOG = 128
_CACHE_PREFIX = "/cache/"


class WorkerHandler(BaseHTTPRequestHandler):
    """Answers the routes above from the member's state; anything else is 404."""

    server: WorkerServer
    server_version = "prewarm-worker/2"
    # A client that never sends its request (or body) blocks the one thread this long at most.
    timeout = 2.0

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        state = self.server.state
        if parts.path == "/health":
            self._answer(200, HEALTH_BODY, "text/plain")
        elif parts.path == "/config":
            self._json(200, state.report())
        elif parts.path == "/":
            ports = {str(declared): port for declared, port in state.ports.items()}
            self._json(200, {"member": state.id, "pid": os.getpid(), "ports": ports})
        elif parts.path == "/cache" and state.cache is not None:
            self._json(200, state.cache.stats())
        elif parts.path.startswith(_CACHE_PREFIX) and state.cache is not None:
            self._cached(state.cache, parts.path)
        elif parts.path == "/db/explain" and state.store is not None:
            self._explain(parts.query)
        else:
            self._error(404, "not found")

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        cache = self.server.state.cache
        if not path.startswith(_CACHE_PREFIX) or cache is None:
            self._error(404, "not found")
            return
        key = self._key(path)
        value = self._body()
        if key is None or value is None:
            return
        try:
            cache.put(key, value)
        except CacheRefused as error:
            self._error(413, str(error))
            return
        self._json(200, {"stored": key, "bytes": len(value)})

    def _cached(self, cache: Cache, path: str) -> None:
        key = self._key(path)
        if key is None:
            return
        value = cache.get(key)
        if value is None:
            self._error(404, f"no entry {key!r}")
        else:
            self._answer(200, value, "application/octet-stream")

    # -- request parts ----------------------------------------------------------------

    def _key(self, path: str) -> str | None:
        """The cache key in the path, or None after answering 400."""
        key = unquote(path[len(_CACHE_PREFIX) :])
        try:
            check_key(key)
        except CacheRefused as error:
            self._error(400, str(error))
            return None
        return key

    def _body(self) -> bytes | None:
        """The request body, or None after answering 4xx (its size must be declared)."""
        declared = self.headers.get("Content-Length")
        if declared is None:
            self._error(411, "give the value's size in Content-Length")
            return None
        if not declared.isdigit():
            self._error(400, f"Content-Length {declared!r} is not a size")
            return None
        size = int(declared)
        if size > MAX_VALUE_BYTES:
            # Unread, the body cannot be skipped: the connection goes with the answer.
            self.close_connection = True
            self._error(413, f"value of {size} bytes, more than {MAX_VALUE_BYTES}")
            return None
        body = self.rfile.read(size)
        if len(body) != size:
            self._error(400, f"body ended after {len(body)} of {size} bytes")
            return None
        return body

    def _explain(self, query: str) -> None:
        fields = parse_qs(query)
        table, column = fields.get("table", [""])[0], fields.get("column", [""])[0]
        store = self.server.state.store
        if not table or not column or store is None:
            self._error(400, "give ?table=T&column=C")
            return
        try:
            self._json(200, store.explain(table, column))
        except StoreRefused as error:
            self._error(404, str(error))

    # -- answers ----------------------------------------------------------------------

    def _json(self, status: int, document: Any) -> None:
        self._answer(status, json.dumps(document).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Health probes arrive every few ms during activation; access logs would be noise.
        return


class WorkerServer(HTTPServer):
    """An HTTPServer on a listening socket made elsewhere, answering from `state`."""

    def __init__(self, listening: socket.socket, state: MemberState) -> None:
        super().__init__(listening.getsockname()[:2], WorkerHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        """Report a failed request and carry on serving."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            return  # the client left before its answer (a probe that gave up): nothing to fix
        print(f"worker: a request from {client_address} failed:", file=sys.stderr)
        # The interpreter's own printer: socketserver's would import `traceback`, which a
        # member's image does not hold (it holds only what the worker imports at start).
        sys.excepthook(*sys.exc_info())


def listening_sockets(args: argparse.Namespace, declared: list[int]) -> dict[int, socket.socket]:
    """Declared port -> its listening socket: handed down (`--fd`, `--port-fd`) or bound."""
    handed = dict(args.port_fd)
    if args.fd is not None:
        first = socket.socket(fileno=args.fd)
    else:
        port = args.port if args.port is not None else (declared[0] if declared else None)
        if port is None:
            raise CompositeRefused("give --port, --fd or $PORT, or a composite with ports")
        first = _bind(args.host, port)
    primary = declared[0] if declared else first.getsockname()[1]
    sockets = {primary: first}
    for port in declared[1:]:
        sockets[port] = (
            socket.socket(fileno=handed[port]) if port in handed else _bind(args.host, port)
        )
    return sockets


def _bind(host: str, port: int) -> socket.socket:
    return socket.create_server((host, port), backlog=LISTEN_BACKLOG)


def serve(servers: list[WorkerServer]) -> None:
    """Answer every server's requests, one at a time, until the process is killed."""
    with selectors.DefaultSelector() as selector:
        for server in servers:
            selector.register(server.socket, selectors.EVENT_READ, server)
        while True:
            for key, _ in selector.select():
                key.data.handle_request()


def _port_fd(text: str) -> tuple[int, int]:
    declared, _, fd = text.partition("=")
    if not (declared.isdigit() and fd.isdigit()):
        raise argparse.ArgumentTypeError(f"expected DECLARED=FD, got {text!r}")
    return int(declared), int(fd)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker", description="prewarm member worker")
    port = os.environ.get("PORT")
    parser.add_argument(
        "--port", type=int, default=int(port) if port else None, help="the first port to bind"
    )
    parser.add_argument("--host", default="127.0.0.1", help="where bound ports listen")
    parser.add_argument("--fd", type=int, help="an inherited socket for the first port")
    parser.add_argument(
        "--port-fd",
        type=_port_fd,
        action="append",
        default=[],
        metavar="DECLARED=FD",
        help="an inherited socket for another declared port",
    )
    parser.add_argument("--data-dir", help="this member's own writable directory (database)")
    parser.add_argument("--member", default=os.environ.get("HOSTNAME", ""), help="member id")
    # Unused by the worker: it marks whose pool state owns it, so a worker left running by a
    # process killed between spawning it and recording it can be found and stopped.
    parser.add_argument("--state", default="", help="the process runtime's state file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Apply the composite in PREWARM_CONFIG, then serve every declared port until killed."""
    args = parse_args(argv)
    try:
        state = MemberState(args.member, load_composite(os.environ.get("PREWARM_CONFIG")))
        sockets = listening_sockets(args, declared_ports(state.composite))
        state.ports = {declared: sock.getsockname()[1] for declared, sock in sockets.items()}
        apply_composite(state, args.data_dir)
    except (ValueError, OSError, sqlite3.Error) as error:
        # A composite this worker cannot apply, or a port it cannot have: it never answers
        # its health, and the runtime's timeout points at this log line.
        print(f"worker: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    serve([WorkerServer(sock, state) for sock in sockets.values()])
