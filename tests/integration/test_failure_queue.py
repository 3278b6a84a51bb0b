"""The push Lambda's on-failure queue: ``forwarder replay sqs://QUEUE_URL`` against SQS and S3
on the moto server and the HEC emulator. Destination records are built from real push events
(synthetic CloudWatch Logs payloads)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from collections import Counter
from typing import Any

import pytest
import structlog
from botocore.exceptions import ClientError

from forwarder.backsplash.writers import Backsplash
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, run
from forwarder.delivery.destinations import build_delivery
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.replay.failure_queue import FailureQueueReplay, replay_failure_queue
from forwarder.status import ExitStatus
from tests.conftest import boto_client, free_port
from tests.integration.conftest import BUCKET, FAST, PREFIX, backsplashed, delivery_settings

LOG_GROUP = "/app/failed"


def awslogs_event(messages: list[str], first_id: int) -> dict[str, Any]:
    payload = cloudwatch_payload(messages, log_group=LOG_GROUP, first_id=first_id)
    return {"awslogs": {"data": base64.b64encode(payload).decode()}}


def destination_record(event: dict[str, Any], n: int) -> str:
    """An on-failure destination record as Lambda writes it for an asynchronous invocation
    that exhausted its retries."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2026-12-03T07:00:00.000Z",
            "requestContext": {
                "requestId": f"req-{n}",
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:push:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorMessage": "HEC down", "errorType": "BacksplashError"},
        }
    )


@pytest.fixture(name="sqs")
def fixture_sqs(aws_endpoint: str) -> Any:
    return boto_client("sqs", aws_endpoint)


@pytest.fixture(name="queue")
def fixture_queue(sqs: Any) -> str:
    return str(sqs.create_queue(QueueName="push-failures")["QueueUrl"])


def fill(sqs: Any, queue: str, records: int = 3, per_record: int = 4) -> list[str]:
    """``records`` destination records of ``per_record`` events each; returns the messages."""
    expected: list[str] = []
    for n in range(records):
        messages = [f"failed {n}-{i}" for i in range(per_record)]
        expected += messages
        body = destination_record(awslogs_event(messages, first_id=100 * n), n)
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    return expected


