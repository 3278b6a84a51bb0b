"""The Firehose HTTP endpoint protocol without sockets: request heads, the checks made before a
body is taken in, and the answers (forwarder.sources.firehose_protocol)."""

from __future__ import annotations

import json

import pytest

from forwarder.sources.firehose_protocol import (
    PendingRequest,
    RequestRejectedError,
    access_key_ok,
    answer_body,
    check_head,
    http_answer,
    parse_head,
)

KEY = b"s3cr3t-key"
WITH_KEY = "X-Amz-Firehose-Access-Key: s3cr3t-key"


def head(*lines: str, method: str = "POST") -> bytes:
    return "\r\n".join([f"{method} / HTTP/1.1", *lines]).encode("latin-1")


def checked(data: bytes, max_body_bytes: int = 1000) -> int:
    return check_head(parse_head(data), access_key=KEY, max_body_bytes=max_body_bytes)


def test_request_heads_are_parsed_strictly() -> None:
    parsed = parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nconnection: close")
    assert (parsed.method, parsed.get("CONTENT-LENGTH"), parsed.keep_alive) == ("POST", "5", False)
    assert parse_head(b"POST / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert not parse_head(b"POST / HTTP/1.0").keep_alive
    for bad in (
        b"POST /",
        b"GET / SPDY/3",
        b"POST / HTTP/1.1\r\nno colon",
        b"POST / HTTP/1.1\r\n x: y",
    ):
        with pytest.raises(RequestRejectedError, match=r"request line|header line"):
            parse_head(bad)


def test_a_good_head_passes_with_its_length() -> None:
    data = head("Content-Length: 120", WITH_KEY)
    assert checked(data) == 120
    assert checked(data, max_body_bytes=120) == 120  # the limit itself is allowed
    # Header values are stripped: blanks around the key do not matter.
    assert checked(head("Content-Length: 5", "X-Amz-Firehose-Access-Key:  s3cr3t-key ")) == 5


@pytest.mark.parametrize(
    ("data", "status", "length"),
    [
        (
            head("Content-Length: 5", WITH_KEY, method="GET"),
            405,
            None,
        ),
        (head(WITH_KEY), 411, None),
        (head("Content-Length: five", WITH_KEY), 411, None),
        (head("Content-Length: -1", WITH_KEY), 411, None),
        (head("Content-Length: 5"), 401, 5),
        (head("Content-Length: 5", "X-Amz-Firehose-Access-Key: s3cr3t-kez"), 401, 5),
        (head("Content-Length: 1001", WITH_KEY), 413, 1001),
    ],
)
def test_heads_are_refused_before_the_body(data: bytes, status: int, length: int | None) -> None:
    """The method and length first (no length: the body cannot be skipped), then the key, then
    the size."""
    with pytest.raises(RequestRejectedError) as caught:
        checked(data)
    assert (caught.value.status, caught.value.length) == (status, length)


def test_access_key_comparison() -> None:
    assert access_key_ok("s3cr3t-key", KEY)
    assert not access_key_ok(None, KEY)
    assert not access_key_ok("", KEY)
    assert not access_key_ok("s3cr3t-key-longer", KEY)


def test_answers_carry_the_request_id_and_a_content_length() -> None:
    ok = json.loads(answer_body("req-1", now_ms=1700000000123))
    assert ok == {"requestId": "req-1", "timestamp": 1700000000123}
    failed = json.loads(answer_body("req-2", "retry later", now_ms=5))
    assert failed == {"requestId": "req-2", "timestamp": 5, "errorMessage": "retry later"}
    raw = http_answer(503, b'{"a":1}', close=True)
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Content-Length: 7" in lines and "Connection: close" in lines
    assert body == b'{"a":1}'
    assert "Connection: close" not in http_answer(200, b"{}", close=False).decode()
    assert http_answer(418, b"", close=False).startswith(b"HTTP/1.1 418 Error\r\n")


def test_a_pending_request_is_answered_once() -> None:
    calls: list[str] = []
    request = PendingRequest("req", [b"a"], arrived=1.0, answer_by=151.0)
    request.on_done = lambda: calls.append("done")
    assert request.resolve(200)
    assert not request.resolve(500, "too late")  # the first answer stands
    assert (request.status, request.error, request.done.is_set()) == (200, None, True)
    assert calls == ["done"]
