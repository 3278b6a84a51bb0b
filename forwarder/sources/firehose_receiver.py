"""The receiver of the ``firehose-http`` source: one thread, one selector, every connection.

The receiver (:class:`Receiver`) is one thread with one selector, whatever the clients do:
connections are capped (``max_connections``, lowered to fit the descriptor limit with
descriptors kept for HEC and S3), the oldest connection still sending its request is shed to
make room for a new one, else the new one is answered ``503``; the TLS handshake, head and body
of each request must arrive within ``request_timeout_s`` (checked before the access key, so a
slow client cannot hold a connection by dripping bytes); a body is buffered only after the key,
its size and an in-flight slot are checked. Waiting for the answer costs a socket, no thread.

Rejections come before the body is taken in: a wrong or missing access key is ``401``; a body
over ``max_body_bytes`` (on the wire or once gunzipped) ``413``; ``max_in_flight`` requests
already waiting, or a daemon shutting down, ``503`` (backpressure: Firehose retries). A body
that is not Firehose's JSON is ``400``. The access key is compared in constant time and never
logged. What a request is and what its answer says is :mod:`forwarder.sources.firehose_protocol`;
what becomes of its records is the endpoint's (:class:`Endpoint`, the source).
"""

from __future__ import annotations

import collections
import contextlib
import resource
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog

from config.daemon import SourceSettings
from forwarder.sources.firehose_connection import READ_SIZE, Connection
from forwarder.sources.firehose_protocol import (
    REQUEST_ID_HEADER,
    SOURCE_ARN_HEADER,
    PendingRequest,
    RequestHead,
    RequestRejectedError,
    answer_body,
    check_head,
    decode_body,
    http_answer,
    parse_head,
)

_log = structlog.get_logger("forwarder.sources.firehose_http")

#: How often the server loop checks for a shutdown request (bounds the source's ``close``).
_SERVE_POLL_S: Final = 0.05
#: A rejected request's body is read and discarded (keeps the connection clean) up to this size.
_DISCARD_MAX: Final = 1 << 20
#: Largest request line plus headers (Firehose's are well under 8 KiB).
_MAX_HEAD: Final = 64 << 10
#: Connections accepted per turn of the loop (the rest wait in the listen backlog).
ACCEPT_BATCH: Final = 64
#: Refused connections kept open (answer sent, rest of the request dropped) at most at once,
#: and for at most this long; past that a refusal is a plain close.
_LINGER_MAX: Final = 64
_LINGER_S: Final = 2.0
#: An answer must be taken by the client within this long, or the connection is closed.
_WRITE_TIMEOUT_S: Final = 30.0
#: Last resort after ``answer_timeout_s``: a request the daemon did not settle by then is
#: answered 500 (Firehose waits 3 minutes for an answer; the maximum setting plus this stays
#: under that).
_ANSWER_SAFETY_S: Final = 15.0
#: Descriptors kept for HEC and S3 connections, AWS clients, the spool and the logs.
_FD_RESERVE: Final = 256
#: ``firehose_connection_refused`` is logged at most this often (with running counts).
_REFUSED_LOG_EVERY_S: Final = 10.0


class Endpoint(Protocol):
    """What the receiver hands requests to (the source): admission, records, answers."""

    @property
    def settings(self) -> SourceSettings: ...

    def clock(self) -> float: ...

    def now_ms(self) -> int: ...

    def admit(self, request_id: str) -> PendingRequest | None: ...

    def enqueue(self, request: PendingRequest, records: list[bytes]) -> None: ...

    def abandon(self, request: PendingRequest) -> None: ...

    def expire(self, request: PendingRequest) -> None: ...


