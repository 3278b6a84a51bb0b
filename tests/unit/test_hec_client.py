"""HecClient on `responses`: headers, gzip, URLs, error mapping; the token stays secret."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from uuid import UUID

import pytest
import requests
import responses

from config.settings import HecSettings
from forwarder.errors import (
    AckUnavailableError,
    DeliveryError,
    FatalHecError,
    RequestCancelledError,
    RetryableError,
)
from forwarder.hec.client import HecClient
from forwarder.hec.transport import RequestGuard
from tests.conftest import TEST_TOKEN
from transforms.records import RawTarget

URL = "https://hec.example.com:8088"


@pytest.fixture(name="session")
def fixture_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def client(session: requests.Session, **settings: object) -> HecClient:
    return HecClient(session, HecSettings(urls=(URL,), token=TEST_TOKEN, **settings), URL)  # type: ignore[arg-type]


@responses.activate
def test_send_headers_gzip_and_ack_id(session: requests.Session) -> None:
    """Authorization, channel (uuid4) and gzip on every data request; ackId comes back."""
    responses.post(
        f"{URL}/services/collector/event", json={"text": "Success", "code": 0, "ackId": 7}
    )
    hec = client(session)
    result = hec.send(b'{"event":"a"}\n{"event":"b"}', endpoint="event", event_count=2)
    assert (result.outcome.action, result.ack_id, result.status) == ("ok", 7, 200)
    request = responses.calls[0].request
    assert request.headers["Authorization"] == f"Splunk {TEST_TOKEN}"
    assert UUID(request.headers["X-Splunk-Request-Channel"]).version == 4
    assert request.headers["X-Splunk-Request-Channel"] == hec.channel
    assert request.headers["Content-Encoding"] == "gzip"
    assert isinstance(request.body, bytes)
    assert gzip.decompress(request.body) == b'{"event":"a"}\n{"event":"b"}'
    assert result.wire_bytes == len(request.body)


@responses.activate
def test_send_without_gzip_and_raw_query(session: requests.Session) -> None:
    """Raw endpoint: metadata in the query string; gzip off sends the bytes as they are."""
    responses.post(f"{URL}/services/collector/raw", json={"text": "Success", "code": 0})
    hec = client(session, gzip=False)
    target = RawTarget("grp:stream", "aws:cloudwatchlogs:vpcflow", "net", None)
    hec.send(b"line 1\nline 2", endpoint="raw", raw_target=target)
    request = responses.calls[0].request
    assert request.body == b"line 1\nline 2"
    assert "Content-Encoding" not in request.headers
    assert request.url == (
        f"{URL}/services/collector/raw?source=grp%3Astream"
        "&sourcetype=aws%3Acloudwatchlogs%3Avpcflow&index=net"
    )


def test_each_client_has_its_own_channel(session: requests.Session) -> None:
    assert client(session).channel != client(session).channel


@responses.activate
def test_answers_are_classified_not_raised(session: requests.Session) -> None:
    responses.post(
        f"{URL}/services/collector/event",
        json={"text": "Server is busy", "code": 9},
        status=503,
        headers={"Retry-After": "3"},
    )
    result = client(session).send(b"{}", endpoint="event")
    assert result.outcome.action == "retry"
    assert result.outcome.retry_after == 3.0


@responses.activate
def test_connection_errors_and_timeouts_are_retryable(session: requests.Session) -> None:
    """Transport failures become RetryableError with a Firehose-style error code."""
    responses.post(f"{URL}/services/collector/event", body=requests.ConnectionError("reset"))
    responses.post(f"{URL}/services/collector/event", body=requests.ReadTimeout("slow"))
    responses.post(f"{URL}/services/collector/event", body=requests.ConnectTimeout("slow"))
    hec = client(session)
    with pytest.raises(RetryableError) as reset:
        hec.send(b"{}", endpoint="event")
    assert reset.value.error_code == "Splunk.ConnectionClosed"
    assert reset.value.unhealthy and reset.value.url == URL
    with pytest.raises(RetryableError) as read:
        hec.send(b"{}", endpoint="event")
    assert read.value.error_code == "Splunk.ConnectionTimeout"
    assert read.value.maybe_delivered
    with pytest.raises(RetryableError) as connect:
        hec.send(b"{}", endpoint="event")
    assert not connect.value.maybe_delivered


@responses.activate
def test_a_stopped_guard_makes_no_request(session: requests.Session) -> None:
    """A request whose guard is cancelled (abort) or past its deadline is not made at all."""
    responses.post(f"{URL}/services/collector/event", json={"text": "Success", "code": 0})
    hec = client(session)
    cancelled = RequestGuard()
    cancelled.cancel()
    with pytest.raises(RequestCancelledError) as caught:
        hec.send(b"{}", endpoint="event", guard=cancelled)
    assert caught.value.maybe_delivered  # in general it may have been on the wire
    with pytest.raises(RetryableError) as late:
        hec.send(b"{}", endpoint="event", guard=RequestGuard(deadline=0.0))
    assert late.value.error_code == "Splunk.ConnectionTimeout"
    healthy, code, reason = hec.health(guard=cancelled)
    assert (healthy, code) == (False, None) and "cancelled" in reason
    assert len(responses.calls) == 0


def test_guard_deadline_only_moves_earlier() -> None:
    guard = RequestGuard(deadline=100.0)
    guard.tighten(200.0)
    assert guard.deadline == 100.0
    guard.tighten(50.0)
    assert guard.deadline == 50.0
    assert RequestGuard().deadline == float("inf")


def test_empty_body_is_never_sent(session: requests.Session) -> None:
    """HEC code 5 is our bug: refuse before the wire."""
    with pytest.raises(ValueError, match="empty body"):
        client(session).send(b"  \n", endpoint="event")


@responses.activate
def test_query_acks(session: requests.Session) -> None:
    """One request asks for many ids, on the client's channel."""
    responses.post(f"{URL}/services/collector/ack", json={"acks": {"1": True, "2": False}})
    hec = client(session)
    assert hec.query_acks([1, 2]) == {1: True, 2: False}
    request = responses.calls[0].request
    assert json.loads(request.body or b"") == {"acks": [1, 2]}
    assert request.headers["X-Splunk-Request-Channel"] == hec.channel


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"text": "ACK is disabled", "code": 14}, AckUnavailableError),
        (403, {"text": "Invalid token", "code": 4}, FatalHecError),
        (503, {"text": "Server is busy", "code": 9}, RetryableError),
        (200, {"text": "weird"}, RetryableError),
    ],
)
@responses.activate
def test_query_acks_errors(
    session: requests.Session, status: int, body: dict[str, object], error: type[Exception]
) -> None:
    responses.post(f"{URL}/services/collector/ack", json=body, status=status)
    with pytest.raises(error):
        client(session).query_acks([0])


