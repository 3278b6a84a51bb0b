"""Pure HEC protocol logic: the status-code table, answer parsing and ``classify()``.

``classify(status, body, headers)`` turns one HEC answer into an :class:`Outcome` (an action and
a reason) following DESIGN.md §4 and Splunk's "Troubleshoot HTTP Event Collector" table. No I/O,
no clock unless a ``Retry-After`` HTTP-date needs one (injectable). Reasons quote HEC's own text
and code; they never contain request headers, so never the token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Final, Literal, NamedTuple

Action = Literal["ok", "retry", "split", "isolate", "reject", "fatal", "ack_unavailable"]
Endpoint = Literal["event", "raw"]

#: HEC codes (``{"text": ..., "code": N}``) -> Splunk's text, for messages when a body is empty.
HEC_TEXT: Final[Mapping[int, str]] = {
    0: "Success",
    1: "Token disabled",
    2: "Token is required",
    3: "Invalid authorization",
    4: "Invalid token",
    5: "No data",
    6: "Invalid data format",
    7: "Incorrect index",
    8: "Internal server error",
    9: "Server is busy",
    10: "Data channel is missing",
    11: "Invalid data channel",
    12: "Event field is required",
    13: "Event field cannot be blank",
    14: "ACK is disabled",
    15: "Error in handling indexed fields",
    16: "Query string authorization is not enabled",
    17: "HEC is healthy",
    18: "HEC is unhealthy, queues are full",
    19: "HEC is unhealthy, ack service unavailable",
    20: "HEC is unhealthy, queues are full, ack service unavailable",
}

CODE_SUCCESS: Final = 0
CODE_HEALTHY: Final = 17
UNHEALTHY_CODES: Final = frozenset({18, 19, 20})
#: Token missing, malformed, invalid or disabled: nothing this token sends can succeed.
TOKEN_CODES: Final = frozenset({1, 2, 3, 4, 21, 22})
DISABLED_TOKEN_CODES: Final = frozenset({1, 22})
#: Channel missing/invalid, query-string auth: configuration problems on our side or a proxy's.
CONFIG_CODES: Final = frozenset({10, 11, 16})
#: One event in the request is bad; HEC may name it with ``invalid-event-number``.
BAD_EVENT_CODES: Final = frozenset({6, 12, 13, 15})
CODE_NO_DATA: Final = 5
CODE_INCORRECT_INDEX: Final = 7
CODE_ACK_DISABLED: Final = 14
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
_MAX_TEXT: Final = 200


class HecAnswer(NamedTuple):
    """The fields of a HEC answer body we use; None where absent or unparsable."""

    text: str | None
    code: int | None
    ack_id: int | None
    invalid_event: int | None


class Outcome(NamedTuple):
    """What to do with one HEC answer, and why.

    Attributes:
        action: ok, retry, split (413), isolate (one bad event), reject (backsplash the batch),
            fatal (stop delivering), ack_unavailable (the token has acks off, code 14).
        reason: ``HEC 503 code 9: Server is busy``; HEC's text and code, never the token.
        code: HEC's ``code``, when the body had one.
        retry_after: seconds from ``Retry-After``, when present and valid.
        invalid_event: HEC's ``invalid-event-number`` (0-based index in the request).
        error_code: the Firehose-style ``errorCode`` for the backsplash (``Splunk.ServerError``).
    """

    action: Action
    reason: str
    code: int | None = None
    retry_after: float | None = None
    invalid_event: int | None = None
    error_code: str = ""


_EMPTY: Final = HecAnswer(None, None, None, None)


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def parse_response(body: bytes | str) -> HecAnswer:
    """Parse a HEC answer body (``{"text","code","ackId","invalid-event-number"}``).

    Args:
        body: the response body; anything that is not a JSON object yields all None.

    Returns:
        The parsed fields.
    """
    if not body:
        return _EMPTY
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (a proxy's page), or nested too deeply
        return _EMPTY
    if not isinstance(data, dict):
        return _EMPTY
    text = data.get("text")
    return HecAnswer(
        text=str(text)[:_MAX_TEXT] if text is not None else None,
        code=_int_or_none(data.get("code")),
        ack_id=_int_or_none(data.get("ackId")),
        invalid_event=_int_or_none(data.get("invalid-event-number")),
    )


def parse_acks(body: bytes | str) -> dict[int, bool]:
    """Parse an ack-endpoint answer ``{"acks": {"0": true, "1": false}}``.

    Args:
        body: the response body.

    Returns:
        ackId -> acknowledged; ids HEC did not mention are absent.

    Raises:
        ValueError: the body is not an ack answer.
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("ack answer is JSON nested too deeply") from None
    acks = data.get("acks") if isinstance(data, dict) else None
    if isinstance(acks, dict):
        return {int(key): value is True for key, value in acks.items()}
    raise ValueError("ack answer has no 'acks' object")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date).

    Args:
        value: the header value, or None.
        now: epoch seconds for HTTP-dates (``time.time()`` when None).

    Returns:
        Non-negative seconds, or None when absent or invalid.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def describe(status: int, answer: HecAnswer) -> str:
    """The reason text for an answer: ``HEC 503 code 9: Server is busy``."""
    text = answer.text
    if text is None and answer.code is not None:
        text = HEC_TEXT.get(answer.code)
    if text is None:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "unknown status"
    code = f" code {answer.code}" if answer.code is not None else ""
    return f"HEC {status}{code}: {text}"


