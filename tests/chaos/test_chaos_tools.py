"""The chaos run's own tools: the S3 outage proxy and moto's Kinesis resharding as AWS does it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.proxy import Outage, OutageProxy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="echo")
def fixture_echo() -> Iterator[tuple[str, int]]:
    """A TCP server on loopback that echoes one message per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(conn.recv(1024))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    stop.set()
    thread.join(timeout=5)
    server.close()


def exchange(port: int) -> bytes | None:
    """Send b"ping" through the proxy; the echo, or None when the connection was reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"ping")
            return sock.recv(1024) or None
    except ConnectionResetError:
        return None


@pytest.mark.integration
def test_proxy_relays_and_resets_during_its_windows(echo: tuple[str, int]) -> None:
    """GIVEN an outage 10 s in for 5 s, every 60 s THEN relays outside, resets inside."""
    clock = Clock()
    proxy = OutageProxy(echo, Outage(start_s=10, duration_s=5, every_s=60), clock=clock).start()
    try:
        seen = []
        for at in (0, 12, 16, 71, 76):
            clock.now = at
            seen.append(exchange(proxy.port))
    finally:
        proxy.stop()

    assert seen == [b"ping", None, b"ping", None, b"ping"]
    assert proxy.resets >= 2


def test_outage_schedule() -> None:
    once, repeating = Outage(5, 2), Outage(5, 2, every_s=10)

    assert [once.down(t) for t in (4.9, 5, 6.9, 7, 15)] == [False, True, True, False, False]
    assert [repeating.down(t) for t in (4.9, 5, 7, 15, 16.9, 17)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]
