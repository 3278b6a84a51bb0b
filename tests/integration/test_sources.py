"""Daemon sources against moto's Kinesis, SQS and S3 (server mode)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from botocore.exceptions import ClientError

from config.daemon import SourceSettings
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.intake.lines import MAX_CHUNK_CHARS
from forwarder.sources.checkpoints import SHARD_END, MemoryCheckpointStore
from forwarder.sources.files import FILE_POLL_MAX_LINES, FileSource
from forwarder.sources.kinesis import KinesisSource
from forwarder.sources.sqs_s3 import SqsS3Source
from tests.conftest import boto_client

pytestmark = pytest.mark.integration

STREAM = "cwl-stream"


def kinesis_settings(**overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {
        "type": "kinesis",
        "stream_name": STREAM,
        "poll_interval_s": 0.01,
        "shard_refresh_interval_s": 0.1,
        "throttle_backoff_s": 0.05,
        "throttle_backoff_max_s": 0.2,
    }
    values.update(overrides)
    return SourceSettings(**values)


def drain(source: Any, rounds: int = 200, idle_rounds: int = 5) -> list[bytes]:
    """Poll and commit until nothing new comes for a few rounds."""
    got: list[bytes] = []
    idle = 0
    for _ in range(rounds):
        records = source.poll(100)
        got.extend(r.payload or b"" for r in records)
        source.commit()
        idle = 0 if records else idle + 1
        if idle >= idle_rounds:
            break
    return got


def test_kinesis_split_on_moto(aws_endpoint: str) -> None:
    """GIVEN a split shard on moto WHEN read THEN the closed parent ends with SHARD_END.

    moto keeps routing writes to the closed parent (and moves a parent's records into the
    children on a split), so the ordering itself is checked with :class:`SplitKinesis`.
    """
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    parent = kinesis.list_shards(StreamName=STREAM)["Shards"][0]["ShardId"]
    kinesis.split_shard(StreamName=STREAM, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    payloads = [cloudwatch_payload([f"m{i}"], first_id=i) for i in range(6)]
    for payload in payloads:
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey="p")
    store = MemoryCheckpointStore()
    source = KinesisSource(kinesis, kinesis_settings(), store)
    source.attach()
    got = drain(source)
    assert sorted(got) == sorted(payloads)
    positions = store.load(STREAM)
    assert positions[parent] == SHARD_END
    assert len(source._shards) == 3  # every shard known

    # a restart resumes from the checkpoints: nothing is read again
    again = KinesisSource(kinesis, kinesis_settings(), store)
    again.attach()
    assert drain(again) == []


class SplitKinesis:
    """A stream whose shard 0 was split into 1 and 2, with Kinesis's SHARD_END semantics."""

    def __init__(self) -> None:
        self.records = {
            "s0": [b"p0", b"p1", b"p2"],
            "s1": [b"c1-0", b"c1-1"],
            "s2": [b"c2-0"],
        }
        self.reads: list[str] = []

    def list_shards(self, **kwargs: Any) -> dict[str, Any]:
        return {
            "Shards": [
                {"ShardId": "s0", "SequenceNumberRange": {"EndingSequenceNumber": "2"}},
                {"ShardId": "s1", "ParentShardId": "s0", "SequenceNumberRange": {}},
                {"ShardId": "s2", "ParentShardId": "s0", "SequenceNumberRange": {}},
            ]
        }

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        start = 0
        if kwargs["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            start = int(kwargs["StartingSequenceNumber"]) + 1
        return {"ShardIterator": f"{kwargs['ShardId']}:{start}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard, _, start_text = ShardIterator.partition(":")
        start = int(start_text)
        self.reads.append(shard)
        data = self.records[shard][start : start + 2]
        end = start + len(data)
        closed = shard == "s0"
        return {
            "Records": [
                {"Data": item, "SequenceNumber": str(start + i)} for i, item in enumerate(data)
            ],
            "NextShardIterator": None
            if closed and end >= len(self.records[shard])
            else f"{shard}:{end}",
            "MillisBehindLatest": 0,
        }


def test_kinesis_parents_drained_before_children() -> None:
    client = SplitKinesis()
    store = MemoryCheckpointStore()
    source = KinesisSource(client, kinesis_settings(stream_name="s"), store)
    source.attach()
    got = drain(source)
    assert got[:3] == [b"p0", b"p1", b"p2"]
    assert sorted(got[3:]) == [b"c1-0", b"c1-1", b"c2-0"]
    first_child = min(client.reads.index("s1"), client.reads.index("s2"))
    assert set(client.reads[:first_child]) == {"s0"}
    assert store.load("s") == {"s0": SHARD_END, "s1": "1", "s2": "0"}


def test_kinesis_checkpoint_resume_and_latest(aws_endpoint: str) -> None:
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=2)
    for i in range(4):
        kinesis.put_record(StreamName=STREAM, Data=f"r{i}".encode(), PartitionKey=str(i))
    latest = KinesisSource(
        kinesis, kinesis_settings(start_position="LATEST"), MemoryCheckpointStore()
    )
    latest.attach()
    assert drain(latest, rounds=10) == []
    store = MemoryCheckpointStore()
    source = KinesisSource(kinesis, kinesis_settings(), store)
    source.attach()
    records = source.poll(2)
    assert len(records) == 2
    # not committed: a new reader starts over
    fresh = KinesisSource(kinesis, kinesis_settings(), store)
    fresh.attach()
    assert len(drain(fresh)) == 4


class ThrottlingKinesis:
    """Delegates to moto, but refuses the first ``throttles`` GetRecords calls."""

    def __init__(self, real: Any, throttles: int) -> None:
        self._real = real
        self.throttles = throttles
        self.calls: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_records(self, **kwargs: Any) -> Any:
        self.calls.append(time.monotonic())
        if self.throttles:
            self.throttles -= 1
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
                "GetRecords",
            )
        return self._real.get_records(**kwargs)


