"""A TCP proxy on loopback with outage windows: how the chaos run takes S3 away for a while.

During an outage every new connection is reset at once and every open one is reset too (a
client's pooled keep-alive connection fails on its next request, as when an endpoint
drops). Outside them bytes are relayed both ways untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_BUFFER = 65536


@dataclass(frozen=True)
class Outage:
    """Down ``duration_s`` from ``start_s`` after the proxy starts, every ``every_s`` (0: once)."""

    start_s: float
    duration_s: float
    every_s: float = 0.0

    def down(self, elapsed: float) -> bool:
        """Whether ``elapsed`` seconds after the start falls in a window."""
        since = elapsed - self.start_s
        if since < 0 or self.duration_s <= 0:
            return False
        if self.every_s > 0:
            since %= self.every_s
        return since < self.duration_s


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), so the peer sees a reset, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class OutageProxy:
    """Relay 127.0.0.1:<port> to ``target``; reset everything during ``outage`` windows.

    Args:
        target: (host, port) to relay to.
        outage: the outage schedule, or None for none.
        clock: monotonic clock.
    """

    def __init__(
        self,
        target: tuple[str, int],
        outage: Outage | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.outage = outage
        self._clock = clock
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._t0 = clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Open pairs, with how many of their two pumps still run (the last one closes both).
        self._pairs: dict[tuple[socket.socket, socket.socket], int] = {}
        self.resets = 0
        self.windows_seen = 0
        self._threads = [
            threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True),
            threading.Thread(target=self._watch_loop, name="proxy-watch", daemon=True),
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OutageProxy:
        self._t0 = self._clock()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def down(self) -> bool:
        return self.outage is not None and self.outage.down(self._clock() - self._t0)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down():
                with self._lock:
                    self.resets += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs[pair] = 2
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := src.recv(_BUFFER):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(src)
            _reset(dst)
        finally:
            with self._lock:
                left = self._pairs.get(pair, 0) - 1
                if left > 0:
                    self._pairs[pair] = left
                else:
                    self._pairs.pop(pair, None)
            if left <= 0:
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _watch_loop(self) -> None:
        """At the start of each window, reset every open connection."""
        was_down = False
        while not self._stop.wait(0.05):
            down = self.down()
            if down and not was_down:
                self.windows_seen += 1
                with self._lock:
                    pairs = list(self._pairs)
                    self.resets += len(pairs)
                for client, upstream in pairs:
                    _reset(client)
                    _reset(upstream)
            was_down = down
