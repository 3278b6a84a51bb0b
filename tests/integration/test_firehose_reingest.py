"""Re-ingestion against real Firehose and Kinesis APIs (moto in server mode, over HTTP).

The handler builds its own boto3 clients from ``AWS_ENDPOINT_URL``. Moto never reports
per-entry failures, so the partial-failure tests wrap the real client at the edge: the first
entries of chosen calls are answered the way AWS answers them (``ErrorCode`` per entry,
``FailedPutCount`` / ``FailedRecordCount``) without being sent, or a call fails outright as
botocore raises it once its own retries are spent; every other entry goes to the server.
Everything read back comes from the server.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from config.settings import Settings
from tests.conftest import boto_client, make_settings
from tests.factories import make_cwl_payload, make_firehose_event, make_flow_lines
from transforms import firehose, reingest
from transforms.firehose import FirehoseResponse, handler

pytestmark = pytest.mark.integration

BUCKET = "firehose-backup"
PREFIX = "reingested/"
STREAM = "to-splunk"
KINESIS_STREAM = "cwl-source"


class Context:
    """A Lambda context whose deadline is real: ``seconds`` from its creation."""

    aws_request_id = "5f0a6b2e-0000-4000-8000-reingesttest"

    def __init__(self, seconds: float = 60.0) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


class EdgeClient:
    """A real boto3 client; after the first ``after`` puts, the next ``fail_calls`` puts report
    their first ``fail_entries`` entries as failed (not sent), exactly as AWS reports throttled
    entries, or, with ``raise_error``, fail whole as botocore raises a call that gave up.
    Counts every call.
    """

    def __init__(
        self,
        client: Any,
        *,
        fail_entries: int = 0,
        fail_calls: int = 0,
        after: int = 0,
        raise_error: bool = False,
    ) -> None:
        self.client = client
        self.fail_entries = fail_entries
        self.fail_calls = fail_calls
        self.after = after
        self.raise_error = raise_error
        self.calls: list[int] = []

    def _failing(self, count: int) -> int:
        self.calls.append(count)
        if len(self.calls) <= self.after or self.fail_calls <= 0:
            return 0
        self.fail_calls -= 1
        if self.raise_error:
            raise ClientError(
                {"Error": {"Code": "ServiceUnavailableException", "Message": "Slow down."}},
                "PutRecordBatch",
            )
        return min(self.fail_entries, count)

    def put_record_batch(self, **kwargs: Any) -> Any:
        records = kwargs["Records"]
        failing = self._failing(len(records))
        response: dict[str, Any] = {"FailedPutCount": 0, "RequestResponses": []}
        if records[failing:]:
            response = self.client.put_record_batch(**{**kwargs, "Records": records[failing:]})
        error = {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."}
        response["RequestResponses"] = [error] * failing + response["RequestResponses"]
        response["FailedPutCount"] += failing
        return response

    def put_records(self, **kwargs: Any) -> Any:
        records = kwargs["Records"]
        failing = self._failing(len(records))
        response: dict[str, Any] = {"FailedRecordCount": 0, "Records": []}
        if records[failing:]:
            response = self.client.put_records(**{**kwargs, "Records": records[failing:]})
        error = {
            "ErrorCode": "ProvisionedThroughputExceededException",
            "ErrorMessage": "Rate exceeded for shard shardId-000000000000",
        }
        response["Records"] = [error] * failing + response["Records"]
        response["FailedRecordCount"] += failing
        return response

    def close(self) -> None:
        self.client.close()


class Edge:
    """Every client the handler builds, wrapped; ``fail()`` sets what the next ones report."""

    def __init__(self) -> None:
        self.clients: list[EdgeClient] = []
        self.failures: dict[str, Any] = {"fail_entries": 0, "fail_calls": 0}

    def fail(self, *, entries: int, calls: int, after: int = 0, raise_error: bool = False) -> None:
        self.failures = {
            "fail_entries": entries,
            "fail_calls": calls,
            "after": after,
            "raise_error": raise_error,
        }

    @property
    def calls(self) -> list[list[int]]:
        return [client.calls for client in self.clients]


@pytest.fixture(name="edge")
def fixture_edge(monkeypatch: pytest.MonkeyPatch) -> Iterator[Edge]:
    edge = Edge()
    real_make_client = reingest.make_client

    def make_client(service: str, region: str) -> EdgeClient:
        client = EdgeClient(real_make_client(service, region), **edge.failures)
        edge.clients.append(client)
        return client

    monkeypatch.setattr(reingest, "make_client", make_client)
    yield edge
    firehose.use_settings(None)


@pytest.fixture(name="delivery_stream")
def fixture_delivery_stream(aws_endpoint: str) -> Iterator[str]:
    """A DirectPut Firehose stream into an S3 bucket; yields its ARN."""
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    client = boto_client("firehose", aws_endpoint)
    arn: str = client.create_delivery_stream(
        DeliveryStreamName=STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
            "Prefix": PREFIX,
        },
    )["DeliveryStreamARN"]
    yield arn
    client.close()
    s3.close()


@pytest.fixture(name="kinesis_stream")
def fixture_kinesis_stream(aws_endpoint: str) -> Iterator[str]:
    """A one-shard Kinesis stream (so reading back keeps order); yields its ARN."""
    client = boto_client("kinesis", aws_endpoint)
    client.create_stream(StreamName=KINESIS_STREAM, ShardCount=1)
    arn: str = client.describe_stream_summary(StreamName=KINESIS_STREAM)[
        "StreamDescriptionSummary"
    ]["StreamARN"]
    yield arn
    client.close()


def gzip_members(blob: bytes) -> list[bytes]:
    """Split concatenated gzip streams back into the records Firehose concatenated."""
    members = []
    while blob:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflater.decompress(blob)
        consumed = len(blob) - len(inflater.unused_data)
        members.append(blob[:consumed])
        blob = inflater.unused_data
    return members


def delivered_objects(endpoint: str) -> list[list[bytes]]:
    """The records of each S3 object moto's Firehose wrote (one object per put call)."""
    s3 = boto_client("s3", endpoint)
    try:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])
        return [
            gzip_members(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
            for item in listing
        ]
    finally:
        s3.close()


def kinesis_records(endpoint: str) -> list[tuple[bytes, str]]:
    """Every record in the one-shard stream, in order: (data, partition key)."""
    client = boto_client("kinesis", endpoint)
    try:
        shard = client.list_shards(StreamName=KINESIS_STREAM)["Shards"][0]["ShardId"]
        iterator = client.get_shard_iterator(
            StreamName=KINESIS_STREAM, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        found: list[tuple[bytes, str]] = []
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            found.extend((record["Data"], record["PartitionKey"]) for record in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        return found
    finally:
        client.close()


def payloads(count: int, lines: int = 10) -> list[bytes]:
    return [
        make_cwl_payload(
            make_flow_lines(lines, seed=i), log_group="/aws/vpc/flowlogs", log_stream=f"eni-{i:08x}"
        )
        for i in range(count)
    ]


def dropped(response: FirehoseResponse, originals: list[bytes]) -> list[bytes]:
    return [
        data
        for data, entry in zip(originals, response["records"], strict=True)
        if entry["result"] == "Dropped"
    ]


def overflowing(limit: int) -> Settings:
    settings = make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(limit))
    firehose.use_settings(settings)
    return settings


def test_overflow_goes_back_into_the_delivery_stream(
    delivery_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    originals = payloads(12, lines=40)
    event = make_firehose_event(originals, delivery_stream_arn=delivery_stream)
    overflowing(24 * 1024)

    response = handler(event, Context())

    expected = dropped(response, originals)
    assert 0 < len(expected) < len(originals)
    assert delivered_objects(aws_endpoint) == [expected]
    assert edge.calls == [[len(expected)]]


def test_more_than_500_overflowing_records_take_several_calls(
    delivery_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    originals = payloads(530, lines=10)
    event = make_firehose_event(originals, delivery_stream_arn=delivery_stream)
    overflowing(96 * 1024)

    response = handler(event, Context())

    expected = dropped(response, originals)
    assert len(expected) > 500
    assert edge.calls == [[500, len(expected) - 500]]
    objects = sorted(delivered_objects(aws_endpoint), key=len, reverse=True)
    assert objects == [expected[:500], expected[500:]]


def test_overflow_goes_back_into_the_kinesis_stream_with_its_partition_keys(
    delivery_stream: str, kinesis_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    originals = payloads(520, lines=10)
    event = make_firehose_event(
        originals, delivery_stream_arn=delivery_stream, kinesis_stream_arn=kinesis_stream
    )
    keys = [record["kinesisRecordMetadata"]["partitionKey"] for record in event["records"]]
    overflowing(96 * 1024)

    response = handler(event, Context())

    expected = [
        (data, key)
        for data, key, entry in zip(originals, keys, response["records"], strict=True)
        if entry["result"] == "Dropped"
    ]
    assert len(expected) > 500
    assert kinesis_records(aws_endpoint) == expected
    assert edge.calls == [[500, len(expected) - 500]]
    assert delivered_objects(aws_endpoint) == []  # nothing went to the delivery stream


def test_partially_failed_firehose_puts_are_retried_until_all_arrive(
    delivery_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    originals = payloads(12, lines=40)
    event = make_firehose_event(originals, delivery_stream_arn=delivery_stream)
    overflowing(24 * 1024)
    edge.fail(entries=3, calls=2)

    with capture_logs() as logs:
        response = handler(event, Context())

    expected = dropped(response, originals)
    assert edge.calls == [[len(expected), 3, 3]]
    arrived = [record for records in delivered_objects(aws_endpoint) for record in records]
    assert sorted(arrived) == sorted(expected)  # each exactly once
    retries = [line for line in logs if line["event"] == "reingest_retry_scheduled"]
    assert [(line["failed"], line["error_codes"]) for line in retries] == [
        (3, ["ServiceUnavailableException"])
    ] * 2


def test_partially_failed_kinesis_puts_are_retried_keeping_partition_keys(
    delivery_stream: str, kinesis_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    originals = payloads(10, lines=40)
    event = make_firehose_event(
        originals, delivery_stream_arn=delivery_stream, kinesis_stream_arn=kinesis_stream
    )
    keys = [record["kinesisRecordMetadata"]["partitionKey"] for record in event["records"]]
    overflowing(20 * 1024)
    edge.fail(entries=2, calls=1)

    response = handler(event, Context())

    expected = [
        (data, key)
        for data, key, entry in zip(originals, keys, response["records"], strict=True)
        if entry["result"] == "Dropped"
    ]
    arrived = kinesis_records(aws_endpoint)
    assert arrived == expected[2:] + expected[:2]  # the throttled two arrive on the retry


def invoke_like_firehose(
    event: dict[str, Any], *, seconds: float, attempts: int = 2
) -> tuple[FirehoseResponse | None, int]:
    """Invoke as Firehose does: a failed invocation is retried whole (same records).

    Returns the first answer (None when every attempt failed) and the invocations made.
    """
    for attempt in range(1, attempts + 1):
        try:
            return handler(event, Context(seconds=seconds)), attempt
        except Exception:  # Firehose sees only that the invocation failed, and retries it
            continue
    return None, attempts


def assert_every_record_accounted_for(
    event: dict[str, Any], response: FirehoseResponse, originals: list[bytes], arrived: list[bytes]
) -> dict[str, int]:
    """Every record is Ok, Dropped because it went back (exactly once), or ProcessingFailed
    with its original data (for Firehose's processing-failed/ backup and replay)."""
    assert [entry["recordId"] for entry in response["records"]] == [
        record["recordId"] for record in event["records"]
    ]
    went_back = []
    for record, original, entry in zip(
        event["records"], originals, response["records"], strict=True
    ):
        if entry["result"] == "Dropped":
            went_back.append(original)
        elif entry["result"] == "ProcessingFailed":
            assert entry["data"] == record["data"]
            assert base64.b64decode(entry["data"]) == original
        else:
            assert entry["result"] == "Ok"
    assert sorted(arrived) == sorted(went_back)
    return Counter(entry["result"] for entry in response["records"])


def test_a_failing_later_chunk_puts_nothing_back_twice(
    delivery_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    """GIVEN more than 500 overflowing records (two PutRecordBatch chunks) WHEN the second
    chunk keeps failing THEN the invocation still answers: the first chunk's records are
    Dropped (they went back once), the second chunk's are ProcessingFailed with their original
    data, so no Firehose retry of the invocation puts the first chunk back again."""
    originals = payloads(530, lines=10)
    event = make_firehose_event(originals, delivery_stream_arn=delivery_stream)
    limit = 96 * 1024
    overflowing(limit)
    edge.fail(entries=10_000, calls=1_000, after=1)

    with capture_logs() as logs:
        # Time enough for the first chunk on a loaded machine; the second one's retries
        # stop at the policy's attempts or at the margin, whichever comes first.
        response, invocations = invoke_like_firehose(
            event, seconds=reingest.ReingestPolicy().time_margin_s + 15
        )

    arrived = [record for records in delivered_objects(aws_endpoint) for record in records]
    twice = [data for data, times in Counter(arrived).items() if times > 1]
    assert twice == [], f"{len(twice)} records were put back more than once"
    assert response is not None and invocations == 1
    calls = [count for client in edge.calls for count in client]
    assert calls[0] == 500 and len(calls) >= 2  # the second chunk was tried, and failed
    results = assert_every_record_accounted_for(event, response, originals, arrived)
    assert len(arrived) == 500
    assert results["ProcessingFailed"] >= calls[1] > 0  # at least the second chunk's records
    assert len(json.dumps(response)) <= limit
    failed = [line for line in logs if line.get("reason") == "reingest_failed"]
    assert failed and {line["error_codes"][0] for line in failed} == {"ServiceUnavailableException"}
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["reingested_records"] == 500
    assert summary["reingest_failed_records"] == len(failed)


def test_a_later_call_that_fails_outright_puts_nothing_back_twice(
    delivery_stream: str, kinesis_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    """GIVEN two PutRecords chunks WHEN the second call fails whole (botocore gave up) THEN
    its records are ProcessingFailed with their original data and the first chunk's went back
    once, with their partition keys."""
    originals = payloads(530, lines=10)
    event = make_firehose_event(
        originals, delivery_stream_arn=delivery_stream, kinesis_stream_arn=kinesis_stream
    )
    overflowing(96 * 1024)
    edge.fail(entries=0, calls=1, after=1, raise_error=True)

    response, invocations = invoke_like_firehose(event, seconds=60)

    arrived = kinesis_records(aws_endpoint)
    assert Counter(arrived).most_common(1)[0][1] == 1  # nothing twice
    assert response is not None and invocations == 1
    results = assert_every_record_accounted_for(
        event, response, originals, [data for data, _key in arrived]
    )
    assert len(arrived) == 500
    [calls] = edge.calls
    assert calls[0] == 500 and results["ProcessingFailed"] >= calls[1] > 0
    keys = {
        record["data"]: record["kinesisRecordMetadata"]["partitionKey"]
        for record in event["records"]
    }
    assert all(keys[base64.b64encode(data).decode()] == key for data, key in arrived)


def test_reingestion_that_keeps_failing_answers_in_time_with_originals(
    delivery_stream: str, aws_endpoint: str, edge: Edge
) -> None:
    """GIVEN entries that never stop failing WHEN the Lambda's time runs short THEN retries
    stop with the margin intact and those records are ProcessingFailed with their original
    data; the invocation does not fail."""
    originals = payloads(12, lines=40)
    event = make_firehose_event(originals, delivery_stream_arn=delivery_stream)
    overflowing(24 * 1024)
    edge.fail(entries=1, calls=1_000)
    context = Context(seconds=reingest.ReingestPolicy().time_margin_s + 2.0)

    with capture_logs() as logs:
        response = handler(event, context)

    assert context.get_remaining_time_in_millis() > 2_000  # stopped with the margin intact
    arrived = [record for records in delivered_objects(aws_endpoint) for record in records]
    results = assert_every_record_accounted_for(event, response, originals, arrived)
    assert results["ProcessingFailed"] >= 1
    [gave_up] = [line for line in logs if line["event"] == "reingest_failed"]
    assert gave_up["error_codes"] == ["ServiceUnavailableException"]
    assert gave_up["failed"] == 1
