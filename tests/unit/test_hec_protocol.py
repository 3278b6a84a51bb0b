"""classify(): every row of DESIGN.md §4's table, Retry-After, and bodies that are not HEC's."""

from __future__ import annotations

import json

import pytest

from forwarder.hec_protocol import (
    classify,
    health_of,
    parse_acks,
    parse_response,
    parse_retry_after,
)


def hec_body(code: int, text: str = "text", **extra: object) -> bytes:
    return json.dumps({"text": text, "code": code, **extra}).encode()


@pytest.mark.parametrize(
    ("status", "code", "action", "error_code"),
    [
        (200, 0, "ok", ""),
        (500, 8, "retry", "Splunk.ServerError"),
        (503, 9, "retry", "Splunk.ServerError"),
        (503, 18, "retry", "Splunk.ServerError"),
        (503, 19, "retry", "Splunk.ServerError"),
        (503, 20, "retry", "Splunk.ServerError"),
        (403, 1, "fatal", "Splunk.DisabledToken"),
        (401, 2, "fatal", "Splunk.InvalidToken"),
        (401, 3, "fatal", "Splunk.InvalidToken"),
        (403, 4, "fatal", "Splunk.InvalidToken"),
        (400, 21, "fatal", "Splunk.InvalidToken"),
        (400, 22, "fatal", "Splunk.DisabledToken"),
        (400, 10, "fatal", "Splunk.InvalidChannel"),
        (400, 11, "fatal", "Splunk.InvalidChannel"),
        (400, 16, "fatal", "Splunk.InvalidEndpoint"),
        (400, 14, "ack_unavailable", "Splunk.DisabledAck"),
        (400, 5, "reject", "Splunk.InvalidDataFormat"),
        (400, 6, "isolate", "Splunk.InvalidEvent"),
        (400, 12, "isolate", "Splunk.InvalidEvent"),
        (400, 13, "isolate", "Splunk.InvalidEvent"),
        (400, 15, "isolate", "Splunk.InvalidEvent"),
        (400, 7, "reject", "Splunk.InvalidIndex"),
        (413, 413, "split", "Splunk.PayloadTooLarge"),
    ],
)
def test_classify_follows_the_hec_table(
    status: int, code: int, action: str, error_code: str
) -> None:
    """Each HEC code maps to the action DESIGN.md §4 names, with HEC's text and code."""
    outcome = classify(status, hec_body(code, "the HEC text"))
    assert outcome.action == action
    assert outcome.code == code
    assert outcome.error_code == error_code
    assert outcome.reason.startswith(f"HEC {status} code {code}: the HEC text")


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (408, "retry"),
        (429, "retry"),
        (502, "retry"),
        (504, "retry"),
        (599, "retry"),
        (501, "reject"),
        (404, "fatal"),
        (405, "fatal"),
        (301, "fatal"),
        (401, "fatal"),
        (403, "fatal"),
        (400, "reject"),
        (418, "reject"),
        (413, "split"),
        (200, "retry"),
        (204, "retry"),
    ],
)
def test_classify_http_status_without_a_hec_body(status: int, action: str) -> None:
    """A proxy's answer (no HEC JSON) is classified by its HTTP status alone."""
    outcome = classify(status, b"<html>Bad Gateway</html>")
    assert outcome.action == action
    assert outcome.code is None
    assert outcome.reason.startswith(f"HEC {status}: ")


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Down for maintenance</body></html>",
        b"",
        b"{}",
        b"[]",
        b'"Success"',
        b'{"text": "Success"}',
        b'{"text": "Success", "code": "0"}',
        b'{"text": "Success", "code": 0.0}',
        b'{"text": "Busy", "code": 9}',
        b'{"ackId": 3}',
    ],
)
@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_a_2xx_that_is_not_hec_success_is_a_server_error(status: int, body: bytes) -> None:
    """GIVEN a 2xx whose body is not HEC's JSON success (a proxy's page, code missing or not 0)
    THEN it is a retryable server error, never ``ok`` (which would turn acks off or count
    the batch delivered)."""
    outcome = classify(status, body, {"Retry-After": "7"})
    assert outcome.action == "retry"
    assert outcome.error_code == "Splunk.ServerError"
    assert outcome.retry_after == 7.0
    assert "not HEC's answer" in outcome.reason


