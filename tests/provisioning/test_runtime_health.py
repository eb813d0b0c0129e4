"""The health probe every runtime uses (`probe_once`, `PendingRequest`): 200 is healthy, any
other answer, or none, is not; the request is sent before the server answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from provisioning.runtime.base import PendingRequest, probe_once

# Starts a server that answers one connection with the given bytes: its endpoint, and the
# requests it received.
ServeOnce = Callable[[bytes], tuple[str, list[bytes]]]


@pytest.fixture
def serve_once() -> Iterator[ServeOnce]:
    """`ServeOnce`; its listening sockets are closed afterwards."""
    listeners: list[socket.socket] = []

    def start(reply: bytes) -> tuple[str, list[bytes]]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        received: list[bytes] = []

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                received.append(request)
                conn.sendall(reply)

        threading.Thread(target=answer, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}", received

    yield start
    for listener in listeners:
        listener.close()


def test_a_200_answer_is_healthy_and_the_request_asks_to_close(serve_once: ServeOnce) -> None:
    endpoint, received = serve_once(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    assert probe_once(endpoint, 2.0)
    port = endpoint.rsplit(":", 1)[1]
    assert received == [
        f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    ]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
        b"",  # closed without a word
    ],
)
def test_any_other_answer_is_not_healthy(serve_once: ServeOnce, reply: bytes) -> None:
    endpoint, _ = serve_once(reply)

    assert not probe_once(endpoint, 2.0)


def test_a_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepted by the kernel only
        pending = PendingRequest(f"http://127.0.0.1:{listener.getsockname()[1]}", 0.2)
        assert not pending.answered_ok()


def test_nothing_listening_is_an_os_error_for_the_caller_to_poll() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with pytest.raises(OSError):
        PendingRequest(endpoint, 0.2)
    assert not probe_once(endpoint, 0.2)