def test_kinesis_throttling_backs_off(aws_endpoint: str) -> None:
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    kinesis.put_record(StreamName=STREAM, Data=b"x", PartitionKey="p")
    client = ThrottlingKinesis(kinesis, throttles=3)
    source = KinesisSource(client, kinesis_settings(), MemoryCheckpointStore())
    source.attach()
    assert drain(source, idle_rounds=60) == [b"x"]
    gaps = [b - a for a, b in zip(client.calls, client.calls[1:], strict=False)][:3]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # exponential: 0.05, 0.1, 0.2


QUEUE = "flow-notices"
FLOW_BUCKET = "flow-bucket"


def notice(key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": FLOW_BUCKET}, "object": {"key": key}},
                }
            ]
        }
    )


def test_sqs_deletes_only_after_commit_and_extends_visibility(aws_endpoint: str) -> None:
    sqs = boto_client("sqs", aws_endpoint)
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=FLOW_BUCKET)
    lines = "version srcaddr dstaddr action\n" + "".join(
        f"2 10.0.0.{i} 10.0.1.1 ACCEPT\n" for i in range(12)
    )
    s3.put_object(Bucket=FLOW_BUCKET, Key="AWSLogs/a.log.gz", Body=gzip.compress(lines.encode()))
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=notice("AWSLogs/a.log.gz"))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Event": "s3:TestEvent"}))
    settings = SourceSettings(
        type="sqs-s3", queue_url=url, visibility_timeout_s=2, wait_time_s=0, chunk_lines=5
    )
    source = SqsS3Source(sqs, s3, settings)
    source.attach()
    try:
        records: list[Any] = []
        for _ in range(5):
            records.extend(source.poll(10))
        assert [len(r.lines) for r in records] == [5, 5, 2]
        assert records[0].flow_fields == ("version", "srcaddr", "dstaddr", "action")
        # a slow delivery: longer than the visibility timeout, the heartbeat keeps it ours
        time.sleep(3.0)
        assert source.visibility_extensions >= 1
        other = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0, MaxNumberOfMessages=10)
        assert other.get("Messages", []) == []
        assert source.in_flight() == 2
        assert source.commit() == 2
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0"
        assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    finally:
        source.close()