@pytest.mark.parametrize(
    "body",
    [b'{"text":"Success","code":0}', b'{"text":"Success","code":0,"ackId":12}', b'{"code":0}'],
)
def test_hec_json_success_is_ok(body: bytes) -> None:
    """HEC's own success answer, with or without an ackId, is ``ok``."""
    assert classify(200, body).action == "ok"


def test_invalid_event_number_is_carried() -> None:
    """HEC's invalid-event-number (0-based) tells the deliverer which event to cut out."""
    outcome = classify(400, hec_body(6, "Invalid data format", **{"invalid-event-number": 3}))
    assert (outcome.action, outcome.invalid_event) == ("isolate", 3)


def test_incorrect_index_with_an_event_number_isolates_on_the_event_endpoint() -> None:
    """One event naming a forbidden index is cut out; on raw the index is the whole request's."""
    body = hec_body(7, "Incorrect index", **{"invalid-event-number": 2})
    event = classify(400, body, endpoint="event")
    raw = classify(400, body, endpoint="raw")
    assert (event.action, event.invalid_event, event.error_code) == (
        "isolate",
        2,
        "Splunk.InvalidIndex",
    )
    assert raw.action == "reject"


def test_retry_after_seconds_and_dates() -> None:
    """Retry-After as delta-seconds or an HTTP-date, in any header case; junk is ignored."""
    assert classify(503, hec_body(9), {"Retry-After": "7"}).retry_after == 7.0
    assert classify(503, hec_body(9), {"retry-after": "2"}).retry_after == 2.0
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=1445412480.0) == 10.0
    assert parse_retry_after(date, now=1445412500.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert classify(503, hec_body(9)).retry_after is None


def test_text_bodies_and_str_bodies() -> None:
    """Bodies may be str or bytes, or empty; an empty 4xx still says what HTTP said."""
    assert classify(503, '{"text":"Server is busy","code":9}').code == 9
    assert classify(500, b"").reason == "HEC 500: Internal Server Error"
    assert classify(503, b'{"code":9}').reason == "HEC 503 code 9: Server is busy"
    assert classify(200, b"[1,2]").action == "retry"  # a 200, but not HEC's answer


def test_parse_response_fields() -> None:
    """ackId and invalid-event-number are read; wrong types are ignored."""
    answer = parse_response(b'{"text":"Success","code":0,"ackId":12}')
    assert (answer.text, answer.code, answer.ack_id) == ("Success", 0, 12)
    assert parse_response(b'{"ackId":"12","code":true}').ack_id is None
    assert parse_response(b"not json").code is None


def test_parse_acks() -> None:
    """{"acks": {"0": true}} -> {0: True}; anything else is an error."""
    assert parse_acks(b'{"acks":{"0":true,"1":false}}') == {0: True, 1: False}
    with pytest.raises(ValueError, match="acks"):
        parse_acks(b'{"text":"x"}')


def test_health() -> None:
    """Code 17 on 200 is healthy; 503 codes 18-20 are not."""
    assert health_of(200, hec_body(17, "HEC is healthy")) == (
        True,
        17,
        "HEC 200 code 17: HEC is healthy",
    )
    healthy, code, _ = health_of(503, hec_body(18))
    assert (healthy, code) == (False, 18)


@pytest.mark.parametrize("body", [b"<html>OK</html>", b"", b"{}", b'{"text":"Success","code":0}'])
def test_health_needs_hecs_own_healthy_answer(body: bytes) -> None:
    """A 200 that is not HEC's code 17 (a proxy's page) does not count as healthy."""
    assert health_of(200, body)[0] is False