def _fatal_error_code(status: int, code: int | None) -> str:
    if code in DISABLED_TOKEN_CODES:
        return "Splunk.DisabledToken"
    if code in TOKEN_CODES or status in (401, 403):
        return "Splunk.InvalidToken"
    if code in (10, 11):
        return "Splunk.InvalidChannel"
    if status in (404, 405):
        return "Splunk.URLNotFound"
    return "Splunk.InvalidEndpoint"


def classify(
    status: int,
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: Endpoint = "event",
    now: float | None = None,
) -> Outcome:
    """Decide what one HEC answer means for the batch that was sent.

    Args:
        status: HTTP status.
        body: response body (HEC's ``{"text", "code", ...}`` JSON, or anything a proxy sent).
        headers: response headers (for ``Retry-After``); any case-insensitive mapping.
        endpoint: the endpoint the request went to; on the raw endpoint an incorrect index
            concerns the whole request (the index is a query parameter), so it is rejected.
        now: epoch seconds for ``Retry-After`` HTTP-dates (tests).

    Returns:
        The action and its reason, per DESIGN.md §4.
    """
    return _classify(status, parse_response(body), headers, endpoint, now)


def classify_answer(
    status: int,
    answer: HecAnswer,
    headers: Mapping[str, str] | None = None,
    *,
    endpoint: Endpoint = "event",
    now: float | None = None,
) -> Outcome:
    """Same as :func:`classify` for an already parsed body (the client parses once)."""
    return _classify(status, answer, headers, endpoint, now)


def _classify(
    status: int,
    answer: HecAnswer,
    headers: Mapping[str, str] | None,
    endpoint: Endpoint,
    now: float | None,
) -> Outcome:
    code = answer.code
    if 200 <= status < 300:
        if code == CODE_SUCCESS:
            return Outcome("ok", describe(status, answer), code)
        # Not HEC's own answer (a proxy's or load balancer's page, an empty or foreign body):
        # nothing says HEC took the data, and nothing may be concluded about acks.
        return Outcome(
            "retry",
            f"{describe(status, answer)} (not HEC's answer)",
            code,
            parse_retry_after(_header(headers, "Retry-After"), now=now),
            error_code="Splunk.ServerError",
        )
    reason = describe(status, answer)
    if status == 413:
        return Outcome("split", reason, code, error_code="Splunk.PayloadTooLarge")
    if code in TOKEN_CODES or status in (401, 403):
        return Outcome("fatal", reason, code, error_code=_fatal_error_code(status, code))
    if status in RETRY_STATUSES or (status >= 500 and status != 501):
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now=now)
        return Outcome("retry", reason, code, retry_after, error_code="Splunk.ServerError")
    if code == CODE_ACK_DISABLED:
        return Outcome("ack_unavailable", reason, code, error_code="Splunk.DisabledAck")
    if code in CONFIG_CODES or status in (404, 405) or 300 <= status < 400:
        return Outcome("fatal", reason, code, error_code=_fatal_error_code(status, code))
    if code in BAD_EVENT_CODES:
        return Outcome(
            "isolate",
            reason,
            code,
            invalid_event=answer.invalid_event,
            error_code="Splunk.InvalidEvent",
        )
    if code == CODE_INCORRECT_INDEX:
        # An event naming an index the token may not write: isolate it like a bad event. On the
        # raw endpoint (or without an event number) the whole request carries the index.
        if endpoint == "event" and answer.invalid_event is not None:
            return Outcome(
                "isolate",
                reason,
                code,
                invalid_event=answer.invalid_event,
                error_code="Splunk.InvalidIndex",
            )
        return Outcome("reject", reason, code, error_code="Splunk.InvalidIndex")
    if code == CODE_NO_DATA:
        return Outcome(
            "reject",
            f"{reason} (empty body: a forwarder bug)",
            code,
            error_code="Splunk.InvalidDataFormat",
        )
    if 100 <= status < 200:
        return Outcome("retry", reason, code, error_code="Splunk.ServerError")
    return Outcome("reject", reason, code, error_code="Splunk.InvalidDataFormat")


def health_of(status: int, body: bytes | str) -> tuple[bool, int | None, str]:
    """Read a health-endpoint answer.

    Args:
        status: HTTP status of ``GET /services/collector/health``.
        body: its body.

    Returns:
        (healthy, HEC code, reason text). Healthy means HTTP 200 and HEC's code 17: a 200
        that is not HEC's JSON (a proxy's page) does not put a URL back in rotation.
    """
    answer = parse_response(body)
    healthy = status == 200 and answer.code == CODE_HEALTHY
    return healthy, answer.code, describe(status, answer)
