"""The Firehose HTTP endpoint protocol, without sockets: requests in, answers out.

From the "HTTP endpoint delivery request and response specifications" appendix of the Firehose
developer guide (see :mod:`forwarder.sources.firehose_http` for the whole exchange): parsing a
request head (:func:`parse_head`), the checks made before a body is taken in
(:func:`check_head`: method, length, access key in constant time, size), decoding the body
(:func:`decode_body`) and building the answer (:func:`answer_body`, :func:`http_answer`).
:class:`PendingRequest` is one request waiting for the daemon's answer. Every refusal is a
:class:`RequestRejectedError` carrying its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

ACCESS_KEY_HEADER: Final = "X-Amz-Firehose-Access-Key"
REQUEST_ID_HEADER: Final = "X-Amz-Firehose-Request-Id"
SOURCE_ARN_HEADER: Final = "X-Amz-Firehose-Source-Arn"


class RequestRejectedError(Exception):
    """A request Firehose sent cannot be taken in: its HTTP status and the reason."""

    def __init__(self, status: int, reason: str, *, length: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.length = length  # the request's Content-Length, when known and valid


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
class PendingRequest:
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


def access_key_ok(presented: str | None, access_key: bytes) -> bool:
    """Whether ``presented`` is the configured key (constant-time; never logged)."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), access_key)


def check_head(head: RequestHead, *, access_key: bytes, max_body_bytes: int) -> int:
    """The checks made before a request's body is taken in (pure); its Content-Length.

    Raises:
        RequestRejectedError: 405 not a POST, 411 no valid Content-Length (``length`` None:
            the body cannot be skipped); 401 missing or wrong access key, 413 a body over
            ``max_body_bytes`` (``length`` set: the body can be read and dropped).
    """
    if head.method != "POST":
        raise RequestRejectedError(405, "POST Firehose batches here")
    raw_length = head.get("content-length")
    try:
        length: int | None = int(raw_length) if raw_length is not None else None
    except ValueError:
        length = None
    if length is None or length < 0:
        raise RequestRejectedError(411, "a Content-Length is required")
    if not access_key_ok(head.get(ACCESS_KEY_HEADER), access_key):
        raise RequestRejectedError(401, "missing or wrong access key", length=length)
    if length > max_body_bytes:
        raise RequestRejectedError(413, f"body over {max_body_bytes} bytes", length=length)
    return length
