"""A purpose-built hostile "HEC" on loopback: the answers a real HEC never gives.

Modes (``HostileHec(mode)``):

- ``blackhole``: accepts, reads the request, never answers (the connection stays open).
- ``drip``: answers a well-formed 200 one byte a second: every socket read gets a byte well
  within any read timeout, so only a bound on the whole answer ends the request.
- ``html``: answers every request ``200 text/html`` (a proxy's maintenance page).
- ``html_then_acks_lost``: the first data request gets the HTML page; later data requests get
  HEC's ``{"text":"Success","code":0,"ackId":N}`` and every ack query answers false (the
  batches were taken and never indexed).
- ``flood``: answers ``200`` with a 400 MB body (HEC's success, then spaces), sent as fast as
  the client reads it.
- ``noack_then_acks_lost``: the same, but the first data request gets HEC's own success without
  an ackId (``{"text":"Success","code":0}``: the token has acks off).

It counts requests by kind and stops cleanly: :meth:`close` ends every connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import Counter
from types import TracebackType
from typing import Literal

Mode = Literal["blackhole", "drip", "flood", "html", "html_then_acks_lost", "noack_then_acks_lost"]
FLOOD_BYTES = 400 * 1024 * 1024

_HTML = b"<html><body><h1>Down for maintenance</h1></body></html>"


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class HostileHec:
    """A loopback server answering in one hostile way (see the module notes)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._next_ack = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name="hostile-hec", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> HostileHec:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, end every connection and join the server's threads."""
        self._stop.set()
        self._acceptor.join(10)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
            threads = list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _read_request(self, conn: socket.socket, buffer: bytearray) -> tuple[str, bytes] | None:
        """One request's path and body, or None at EOF or stop."""
        while b"\r\n\r\n" not in buffer:
            chunk = self._recv(conn)
            if not chunk:
                return None
            buffer += chunk
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = self._recv(conn)
            if not chunk:
                return None
            rest += chunk
        buffer[:] = rest[length:]
        return path, rest[:length]

    def _recv(self, conn: socket.socket) -> bytes:
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                return conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b""

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            request = self._read_request(conn, buffer)
            if request is None:
                return
            path, body = request
            kind = "ack" if path.endswith("/ack") else "health" if "health" in path else "data"
            with self._lock:
                self.requests[kind] += 1
                seen = self.requests[kind]
            if self.mode == "flood":
                self._flood(conn)
                return
            answer = self._answer(kind, seen, body)
            if answer is None:  # black hole: hold the connection until told to stop
                self._stop.wait()
                return
            try:
                if self.mode == "drip":
                    for index in range(len(answer)):
                        if self._stop.wait(1.0):
                            return
                        conn.sendall(answer[index : index + 1])
                else:
                    conn.sendall(answer)
            except OSError:
                return

    def _flood(self, conn: socket.socket) -> None:
        success = b'{"text":"Success","code":0,"ackId":0}'
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {FLOOD_BYTES}\r\n\r\n"
        )
        block = b" " * (1 << 20)
        with contextlib.suppress(OSError):
            conn.sendall(head.encode() + success)
            sent = len(success)
            while sent < FLOOD_BYTES and not self._stop.is_set():
                piece = block[: FLOOD_BYTES - sent]
                conn.sendall(piece)
                sent += len(piece)

    def _answer(self, kind: str, seen: int, body: bytes) -> bytes | None:
        if self.mode == "blackhole":
            return None
        if self.mode == "html" or (self.mode == "html_then_acks_lost" and seen == 1):
            return _response("200 OK", _HTML, "text/html")
        if self.mode == "noack_then_acks_lost" and kind == "data" and seen == 1:
            return _response("200 OK", b'{"text":"Success","code":0}', "application/json")
        if kind == "ack":
            asked = json.loads(body).get("acks", [])
            acks = json.dumps({"acks": {str(ack_id): False for ack_id in asked}}).encode()
            return _response("200 OK", acks, "application/json")
        if kind == "health":
            return _response("200 OK", b'{"text":"HEC is healthy","code":17}', "application/json")
        with self._lock:
            ack_id, self._next_ack = self._next_ack, self._next_ack + 1
        body = json.dumps({"text": "Success", "code": 0, "ackId": ack_id}).encode()
        return _response("200 OK", body, "application/json")