class Receiver:
    """The HTTP side of the Firehose source: one thread, one selector, every socket.

    Bounded whatever clients do: at most ``max_connections`` connections (fewer when the
    descriptor limit is low: :data:`_FD_RESERVE` descriptors stay for HEC, S3 and the AWS
    clients); a new connection above the cap evicts the oldest one still sending its request
    head (slow clients cannot crowd out Firehose), else is answered 503 at once. Each request
    must arrive whole (TLS handshake, head and body) within ``request_timeout_s`` of the
    connection (or of the previous answer on a kept-alive connection), else the connection
    is closed; this deadline applies before the access key is checked. A head is at most
    :data:`_MAX_HEAD` bytes; a body is buffered only once the access key is right, its size
    allowed and an in-flight slot reserved (``max_in_flight``): so memory is bounded too. No
    thread per connection: waiting for the daemon's answer costs a socket, not a thread.
    """

    def __init__(self, source: Endpoint, server: socket.socket) -> None:
        self._source = source
        self._settings = source.settings
        assert self._settings.access_key, "an access key is required"
        self._access_key = self._settings.access_key.encode()
        self._server = server
        self._context: ssl.SSLContext | None = None
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, Connection] = {}  # by file descriptor
        self._lingering: dict[int, Connection] = {}
        self._ready: collections.deque[Connection] = collections.deque()  # answers to write
        self._ready_lock = threading.Lock()
        self._again: collections.deque[Connection] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self.max_connections = _connection_budget(self._settings.max_connections)
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self._refused_logged_at = 0.0

    def use_tls(self, context: ssl.SSLContext) -> None:
        self._context = context

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> None:
        """The loop: accept, read, write, expire; until :meth:`stop`."""
        self._server.setblocking(False)
        self._selector.register(self._server, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, events in self._selector.select(self._timeout()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._guarded(key.data, self._on_event, events)
                self._write_ready()
                while self._again:  # kept-alive connections with a next request buffered
                    conn = self._again.popleft()
                    if conn.sock.fileno() in self._conns:
                        self._guarded(conn, lambda c, _: self._advance(c), 0)
                self._expire()
        finally:
            for conn in [*self._conns.values(), *self._lingering.values()]:
                self._close(conn)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def answer_ready(self, conn: Connection) -> None:
        """Called from any thread once ``conn``'s request has its answer."""
        with self._ready_lock:
            self._ready.append(conn)
        self.wake()

    def connections(self) -> int:
        """Connections open (lingering refusals not counted)."""
        return len(self._conns)

    def answers_pending(self) -> bool:
        """An answer is decided but not written yet."""
        with self._ready_lock:
            if self._ready:
                return True
        return any(c.state == "write" and c.outgoing for c in list(self._conns.values()))

    # ------------------------------------------------------------------ events

    def _timeout(self) -> float:
        now = self._source.clock()
        deadlines = [c.deadline for c in self._conns.values() if c.state in ("read", "write")]
        deadlines.extend(c.deadline for c in self._lingering.values())
        waits = [c.request.answer_by for c in self._conns.values() if c.request is not None]
        nearest = min([*deadlines, *waits], default=now + _SERVE_POLL_S)
        return min(max(nearest - now, 0.0), _SERVE_POLL_S)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the budget is spent, say so
                self._note_refused(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections and not self._evict_one():
                self._refuse(sock, addr)
                continue
            deadline = self._source.clock() + self._settings.request_timeout_s
            conn = Connection(sock, addr, deadline, tls=self._context is not None)
            if self._context is not None:
                try:
                    conn.sock = self._context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError):
                    sock.close()
                    continue
            self._conns[conn.sock.fileno()] = conn
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _evict_one(self) -> bool:
        """Close the oldest connection still reading a request (it has not authenticated)."""
        reading = [c for c in self._conns.values() if c.state == "read" and c.request is None]
        if not reading:
            return False
        oldest = min(reading, key=lambda c: c.deadline)
        self.evicted += 1
        self._close(oldest)
        return True

    def _refuse(self, sock: socket.socket, addr: Any) -> None:
        """Over the cap and nothing to evict: 503 and close (Firehose retries)."""
        self._note_refused("too many connections")
        if self._context is not None or len(self._lingering) >= _LINGER_MAX:
            sock.close()  # TLS: no handshake for a refusal; a plain close, Firehose retries
            return
        conn = Connection(sock, addr, self._source.clock() + _LINGER_S, tls=False)
        body = answer_body("", "too many connections: retry later", now_ms=self._source.now_ms())
        conn.outgoing = http_answer(503, body, close=True)
        conn.state = "linger"
        conn.close_after = True
        self._lingering[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _note_refused(self, reason: str) -> None:
        self.refused += 1
        now = self._source.clock()
        if now - self._refused_logged_at >= _REFUSED_LOG_EVERY_S:
            self._refused_logged_at = now
            _log.warning(
                "firehose_connection_refused",
                reason=reason,
                refused=self.refused,
                evicted=self.evicted,
                connections=len(self._conns),
                max_connections=self.max_connections,
            )

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _on_event(self, conn: Connection, events: int) -> None:
        try:
            if conn.state == "linger":
                self._linger(conn, events)
            elif events & selectors.EVENT_WRITE and conn.outgoing:
                self._flush(conn)
            elif events & selectors.EVENT_READ and conn.state == "read":
                self._read(conn)
        except (OSError, ValueError):
            self._close(conn)

    def _guarded(
        self, conn: Connection, handle: Callable[[Connection, int], None], events: int
    ) -> None:
        """Run one connection's handler; whatever it raises ends that connection only."""
        try:
            handle(conn, events)
        except Exception as exc:  # noqa: BLE001 - one client's problem must not stop the loop
            _log.error(
                "firehose_connection_failed",
                addr=str(conn.addr),
                reason=f"{type(exc).__name__}: {exc}",
            )
            if conn.request is not None:
                self._source.abandon(conn.request)
                conn.request = None
            self._close(conn)

    def _linger(self, conn: Connection, events: int) -> None:
        if conn.outgoing and events & selectors.EVENT_WRITE:
            sent = conn.sock.send(conn.outgoing)
            conn.outgoing = conn.outgoing[sent:]
            if not conn.outgoing:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
                self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        if events & selectors.EVENT_READ and not conn.sock.recv(READ_SIZE):
            self._close(conn)

    def _read(self, conn: Connection) -> None:
        data = conn.recv()
        if data is None:
            return
        if not data:
            self._close(conn)
            return
        if conn.discard:
            dropped = min(conn.discard, len(data))
            conn.discard -= dropped
            data = data[dropped:]
        conn.buffer += data
        self._advance(conn)

    def _advance(self, conn: Connection) -> None:
        """Move a connection on with what it has read: head, checks, body, hand-over."""
        if conn.discard:
            return
        if conn.rejected is not None:
            status, request_id, reason = conn.rejected
            conn.rejected = None
            self._answer_now(conn, status, request_id, reason, close=conn.close_after)
            return
        if conn.head is None:
            end = conn.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.buffer) > _MAX_HEAD:
                    self._reject(conn, 431, "", "request head too large", None, close=True)
                return
            raw, conn.buffer = bytes(conn.buffer[:end]), conn.buffer[end + 4 :]
            try:
                conn.head = parse_head(raw)
            except RequestRejectedError as exc:
                self._reject(conn, exc.status, "", exc.reason, None, close=True)
                return
            if not self._check(conn, conn.head):
                return
        if conn.request is not None and len(conn.buffer) >= conn.length:
            self._take(conn)

    def _check(self, conn: Connection, head: RequestHead) -> bool:
        """The checks before the body is taken in; False when the request was rejected."""
        request_id = head.get(REQUEST_ID_HEADER) or ""
        try:
            length = check_head(
                head, access_key=self._access_key, max_body_bytes=self._settings.max_body_bytes
            )
        except RequestRejectedError as exc:
            close = exc.length is None  # the body's size is unknown: it cannot be skipped
            self._reject(conn, exc.status, request_id, exc.reason, exc.length, close=close)
            return False
        request = self._source.admit(request_id)
        if request is None:
            self._reject(conn, 503, request_id, "busy or shutting down: retry later", length)
            return False
        request.on_done = lambda: self.answer_ready(conn)
        conn.request = request
        conn.length = length
        if (head.get("expect") or "").lower() == "100-continue":
            conn.outgoing += b"HTTP/1.1 100 Continue\r\n\r\n"
            self._flush(conn)
        return True

    def _reject(
        self,
        conn: Connection,
        status: int,
        request_id: str,
        reason: str,
        length: int | None,
        *,
        close: bool = False,
    ) -> None:
        """Answer before the body: drop a small body first (keeps the connection usable and
        the answer readable), else answer and hang up."""
        _log.warning(
            "firehose_request_rejected", request_id=request_id, status=status, reason=reason
        )
        if length is None or length > _DISCARD_MAX:
            self._answer_now(conn, status, request_id, reason, close=True)
            return
        conn.close_after = close
        pending = min(length, len(conn.buffer))
        del conn.buffer[:pending]
        conn.discard = length - pending
        conn.rejected = (status, request_id, reason)
        self._advance(conn)

    def _take(self, conn: Connection) -> None:
        """The whole body is in: decode it and hand its records to the daemon."""
        request, head = conn.request, conn.head
        assert request is not None and head is not None
        body, conn.buffer = bytes(conn.buffer[: conn.length]), conn.buffer[conn.length :]
        conn.state = "wait"
        self._selector.unregister(conn.sock)  # nothing to read until the answer is out
        gzipped = (head.get("content-encoding") or "").strip().lower() == "gzip"
        try:
            body_id, records = decode_body(
                body, gzipped=gzipped, max_bytes=self._settings.max_body_bytes
            )
        except RequestRejectedError as exc:
            self._source.abandon(request)
            conn.request = None
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.state = "read"
            _log.warning(
                "firehose_request_rejected",
                request_id=request.request_id,
                status=exc.status,
                reason=exc.reason,
            )
            self._answer_now(
                conn, exc.status, request.request_id, exc.reason, close=exc.status == 413
            )
            return
        if body_id:
            request.request_id = body_id
        _log.debug(
            "firehose_request_received",
            request_id=request.request_id,
            records=len(records),
            bytes=conn.length,
            source_arn=head.get(SOURCE_ARN_HEADER),
        )
        self._source.enqueue(request, records)

    def _answer_now(
        self, conn: Connection, status: int, request_id: str, error: str | None, *, close: bool
    ) -> None:
        body = answer_body(request_id, error, now_ms=self._source.now_ms())
        head = conn.head
        close = close or head is None or not head.keep_alive
        conn.outgoing += http_answer(status, body, close=close)
        conn.close_after = close
        conn.state = "write"
        conn.deadline = self._source.clock() + _WRITE_TIMEOUT_S
        if conn.sock.fileno() in self._conns and self._registered(conn):
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._flush(conn)

    def _registered(self, conn: Connection) -> bool:
        try:
            self._selector.get_key(conn.sock)
        except (KeyError, ValueError):
            return False
        return True

    def _write_ready(self) -> None:
        """Write the answers the daemon decided (resolved from its thread)."""
        with self._ready_lock:
            ready, self._ready = list(self._ready), collections.deque()
        for conn in ready:
            request = conn.request
            if request is None or conn.sock.fileno() not in self._conns:
                continue
            self._send_answer(conn, request)

    def _send_answer(self, conn: Connection, request: PendingRequest) -> None:
        conn.request = None
        status = request.status if request.status is not None else 500
        log = _log.info if status == 200 else _log.warning
        log(
            "firehose_request_answered",
            request_id=request.request_id,
            status=status,
            records=len(request.records),
            reason=request.error,
        )
        try:
            self._answer_now(conn, status, request.request_id, request.error, close=False)
        except (OSError, ValueError) as exc:
            self._answer_failed(conn, request, status, exc)

    def _answer_failed(
        self, conn: Connection, request: PendingRequest, status: int, exc: Exception
    ) -> None:
        # Firehose hung up (its 3-minute timeout): it retries.
        _log.warning(
            "firehose_answer_failed", request_id=request.request_id, status=status, reason=str(exc)
        )
        self._close(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            if not conn.write():
                return
        except OSError:
            self._close(conn)
            return
        if conn.state != "write":
            return  # a 100 Continue went out; the request goes on
        if conn.close_after:
            self._close(conn)
            return
        # Kept alive: the next request has its own deadline.
        conn.state = "read"
        conn.head = None
        conn.length = 0
        conn.deadline = self._source.clock() + self._settings.request_timeout_s
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        if conn.buffer:
            self._again.append(conn)  # from the loop: no recursion however much is pipelined

    def _expire(self) -> None:
        now = self._source.clock()
        for conn in list(self._conns.values()):
            if conn.state in ("read", "write") and now >= conn.deadline:
                if conn.request is not None:  # the body did not arrive in time
                    self._source.abandon(conn.request)
                    conn.request = None
                self.timed_out += 1
                _log.debug("firehose_connection_expired", state=conn.state, addr=str(conn.addr))
                self._close(conn)
            elif conn.state == "wait" and conn.request is not None:
                request = conn.request
                if now >= request.answer_by + _ANSWER_SAFETY_S:
                    # The daemon's flush is bounded by answer_by; this is the last resort, so
                    # that Firehose has an answer before its own 3-minute timeout.
                    self._source.expire(request)
        for conn in list(self._lingering.values()):
            if now >= conn.deadline:
                self._close(conn)

    def _close(self, conn: Connection) -> None:
        fileno = conn.sock.fileno()
        if fileno >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        self._conns.pop(fileno, None)
        self._lingering.pop(fileno, None)
        if conn.request is not None:
            self._source.abandon(conn.request)
            conn.request = None
        with contextlib.suppress(OSError):
            conn.sock.close()


def _connection_budget(wanted: int) -> int:
    """``wanted``, capped so that :data:`_FD_RESERVE` descriptors stay for everything else.

    The soft ``RLIMIT_NOFILE`` is raised to the hard one first (a common low default is 1024).
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    except (ValueError, OSError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    budget = max(soft - _FD_RESERVE, 8)
    if budget < wanted:
        _log.warning(
            "firehose_connections_capped",
            wanted=wanted,
            allowed=budget,
            reason=f"descriptor limit {soft}: {_FD_RESERVE} kept for HEC, S3 and AWS",
        )
    return min(wanted, budget)
