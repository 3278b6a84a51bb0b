"""The ``firehose-http`` daemon source: an Amazon Data Firehose HTTP endpoint destination.

Firehose POSTs batches to a configured HTTPS URL (the "HTTP endpoint delivery request and
response specifications" appendix of the Firehose developer guide):

- body: JSON ``{"requestId": "...", "timestamp": <ms>, "records": [{"data": "<base64>"}]}``,
  gzip-compressed when the stream says so (``Content-Encoding: gzip``);
- headers: ``X-Amz-Firehose-Request-Id`` (stable across retries of one request),
  ``X-Amz-Firehose-Access-Key`` (the configured access key, verbatim),
  ``X-Amz-Firehose-Source-Arn``, ``X-Amz-Firehose-Protocol-Version: 1.0`` and optionally
  ``X-Amz-Firehose-Common-Attributes``;
- answer: ``200`` with ``{"requestId": "<same>", "timestamp": <ms>}`` once the data is safe;
  any other status (with ``errorMessage``) makes Firehose retry and, at the end of its retry
  duration, back the batch up to S3. Firehose waits 3 minutes for an answer.

Each request's records are handed to the daemon loop by :meth:`FirehoseHttpSource.poll` like
any source's records (the record's bytes: a gzip CloudWatch Logs payload when a subscription
feeds the stream, or any text). The HTTP answer waits for the daemon's checkpoint:
:meth:`~FirehoseHttpSource.commit` (every event of every record polled so far acknowledged or
backsplashed) answers ``200`` for each request whose records were all polled. Firehose gives an
endpoint 3 minutes to answer, and acks may take longer (an ack timeout of 300 s, indexers that
flush after two minutes): so each request must be settled by its arrival plus
``answer_timeout_s`` (default 150 s; :meth:`~FirehoseHttpSource.answer_deadline`), and the
daemon's checkpoint backsplashes (``Splunk.Deadline``) what is not acknowledged by then, which
makes the 200 honest (acknowledged or durably stored) and timely. Should even that not happen
(a backsplash write hanging), the receiver answers ``500`` 15 s later, still before Firehose's
limit. Records the daemon gives back (:meth:`~FirehoseHttpSource.release`, a shutdown) and
requests still waiting when the source closes (shutdown, or a backsplash failure that stops the
daemon without a checkpoint) are answered ``500``, so Firehose sends them again: at least once,
never lost.

The receiver (:class:`_Receiver`) is one thread with one selector, whatever the clients do:
connections are capped (``max_connections``, lowered to fit the descriptor limit with
descriptors kept for HEC and S3), the oldest connection still sending its request is shed to
make room for a new one, else the new one is answered ``503``; the TLS handshake, head and body
of each request must arrive within ``request_timeout_s`` (checked before the access key, so a
slow client cannot hold a connection by dripping bytes); a body is buffered only after the key,
its size and an in-flight slot are checked. Waiting for the answer costs a socket, no thread.

Rejections come before the body is taken in: a wrong or missing access key is ``401``; a body
over ``max_body_bytes`` (on the wire or once gunzipped) ``413``; ``max_in_flight`` requests
already waiting, or a daemon shutting down, ``503`` (backpressure: Firehose retries). A body
that is not Firehose's JSON is ``400``. The access key is compared in constant time
(:func:`hmac.compare_digest`) and never logged.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hmac
import json
import resource
import selectors
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from config.daemon import SourceSettings
from forwarder.sources.base import SourceRecord

_log = structlog.get_logger("forwarder.sources.firehose_http")

#: How often the server loop checks for a shutdown request (bounds :meth:`close`).
_SERVE_POLL_S: Final = 0.05
#: Longest wait of an empty :meth:`FirehoseHttpSource.poll`.
_POLL_WAIT_MAX_S: Final = 1.0
#: :meth:`FirehoseHttpSource.close` waits this long for answers to be written.
_ANSWER_FLUSH_S: Final = 5.0
#: A rejected request's body is read and discarded (keeps the connection clean) up to this size.
_DISCARD_MAX: Final = 1 << 20
#: Largest request line plus headers (Firehose's are well under 8 KiB).
_MAX_HEAD: Final = 64 << 10
_READ_SIZE: Final = 64 << 10
#: Connections accepted per turn of the loop (the rest wait in the listen backlog).
_ACCEPT_BATCH: Final = 64
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
_ACCESS_KEY_HEADER: Final = "X-Amz-Firehose-Access-Key"
_REQUEST_ID_HEADER: Final = "X-Amz-Firehose-Request-Id"
_SOURCE_ARN_HEADER: Final = "X-Amz-Firehose-Source-Arn"


class RequestRejectedError(Exception):
    """A request Firehose sent cannot be taken in: its HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_body(body: bytes, *, gzipped: bool, max_bytes: int) -> tuple[str | None, list[bytes]]:
    """The request id and the records' bytes of a Firehose request body (pure).

    Args:
        body: the body as received.
        gzipped: ``Content-Encoding: gzip``.
        max_bytes: the body may not inflate past this.

    Returns:
        (``requestId`` of the body or None, each record's base64-decoded ``data``).

    Raises:
        RequestRejectedError: 413 when it inflates past ``max_bytes``; 400 when it is not
            gzip, JSON or Firehose's shape.
    """
    if gzipped:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise RequestRejectedError(400, f"body is not valid gzip: {exc}") from None
        if len(body) > max_bytes:
            raise RequestRejectedError(413, f"body inflates past {max_bytes} bytes")
        if not inflater.eof:
            raise RequestRejectedError(400, "body is truncated gzip")
    try:
        document = json.loads(body)
    except ValueError:
        raise RequestRejectedError(400, "body is not JSON") from None
    except RecursionError:  # hostile nesting: one request's problem, never the receiver's
        raise RequestRejectedError(400, "body is nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("records"), list):
        raise RequestRejectedError(400, 'body has no "records" list')
    records: list[bytes] = []
    for index, record in enumerate(document["records"]):
        data = record.get("data") if isinstance(record, dict) else None
        if not isinstance(data, str):
            raise RequestRejectedError(400, f'record {index} has no "data" string')
        try:
            records.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise RequestRejectedError(400, f"record {index}: data is not base64") from None
    request_id = document.get("requestId")
    return (request_id if isinstance(request_id, str) else None), records


def answer_body(request_id: str, error: str | None = None, *, now_ms: int) -> bytes:
    """Firehose's response body: ``requestId``, ``timestamp`` and, on failure, ``errorMessage``."""
    document: dict[str, object] = {"requestId": request_id, "timestamp": now_ms}
    if error is not None:
        document["errorMessage"] = error
    return json.dumps(document).encode()


@dataclass(eq=False)
class _Request:
    """One Firehose request waiting for its answer."""

    request_id: str
    records: list[bytes]
    arrived: float
    answer_by: float
    polled: int = 0
    status: int | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    on_done: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, status: int, error: str | None = None) -> bool:
        """Set the answer once (from any thread); returns whether this call set it."""
        with self._lock:
            if self.status is not None:
                return False
            self.status, self.error = status, error
        self.done.set()
        if self.on_done is not None:
            self.on_done()
        return True


