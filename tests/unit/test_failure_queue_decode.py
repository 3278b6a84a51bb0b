"""forwarder.replay.failure_queue: reading a message body and the sqs:// source."""

from __future__ import annotations

import json

import pytest

from forwarder.replay.failure_queue import Unreadable, decode_record, parse_queue_uri

AWSLOGS = {"awslogs": {"data": "H4sI"}}


def test_destination_record_gives_its_request_payload() -> None:
    body = json.dumps(
        {
            "version": "1.0",
            "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "requestPayload": AWSLOGS,
            "responsePayload": None,
        }
    )
    assert decode_record(body) == AWSLOGS


def test_a_push_event_body_is_taken_as_it_is() -> None:
    kinesis = {"Records": [{"eventSource": "aws:kinesis", "kinesis": {"data": "eA=="}}]}
    assert decode_record(json.dumps(AWSLOGS)) == AWSLOGS
    assert decode_record(json.dumps(kinesis)) == kinesis


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"version": "1.0"}), "no requestPayload"),
        (json.dumps({"requestPayload": None}), "no awslogs or Kinesis event"),
        (json.dumps({"requestPayload": {"records": []}}), "shape firehose"),
    ],
)
def test_unreadable_bodies_say_why(body: str, reason: str) -> None:
    decoded = decode_record(body)
    assert isinstance(decoded, Unreadable) and reason in decoded.reason


def test_queue_uri() -> None:
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/failures"
    assert parse_queue_uri(f"sqs://{url}") == url
    assert parse_queue_uri("sqs://sqs.us-east-1.amazonaws.com/123456789012/failures") == url
    assert parse_queue_uri("SQS://http://127.0.0.1:5000/1/q") == "http://127.0.0.1:5000/1/q"
    for bad in ("sqs://", "sqs://host-only", "s3://bucket/prefix"):
        with pytest.raises(ValueError, match="sqs://QUEUE_URL"):
            parse_queue_uri(bad)
