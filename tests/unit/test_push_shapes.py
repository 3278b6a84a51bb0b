"""The push Lambda's shape recognition, S3 notification parsing and token secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config.errors import ConfigError
from forwarder import secrets
from forwarder.backsplash.layout import kind_from_key
from forwarder.intake.lines import line_chunks
from forwarder.intake.notifications import S3Object, parse_s3_notification
from forwarder.push import shape_of


@pytest.mark.parametrize(
    ("event", "shape"),
    [
        ({"awslogs": {"data": "H4sI"}}, "awslogs"),
        ({"Records": [{"eventSource": "aws:kinesis", "kinesis": {"data": ""}}]}, "kinesis"),
        ({"Records": [{"eventSource": "aws:sqs", "messageId": "m", "body": "{}"}]}, "sqs"),
        ({"Records": []}, None),
        ({"records": [{"recordId": "1", "data": ""}]}, None),  # a Firehose event
        ([], None),
        ({"awslogs": {"data": 3}}, None),
    ],
)
def test_shape_of(event: Any, shape: str | None) -> None:
    assert shape_of(event) == shape


def notification(key: str, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {"eventName": event, "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 9}}}
        ]
    }


def test_plain_notification_with_an_encoded_key() -> None:
    body = json.dumps(notification("AWSLogs/a+b%3D.log.gz"))
    assert parse_s3_notification(body) == [S3Object("b", "AWSLogs/a b=.log.gz", 9)]


def test_sns_wrapped_notification() -> None:
    body = json.dumps({"Type": "Notification", "Message": json.dumps(notification("k.log"))})
    assert parse_s3_notification(body) == [S3Object("b", "k.log", 9)]


def test_test_event_and_deletes_name_nothing() -> None:
    assert parse_s3_notification(json.dumps({"Event": "s3:TestEvent"})) == []
    assert parse_s3_notification(json.dumps(notification("k", "ObjectRemoved:Delete"))) == []


@pytest.mark.parametrize("body", ["not json", "[]", json.dumps({"hello": 1})])
def test_other_bodies_are_not_notifications(body: str) -> None:
    assert parse_s3_notification(body) is None


def test_backsplash_objects_are_recognised_by_key() -> None:
    assert kind_from_key("daemon/splunk-failed/2026/01/01/00/x.gz") == "splunk-failed"
    assert kind_from_key("processing-failed/x.gz") == "processing-failed"
    assert kind_from_key("AWSLogs/1/vpcflowlogs/x.log.gz") is None


def test_line_chunks_take_the_header_as_fields() -> None:
    lines = iter(["version srcaddr action\n", "\n", "2 10.0.0.1 ACCEPT\n", "2 10.0.0.2 REJECT\n"])
    chunks = list(line_chunks(lines, 1))
    assert chunks == [
        (["2 10.0.0.1 ACCEPT"], ("version", "srcaddr", "action")),
        (["2 10.0.0.2 REJECT"], ("version", "srcaddr", "action")),
    ]


@pytest.mark.parametrize(
    ("secret", "token"),
    [("plain-token-value", "plain-token-value"), ('{"hec_token": " tok-1234 "}', "tok-1234")],
)
def test_token_from_secret_string(secret: str, token: str) -> None:
    assert secrets.token_from_secret_string("arn", secret) == token


@pytest.mark.parametrize("secret", ["", "{not json", '{"token": "x"}', '{"hec_token": 5}'])
def test_bad_secrets_are_config_errors(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        secrets.token_from_secret_string("arn", secret)
    assert caught.value.key == "SPLUNK_HEC_TOKEN_SECRET_ARN"


class FakeSecrets:
    def __init__(self) -> None:
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        self.calls += 1
        return {"SecretString": "cached-token-1"}


def test_token_is_fetched_once_per_container() -> None:
    secrets.clear_cache()
    client = FakeSecrets()
    try:
        assert secrets.get_hec_token("arn:1", client) == "cached-token-1"
        assert secrets.get_hec_token("arn:1", client) == "cached-token-1"
        assert client.calls == 1
    finally:
        secrets.clear_cache()
