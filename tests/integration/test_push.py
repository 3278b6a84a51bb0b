"""The push Lambda end to end: each event shape against the HEC emulator and moto's S3."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder import push
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.objects import CORRUPT_RECORD
from forwarder.backsplash.writers import Backsplash, ReplayFailedBacksplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.work import Work
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import FlowLogGenerator, cloudwatch_payload, control_payload
from forwarder.errors import BacksplashError
from forwarder.intake.dispatch import Intake
from forwarder.intake.lines import MAX_CHUNK_CHARS
from forwarder.intake.objects import object_chunks
from tests.conftest import boto_client
from tests.integration.conftest import BUCKET, PREFIX, backsplashed, delivery_settings
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration

FLOW_BUCKET = "flow-logs-test"
HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"  # noqa: E501


class FakeContext:
    """A Lambda context whose remaining time counts down from ``remaining_ms`` (real time)."""

    aws_request_id = "req-1"

    def __init__(self, remaining_ms: float = 30_000, steps: list[float] | None = None) -> None:
        import time

        self._end = time.monotonic() + remaining_ms / 1000
        self._steps = list(steps or [])

    def get_remaining_time_in_millis(self) -> int:
        import time

        if self._steps:
            return int(self._steps.pop(0))
        return max(int((self._end - time.monotonic()) * 1000), 0)


@pytest.fixture(name="configure")
def fixture_configure(s3: Any, aws_endpoint: str) -> Iterator[Any]:
    """Configure the push container against the emulator and moto; reset afterwards."""
    s3.create_bucket(Bucket=FLOW_BUCKET)

    def factory(service: str) -> Any:
        return boto_client(service, aws_endpoint)

    def configure(emulator: HecEmulator, **environ: str) -> None:
        push.configure(delivery_settings(emulator.url, **environ), client_factory=factory)

    yield configure
    push.reset()


def awslogs_event(payload: bytes) -> dict[str, Any]:
    return {"awslogs": {"data": base64.b64encode(payload).decode()}}


def kinesis_event(payloads: list[bytes]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:kinesis",
                "eventID": f"shardId-000000000000:{i}",
                "kinesis": {
                    "sequenceNumber": f"4959{i:020d}",
                    "partitionKey": "p",
                    "data": base64.b64encode(payload).decode(),
                },
            }
            for i, payload in enumerate(payloads)
        ]
    }


def s3_body(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
                }
            ]
        }
    )


def sqs_event(bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {"eventSource": "aws:sqs", "messageId": f"m-{i}", "receiptHandle": "r", "body": body}
            for i, body in enumerate(bodies)
        ]
    }


def put_flow_file(s3: Any, key: str, count: int, *, gz: bool = True, offset: int = 0) -> None:
    lines = [HEADER, *FlowLogGenerator().lines(count, offset=offset)]
    data = ("\n".join(lines) + "\n").encode()
    s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=gzip.compress(data) if gz else data)


def test_awslogs_subscription_is_delivered(emulator: HecEmulator, configure: Any) -> None:
    configure(emulator)
    payload = cloudwatch_payload([f"line {i}" for i in range(25)], log_group="/app/test")
    result = push.handler(awslogs_event(payload), FakeContext())
    assert result["ledger"]["acknowledged"] == 25
    assert result["ledger"]["balanced"]
    assert len(emulator.indexed_events()) == 25
    assert {e["source"] for e in emulator.indexed_events()} == {
        "/app/test:eni-0a1b2c3d4e5f60718-all"
    }


def test_control_message_is_dropped(emulator: HecEmulator, configure: Any) -> None:
    configure(emulator)
    result = push.handler(awslogs_event(control_payload()), FakeContext())
    assert result["ledger"]["dropped"] == {"control_message": 1}
    assert emulator.indexed_events() == []


def test_kinesis_batch_is_delivered(emulator: HecEmulator, configure: Any, s3: Any) -> None:
    configure(emulator)
    payloads = [
        cloudwatch_payload([f"k{b}-{i}" for i in range(10)], first_id=b * 10) for b in range(3)
    ]
    garbage = b"\x1f\x8bnot really gzip"
    result = push.handler(kinesis_event([*payloads, garbage]), FakeContext())
    assert result == {"batchItemFailures": []}
    assert len(emulator.indexed_events()) == 30
    # the undecodable record is kept under processing-failed/, not lost
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any("processing-failed/" in key for key in keys)


def test_sqs_s3_flow_files_plain_sns_and_test_event(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    configure(emulator)
    put_flow_file(s3, "AWSLogs/1/vpcflowlogs/a.log.gz", 40)
    put_flow_file(s3, "AWSLogs/1/vpcflowlogs/b.log", 30, gz=False, offset=100)
    sns = json.dumps(
        {"Type": "Notification", "Message": s3_body(FLOW_BUCKET, "AWSLogs/1/vpcflowlogs/b.log")}
    )
    test_event = json.dumps(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": FLOW_BUCKET}
    )
    # never read (nor re-delivered): replay-failed/ objects are left for forwarder replay
    backsplash_obj = s3_body(BUCKET, "failed/replay-failed/2026/01/01/00/x.gz")
    event = sqs_event(
        [s3_body(FLOW_BUCKET, "AWSLogs/1/vpcflowlogs/a.log.gz"), sns, test_event, backsplash_obj]
    )
    result = push.handler(event, FakeContext())
    assert result == {"batchItemFailures": []}
    events = emulator.indexed_events()
    assert len(events) == 70
    assert all("version" not in str(e["event"])[:10] for e in events)  # header never sent
    assert {e["source"] for e in events} == {  # s3://bucket/key for S3 objects (README)
        f"s3://{FLOW_BUCKET}/AWSLogs/1/vpcflowlogs/a.log.gz",
        f"s3://{FLOW_BUCKET}/AWSLogs/1/vpcflowlogs/b.log",
    }


def test_sqs_partial_failure_names_the_message(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    configure(emulator)
    put_flow_file(s3, "AWSLogs/ok.log.gz", 10)
    event = sqs_event(
        [
            s3_body(FLOW_BUCKET, "AWSLogs/ok.log.gz"),
            s3_body(FLOW_BUCKET, "AWSLogs/missing.log.gz"),
            "this is not json",
        ]
    )
    result = push.handler(event, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}
    assert len(emulator.indexed_events()) == 10


def test_kinesis_items_deferred_when_time_runs_short(emulator: HecEmulator, configure: Any) -> None:
    """GIVEN little time left after the first record WHEN handled THEN the rest are reported."""
    configure(emulator)
    payloads = [cloudwatch_payload([f"d{b}"], first_id=b) for b in range(3)]
    # read at the start (the delivery deadline), before record 0, before record 1 (short)
    context = FakeContext(remaining_ms=30_000, steps=[30_000, 30_000, 100])
    result = push.handler(kinesis_event(payloads), context)
    ids = [item["itemIdentifier"] for item in result["batchItemFailures"]]
    assert ids == [f"4959{1:020d}", f"4959{2:020d}"]
    assert len(emulator.indexed_events()) == 1


def test_deadline_backsplashes_unacknowledged(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    """GIVEN acks that never come WHEN the invocation nears its end THEN backsplash, return."""
    configure(emulator, SPLUNK_HEC_ACK_TIMEOUT="60")
    emulator.set_faults(FaultPlan(lost_acks=100))
    payload = cloudwatch_payload([f"late {i}" for i in range(5)], log_group="/app/test")
    result = push.handler(awslogs_event(payload), FakeContext(remaining_ms=1500))
    ledger = result["ledger"]
    assert ledger["backsplashed"] == 5 and ledger["balanced"]
    records = backsplashed(s3)
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}


def test_busy_hec_ends_in_the_backsplash_before_the_lambda_timeout(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    """GIVEN HEC busy for thousands of requests, an hour of retries and ~2 s left WHEN handled
    THEN the handler answers in time: everything backsplashed (Splunk.Deadline), ledger balanced."""
    import time

    configure(
        emulator,
        SPLUNK_HEC_RETRY_DURATION="3600",
        SPLUNK_HEC_RETRY_BACKOFF_BASE="1",
        SPLUNK_HEC_RETRY_BACKOFF_MAX="30",
    )
    emulator.set_faults(FaultPlan(busy_requests=5000))
    lines = [f"busy {i} " + "x" * 80 for i in range(120)]  # several full batches
    payload = cloudwatch_payload(lines, log_group="/app/test")
    started = time.monotonic()
    result = push.handler(awslogs_event(payload), FakeContext(remaining_ms=4000))
    assert time.monotonic() - started < 4.0  # returned before Lambda would have killed it
    ledger = result["ledger"]
    assert ledger["balanced"] and ledger["backsplashed"] == ledger["events_in"] == 120
    assert ledger["acknowledged"] == 0
    records = backsplashed(s3)
    assert len(records) == 120
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert emulator.stats().data_requests < 50  # gave up at the deadline, not per batch
    assert emulator.indexed_events() == []


def test_backsplash_failure_raises(emulator: HecEmulator, configure: Any, s3: Any) -> None:
    configure(emulator, SPLUNK_HEC_ACK_TIMEOUT="60", BACKSPLASH_BUCKET="no-such-bucket-here")
    emulator.set_faults(FaultPlan(lost_acks=100))
    payload = cloudwatch_payload(["x"], log_group="/app/test")
    with pytest.raises(BacksplashError):
        push.handler(awslogs_event(payload), FakeContext(remaining_ms=1000))


def test_token_from_secrets_manager(emulator: HecEmulator, aws_endpoint: str, s3: Any) -> None:
    from forwarder import secrets
    from tests.conftest import TEST_TOKEN, make_settings

    sm = boto_client("secretsmanager", aws_endpoint)
    arn = sm.create_secret(Name="hec", SecretString=json.dumps({"hec_token": TEST_TOKEN}))["ARN"]
    secrets.clear_cache()
    settings = make_settings(
        SPLUNK_HEC_URL=emulator.url,
        SPLUNK_HEC_TOKEN_SECRET_ARN=arn,
        SPLUNK_HEC_ACK_POLL_INTERVAL="0.02",
        BACKSPLASH_BUCKET=BUCKET,
    )
    try:
        push.configure(settings, client_factory=lambda service: boto_client(service, aws_endpoint))
        result = push.handler(awslogs_event(cloudwatch_payload(["s"])), FakeContext())
        assert result["ledger"]["acknowledged"] == 1
    finally:
        push.reset()
        secrets.clear_cache()


def corrupt_gzip(count: int) -> bytes:
    lines = [HEADER, *FlowLogGenerator().lines(count)]
    data = bytearray(gzip.compress(("\n".join(lines) + "\n").encode()))
    data[20:40] = b"\xff" * 20  # breaks the deflate stream: zlib.error, not OSError
    return bytes(data)


def test_sqs_corrupt_gzip_object_fails_only_its_message(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    """GIVEN an SQS batch naming a good object, a corrupt gzip object and an object whose
    header names a field twice WHEN handled THEN the good one is delivered, only the two bad
    messages are reported, the ledger balances and nothing stays in the container."""
    configure(emulator)
    put_flow_file(s3, "AWSLogs/good.log.gz", 10)
    s3.put_object(Bucket=FLOW_BUCKET, Key="AWSLogs/bad.log.gz", Body=corrupt_gzip(200))
    twice = f"{HEADER} action\n" + "\n".join(FlowLogGenerator().lines(3)) + "\n"
    s3.put_object(Bucket=FLOW_BUCKET, Key="AWSLogs/twice.log", Body=twice.encode())
    event = sqs_event(
        [
            s3_body(FLOW_BUCKET, "AWSLogs/good.log.gz"),
            s3_body(FLOW_BUCKET, "AWSLogs/bad.log.gz"),
            s3_body(FLOW_BUCKET, "AWSLogs/twice.log"),
        ]
    )
    result = push.handler(event, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]}
    assert len(emulator.indexed_events()) == 10
    deliverer = push._get_container().deliverer
    assert deliverer is not None and deliverer.pending_acks == 0
    ledger = deliverer.ledger.summary()
    assert ledger["balanced"] and ledger["events_in"] == ledger["acknowledged"] == 10


def body_of(s3: Any, key: str) -> Any:
    """The streaming body of ``key`` in the flow-log bucket."""
    return s3.get_object(Bucket=FLOW_BUCKET, Key=key)["Body"]


def test_object_chunks_are_capped_in_characters(s3: Any) -> None:
    """A chunk ends at MAX_CHUNK_CHARS characters, however few lines it holds."""
    s3.create_bucket(Bucket=FLOW_BUCKET)
    line = "x" * 1000
    s3.put_object(Bucket=FLOW_BUCKET, Key="long.log", Body=("\n".join([line] * 50) + "\n").encode())
    chunks = list(object_chunks(body_of(s3, "long.log"), push.CHUNK_LINES))
    assert sum(len(lines) for lines, _ in chunks) == 50
    assert MAX_CHUNK_CHARS < push.CHUNK_LINES * 1000  # the cap, not the line count, cut
    big = [line * 1000] * 10  # 1,000,000-character lines: every few of them make a chunk
    s3.put_object(Bucket=FLOW_BUCKET, Key="huge.log", Body=("\n".join(big) + "\n").encode())
    chunks = list(object_chunks(body_of(s3, "huge.log"), push.CHUNK_LINES))
    assert len(chunks) > 1
    assert all(sum(map(len, lines)) < MAX_CHUNK_CHARS + len(big[0]) for lines, _ in chunks)


def test_unexpected_error_discards_the_container_deliverer(
    emulator: HecEmulator, configure: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an invocation that fails with an unexpected exception after submitting events
    WHEN handled THEN the handler raises, and what the deliverer held is backsplashed
    (Splunk.Shutdown) and the deliverer dropped: nothing leaks into the next invocation."""
    configure(emulator, SPLUNK_HEC_BATCH_MAX_EVENTS="1000")
    real = Intake.payload  # the push path's intake (forwarder.intake.events)
    calls: list[int] = []

    def payload(self: Any, data: bytes) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        real(self, data)

    monkeypatch.setattr(Intake, "payload", payload)
    payloads = [cloudwatch_payload([f"k{b}-{i}" for i in range(3)], first_id=b) for b in range(2)]
    container = push._get_container()
    with pytest.raises(RuntimeError, match="boom"):
        push.handler(kinesis_event(payloads), FakeContext())
    assert container.deliverer is None
    records = backsplashed(s3)  # the first record's events, in a partial batch: not sent
    assert len(records) == 3 and not emulator.indexed_events()
    assert {r["errorCode"] for r in records} == {"Splunk.Shutdown"}
    monkeypatch.setattr(Intake, "payload", real)
    result = push.handler(kinesis_event(payloads[:1]), FakeContext())
    assert result == {"batchItemFailures": []}
    deliverer = push._get_container().deliverer
    assert deliverer is not None
    ledger = deliverer.ledger.summary()
    assert ledger["balanced"] and ledger["events_in"] == 3  # nothing of the failed one