@pytest.mark.parametrize("status", [200, 204])
@pytest.mark.parametrize("body", ["<html>maintenance</html>", "", '{"text":"Success","code":0}'])
@responses.activate
def test_a_proxys_answer_on_the_ack_endpoint_is_retryable(
    session: requests.Session, status: int, body: str
) -> None:
    """A 2xx on the ack endpoint that is not HEC's ack answer says nothing about acks."""
    responses.post(f"{URL}/services/collector/ack", body=body, status=status)
    with pytest.raises(RetryableError) as caught:
        client(session).query_acks([0])
    assert not isinstance(caught.value, AckUnavailableError)


@responses.activate
def test_health(session: requests.Session) -> None:
    responses.get(f"{URL}/services/collector/health", json={"text": "HEC is healthy", "code": 17})
    responses.get(
        f"{URL}/services/collector/health", json={"text": "queues full", "code": 18}, status=503
    )
    responses.get(f"{URL}/services/collector/health", body=requests.ConnectionError("refused"))
    hec = client(session)
    assert hec.health()[:2] == (True, 17)
    assert hec.health()[:2] == (False, 18)
    assert hec.health()[:2] == (False, None)


@responses.activate
def test_probe_token(session: requests.Session) -> None:
    """An empty request: 400 code 5 means the token works; 403 code 4 means it does not."""
    responses.post(
        f"{URL}/services/collector/event", json={"text": "No data", "code": 5}, status=400
    )
    responses.post(
        f"{URL}/services/collector/event", json={"text": "Invalid token", "code": 4}, status=403
    )
    hec = client(session)
    assert hec.probe_token().action == "ok"
    assert hec.probe_token().action == "fatal"


@responses.activate
def test_token_never_in_messages_or_repr(session: requests.Session) -> None:
    """Even if a proxy echoes the Authorization header, no message or repr carries the token."""
    echo = f"bad header Authorization: Splunk {TEST_TOKEN}"
    responses.post(f"{URL}/services/collector/event", json={"text": echo, "code": 6}, status=400)
    responses.post(f"{URL}/services/collector/event", body=requests.ConnectionError(echo))
    responses.post(f"{URL}/services/collector/ack", json={"text": echo, "code": 4}, status=403)
    hec = client(session)
    assert TEST_TOKEN not in repr(hec)
    assert TEST_TOKEN not in hec.send(b"{}", endpoint="event").outcome.reason
    errors: list[DeliveryError] = []
    with pytest.raises(RetryableError) as transport:
        hec.send(b"{}", endpoint="event")
    errors.append(transport.value)
    with pytest.raises(FatalHecError) as ack:
        hec.query_acks([1])
    errors.append(ack.value)
    for error in errors:
        assert TEST_TOKEN not in str(error)
        assert TEST_TOKEN not in repr(error)
        assert error.__cause__ is None


def test_no_token_is_refused(session: requests.Session) -> None:
    with pytest.raises(ValueError, match="SPLUNK_HEC_TOKEN"):
        HecClient(session, HecSettings(urls=(URL,)), URL)