def test_sqs_unreadable_object_leaves_the_message(aws_endpoint: str) -> None:
    sqs = boto_client("sqs", aws_endpoint)
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=FLOW_BUCKET)
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=notice("AWSLogs/missing.log.gz"))
    settings = SourceSettings(type="sqs-s3", queue_url=url, visibility_timeout_s=2, wait_time_s=0)
    stop = threading.Event()
    source = SqsS3Source(sqs, s3, settings, stop_event=stop)
    source.attach()
    try:
        assert source.poll(10) == []
        assert source.commit() == 0
        assert source.objects_failed == 1
        time.sleep(2.2)
        again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        assert len(again.get("Messages", [])) == 1  # back on the queue, for a retry or the DLQ
    finally:
        source.close()


def backsplash_line(text: str, **extra: Any) -> str:
    """A splunk-failed record (Firehose's layout) holding one HEC event."""
    event = json.dumps({"time": 1764000000, "source": "/app/s", "event": text}).encode()
    record = {
        "attemptsMade": 1,
        "arrivalTimestamp": 1764000000000,
        "errorCode": "Splunk.AckTimeout",
        "rawData": base64.b64encode(event).decode(),
        **extra,
    }
    return json.dumps(record) + "\n"


def test_sqs_backsplash_objects_become_decoded_records(aws_endpoint: str) -> None:
    """GIVEN notifications of a splunk-failed object (with a corrupt record), a replay-failed
    one by key, one recognised as replay-failed only by its content, and a truncated one
    WHEN polled THEN the splunk-failed records come decoded (one record each, the corrupt one
    with its line), the replay-failed objects are skipped with the forwarder replay command,
    their messages deleted on commit; the truncated object's message is left on the queue."""
    sqs = boto_client("sqs", aws_endpoint)
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=FLOW_BUCKET)
    failed = "root/splunk-failed/2026/01/01/00/a.gz"
    body = backsplash_line("a 0") + '{"not json\n' + backsplash_line("a 1")
    s3.put_object(Bucket=FLOW_BUCKET, Key=failed, Body=gzip.compress(body.encode()))
    by_content = "exports/again.json"
    s3.put_object(Bucket=FLOW_BUCKET, Key=by_content, Body=backsplash_line("x", replayAttempts=1))
    truncated = "root/splunk-failed/2026/01/01/00/cut.gz"
    data = gzip.compress("".join(backsplash_line(f"c {i}") for i in range(300)).encode())
    s3.put_object(Bucket=FLOW_BUCKET, Key=truncated, Body=data[:-20])
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    refailed = "root/replay-failed/2026/01/01/00/b.gz"  # never read: need not exist
    for key in (failed, refailed, by_content, truncated):
        sqs.send_message(QueueUrl=url, MessageBody=notice(key))
    settings = SourceSettings(type="sqs-s3", queue_url=url, visibility_timeout_s=5, wait_time_s=0)
    source = SqsS3Source(sqs, s3, settings)
    source.attach()
    try:
        records: list[Any] = []
        with structlog.testing.capture_logs() as logs:
            for _ in range(4):
                records.extend(source.poll(1000))
        assert source.objects_skipped == 2
        assert source.objects_failed == 1
        assert source.objects_redelivered == 2
        assert source.commit() == 3
    finally:
        source.close()
    mine = [r for r in records if r.log_stream == failed]
    assert [(r.line, r.corrupt is not None) for r in mine] == [(1, False), (2, True), (3, False)]
    events = [json.loads(r.decoded.events[0].payload)["event"] for r in mine if r.decoded]
    assert events == ["a 0", "a 1"]
    assert all(r.decoded.endpoint == "event" for r in mine if r.decoded)
    reasons = {e["key"]: e["reason"] for e in logs if e["event"] == "object_skipped"}
    assert set(reasons) == {refailed, by_content}
    assert f"forwarder replay s3://{FLOW_BUCKET}/root/replay-failed/" in reasons[refailed]
    assert "forwarder replay" in reasons[by_content]
    time.sleep(0.1)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"  # the truncated one


