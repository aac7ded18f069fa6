"""`idp serve` beside idle keep-alive connections: they hold no worker, new requests are answered at once."""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from idp_server import IdpServer

# As many idle connections as a few hundred browsers leave open after one request each.
IDLE_CONNECTIONS = 300
FRESH_REQUESTS = 20
# Generous for a loaded 2-core machine; the old settings left fresh requests unanswered for the whole keep-alive
# timeout (30 s), not a little late.
FRESH_ANSWER_WITHIN = 2.0
IDLE_ANSWERS_WITHIN = 10.0


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path, database_url: str) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    return {
        **clean,
        "IDP_INSTANCE_DIR": str(tmp_path / "instance"),
        "IDP_KEYS_DIR": str(keys_dir),
        "IDP_DATABASE_URL": database_url,
    }


def request_bytes(server: IdpServer, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()


def is_complete(response: bytes) -> bool:
    """Whether `response` holds a whole HTTP/1.1 answer with a Content-Length body (what the IdP sends)."""
    head, separator, body = response.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def exchange(sock: socket.socket, request: bytes, *, timeout: float) -> bytes:
    """Send one request on `sock` and read its answer; b"" when the server closed the connection first."""
    sock.settimeout(timeout)
    sock.sendall(request)
    response = b""
    while not is_complete(response):
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        response += chunk
    return response


@pytest.fixture
def idle_connections(server: IdpServer) -> Iterator[tuple[list[socket.socket], int]]:
    """IDLE_CONNECTIONS sockets that each sent one request and stay open; how many got their answer."""
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port))) for _ in range(IDLE_CONNECTIONS)
        ]
        selector = stack.enter_context(selectors.DefaultSelector())
        received: dict[socket.socket, bytes] = {}
        for sock in sockets:
            sock.sendall(request_bytes(server, "/healthz"))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            received[sock] = b""
        answered = 0
        deadline = time.monotonic() + IDLE_ANSWERS_WITHIN
        while len(selector.get_map()) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                chunk = sock.recv(65536)
                received[sock] += chunk
                if not chunk or is_complete(received[sock]):
                    selector.unregister(sock)
                    answered += received[sock].startswith(b"HTTP/1.1 200")
        yield sockets, answered


@pytest.fixture
def server(env: dict[str, str], start_server: Callable[..., IdpServer]) -> IdpServer:
    # As `make run` starts it on this 2-core machine, with a keep-alive timeout long enough that the idle
    # connections are still open for their second request however slowly a loaded machine gets there.
    return start_server(env, workers=2, args=["--keep-alive-timeout", "60"])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fresh_requests_are_answered_promptly_beside_hundreds_of_idle_keep_alive_connections(
    server: IdpServer, idle_connections: tuple[list[socket.socket], int]
) -> None:
    sockets, answered = idle_connections
    latencies = []
    for _ in range(FRESH_REQUESTS):
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=FRESH_ANSWER_WITHIN) as fresh:
                response = exchange(fresh, request_bytes(server, "/jwks"), timeout=FRESH_ANSWER_WITHIN)
        except TimeoutError:
            response = b""
        latencies.append(time.monotonic() - started)
        assert response.startswith(b"HTTP/1.1 200"), (
            f"fresh request {len(latencies)} got no answer within {FRESH_ANSWER_WITHIN} s beside "
            f"{len(sockets)} idle connections ({answered} of which were answered)"
        )
    assert max(latencies) < FRESH_ANSWER_WITHIN
    # The idle connections were all served, and keep-alive still works on them: a second request is answered.
    assert answered == len(sockets)
    for sock in sockets[::15]:
        sock.setblocking(True)
        assert exchange(sock, request_bytes(server, "/healthz"), timeout=FRESH_ANSWER_WITHIN).startswith(
            b"HTTP/1.1 200"
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_connections_waiting_for_a_request_close_after_the_keep_alive_timeout(
    env: dict[str, str], start_server: Callable[..., IdpServer]
) -> None:
    server = start_server(env, args=["--keep-alive-timeout", "1"])
    with ExitStack() as stack:
        after_a_request, silent, http2 = (
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port))) for _ in range(3)
        )
        assert exchange(after_a_request, request_bytes(server, "/healthz"), timeout=5).startswith(b"HTTP/1.1 200")
        # HTTP/2 (cleartext, prior knowledge) would keep its connection open past any keep-alive timeout.
        http2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        opened = time.monotonic()
        for sock in (after_a_request, silent, http2):
            sock.settimeout(10)
            while sock.recv(65536):
                pass
            assert time.monotonic() - opened < 5
