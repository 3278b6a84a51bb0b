"""Re-ingestion (``transforms.reingest``) without a network: chunking, retries of failed
entries, deadlines, and which stream an invocation's overflow goes back to."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from transforms.reingest import (
    FirehoseReingester,
    KinesisReingester,
    ReingestError,
    ReingestPolicy,
    ReingestRecord,
    ReingestReport,
    plan_chunks,
    reingester_for,
)

DELIVERY_STREAM_ARN = "arn:aws:firehose:us-east-1:123456789012:deliverystream/to-splunk"
KINESIS_STREAM_ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/cwl"


def test_chunks_respect_count_and_byte_limits() -> None:
    small: list[ReingestRecord] = [(b"x" * 10, None)] * 1201
    chunks, too_large = plan_chunks(
        small, max_records=500, max_bytes=4 * 1024 * 1024, max_record_bytes=1000 * 1024
    )
    assert [len(chunk) for chunk in chunks] == [500, 500, 201]
    assert [p for chunk in chunks for p in chunk] == list(range(1201)) and too_large == []
    big: list[ReingestRecord] = [(b"x" * (1000 * 1024), "k")] * 9
    chunks, _ = plan_chunks(
        big, max_records=500, max_bytes=5 * 1024 * 1024, max_record_bytes=1024**2
    )
    assert [len(chunk) for chunk in chunks] == [5, 4]
    mixed: list[ReingestRecord] = [(b"a", None), (b"x" * 11, "k"), (b"b", None)]
    chunks, too_large = plan_chunks(mixed, max_records=500, max_bytes=100, max_record_bytes=11)
    assert (chunks, too_large) == ([[0, 2]], [1])


class FakeFirehoseClient:
    """Answers PutRecordBatch like Firehose, failing the first entries of the first calls;
    an exception in ``fail`` is raised by that call instead."""

    def __init__(self, fail: list[int | Exception]) -> None:
        self.fail = fail
        self.calls: list[list[bytes]] = []

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> Any:
        self.calls.append([record["Data"] for record in Records])
        failing = self.fail.pop(0) if self.fail else 0
        if isinstance(failing, Exception):
            raise failing
        entries = [
            {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "slow down"}
            if i < failing
            else {"RecordId": f"id-{i}"}
            for i in range(len(Records))
        ]
        return {"FailedPutCount": min(failing, len(Records)), "RequestResponses": entries}


def test_failed_entries_are_retried_alone_with_backoff() -> None:
    client = FakeFirehoseClient(fail=[3, 1])
    sleeps: list[float] = []
    reingester = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=5, backoff_base_s=0.5, backoff_max_s=2.0),
        sleep=sleeps.append,
    )
    records = [(f"r{i}".encode(), None) for i in range(5)]

    with capture_logs() as logs:
        report = reingester.put(records)

    assert report == ReingestReport()
    assert client.calls == [[b"r0", b"r1", b"r2", b"r3", b"r4"], [b"r0", b"r1", b"r2"], [b"r0"]]
    assert len(sleeps) == 2 and all(0 <= s <= 2.0 for s in sleeps)
    retries = [line for line in logs if line["event"] == "reingest_retry_scheduled"]
    assert [line["failed"] for line in retries] == [3, 1]
    assert retries[0]["error_codes"] == ["ServiceUnavailableException"]


def test_entries_that_keep_failing_are_reported_after_the_last_attempt() -> None:
    client = FakeFirehoseClient(fail=[2] * 10)
    reingester = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=3),
        sleep=lambda _s: None,
    )

    with capture_logs() as logs:
        report = reingester.put([(b"a", None), (b"b", None), (b"c", None)])

    assert report == ReingestReport((0, 1), ("ServiceUnavailableException",))
    assert len(client.calls) == 3
    assert [line["event"] for line in logs][-1] == "reingest_failed"


def test_a_chunk_that_fails_does_not_stop_the_next_one() -> None:
    """GIVEN three chunks WHEN the second call fails whole (botocore gave up) THEN only its
    records are reported, the third chunk still goes, and nothing is sent twice."""
    error = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "x"}}, "PutRecordBatch"
    )
    client = FakeFirehoseClient(fail=[0, error])
    reingester = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=3),
        sleep=lambda _s: None,
    )
    records: list[ReingestRecord] = [(f"r{i:04d}".encode(), None) for i in range(1200)]

    report = reingester.put(records)

    assert report == ReingestReport(tuple(range(500, 1000)), ("ThrottlingException",))
    assert [len(call) for call in client.calls] == [500, 500, 200]
    sent = [data for call in client.calls for data in call]
    assert len(set(sent)) == len(sent)


def test_too_large_records_are_reported_and_the_others_go() -> None:
    client = FakeFirehoseClient(fail=[])
    reingester = FirehoseReingester(client, "s", sleep=lambda _s: None)  # type: ignore[arg-type]

    report = reingester.put([(b"a", None), (b"x" * (1000 * 1024 + 1), None), (b"b", None)])

    assert report == ReingestReport((1,), ("RecordTooLarge",))
    assert client.calls == [[b"a", b"b"]]


def test_an_answer_that_does_not_match_the_records_fails_them_all() -> None:
    class Client:
        def put_record_batch(self, DeliveryStreamName: str, Records: list[Any]) -> Any:
            return {"FailedPutCount": 1, "RequestResponses": [{"ErrorCode": "InternalFailure"}]}

    report = FirehoseReingester(
        Client(),  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=1),
        sleep=lambda _s: None,
    ).put([(b"a", None), (b"b", None)])

    assert report == ReingestReport((0, 1), ("MalformedResponse",))


def test_no_chunk_starts_in_the_time_kept_for_answering() -> None:
    client = FakeFirehoseClient(fail=[])
    remaining = iter([10.0, 2.9])
    reingester = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(time_margin_s=3.0),
        remaining_s=lambda: next(remaining),
        sleep=lambda _s: None,
    )

    report = reingester.put([(f"r{i:04d}".encode(), None) for i in range(700)])

    assert report == ReingestReport(tuple(range(500, 700)), ("NoTimeLeft",))
    assert [len(call) for call in client.calls] == [500]


def test_retries_stop_before_the_lambda_runs_out_of_time() -> None:
    client = FakeFirehoseClient(fail=[1] * 10)
    remaining = iter([10.0, 3.05, 3.0, 2.0, 1.0])
    reingester = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=10, backoff_base_s=0.01, time_margin_s=3.0),
        remaining_s=lambda: next(remaining),
        sleep=lambda _s: None,
    )

    report = reingester.put([(b"a", None)])

    assert report.failed == (0,)
    assert 2 <= len(client.calls) <= 3


def test_kinesis_entries_without_a_partition_key_get_a_stable_one() -> None:
    sent: list[dict[str, Any]] = []

    class Client:
        def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> Any:
            sent.extend(Records)
            return {"FailedRecordCount": 0, "Records": [{"ShardId": "s"} for _ in Records]}

    KinesisReingester(Client(), "cwl").put([(b"a", "key-1"), (b"b", None), (b"b", None)])  # type: ignore[arg-type]

    assert sent[0]["PartitionKey"] == "key-1"
    assert sent[1]["PartitionKey"] == sent[2]["PartitionKey"] != ""


def test_failed_kinesis_entries_are_retried_alone_with_their_keys() -> None:
    """PutRecords reports failures per entry, as PutRecordBatch does: only those go again."""
    sent: list[list[tuple[bytes, str]]] = []

    class Client:
        def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> Any:
            sent.append([(record["Data"], record["PartitionKey"]) for record in Records])
            if len(sent) > 1:
                return {"FailedRecordCount": 0, "Records": [{"ShardId": "s"} for _ in Records]}
            entries = [{"ShardId": "s"}, {"ErrorCode": "ProvisionedThroughputExceededException"}]
            return {"FailedRecordCount": 1, "Records": entries}

    reingester = KinesisReingester(Client(), "cwl", sleep=lambda _s: None)  # type: ignore[arg-type]

    report = reingester.put([(b"a", "key-a"), (b"b", "key-b")])

    assert report == ReingestReport()
    assert sent == [[(b"a", "key-a"), (b"b", "key-b")], [(b"b", "key-b")]]


def test_an_answer_that_counts_no_failure_is_taken_at_its_word() -> None:
    """Without FailedRecordCount nothing is retried, whatever the entries say."""
    calls = 0

    class Client:
        def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> Any:
            nonlocal calls
            calls += 1
            return {"Records": [{"ErrorCode": "InternalFailure"}]}

    report = KinesisReingester(Client(), "cwl").put([(b"a", "k")])  # type: ignore[arg-type]

    assert report == ReingestReport()
    assert calls == 1


# --- which stream: reingester_for -------------------------------------------------------------


def test_a_kinesis_sourced_invocation_goes_back_to_its_kinesis_stream() -> None:
    reingester = reingester_for(
        delivery_stream_arn=DELIVERY_STREAM_ARN, kinesis_stream_arn=KINESIS_STREAM_ARN
    )
    try:
        assert isinstance(reingester, KinesisReingester)
        assert reingester.stream_name == "cwl"
        assert reingester.client.meta.region_name == "eu-west-1"
    finally:
        reingester.close()


def test_a_direct_put_invocation_goes_back_to_its_delivery_stream() -> None:
    reingester = reingester_for(delivery_stream_arn=DELIVERY_STREAM_ARN, kinesis_stream_arn=None)
    try:
        assert isinstance(reingester, FirehoseReingester)
        assert reingester.stream_name == "to-splunk"
        assert reingester.client.meta.region_name == "us-east-1"
    finally:
        reingester.close()


@pytest.mark.parametrize(
    ("delivery", "kinesis", "message"),
    [
        (None, None, "names no source stream ARN"),
        ("", "", "names no source stream ARN"),
        ("arn:aws:firehose:us-east-1:123456789012:to-splunk", None, "not a stream ARN"),
        (DELIVERY_STREAM_ARN, "not-an-arn", "not a stream ARN"),
    ],
)
def test_no_usable_stream_arn_is_a_reingest_error(
    delivery: str | None, kinesis: str | None, message: str
) -> None:
    with pytest.raises(ReingestError, match=message):
        reingester_for(delivery_stream_arn=delivery, kinesis_stream_arn=kinesis)