# --- files and stdin: bounded polls ----------------------------------------------------------


def test_file_poll_is_bounded_in_lines_whatever_the_file_size(tmp_path: Path) -> None:
    """GIVEN a file of 100,000 lines and chunks of 5,000 WHEN polled for 1,000 records THEN a
    poll holds at most FILE_POLL_MAX_LINES lines (not 1,000 chunks: the whole file); every line
    still comes, in order, and the source is exhausted only at the end."""
    total = 100_000
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(total)))
    source = FileSource(SourceSettings(type="files", paths=(str(path),), chunk_lines=5000))
    source.attach()
    seen: list[str] = []
    polls = 0
    while not source.exhausted:
        records = source.poll(1000)
        polls += 1
        lines = sum(len(r.lines or ()) for r in records)
        assert lines <= FILE_POLL_MAX_LINES
        seen.extend(line for r in records for line in r.lines or ())
    assert seen == [f"line {i}" for i in range(total)]
    assert polls >= total // FILE_POLL_MAX_LINES
    assert source.lines_delivered == total and source.position == (str(path), total)


def test_file_chunks_are_capped_in_lines_and_characters(tmp_path: Path) -> None:
    """GIVEN chunk_lines far above the cap, and long lines WHEN polled THEN no poll holds more
    than the line cap, nor much more than the character cap (one line over at most)."""
    path = tmp_path / "wide.log"
    width = 64 * 1024
    path.write_text("".join(f"{i:08d}" + "x" * width + "\n" for i in range(200)))
    settings = SourceSettings(type="files", paths=(str(path),), chunk_lines=1_000_000)
    source = FileSource(settings)
    source.attach()
    count = 0
    while not source.exhausted:
        records = source.poll(1000)
        chars = sum(len(line) for r in records for line in r.lines or ())
        assert chars <= MAX_CHUNK_CHARS + width + 8
        count += sum(len(r.lines or ()) for r in records)
    assert count == 200

    many = tmp_path / "many.log"
    many.write_text("x\n" * (FILE_POLL_MAX_LINES * 3))
    source = FileSource(SourceSettings(type="files", paths=(str(many),), chunk_lines=1_000_000))
    source.attach()
    first = source.poll(1)
    assert [len(r.lines or ()) for r in first] == [FILE_POLL_MAX_LINES]


def exhausted(source: FileSource) -> bool:
    """Read through a call: mypy would keep a narrowed property across ``release``."""
    return source.exhausted


def test_stdin_release_means_not_exhausted() -> None:
    """GIVEN stdin read in part WHEN the rest of a poll is released (shutdown) THEN the source
    does not count as exhausted (the daemon must not report a finished run)."""
    data = io.BytesIO(b"".join(b"l%d\n" % i for i in range(30)))
    source = FileSource(SourceSettings(type="stdin", chunk_lines=10), stdin=data)
    source.attach()
    records = source.poll(1000)
    assert [len(r.lines or ()) for r in records] == [10, 10, 10]
    assert source.poll(1000) == []
    assert exhausted(source)
    source.release(records[1:])
    assert not exhausted(source) and source._released  # stopped early
    assert source.lines_delivered == 10 and source.position == ("stdin", 10)