class FirehoseHttpSource:
    """Firehose's HTTP endpoint destination, as a daemon source (see the module docstring).

    Args:
        settings: the ``[source]`` settings (``type = "firehose-http"``, an ``access_key``).
        stop_event: set on shutdown: new requests are then refused with 503.
        clock: monotonic seconds (lag).
        wall_clock: epoch seconds (response ``timestamp``).
    """

    def __init__(
        self,
        settings: SourceSettings,
        *,
        stop_event: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.access_key, "an access key is required"
        self.name = "firehose-http"
        self._settings = settings
        self._access_key = settings.access_key.encode()
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()  # records left to poll
        self._taken: list[_Request] = []  # every record polled: answered on commit
        self._open: set[_Request] = set()  # not answered yet (the in-flight bound)
        self._closing = False
        self._listener: socket.socket | None = None
        self._receiver: _Receiver | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ Source protocol

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def attached(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`attach`)."""
        assert self._listener is not None, "attach() first"
        return int(self._listener.getsockname()[1])

    @property
    def receiver(self) -> _Receiver:
        """The HTTP receiver (after :meth:`attach`): connection counts for tests and logs."""
        assert self._receiver is not None, "attach() first"
        return self._receiver

    @property
    def url(self) -> str:
        """Base URL of the endpoint (after :meth:`attach`)."""
        scheme = "https" if self._settings.tls_cert_path else "http"
        host = self._settings.host
        return f"{scheme}://{host}:{self.port}"

    def lag_seconds(self) -> float | None:
        """Age of the oldest request not answered yet (0 when none waits)."""
        with self._lock:
            oldest = min((request.arrived for request in self._open), default=None)
        return 0.0 if oldest is None else max(self._clock() - oldest, 0.0)

    def attach(self) -> None:
        """Bind the port (TLS when a certificate is configured) and start serving.

        Raises:
            OSError: the address cannot be bound or the certificate read.
        """
        if self.attached:
            return
        settings = self._settings
        context: ssl.SSLContext | None = None
        if settings.tls_cert_path:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
        listener = socket.create_server(
            (settings.host, settings.port), backlog=_ACCEPT_BATCH * 4, reuse_port=False
        )
        receiver = _Receiver(self, listener)
        if context is not None:
            receiver.use_tls(context)
        self._listener, self._receiver = listener, receiver
        self._thread = threading.Thread(target=receiver.serve, name="firehose-http", daemon=True)
        self._thread.start()
        _log.info(
            "source_attached",
            source=self.name,
            url=self.url,
            max_connections=receiver.max_connections,
        )

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Up to ``max_records`` records of the requests received, oldest request first;
        waits up to ``poll_interval_s`` (at most a second, and at most ``wait_s`` when
        given) when none is there."""
        wait = min(self._settings.poll_interval_s, _POLL_WAIT_MAX_S)
        if wait_s is not None:
            wait = max(min(wait, wait_s), 0.0)
        out: list[SourceRecord] = []
        with self._lock:
            if not self._queue and wait > 0 and not self._stop.is_set():
                self._lock.wait(wait)
            while self._queue and len(out) < max_records:
                request = self._queue[0]
                while request.polled < len(request.records) and len(out) < max_records:
                    data = request.records[request.polled]
                    out.append(SourceRecord(payload=data, position=(request, request.polled)))
                    request.polled += 1
                if request.polled == len(request.records):
                    self._queue.popleft()
                    self._taken.append(request)
        return out

    def commit(self) -> int:
        """Everything polled is acknowledged or backsplashed: answer 200 to every request
        whose records were all polled; returns how many were answered."""
        with self._lock:
            taken, self._taken = self._taken, []
        answered = sum(1 for request in taken if self._answer(request, 200))
        return answered

    def release(self, records: Sequence[SourceRecord]) -> None:
        """``records`` were not delivered: their requests are answered 500 (Firehose sends
        them again, whole: what of them was delivered comes twice)."""
        released = {
            record.position[0]
            for record in records
            if isinstance(record.position, tuple) and isinstance(record.position[0], _Request)
        }
        if not released:
            return
        with self._lock:
            self._queue = collections.deque(r for r in self._queue if r not in released)
            self._taken = [r for r in self._taken if r not in released]
        for request in released:
            self._answer(request, 500, "not delivered: the forwarder is shutting down")
        _log.info("source_released", source=self.name, requests=len(released))

    def close(self) -> None:
        """Refuse new requests, answer 500 to those still waiting, stop serving."""
        with self._lock:
            self._closing = True
            waiting = list(self._open)
            self._queue.clear()
            self._taken.clear()
        for request in waiting:
            self._answer(request, 500, "not delivered: the forwarder stopped before HEC acked it")
        receiver = self._receiver
        if receiver is not None and self._thread is not None and self._thread.is_alive():
            end = self._clock() + _ANSWER_FLUSH_S  # let the answers go out
            while receiver.answers_pending() and self._clock() < end:
                time.sleep(0.02)
            receiver.stop()
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def answer_deadline(self) -> float | None:
        """When the oldest request whose records the daemon holds must be settled (its
        arrival plus ``answer_timeout_s``), or None: the daemon's checkpoint backsplashes
        what is not acknowledged by then, so Firehose has its answer in time."""
        with self._lock:
            held = [r.answer_by for r in self._taken]
            held.extend(r.answer_by for r in self._queue if r.polled)
        return min(held, default=None)

    # ------------------------------------------------------------------ used by the handler

    def _answer(self, request: _Request, status: int, error: str | None = None) -> bool:
        with self._lock:
            self._open.discard(request)
        return request.resolve(status, error)

    def access_key_ok(self, presented: str | None) -> bool:
        """Constant-time comparison with the configured key."""
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self._access_key)

    def admit(self, request_id: str) -> _Request | None:
        """Reserve an in-flight slot, or None (shutting down, or ``max_in_flight`` waiting)."""
        with self._lock:
            if self._closing or self._stop.is_set():
                return None
            if len(self._open) >= self._settings.max_in_flight:
                return None
            now = self._clock()
            request = _Request(request_id, [], now, now + self._settings.answer_timeout_s)
            self._open.add(request)
            return request

    def enqueue(self, request: _Request, records: list[bytes]) -> None:
        """Hand a request's records to :meth:`poll`; an empty request is answered at once."""
        closing = False
        with self._lock:
            request.records = records
            if self._closing:
                closing = True
            elif records:
                self._queue.append(request)
                self._lock.notify_all()
        if closing:
            self._answer(request, 500, "not delivered: the forwarder is shutting down")
        elif not records:
            self._answer(request, 200)

    def abandon(self, request: _Request) -> None:
        """An admitted request's connection went away (or it was rejected) before its answer:
        its slot is free; records already queued are still delivered (Firehose sends the
        request again: at least once)."""
        with self._lock:
            self._open.discard(request)

    def expire(self, request: _Request) -> None:
        """Last resort: the request was not settled in time; answer 500 (Firehose retries).
        Records not yet polled are withdrawn."""
        with self._lock:
            if request in self._queue and not request.polled:
                self._queue = collections.deque(r for r in self._queue if r is not request)
        if self._answer(request, 500, "not settled within the answer timeout: retry"):
            _log.error(
                "firehose_request_expired",
                request_id=request.request_id,
                records=len(request.records),
                reason="the daemon did not settle it within answer_timeout_s",
            )

    def clock(self) -> float:
        return self._clock()

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    @property
    def settings(self) -> SourceSettings:
        return self._settings


