"""One HEC URL over a pooled ``requests.Session``: send, query acks, probe health; no retry loop.

Each :class:`HecClient` owns one channel (uuid4) for its URL: ackIds are per channel and live on
the indexer that took the request, so acks are always polled through the client that sent.
Transport failures become :class:`~forwarder.errors.RetryableError`; HEC answers become an
:class:`~forwarder.hec.protocol.Outcome` the caller acts on. Nothing here ever puts the token
in a message, a repr or a log line.

Every request has one wall-clock bound (DESIGN.md §4): name resolution, connect, sending the
body and every byte of the answer together take at most ``connect_timeout_s + read_timeout_s``
(or less, when the caller's :class:`RequestGuard` says so). requests' own read timeout applies
to each socket read, so a HEC that drips one byte a second would never trip it; here a
process-wide watchdog thread shuts the request's socket down once its guard's deadline passes,
and :meth:`RequestGuard.cancel` does the same at once, from any thread or a signal handler.
Name resolution (``getaddrinfo`` cannot be interrupted or given a timeout) runs in a helper
thread that is waited for no longer than the bound. Only the address lookup changes: TLS
verification, SNI and the hostname check still use the URL's host name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager
from urllib3.util.connection import allowed_gai_family

from config.logs import register_secret
from config.settings import HecSettings
from forwarder.errors import (
    AckUnavailableError,
    DeliveryError,
    FatalHecError,
    RejectedBatchError,
    RequestCancelledError,
    RetryableError,
)
from forwarder.hec.protocol import (
    Endpoint,
    Outcome,
    classify_answer,
    health_of,
    parse_acks,
    parse_response,
)
from transforms.records import RawTarget

#: zlib level for request bodies. Measured on 1 MB batches of flow-log HEC JSON: level 1 makes
#: them 7:1 in 3 ms, level 6 8:1 in 9 ms; at 100k events/s the difference is 15% of a core.
DEFAULT_GZIP_LEVEL: Final = 1
_GZIP_WBITS: Final = 31  # zlib's gzip container
_PATHS: Final = {
    "event": "/services/collector/event",
    "raw": "/services/collector/raw",
}
_ACK_PATH: Final = "/services/collector/ack"
_HEALTH_PATH: Final = "/services/collector/health"
_REDACTED: Final = "[REDACTED]"
_CONFIG_EXCEPTIONS: Final = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)


@dataclass(frozen=True, slots=True)
class SendResult:
    """HEC's answer to one data request.

    Attributes:
        outcome: what to do (``ok``, ``retry``, ``split`` ...) and why.
        status: HTTP status.
        ack_id: the ``ackId`` HEC handed out, if any.
        wire_bytes: body size on the wire (after gzip).
    """

    outcome: Outcome
    status: int
    ack_id: int | None
    wire_bytes: int


def gzip_body(body: bytes, level: int = DEFAULT_GZIP_LEVEL) -> bytes:
    """Compress a request body into one gzip member (what ``Content-Encoding: gzip`` means)."""
    return zlib.compress(body, level, wbits=_GZIP_WBITS)


#: How often the watchdog looks at the requests it bounds, and how often a wait for name
#: resolution checks its guard: the granularity of a deadline or a cancel, not a timeout.
_WATCH_SLICE_S: Final = 0.05
#: Name resolution waits at most this long when nothing else bounds it (no guard, no timeout).
_RESOLVE_MAX_S: Final = 30.0


class RequestGuard:
    """One HEC request's wall-clock bound and kill switch.

    The deadline is a ``time.monotonic()`` time; :meth:`HecClient.send` (and the other calls)
    tighten it to the client's own bound when they start. :meth:`cancel` and the watchdog end
    the request by shutting its socket down, which wakes a thread blocked in connect, send or
    receive at once; a wait for name resolution notices within ``_WATCH_SLICE_S``.

    :meth:`cancel` and :meth:`tighten` take no lock: they are safe from any thread and from a
    signal handler.

    Args:
        deadline: a ``time.monotonic()`` time, or None (the client's bound alone applies).
    """

    __slots__ = ("_done", "_sock", "cancelled", "deadline", "expired")

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline if deadline is not None else float("inf")
        self.cancelled = False
        self.expired = False
        self._sock: socket.socket | None = None
        self._done = False

    @property
    def stopped(self) -> bool:
        """True once cancelled or past its deadline (the request fails, or failed, for it)."""
        return self.cancelled or self.expired or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        """Seconds left to the deadline (never negative)."""
        return max(self.deadline - time.monotonic(), 0.0)

    def tighten(self, deadline: float) -> None:
        """Move the deadline earlier (never later); the watchdog acts on it within a slice."""
        self.deadline = min(self.deadline, deadline)

    def cancel(self) -> None:
        """End the request now: its socket is shut down (it fails as cancelled)."""
        self.cancelled = True
        self._kill()

    def expire(self) -> None:
        """The deadline passed (the watchdog): end the request as timed out."""
        if not self._done:
            self.expired = True
            self._kill()

    def attach(self, sock: socket.socket) -> None:
        """The socket the request now uses (a dup of the connection's: see ``_GuardedMixin``)."""
        self._sock = sock
        if self.cancelled or self.expired:  # stopped before the socket existed
            self._kill()

    def finish(self) -> None:
        """The request is over: later cancels no longer touch its (pooled) socket."""
        self._done = True
        self._sock = None

    def _kill(self) -> None:
        sock = self._sock
        if sock is not None and not self._done:
            # The base class's shutdown: on a TLS socket it acts on the TCP connection without
            # touching the SSL object another thread is reading through. OSError: already
            # closed or never connected, and the request ends on its own.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread per process that expires the guards of requests in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: set[RequestGuard] = set()
        self._thread: threading.Thread | None = None

    def watch(self, guard: RequestGuard) -> None:
        with self._cond:
            self._active.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hec-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def unwatch(self, guard: RequestGuard) -> None:
        with self._cond:
            self._active.discard(guard)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._active:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                for guard in [g for g in self._active if now >= g.deadline]:
                    self._active.discard(guard)
                    guard.expire()
                self._cond.wait(_WATCH_SLICE_S)


_WATCHDOG: Final = _Watchdog()
#: The guard of the request the current thread is making (read by the connection classes).
_CURRENT: Final = threading.local()


def _current_guard() -> RequestGuard | None:
    guard: RequestGuard | None = getattr(_CURRENT, "guard", None)
    return guard


def _resolve(
    host: str, port: int, family: int, timeout: float | None, guard: RequestGuard | None
) -> list[tuple[Any, ...]]:
    """``getaddrinfo``, waited for no longer than ``timeout`` and the guard's deadline.

    An IP literal is resolved in place (no lookup happens). A name is looked up in a daemon
    thread: if the resolver hangs, the request fails with a timeout and the thread ends when
    the system resolver gives up.

    Raises:
        TimeoutError: the lookup took longer than the bound (a connect timeout for urllib3).
        OSError: the request was cancelled, or ``getaddrinfo`` failed (``socket.gaierror``).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
    box: list[list[tuple[Any, ...]] | BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="hec-resolve", daemon=True).start()
    end = time.monotonic() + (timeout if timeout is not None else _RESOLVE_MAX_S)
    while not done.wait(_WATCH_SLICE_S):
        if guard is not None and guard.cancelled:
            raise OSError(f"name resolution of {host} cancelled")
        now = time.monotonic()
        if now >= end or (guard is not None and now >= guard.deadline):
            raise TimeoutError(f"name resolution of {host} timed out")
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class _GuardedMixin:
    """urllib3 connection behaviour for bounded requests (see the module notes).

    The connection resolves its host with :func:`_resolve` and keeps a ``dup`` of its socket:
    the TLS layer takes over the original socket object, while a shutdown through the dup
    still ends the TCP connection underneath, in any phase (connect, handshake, send, read).
    """

    _kill_switch: socket.socket | None = None
    # Provided by urllib3's HTTPConnection, which this mixin precedes.
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        guard = _current_guard()
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        try:
            sock = self._open(guard, timeout)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc}",
            ) from exc
        return sock

    def _open(self, guard: RequestGuard | None, timeout: float | None) -> socket.socket:
        host = self._dns_host.strip("[]")
        error: OSError | None = None
        for family, kind, proto, _name, address in _resolve(
            host, self.port, allowed_gai_family(), timeout, guard
        ):
            sock = socket.socket(family, kind, proto)
            kill = sock.dup()
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                if guard is not None:
                    guard.attach(kill)
                sock.connect(address)
            except OSError as exc:
                error = exc
                sock.close()
                kill.close()
                if guard is not None and guard.stopped:
                    break
                continue
            self._set_kill_switch(kill)
            return sock
        raise error if error is not None else OSError("getaddrinfo returned no address")

    def _set_kill_switch(self, kill: socket.socket | None) -> None:
        old, self._kill_switch = self._kill_switch, kill
        if old is not None:
            old.close()

    def _arm(self) -> None:
        guard = _current_guard()
        if guard is not None and self._kill_switch is not None:
            guard.attach(self._kill_switch)


class _GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        self._arm()  # a kept-alive connection: the guard takes its socket
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._set_kill_switch(None)


class _GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        super().request(*args, **kwargs)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._set_kill_switch(None)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOL_CLASSES: Final = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    """requests' adapter with pools of guarded connections (proxies included, not SOCKS)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager


def guard_session(session: requests.Session) -> None:
    """Mount the bounded-request adapter on ``session`` for http and https (idempotent)."""
    for prefix in ("https://", "http://"):
        if not isinstance(session.adapters.get(prefix), _GuardedAdapter):
            session.mount(prefix, _GuardedAdapter())


#: The most of an answer body read. HEC's answers are small JSON objects (an ack answer for
#: every pending ackId stays far below this); a longer body is not HEC's, and reading it whole
#: would let a hostile server choose our memory.
MAX_ANSWER_BYTES: Final = 1 << 20
_ANSWER_CHUNK: Final = 64 * 1024


def _read_capped(response: requests.Response) -> bool:
    """Read the body into ``response.content`` if it is at most :data:`MAX_ANSWER_BYTES`.

    Returns:
        False when the body is longer: then the connection is dropped, not drained.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_ANSWER_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            break
    response._content = b"".join(chunks)[:MAX_ANSWER_BYTES]  # requests' own cache of the body
    response.close()  # fully read: the connection goes back to the pool; else it is closed
    return size <= MAX_ANSWER_BYTES


class HecClient:
    """Talks to one HEC base URL on one channel.

    Args:
        session: a pooled session, shared by all clients of a process.
        settings: token, endpoint, gzip, TLS and timeouts.
        url: the base URL (``https://splunk.example.com:8088``).
        gzip_level: zlib level for bodies when gzip is on.
        channel: the channel to use; a fresh uuid4 by default.

    Raises:
        ValueError: no token is configured.
    """

    def __init__(
        self,
        session: requests.Session,
        settings: HecSettings,
        url: str,
        *,
        gzip_level: int = DEFAULT_GZIP_LEVEL,
        channel: str | None = None,
    ) -> None:
        if not settings.token:
            raise ValueError("no HEC token configured (SPLUNK_HEC_TOKEN)")
        register_secret(settings.token)
        self.url = url.rstrip("/")
        self.channel = channel or str(uuid.uuid4())
        self._session = session
        self._token = settings.token
        self._gzip = settings.gzip
        self._gzip_level = gzip_level
        self._connect_s = settings.connect_timeout_s
        self._read_s = settings.read_timeout_s
        #: The wall-clock bound of one request: resolve + connect + send + the whole answer.
        self.request_bound_s = settings.connect_timeout_s + settings.read_timeout_s
        self._verify: bool | str = settings.ca_bundle or settings.verify_tls
        guard_session(session)
        base = {
            "Authorization": f"Splunk {settings.token}",
            "X-Splunk-Request-Channel": self.channel,
        }
        self._ack_headers = {**base, "Content-Type": "application/json"}
        encoding = {"Content-Encoding": "gzip"} if settings.gzip else {}
        self._data_headers: dict[Endpoint, dict[str, str]] = {
            "event": {**base, "Content-Type": "application/json", **encoding},
            "raw": {**base, "Content-Type": "text/plain; charset=utf-8", **encoding},
        }
        self._raw_urls: dict[RawTarget | None, str] = {}

    def __repr__(self) -> str:
        return f"HecClient(url={self.url!r}, channel={self.channel!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, _REDACTED) if self._token in text else text

    def _data_url(self, endpoint: Endpoint, raw_target: RawTarget | None) -> str:
        if endpoint == "event":
            return self.url + _PATHS["event"]
        url = self._raw_urls.get(raw_target)
        if url is None:
            query = (
                urlencode({k: v for k, v in raw_target._asdict().items() if v is not None})
                if raw_target is not None
                else ""
            )
            url = self.url + _PATHS["raw"] + (f"?{query}" if query else "")
            if len(self._raw_urls) < 1024:  # a handful of targets in practice; stay bounded
                self._raw_urls[raw_target] = url
        return url

    def _request(
        self,
        call: Callable[..., requests.Response],
        url: str,
        what: str,
        guard: RequestGuard | None,
        **kwargs: Any,
    ) -> requests.Response:
        """Make one request within its guard's wall-clock bound (tightened to ours).

        Raises:
            RequestCancelledError: the guard was cancelled (before or during the request).
            RetryableError: connection error, timeout, or the bound passed (maybe delivered).
            FatalHecError: the URL itself is unusable.
        """
        guard = guard if guard is not None else RequestGuard()
        guard.tighten(time.monotonic() + self.request_bound_s)
        if guard.stopped:
            raise self._stopped_error(guard, what)
        remaining = max(guard.remaining(), _WATCH_SLICE_S)
        timeout = (min(self._connect_s, remaining), min(self._read_s, remaining))
        _CURRENT.guard = guard
        _WATCHDOG.watch(guard)
        try:
            response = call(
                url,
                timeout=timeout,
                verify=self._verify,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
            if not _read_capped(response):
                raise RetryableError(
                    f"{what} to {self.url}: HTTP {response.status_code} with an answer over "
                    f"{MAX_ANSWER_BYTES} bytes (not HEC's)",
                    error_code="Splunk.ServerError",
                    url=self.url,
                    unhealthy=True,
                    maybe_delivered=True,
                )
        except requests.RequestException as exc:
            if guard.cancelled or guard.expired:
                raise self._stopped_error(guard, what) from None
            raise self._transport_error(exc, what) from None
        else:
            return response
        finally:
            _CURRENT.guard = None
            guard.finish()
            _WATCHDOG.unwatch(guard)

    def _stopped_error(self, guard: RequestGuard, what: str) -> RetryableError:
        if guard.cancelled:
            return RequestCancelledError(
                f"{what} to {self.url} cancelled", url=self.url, maybe_delivered=True
            )
        return RetryableError(
            f"{what} to {self.url}: no complete answer within its time bound",
            error_code="Splunk.ConnectionTimeout",
            url=self.url,
            unhealthy=True,
            maybe_delivered=True,
        )

    def _transport_error(self, exc: requests.RequestException, what: str) -> DeliveryError:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")[:300]
        if isinstance(exc, _CONFIG_EXCEPTIONS):
            return FatalHecError(
                f"{what} to {self.url}: invalid request ({detail})",
                error_code="Splunk.InvalidEndpoint",
            )
        if isinstance(exc, requests.Timeout):
            return RetryableError(
                f"{what} to {self.url} timed out ({detail})",
                error_code="Splunk.ConnectionTimeout",
                url=self.url,
                unhealthy=True,
                maybe_delivered=isinstance(exc, requests.ReadTimeout),
            )
        code = (
            "Splunk.SSLHandshake"
            if isinstance(exc, requests.exceptions.SSLError)
            else "Splunk.ConnectionClosed"
        )
        return RetryableError(
            f"{what} to {self.url} failed ({detail})",
            error_code=code,
            url=self.url,
            unhealthy=True,
            maybe_delivered=isinstance(exc, requests.exceptions.ChunkedEncodingError),
        )

    def send(
        self,
        body: bytes,
        *,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        event_count: int = 0,
        compressed: bool = False,
        guard: RequestGuard | None = None,
    ) -> SendResult:
        """POST one batch body to the event or raw endpoint.

        Args:
            body: the uncompressed body (JSON objects or raw lines, newline-separated).
            endpoint: ``event`` or ``raw``.
            raw_target: the raw endpoint's source/sourcetype/index/host query parameters.
            event_count: events in the body (for the caller's bookkeeping; not sent).
            compressed: ``body`` is already what goes on the wire (gzip-compressed with
                :func:`gzip_body` when gzip is on): a re-send does not compress again.
            guard: the request's deadline and kill switch (the caller's deadline, an abort);
                the client's own bound (``connect_timeout_s + read_timeout_s``) applies too.

        Returns:
            HEC's classified answer.

        Raises:
            RetryableError: connection error, timeout, the time bound passed, or cancelled
                (:class:`~forwarder.errors.RequestCancelledError`).
            FatalHecError: the URL itself is unusable.
            ValueError: an empty body (HEC code 5; never sent).
        """
        if not body or (not compressed and body.isspace()):
            raise ValueError(f"refusing to send an empty body ({event_count} events)")
        data = gzip_body(body, self._gzip_level) if self._gzip and not compressed else body
        response = self._request(
            self._session.post,
            self._data_url(endpoint, raw_target),
            "send",
            guard,
            data=data,
            headers=self._data_headers[endpoint],
        )
        answer = parse_response(response.content)
        outcome = classify_answer(response.status_code, answer, response.headers, endpoint=endpoint)
        if self._token in outcome.reason:
            outcome = outcome._replace(reason=self._scrub(outcome.reason))
        return SendResult(outcome, response.status_code, answer.ack_id, len(data))

    def query_acks(
        self, ack_ids: Iterable[int], *, guard: RequestGuard | None = None
    ) -> dict[int, bool]:
        """Ask this channel's indexer which ackIds are indexed (one request for all ids).

        Args:
            ack_ids: ids handed out on this channel.
            guard: the request's deadline and kill switch, as for :meth:`send`.

        Returns:
            ackId -> True once indexed (HEC reports each true once, then forgets it).

        Raises:
            RetryableError: connection error, timeout, busy, 5xx or an unreadable answer.
            AckUnavailableError: the token has indexer acknowledgment off (code 14).
            FatalHecError: token or channel refused.
            RejectedBatchError: HEC refused the query itself.
        """
        payload = json.dumps({"acks": list(ack_ids)}, separators=(",", ":")).encode()
        response = self._request(
            self._session.post,
            self.url + _ACK_PATH,
            "ack query",
            guard,
            data=payload,
            headers=self._ack_headers,
        )
        if response.status_code == 200:
            try:
                return parse_acks(response.content)
            except (ValueError, UnicodeDecodeError):
                raise RetryableError(
                    f"unreadable ack answer from {self.url}", url=self.url
                ) from None
        outcome = classify_answer(response.status_code, parse_response(response.content), None)
        reason = self._scrub(f"ack query to {self.url}: {outcome.reason}")
        if outcome.action == "ack_unavailable":
            raise AckUnavailableError(reason, error_code=outcome.error_code, hec_code=outcome.code)
        if outcome.action == "fatal":
            raise FatalHecError(reason, error_code=outcome.error_code, hec_code=outcome.code)
        if outcome.action == "retry":
            raise RetryableError(
                reason,
                error_code=outcome.error_code,
                hec_code=outcome.code,
                retry_after=outcome.retry_after,
                url=self.url,
            )
        raise RejectedBatchError(reason, error_code=outcome.error_code, hec_code=outcome.code)

    def health(self, *, guard: RequestGuard | None = None) -> tuple[bool, int | None, str]:
        """Probe ``GET /services/collector/health`` (no token needed).

        Args:
            guard: the request's deadline and kill switch, as for :meth:`send`.

        Returns:
            (healthy, HEC code, reason). A connection failure, a timeout or a cancelled
            probe is unhealthy with code None.
        """
        try:
            response = self._request(self._session.get, self.url + _HEALTH_PATH, "health", guard)
        except DeliveryError as exc:
            return False, None, exc.message[:300]
        return health_of(response.status_code, response.content)

    def probe_token(self, *, guard: RequestGuard | None = None) -> Outcome:
        """Check the token without indexing anything: an empty event request.

        HEC answers 400 code 5 ("No data") to a valid token and 401/403 otherwise.

        Returns:
            ``ok`` when the token is accepted, else the classified refusal.

        Raises:
            RetryableError: connection error or timeout.
            FatalHecError: the URL itself is unusable.
        """
        response = self._request(
            self._session.post,
            self.url + _PATHS["event"],
            "token probe",
            guard,
            data=b"",
            headers=self._ack_headers,
        )
        answer = parse_response(response.content)
        if response.status_code == 400 and answer.code == 5:
            return Outcome("ok", "token accepted", 5)
        outcome = classify_answer(response.status_code, answer, response.headers)
        return outcome._replace(reason=self._scrub(outcome.reason))