def test_kinesis_release_rewinds_the_checkpoint(aws_endpoint: str) -> None:
    """GIVEN six records polled WHEN the last four are released (not delivered) and committed
    THEN the checkpoint stops after the second, and a restart reads the other four."""
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    payloads = [f"r{i}".encode() for i in range(6)]
    for payload in payloads:
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey="p")
    store = MemoryCheckpointStore()
    source = KinesisSource(kinesis, kinesis_settings(), store)
    source.attach()
    records: list[Any] = []
    for _ in range(20):
        records.extend(source.poll(100))
        if len(records) >= 6:
            break
    assert [r.payload for r in records] == payloads
    source.release(records[2:])
    assert source.commit() == 1
    again = KinesisSource(kinesis, kinesis_settings(), store)
    again.attach()
    assert drain(again) == payloads[2:]

    # everything released: nothing is committed at all
    fresh_store = MemoryCheckpointStore()
    whole = KinesisSource(kinesis, kinesis_settings(), fresh_store)
    whole.attach()
    polled: list[Any] = []
    for _ in range(20):
        polled.extend(whole.poll(100))
        if len(polled) >= 6:
            break
    whole.release(polled)
    assert whole.commit() == 0 and fresh_store.load(STREAM) == {}


def test_sqs_release_leaves_the_message_on_the_queue(aws_endpoint: str) -> None:
    """GIVEN a message whose chunks were polled WHEN some are released THEN commit does not
    delete it and it is visible again at once."""
    sqs = boto_client("sqs", aws_endpoint)
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=FLOW_BUCKET)
    body = "".join(f"2 10.0.0.{i} 10.0.1.1 ACCEPT\n" for i in range(12))
    s3.put_object(Bucket=FLOW_BUCKET, Key="AWSLogs/r.log", Body=body.encode())
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=notice("AWSLogs/r.log"))
    settings = SourceSettings(
        type="sqs-s3", queue_url=url, visibility_timeout_s=60, wait_time_s=0, chunk_lines=5
    )
    source = SqsS3Source(sqs, s3, settings)
    source.attach()
    try:
        records = source.poll(10)
        assert [len(r.lines or ()) for r in records] == [5, 5, 2]
        source.release(records[1:])
        assert source.commit() == 0 and source.in_flight() == 0
        again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
        assert len(again.get("Messages", [])) == 1
    finally:
        source.close()


class ExpiringKinesis:
    """Delegates to moto; the first GetRecords finds its iterator expired (as Kinesis answers
    an iterator unused for five minutes), after ``arrive`` puts records meanwhile."""

    def __init__(self, real: Any, arrive: Any) -> None:
        self._real = real
        self._arrive = arrive
        self.kinds: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_shard_iterator(self, **kwargs: Any) -> Any:
        self.kinds.append(kwargs["ShardIteratorType"])
        return self._real.get_shard_iterator(**kwargs)

    def get_records(self, **kwargs: Any) -> Any:
        if self._arrive is not None:
            arrive, self._arrive = self._arrive, None
            arrive()
            raise ClientError(
                {"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}},
                "GetRecords",
            )
        return self._real.get_records(**kwargs)


def test_kinesis_latest_iterator_expired_before_the_first_read_skips_nothing(
    aws_endpoint: str,
) -> None:
    """GIVEN a LATEST reader whose first iterator expires before its first read WHEN records
    arrive in between THEN they are read (the shard was pinned at attach, AT_TIMESTAMP)."""
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    arrived = [f"late-{i}".encode() for i in range(3)]
    sequence: list[str] = []

    def arrive() -> None:
        for payload in arrived:
            put = kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey="p")
            sequence.append(put["SequenceNumber"])

    client = ExpiringKinesis(kinesis, arrive)
    store = MemoryCheckpointStore()
    source = KinesisSource(client, kinesis_settings(start_position="LATEST"), store)
    source.attach()
    assert drain(source) == arrived
    assert client.kinds == ["LATEST", "AT_TIMESTAMP"]
    assert list(store.load(STREAM).values()) == [sequence[-1]]  # the pin is replaced
