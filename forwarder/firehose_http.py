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
backsplashed) answers ``200`` for each request whose records were all polled. Records the
daemon gives back (:meth:`~FirehoseHttpSource.release`, a shutdown) and requests still waiting
when the source closes (shutdown, or a backsplash failure that stops the daemon without a
checkpoint) are answered ``500``, so Firehose sends them again: at least once, never lost.

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
import hmac
import json
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import structlog

from config.daemon import SourceSettings
from forwarder.sources import SourceRecord

_log = structlog.get_logger("forwarder.firehose_http")

#: How often the server loop checks for a shutdown request (bounds :meth:`close`).
_SERVE_POLL_S: Final = 0.05
#: Longest wait of an empty :meth:`FirehoseHttpSource.poll`.
_POLL_WAIT_MAX_S: Final = 1.0
#: An idle keep-alive connection is closed after this long.
_IDLE_TIMEOUT_S: Final = 60.0
#: :meth:`FirehoseHttpSource.close` waits this long for answers to be written.
_ANSWER_FLUSH_S: Final = 5.0
#: A rejected request's body is read and discarded (keeps the connection clean) up to this size.
_DISCARD_MAX: Final = 1 << 20
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
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode
        raise RequestRejectedError(400, "body is not JSON") from None
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
    polled: int = 0
    status: int | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def resolve(self, status: int, error: str | None = None) -> bool:
        """Set the answer once; returns whether this call set it."""
        if self.status is not None:
            return False
        self.status, self.error = status, error
        self.done.set()
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
        self._writing = 0  # accepted requests whose answer is not written yet
        self._closing = False
        self._server: ThreadingHTTPServer | None = None
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
        assert self._server is not None, "attach() first"
        return int(self._server.server_address[1])

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
        server = ThreadingHTTPServer((settings.host, settings.port), _handler_for(self))
        server.daemon_threads = True
        if settings.tls_cert_path:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
            except OSError:
                server.server_close()
                raise
            # The handshake happens in the handler's thread, not in the accept loop.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _SERVE_POLL_S},
            name="firehose-http",
            daemon=True,
        )
        self._thread.start()
        _log.info("source_attached", source=self.name, url=self.url)

    def poll(self, max_records: int) -> list[SourceRecord]:
        """Up to ``max_records`` records of the requests received, oldest request first;
        waits up to ``poll_interval_s`` (at most a second) when none is there."""
        wait = min(self._settings.poll_interval_s, _POLL_WAIT_MAX_S)
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
        end = self._clock() + _ANSWER_FLUSH_S
        with self._lock:
            while self._writing and self._clock() < end:
                self._lock.wait(0.05)
        if self._server is not None:
            if self._thread is not None and self._thread.is_alive():
                self._server.shutdown()
                self._thread.join(timeout=5)
            self._server.server_close()

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
            request = _Request(request_id, [], self._clock())
            self._open.add(request)
            self._writing += 1
            return request

    def enqueue(self, request: _Request, records: list[bytes]) -> None:
        """Hand a request's records to :meth:`poll`; an empty request is answered at once."""
        with self._lock:
            request.records = records
            if self._closing:
                pass  # close() answers it
            elif records:
                self._queue.append(request)
                self._lock.notify_all()
        if not records:
            self._answer(request, 200)

    def abandon(self, request: _Request) -> None:
        """An admitted request was rejected before its records were queued."""
        with self._lock:
            self._open.discard(request)

    def written(self) -> None:
        """An admitted request's answer is written (or could not be)."""
        with self._lock:
            self._writing -= 1
            self._lock.notify_all()

    def now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    @property
    def settings(self) -> SourceSettings:
        return self._settings


def _handler_for(source: FirehoseHttpSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
        timeout = _IDLE_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the answers are logged as events instead."""

        def _send(self, status: int, request_id: str, error: str | None) -> None:
            body = answer_body(request_id, error, now_ms=source.now_ms())
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except OSError as exc:  # Firehose hung up (its 3-minute timeout): it retries
                _log.warning(
                    "firehose_answer_failed", request_id=request_id, status=status, reason=str(exc)
                )

        def _reject(self, status: int, request_id: str, reason: str, length: int | None) -> None:
            """Answer before reading the body: read and drop a small one, else hang up."""
            if length is not None and length <= _DISCARD_MAX:
                try:
                    self.rfile.read(length)
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
            _log.warning(
                "firehose_request_rejected", request_id=request_id, status=status, reason=reason
            )
            self._send(status, request_id, reason)

        def do_GET(self) -> None:
            self.close_connection = True
            self._send(405, "", "POST Firehose batches here")

        def do_POST(self) -> None:
            request_id = self.headers.get(_REQUEST_ID_HEADER, "")
            raw_length = self.headers.get("Content-Length")
            try:
                length: int | None = int(raw_length) if raw_length is not None else None
            except ValueError:
                length = None
            if length is None or length < 0:
                self.close_connection = True
                self._reject(411, request_id, "a Content-Length is required", None)
                return
            if not source.access_key_ok(self.headers.get(_ACCESS_KEY_HEADER)):
                self._reject(401, request_id, "missing or wrong access key", length)
                return
            max_bytes = source.settings.max_body_bytes
            if length > max_bytes:
                self._reject(413, request_id, f"body over {max_bytes} bytes", length)
                return
            request = source.admit(request_id)
            if request is None:
                self._reject(503, request_id, "busy or shutting down: retry later", length)
                return
            try:
                self._take(request, length, max_bytes)
            finally:
                source.written()

        def _read_body(self, length: int) -> bytes:
            body: bytes = self.rfile.read(length)
            if len(body) < length:
                raise RequestRejectedError(400, "body shorter than its Content-Length")
            return body

        def _take(self, request: _Request, length: int, max_bytes: int) -> None:
            try:
                body = self._read_body(length)
                gzipped = self.headers.get("Content-Encoding", "").strip().lower() == "gzip"
                body_id, records = decode_body(body, gzipped=gzipped, max_bytes=max_bytes)
            except RequestRejectedError as exc:
                source.abandon(request)
                self.close_connection = self.close_connection or exc.status == 413
                _log.warning(
                    "firehose_request_rejected",
                    request_id=request.request_id,
                    status=exc.status,
                    reason=exc.reason,
                )
                self._send(exc.status, request.request_id, exc.reason)
                return
            except OSError as exc:
                source.abandon(request)
                self.close_connection = True
                _log.warning("firehose_request_rejected", status=400, reason=str(exc))
                return
            if body_id:
                request.request_id = body_id
            _log.debug(
                "firehose_request_received",
                request_id=request.request_id,
                records=len(records),
                bytes=length,
                source_arn=self.headers.get(_SOURCE_ARN_HEADER),
            )
            source.enqueue(request, records)
            request.done.wait()
            status = request.status if request.status is not None else 500
            log = _log.info if status == 200 else _log.warning
            log(
                "firehose_request_answered",
                request_id=request.request_id,
                status=status,
                records=len(records),
                reason=request.error,
            )
            self._send(status, request.request_id, request.error)

    return Handler
