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

The HTTP side is :mod:`forwarder.sources.firehose_receiver` (connections, limits, rejections);
the request and answer formats are :mod:`forwarder.sources.firehose_protocol`.
"""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import structlog

from config.daemon import SourceSettings
from forwarder.sources.base import EndlessSource, SourceRecord
from forwarder.sources.firehose_protocol import PendingRequest
from forwarder.sources.firehose_receiver import ACCEPT_BATCH, Receiver

_log = structlog.get_logger("forwarder.sources.firehose_http")

#: Longest wait of an empty :meth:`FirehoseHttpSource.poll`.
_POLL_WAIT_MAX_S: Final = 1.0
#: :meth:`FirehoseHttpSource.close` waits this long for answers to be written.
_ANSWER_FLUSH_S: Final = 5.0


class FirehoseHttpSource(EndlessSource):
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
        super().__init__(
            "firehose-http", settings, stop_event=stop_event, clock=clock, wall_clock=wall_clock
        )
        self._lock = threading.Condition()
        self._queue: collections.deque[PendingRequest] = collections.deque()  # records left to poll
        self._taken: list[PendingRequest] = []  # every record polled: answered on commit
        self._open: set[PendingRequest] = set()  # not answered yet (the in-flight bound)
        self._closing = False
        self._listener: socket.socket | None = None
        self._receiver: Receiver | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ Source protocol

    @property
    def attached(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`attach`)."""
        assert self._listener is not None, "attach() first"
        return int(self._listener.getsockname()[1])

    @property
    def receiver(self) -> Receiver:
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
            (settings.host, settings.port), backlog=ACCEPT_BATCH * 4, reuse_port=False
        )
        receiver = Receiver(self, listener)
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
            if isinstance(record.position, tuple) and isinstance(record.position[0], PendingRequest)
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

    def _answer(self, request: PendingRequest, status: int, error: str | None = None) -> bool:
        with self._lock:
            self._open.discard(request)
        return request.resolve(status, error)

    def admit(self, request_id: str) -> PendingRequest | None:
        """Reserve an in-flight slot, or None (shutting down, or ``max_in_flight`` waiting)."""
        with self._lock:
            if self._closing or self._stop.is_set():
                return None
            if len(self._open) >= self._settings.max_in_flight:
                return None
            now = self._clock()
            request = PendingRequest(request_id, [], now, now + self._settings.answer_timeout_s)
            self._open.add(request)
            return request

    def enqueue(self, request: PendingRequest, records: list[bytes]) -> None:
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

    def abandon(self, request: PendingRequest) -> None:
        """An admitted request's connection went away (or it was rejected) before its answer:
        its slot is free; records already queued are still delivered (Firehose sends the
        request again: at least once)."""
        with self._lock:
            self._open.discard(request)

    def expire(self, request: PendingRequest) -> None:
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