def messages_left(sqs: Any, queue: str) -> int:
    """Messages in the queue, visible or not."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def indexed_messages(emulator: HecEmulator) -> list[str]:
    return [str(event["event"]) for event in emulator.indexed_events()]


def cli(queue: str, *flags: str, environ: dict[str, str]) -> tuple[ExitStatus, dict[str, Any]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([f"sqs://{queue}", "--json", *flags])
    out = io.StringIO()
    status = run(args, CommandContext(args, environ, out))
    return status, json.loads(out.getvalue())


def test_replay_delivers_every_event_and_deletes_the_messages(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str
) -> None:
    """GIVEN destination records in the queue WHEN ``forwarder replay sqs://...`` THEN every
    event is indexed once, every message is deleted, exit 0."""
    expected = fill(sqs, queue)
    status, report = cli(queue, environ={**FAST, "SPLUNK_HEC_URL": emulator.url})
    assert status == ExitStatus.OK, report
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert (report["messages_received"], report["messages_deleted"]) == (3, 3)
    assert report["events_delivered"] == len(expected) and report["exit_status"] == 0
    assert messages_left(sqs, queue) == 0
    assert backsplashed(s3) == []


def test_a_raw_push_event_body_is_delivered_too(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str
) -> None:
    event = awslogs_event(["raw 1", "raw 2"], first_id=7)
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    status, report = cli(queue, environ={**FAST, "SPLUNK_HEC_URL": emulator.url})
    assert status == ExitStatus.OK, report
    assert sorted(indexed_messages(emulator)) == ["raw 1", "raw 2"]
    assert messages_left(sqs, queue) == 0


class DeleteAfterBacksplash:
    """An SQS client that checks, at every delete, that the events are in the bucket."""

    def __init__(self, sqs: Any, s3: Any, events: int) -> None:
        self._sqs = sqs
        self._s3 = s3
        self._events = events
        self.deletes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        assert len(backsplashed(self._s3)) == self._events  # written before the delete
        self.deletes += 1
        return self._sqs.delete_message_batch(**kwargs)


class FailingDeletes:
    """An SQS client whose first ``delete_message_batch`` fails: the whole call (SQS down)
    or one entry (``Failed``, the message not deleted). It keeps the receipt handles it did
    not delete, so a test can make those messages visible again at once."""

    def __init__(self, sqs: Any, *, whole_call: bool) -> None:
        self._sqs = sqs
        self._whole_call = whole_call
        self.kept: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        if self.kept or not entries:
            return self._sqs.delete_message_batch(**kwargs)
        if self._whole_call:
            self.kept = [entry["ReceiptHandle"] for entry in entries]
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "try again"}}, "DeleteMessageBatch"
            )
        first, *rest = entries
        self.kept = [first["ReceiptHandle"]]
        answer = self._sqs.delete_message_batch(QueueUrl=kwargs["QueueUrl"], Entries=rest)
        answer["Failed"] = [
            {"Id": first["Id"], "SenderFault": False, "Code": "InternalError", "Message": "x"}
        ]
        return dict(answer)


@pytest.mark.parametrize("whole_call", [True, False], ids=["sqs-down", "one-entry-failed"])
def test_a_failed_delete_counts_the_events_that_come_back_as_possible_duplicates(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str, *, whole_call: bool
) -> None:
    """GIVEN three records of four events, delivered and acknowledged, WHEN deleting them
    fails (SQS down, or one entry refused) THEN the run says so (exit 1), and counts the
    events of each message left in the queue as possible duplicates; once those messages
    come back, the next run sends them again: exactly that many events are indexed twice."""
    expected = fill(sqs, queue)
    client = FailingDeletes(sqs, whole_call=whole_call)
    settings = delivery_settings(emulator.url)
    backsplash = Backsplash(s3, BUCKET, PREFIX, sleep=lambda seconds: None)
    with structlog.testing.capture_logs() as logs:
        report = replay_failure_queue(settings, queue, sqs=client, backsplash=backsplash)
    kept = 3 if whole_call else 1
    assert report.exit_status == ExitStatus.FAILURE, report
    assert (report.messages_deleted, report.messages_kept) == (3 - kept, kept)
    assert report.events_delivered == len(expected)
    assert report.duplicates_possible == 4 * kept
    failed = [entry for entry in logs if entry["event"] == "failure_record_delete_failed"]
    assert [entry["events"] for entry in failed] == [4] * kept
    assert messages_left(sqs, queue) == kept

    for handle in client.kept:  # back now, not after the visibility timeout
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=handle, VisibilityTimeout=0)
    again = replay_failure_queue(settings, queue, sqs=sqs, backsplash=backsplash)
    assert again.exit_status == ExitStatus.OK, again
    indexed = Counter(indexed_messages(emulator))
    assert set(indexed) == set(expected)
    assert sum(count - 1 for count in indexed.values()) == report.duplicates_possible
    assert messages_left(sqs, queue) == 0


def test_hec_down_backsplashes_then_deletes(s3: Any, sqs: Any, queue: str) -> None:
    """GIVEN HEC down (nothing listens) WHEN replayed THEN every event goes to the backsplash
    (splunk-failed/, as the push Lambda writes) before its message is deleted; exit 5."""
    expected = fill(sqs, queue)
    settings = delivery_settings(f"http://127.0.0.1:{free_port()}", SPLUNK_HEC_RETRY_DURATION="0")
    client = DeleteAfterBacksplash(sqs, s3, len(expected))
    report = replay_failure_queue(
        settings,
        queue,
        sqs=client,
        backsplash=Backsplash(s3, BUCKET, PREFIX, sleep=lambda seconds: None),
    )
    assert report.exit_status == ExitStatus.INCOMPLETE, report
    assert client.deletes == 1 and report.messages_deleted == 3
    assert report.events_backsplashed == report.events_in == len(expected)
    keys = Backsplash(s3, BUCKET, PREFIX).list_keys()
    assert keys and all("splunk-failed/" in key for key in keys)
    assert messages_left(sqs, queue) == 0


def test_backsplash_failure_deletes_nothing(sqs: Any, queue: str, aws_endpoint: str) -> None:
    """GIVEN HEC down and no backsplash bucket WHEN replayed THEN nothing is deleted (the
    messages come back); exit 6."""
    fill(sqs, queue)
    settings = delivery_settings(
        f"http://127.0.0.1:{free_port()}",
        SPLUNK_HEC_RETRY_DURATION="0",
        BACKSPLASH_BUCKET="no-such-bucket",
    )
    s3 = boto_client("s3", aws_endpoint)
    report = replay_failure_queue(
        settings,
        queue,
        sqs=sqs,
        backsplash=Backsplash(s3, "no-such-bucket", PREFIX, sleep=lambda seconds: None),
    )
    assert report.exit_status == ExitStatus.BACKSPLASH_FAILED, report
    assert report.messages_deleted == 0 and report.messages_kept == 3
    assert messages_left(sqs, queue) == 3


def test_unreadable_message_is_counted_and_left(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN readable records and three unreadable messages (not JSON, no requestPayload,
    an SQS-of-S3 event) WHEN replayed THEN the readable are delivered and deleted; each
    unreadable one is logged with its id, counted once and left in the queue; exit 1."""
    expected = fill(sqs, queue, records=2)
    bad_ids = {
        sqs.send_message(QueueUrl=queue, MessageBody=body)["MessageId"]
        for body in (
            "not json",
            json.dumps({"version": "1.0", "requestContext": {}}),
            destination_record({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, 9),
        )
    }
    status, report = cli(queue, environ={**FAST, "SPLUNK_HEC_URL": emulator.url})
    logs = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert status == ExitStatus.FAILURE, report
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert (report["messages_deleted"], report["messages_unreadable"]) == (2, 3)
    logged = {e["message_id"] for e in logs if e["event"] == "failure_record_unreadable"}
    assert logged == bad_ids
    assert messages_left(sqs, queue) == 3


def test_dry_run_counts_and_deletes_nothing(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str
) -> None:
    """GIVEN destination records WHEN replayed with --dry-run THEN messages and events are
    counted, nothing is sent or deleted, and the messages are visible again."""
    expected = fill(sqs, queue)
    status, report = cli(queue, "--dry-run", environ={**FAST, "SPLUNK_HEC_URL": emulator.url})
    assert status == ExitStatus.OK, report
    assert report["dry_run"] and report["messages_received"] == 3
    assert report["events_counted"] == len(expected) and report["payloads"] == 3
    assert report["messages_deleted"] == 0 and emulator.indexed_events() == []
    visible = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert int(visible) == 3


def test_s3_only_flags_are_a_usage_error(sqs: Any, queue: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flags in (["--via-firehose", "s"], ["--since", "1h"], ["--delete"]):
        args = parser.parse_args([f"sqs://{queue}", *flags])
        assert run(args, CommandContext(args, {}, io.StringIO())) == ExitStatus.USAGE
    bad = parser.parse_args(["sqs://"])
    assert run(bad, CommandContext(bad, {}, io.StringIO())) == ExitStatus.USAGE


class ExtensionsSeen:
    """An SQS client that notes every visibility extension."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.extended = threading.Event()
        self.timeouts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def change_message_visibility_batch(self, **kwargs: Any) -> Any:
        self.timeouts += [entry["VisibilityTimeout"] for entry in kwargs["Entries"]]
        self.extended.set()
        return self._sqs.change_message_visibility_batch(**kwargs)


class FlushAfterExtension:
    """A deliverer whose flush first waits (bounded) for a visibility extension: events in
    flight for longer than a third of the visibility timeout."""

    def __init__(self, delivery: Any, extended: threading.Event) -> None:
        self._delivery = delivery
        self._extended = extended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)

    def flush(self, deadline: float | None = None) -> None:
        assert self._extended.wait(60), "no visibility extension while the events were in flight"
        self._delivery.flush(deadline)


def test_visibility_is_extended_while_events_are_in_flight(
    emulator: HecEmulator, backsplash: Backsplash, sqs: Any, queue: str
) -> None:
    expected = fill(sqs, queue, records=2)
    settings = delivery_settings(emulator.url)
    client = ExtensionsSeen(sqs)
    delivery = build_delivery(settings, backsplash=backsplash, log=structlog.get_logger())
    try:
        report = FailureQueueReplay(
            settings,
            queue,
            client,
            FlushAfterExtension(delivery, client.extended),  # type: ignore[arg-type]
            backsplash,
            visibility_timeout_s=3,
        ).run()
    finally:
        delivery.release()
    assert report.exit_status == ExitStatus.OK, report
    assert client.timeouts and set(client.timeouts) == {3}
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert messages_left(sqs, queue) == 0
