"""One client connection of the Firehose receiver: its state and its socket I/O.

The receiver's event loop (:mod:`forwarder.sources.firehose_receiver`) multiplexes these; a
connection has no thread of its own. Reads and writes never block: they report that the
socket would block and the loop waits for the selector.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Final

from forwarder.sources.firehose_protocol import PendingRequest, RequestHead

READ_SIZE: Final = 64 << 10


class Connection:
    """One client connection, in the receiver's event loop (no thread of its own).

    States: ``read`` (the next request's head and body, under ``deadline``), ``wait`` (the
    answer of an admitted request), ``write`` (an answer going out), ``linger`` (refused:
    the answer is sent, the rest is read and dropped until the client closes or the deadline).
    """

    __slots__ = (
        "addr",
        "buffer",
        "close_after",
        "deadline",
        "discard",
        "head",
        "length",
        "outgoing",
        "rejected",
        "request",
        "sock",
        "state",
        "tls_ready",
    )

    def __init__(self, sock: socket.socket, addr: Any, deadline: float, *, tls: bool) -> None:
        self.sock = sock
        self.addr = addr
        self.deadline = deadline
        self.state = "read"
        self.buffer = bytearray()
        self.head: RequestHead | None = None
        self.length = 0
        self.discard = 0  # body bytes still to drop (a rejected request)
        self.rejected: tuple[int, str, str] | None = None  # status, request id, reason
        self.request: PendingRequest | None = None
        self.outgoing = b""
        self.close_after = False
        self.tls_ready = not tls

    def recv(self) -> bytes | None:
        """What the socket has (b"" at EOF), or None when it would block."""
        try:
            if not self.tls_ready:
                assert isinstance(self.sock, ssl.SSLSocket)
                self.sock.do_handshake()
                self.tls_ready = True
            data = self.sock.recv(READ_SIZE)
            if isinstance(self.sock, ssl.SSLSocket):
                while self.sock.pending():
                    data += self.sock.recv(READ_SIZE)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return None
        except ssl.SSLWantWriteError:
            return None  # rare during a server handshake; the next readable event retries
        return data

    def write(self) -> bool:
        """Send what is outgoing; False when the socket would block with some left.

        Raises:
            OSError: the connection failed.
        """
        try:
            while self.outgoing:
                sent = self.sock.send(self.outgoing)
                self.outgoing = self.outgoing[sent:]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return False
        return True
