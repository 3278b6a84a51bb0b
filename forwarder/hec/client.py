"""One HEC URL over a pooled ``requests.Session``: send, query acks, probe health; no retry loop.

Each :class:`HecClient` owns one channel (uuid4) for its URL: ackIds are per channel and live on
the indexer that took the request, so acks are always polled through the client that sent.
Transport failures become :class:`~forwarder.errors.RetryableError`; HEC answers become an
:class:`~forwarder.hec.protocol.Outcome` the caller acts on. Nothing here ever puts the token
in a message, a repr or a log line.

Every request has one wall-clock bound (DESIGN.md §4): name resolution, connect, sending the
body and every byte of the answer together take at most ``connect_timeout_s + read_timeout_s``
(or less, when the caller's :class:`~forwarder.hec.transport.RequestGuard` says so); the
transport (:mod:`forwarder.hec.transport`) enforces it.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import requests

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
from forwarder.hec.transport import (
    MAX_ANSWER_BYTES,
    WATCH_SLICE_S,
    RequestGuard,
    guard_session,
    guarding,
    read_capped,
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
        remaining = max(guard.remaining(), WATCH_SLICE_S)
        timeout = (min(self._connect_s, remaining), min(self._read_s, remaining))
        try:
            with guarding(guard):
                response = call(
                    url,
                    timeout=timeout,
                    verify=self._verify,
                    allow_redirects=False,
                    stream=True,
                    **kwargs,
                )
                if not read_capped(response):
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
        return response

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