# --------------------------------------------------------------------------- the receiver


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def http_answer(status: int, body: bytes, *, close: bool) -> bytes:
    """An HTTP/1.1 response with a JSON body (every answer has a Content-Length)."""
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The request line and headers of one request (names lower-cased)."""

    method: str
    version: str
    headers: dict[str, str]

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def keep_alive(self) -> bool:
        connection = (self.get("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


def parse_head(data: bytes) -> RequestHead:
    """Parse a request line and headers (pure; ``data`` ends before the blank line).

    Raises:
        RequestRejectedError: 400 when it is not an HTTP/1.x request head.
    """
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for clarity
        raise RequestRejectedError(400, "request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise RequestRejectedError(400, "not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise RequestRejectedError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return RequestHead(parts[0].upper(), parts[2], headers)


class _Conn:
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
        self.request: _Request | None = None
        self.outgoing = b""
        self.close_after = False
        self.tls_ready = not tls


class _Receiver:
    """The HTTP side of :class:`FirehoseHttpSource`: one thread, one selector, every socket.

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

    def __init__(self, source: FirehoseHttpSource, server: socket.socket) -> None:
        self._source = source
        self._settings = source.settings
        self._server = server
        self._context: ssl.SSLContext | None = None
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}  # by file descriptor
        self._lingering: dict[int, _Conn] = {}
        self._ready: collections.deque[_Conn] = collections.deque()  # answers to write
        self._ready_lock = threading.Lock()
        self._again: collections.deque[_Conn] = collections.deque()
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

    def answer_ready(self, conn: _Conn) -> None:
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
        for _ in range(_ACCEPT_BATCH):
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
            conn = _Conn(sock, addr, deadline, tls=self._context is not None)
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
        conn = _Conn(sock, addr, self._source.clock() + _LINGER_S, tls=False)
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

    def _on_event(self, conn: _Conn, events: int) -> None:
        try:
            if conn.state == "linger":
                self._linger(conn, events)
            elif events & selectors.EVENT_WRITE and conn.outgoing:
                self._flush(conn)
            elif events & selectors.EVENT_READ and conn.state == "read":
                self._read(conn)
        except (OSError, ValueError):
            self._close(conn)

    def _guarded(self, conn: _Conn, handle: Callable[[_Conn, int], None], events: int) -> None:
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

    def _linger(self, conn: _Conn, events: int) -> None:
        if conn.outgoing and events & selectors.EVENT_WRITE:
            sent = conn.sock.send(conn.outgoing)
            conn.outgoing = conn.outgoing[sent:]
            if not conn.outgoing:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
                self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        if events & selectors.EVENT_READ and not conn.sock.recv(_READ_SIZE):
            self._close(conn)

    def _recv(self, conn: _Conn) -> bytes | None:
        """What the socket has (b"" at EOF), or None when it would block."""
        try:
            if not conn.tls_ready:
                assert isinstance(conn.sock, ssl.SSLSocket)
                conn.sock.do_handshake()
                conn.tls_ready = True
            data = conn.sock.recv(_READ_SIZE)
            if isinstance(conn.sock, ssl.SSLSocket):
                while conn.sock.pending():
                    data += conn.sock.recv(_READ_SIZE)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return None
        except ssl.SSLWantWriteError:
            return None  # rare during a server handshake; the next readable event retries
        return data

    def _read(self, conn: _Conn) -> None:
        data = self._recv(conn)
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

    def _advance(self, conn: _Conn) -> None:
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

    def _check(self, conn: _Conn, head: RequestHead) -> bool:
        """The checks before the body is taken in; False when the request was rejected."""
        source = self._source
        request_id = head.get(_REQUEST_ID_HEADER) or ""
        if head.method != "POST":
            self._reject(conn, 405, request_id, "POST Firehose batches here", None, close=True)
            return False
        raw_length = head.get("content-length")
        try:
            length: int | None = int(raw_length) if raw_length is not None else None
        except ValueError:
            length = None
        if length is None or length < 0:
            self._reject(conn, 411, request_id, "a Content-Length is required", None, close=True)
            return False
        if not source.access_key_ok(head.get(_ACCESS_KEY_HEADER)):
            self._reject(conn, 401, request_id, "missing or wrong access key", length)
            return False
        max_bytes = self._settings.max_body_bytes
        if length > max_bytes:
            self._reject(conn, 413, request_id, f"body over {max_bytes} bytes", length)
            return False
        request = source.admit(request_id)
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
        conn: _Conn,
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

    def _take(self, conn: _Conn) -> None:
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
            source_arn=head.get(_SOURCE_ARN_HEADER),
        )
        self._source.enqueue(request, records)

    def _answer_now(
        self, conn: _Conn, status: int, request_id: str, error: str | None, *, close: bool
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

    def _registered(self, conn: _Conn) -> bool:
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

    def _send_answer(self, conn: _Conn, request: _Request) -> None:
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

    def _answer_failed(self, conn: _Conn, request: _Request, status: int, exc: Exception) -> None:
        # Firehose hung up (its 3-minute timeout): it retries.
        _log.warning(
            "firehose_answer_failed", request_id=request.request_id, status=status, reason=str(exc)
        )
        self._close(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.outgoing:
                sent = conn.sock.send(conn.outgoing)
                conn.outgoing = conn.outgoing[sent:]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
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

    def _close(self, conn: _Conn) -> None:
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