def test_unbalanced_ledger_after_flush_fails_the_invocation(
    emulator: HecEmulator, configure: Any, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a flush that (by a bug) leaves acks pending WHEN handled THEN the handler does
    not answer success: it raises LedgerUnbalancedError (AWS retries the invocation), and the
    pending events are backsplashed as the deliverer is discarded."""
    configure(emulator, SPLUNK_HEC_ACK_TIMEOUT="60")
    emulator.set_faults(FaultPlan(ack_delay_s=3600))
    container = push._get_container()
    deliverer = container.get_deliverer()
    assert isinstance(deliverer, Deliverer)  # one destination: the one deliverer

    def flush(deadline: float | None = None) -> None:
        # A broken flush: sends the partial batch, does not wait for its ack.
        deliverer._queue.extend(Work.of(batch) for batch in deliverer._batcher.drain())
        deliverer._drain_queue()

    monkeypatch.setattr(deliverer, "flush", flush)
    payload = cloudwatch_payload([f"u{i}" for i in range(4)], log_group="/app/test")
    with pytest.raises(push.LedgerUnbalancedError):
        push.handler(kinesis_event([payload]), FakeContext())
    assert deliverer.pending_acks == 0 and container.deliverer is None
    assert deliverer.ledger.balanced() and deliverer.ledger.backsplashed == 4
    assert {r["errorCode"] for r in backsplashed(s3)} == {"Splunk.Shutdown"}


# ------------------------------------------------------------------ backsplash objects


def hec_event(text: str, sourcetype: str = "aws:cloudwatchlogs") -> bytes:
    return json.dumps(
        {"time": 1764000000, "source": "/app/fh", "sourcetype": sourcetype, "event": text},
        separators=(",", ":"),
    ).encode()


def firehose_record(payload: bytes, *, processing: bool = False) -> str:
    record: dict[str, Any] = {
        "attemptsMade": 4,
        "arrivalTimestamp": 1764000000000,
        "errorCode": "Lambda.FunctionError" if processing else "Splunk.AckTimeout",
        "errorMessage": "failed",
        "attemptEndingTimestamp": 1764000100000,
        "rawData": base64.b64encode(payload).decode(),
    }
    if processing:
        record["lambdaArn"] = "arn:aws:lambda:us-east-1:123456789012:function:t"
    else:
        record["EventId"] = f"{abs(hash(payload)):040d}"
    return json.dumps(record, separators=(",", ":"))


def sqs_batch_from_queue(sqs: Any, bodies: list[str]) -> dict[str, Any]:
    """Send the notifications to a moto SQS queue and build the Lambda event from what the
    queue hands out, as the event source mapping does."""
    url = sqs.create_queue(QueueName="backsplash-notifications")["QueueUrl"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    received: list[dict[str, Any]] = []
    while len(received) < len(bodies):
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        received.extend(answer.get("Messages", []))
    return {
        "Records": [
            {
                "eventSource": "aws:sqs",
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
            }
            for m in received
        ]
    }


def put_backsplash_objects(s3: Any) -> dict[str, str]:
    """Firehose's splunk-failed (event payloads, concatenated, with two corrupt records) and
    processing-failed objects, ours (raw payloads with metadata), an object recognised only by
    its content, and a replay-failed one. Returns the keys by role."""
    fh_failed = "firehose/splunk-failed/2026/01/01/00/fh-1.gz"
    concatenated = firehose_record(hec_event("fh 0")) + firehose_record(
        hec_event("fh 1") + hec_event("fh 2")
    )
    corrupt = '{"not json\n' + json.dumps({"rawData": "!!not base64!!"}) + "\n"
    body = concatenated + "\n" + corrupt + firehose_record(hec_event("fh 3")) + "\n"
    s3.put_object(Bucket=FLOW_BUCKET, Key=fh_failed, Body=gzip.compress(body.encode()))

    fh_processing = "firehose/processing-failed/2026/01/01/00/fh-2.gz"
    cwl = cloudwatch_payload([f"pf {i}" for i in range(3)], log_group="/app/pf", first_id=500)
    body = firehose_record(cwl, processing=True) + "\n"
    s3.put_object(Bucket=FLOW_BUCKET, Key=fh_processing, Body=gzip.compress(body.encode()))

    by_content = "exports/2026/01/01/failures.json"  # no marker in the key: plain JSON lines
    s3.put_object(Bucket=FLOW_BUCKET, Key=by_content, Body=firehose_record(hec_event("cx")))

    ours = Backsplash(s3, BUCKET, PREFIX, sleep=lambda seconds: None)
    ours_key = ours.write(
        [EncodedEvent(f"our raw {i}".encode(), f"r{i}") for i in range(3)],
        Failure(
            error_code="Splunk.ServerError",
            error_message="503",
            attempts=5,
            endpoint="raw",
            raw_target=RawTarget("my-source", "my:raw", "main", "host-1"),
        ),
    )
    refailed_key = ReplayFailedBacksplash(ours).write(
        [EncodedEvent(hec_event("refailed"), "x1")],
        Failure(
            error_code="Splunk.AckTimeout", error_message="again", attempts=1, endpoint="event"
        ),
    )
    return {
        "fh_failed": fh_failed,
        "fh_processing": fh_processing,
        "by_content": by_content,
        "ours": ours_key,
        "refailed": refailed_key,
    }


def keys_under(s3: Any, prefix: str) -> list[str]:
    contents = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [item["Key"] for item in contents]


def assert_backsplash_objects_redelivered(emulator: Any, s3: Any, before: set[str]) -> None:
    """The objects of ``put_backsplash_objects``-style tests: every event indexed once with its
    metadata, the replay-failed one not at all, and nothing new written to the bucket."""
    indexed = emulator.indexed_events()
    by_text = {str(e["event"]): e for e in indexed}
    assert len(indexed) == len(by_text) == 4 + 3 + 1 + 3  # each exactly once
    for text in ("fh 0", "fh 1", "fh 2", "fh 3", "cx"):
        assert by_text[text]["sourcetype"] == "aws:cloudwatchlogs"
        assert by_text[text]["source"] == "/app/fh"
    for i in range(3):  # processing-failed: through the transform
        pf = by_text[f"pf {i}"]
        assert "/app/pf" in str(pf.get("source"))
        assert pf.get("sourcetype")
    for i in range(3):  # ours, raw endpoint: the metadata stored with the records
        raw = by_text[f"our raw {i}"]
        assert (raw["source"], raw["sourcetype"], raw["index"], raw["host"]) == (
            "my-source",
            "my:raw",
            "main",
            "host-1",
        )
    assert "refailed" not in by_text
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert after == before  # nothing backsplashed, nothing deleted


def test_sqs_backsplash_objects_are_redelivered(
    emulator: HecEmulator,
    configure: Any,
    s3: Any,
    aws_endpoint: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN an SQS batch notifying Firehose's splunk-failed (event payloads) and
    processing-failed (gzip CloudWatch payload) objects, ours (raw payloads with metadata), one
    recognised by content, and a replay-failed one
    WHEN handled THEN the first four are indexed with their sourcetype and metadata, corrupt
    records are dropped with key and line, the replay-failed object is skipped with the
    command to run, nothing is written back, and the ledger balances."""
    configure(emulator)
    keys = put_backsplash_objects(s3)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    bodies = [
        s3_body(FLOW_BUCKET, keys["fh_failed"]),
        json.dumps(
            {"Type": "Notification", "Message": s3_body(FLOW_BUCKET, keys["fh_processing"])}
        ),
        s3_body(FLOW_BUCKET, keys["by_content"]),
        s3_body(BUCKET, keys["ours"]),
        s3_body(BUCKET, keys["refailed"]),
    ]
    event = sqs_batch_from_queue(boto_client("sqs", aws_endpoint), bodies)

    result = push.handler(event, FakeContext())

    assert result == {"batchItemFailures": []}
    assert_backsplash_objects_redelivered(emulator, s3, before)

    logs = capsys.readouterr()
    output = logs.out + logs.err
    summary = json.loads(
        next(line for line in output.splitlines() if "push_invocation_summarized" in line)
    )
    assert summary["balanced"] and summary["in_flight"] == 0
    assert summary["acknowledged"] == 11
    assert summary["dropped"] == {CORRUPT_RECORD: 2}
    assert summary["events_in"] == 13
    assert (summary["objects_redelivered"], summary["objects_skipped"]) == (4, 1)
    assert summary["records_corrupt"] == 2
    entries = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    corrupt = [e for e in entries if e.get("event") == "backsplash_record_corrupt"]
    assert {(c["key"], c["line"]) for c in corrupt} == {
        (keys["fh_failed"], 2),
        (keys["fh_failed"], 3),
    }
    skipped = [e for e in entries if e.get("event") == "object_skipped"]
    assert [s["key"] for s in skipped] == [keys["refailed"]]
    assert f"forwarder replay s3://{BUCKET}/{PREFIX}replay-failed/" in skipped[0]["reason"]


def test_redelivery_failures_go_under_replay_failed(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    """GIVEN a backsplash object whose re-delivery is never acknowledged WHEN the invocation
    nears its end THEN its events are stored under replay-failed/ (not splunk-failed/, which a
    notification on the bucket would re-trigger) with replayAttempts, and the ledger balances."""
    configure(emulator, SPLUNK_HEC_ACK_TIMEOUT="60")
    emulator.set_faults(FaultPlan(lost_acks=100))
    key = "firehose/splunk-failed/2026/01/01/00/fh-late.gz"
    body = "".join(firehose_record(hec_event(f"late {i}")) for i in range(4))
    s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=gzip.compress(body.encode()))

    result = push.handler(sqs_event([s3_body(FLOW_BUCKET, key)]), FakeContext(remaining_ms=1500))

    assert result == {"batchItemFailures": []}
    assert keys_under(s3, f"{PREFIX}splunk-failed/") == []
    refailed = keys_under(s3, f"{PREFIX}replay-failed/")
    assert refailed
    reader = Backsplash(s3, BUCKET, PREFIX)
    records = [r for k in reader.list_keys("replay-failed") for r in reader.read(k)]
    assert len(records) == 4
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert {r["replayAttempts"] for r in records} == {1}
    assert sorted(json.loads(base64.b64decode(r["rawData"]))["event"] for r in records) == [
        f"late {i}" for i in range(4)
    ]

    # ... and a notification of that replay-failed object is not re-delivered (no loop)
    emulator.set_faults(FaultPlan())
    again = push.handler(sqs_event([s3_body(BUCKET, refailed[0])]), FakeContext())
    assert again == {"batchItemFailures": []}
    assert keys_under(s3, f"{PREFIX}replay-failed/") == refailed


def test_truncated_backsplash_object_fails_its_message(
    emulator: HecEmulator, configure: Any, s3: Any
) -> None:
    """GIVEN a truncated gzip backsplash object WHEN notified THEN its message fails (comes
    back), the records before the break are delivered, and the ledger balances."""
    configure(emulator)
    key = "firehose/splunk-failed/2026/01/01/00/cut.gz"
    body = "\n".join(firehose_record(hec_event(f"cut {i}")) for i in range(200)).encode()
    data = gzip.compress(body)
    s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=data[: len(data) - 20])
    put_flow_file(s3, "AWSLogs/1/vpcflowlogs/ok.log.gz", 5)

    result = push.handler(
        sqs_event(
            [s3_body(FLOW_BUCKET, key), s3_body(FLOW_BUCKET, "AWSLogs/1/vpcflowlogs/ok.log.gz")]
        ),
        FakeContext(),
    )

    assert result == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}
    assert len(emulator.indexed_events()) >= 5
