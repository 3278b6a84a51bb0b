"""The Firehose transformation handler: answers, bad records, the size limit, re-ingestion."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from config.settings import Settings
from tests.conftest import make_settings
from tests.factories import (
    make_control_payload,
    make_cwl_payload,
    make_firehose_event,
    make_flow_lines,
    make_gzip_bomb,
)
from transforms import firehose, firehose_invocation, pipeline
from transforms.cloudwatch import decode_subscription_batch
from transforms.firehose import (
    FirehoseResponse,
    handler,
    transform_event,
)
from transforms.firehose_codec import entry_size, response_budget
from transforms.reingest import (
    ReingestRecord,
    ReingestReport,
)

FLOW_GROUP = "/aws/vpc/flowlogs"
LAMBDA_GROUP = "/aws/lambda/orders"
DELIVERY_STREAM_ARN = "arn:aws:firehose:us-east-1:123456789012:deliverystream/to-splunk"
KINESIS_STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/cwl"


class RecordingReingester:
    """An in-memory reingester: remembers what it was given, in order; the positions in
    ``failing`` (of one call) are reported failed and not kept."""

    def __init__(self, failing: Sequence[int] = ()) -> None:
        self.calls: list[list[ReingestRecord]] = []
        self.failing = set(failing)
        self.kept: list[ReingestRecord] = []

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        self.calls.append(list(records))
        failed = tuple(i for i in range(len(records)) if i in self.failing)
        self.kept.extend(record for i, record in enumerate(records) if i not in self.failing)
        return ReingestReport(failed, ("ServiceUnavailableException",) if failed else ())

    @property
    def records(self) -> list[ReingestRecord]:
        return [record for call in self.calls for record in call]


class RefusingReingester:
    """Fails like a source stream that stays unavailable."""

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        return ReingestReport.all_failed(len(records), "ServiceUnavailableException")


def hec_objects(data: str) -> list[dict[str, Any]]:
    """The concatenated HEC event objects in one Ok record's base64 data."""
    text = base64.b64decode(data).decode()
    decoder, objects, index = json.JSONDecoder(), [], 0
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        objects.append(value)
    return objects


def results(response: FirehoseResponse) -> list[tuple[str, str]]:
    return [(entry["recordId"], entry["result"]) for entry in response["records"]]


def response_size(response: FirehoseResponse) -> int:
    return len(json.dumps(response).encode())


def run(
    event: dict[str, Any], settings: Settings | None = None, reingester: Any = None
) -> FirehoseResponse:
    return transform_event(
        event, settings or make_settings(), reingester=reingester or RefusingReingester()
    )


def flow_payload(count: int, *, seed: int = 0, log_stream: str = "eni-0a1b2c3d") -> bytes:
    return make_cwl_payload(
        make_flow_lines(count, seed=seed), log_group=FLOW_GROUP, log_stream=log_stream
    )


@pytest.fixture(autouse=True)
def _forget_settings() -> Iterator[None]:
    """Each test starts with no container settings cached."""
    firehose.use_settings(None)
    yield
    firehose.use_settings(None)


# --- Ok: HEC events ---------------------------------------------------------------------------


def test_flow_log_record_becomes_hec_events_with_time_in_seconds() -> None:
    """GIVEN a CloudWatch batch of VPC flow lines WHEN transformed THEN one HEC event per line."""
    lines = make_flow_lines(3)
    event = make_firehose_event(
        [make_cwl_payload(lines, log_group=FLOW_GROUP, log_stream="eni-0a1b2c3d")]
    )

    response = run(event)

    [entry] = response["records"]
    assert entry["result"] == "Ok"
    objects = hec_objects(entry["data"])
    assert [obj["event"] for obj in objects] == lines
    for obj, line in zip(objects, lines, strict=True):
        assert obj["sourcetype"] == "aws:cloudwatchlogs:vpcflow"
        assert obj["source"] == f"{FLOW_GROUP}:eni-0a1b2c3d"
        assert obj["time"] == int(line.split()[10])  # `start`, epoch seconds


def test_lambda_log_record_routes_to_lambda_sourcetype_with_millisecond_fraction() -> None:
    """CloudWatch milliseconds become HEC seconds with a millisecond fraction."""
    payload = make_cwl_payload(
        ["START RequestId: 1", "END RequestId: 1"],
        log_group=LAMBDA_GROUP,
        log_stream="2025/11/26/[$LATEST]abc",
        timestamp_ms=1_764_000_000_123,
    )

    [entry] = run(make_firehose_event([payload]))["records"]

    objects = hec_objects(entry["data"])
    assert {obj["sourcetype"] for obj in objects} == {"aws:cloudwatchlogs:lambda"}
    assert objects[0]["time"] == pytest.approx(1_764_000_000.123)
    assert objects[0]["event"] == "START RequestId: 1"


def test_raw_endpoint_delivers_lines() -> None:
    lines = make_flow_lines(2)
    event = make_firehose_event([make_cwl_payload(lines, log_group=FLOW_GROUP)])

    [entry] = run(event, make_settings(SPLUNK_HEC_ENDPOINT="raw"))["records"]

    assert entry["result"] == "Ok"
    assert base64.b64decode(entry["data"]).decode() == "".join(f"{line}\n" for line in lines)


def test_plain_text_record_is_delivered_not_failed() -> None:
    [entry] = run(make_firehose_event([b"just some text\nand more"]))["records"]

    assert entry["result"] == "Ok"
    assert [obj["event"] for obj in hec_objects(entry["data"])] == ["just some text", "and more"]


# --- Dropped ----------------------------------------------------------------------------------


def test_control_message_is_dropped_and_counted() -> None:
    event = make_firehose_event([make_control_payload(), flow_payload(2)])

    with capture_logs() as logs:
        response = run(event)

    assert [result for _, result in results(response)] == ["Dropped", "Ok"]
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["control_messages"] == 1
    assert summary["dropped"] == 1
    assert any(
        line["event"] == "record_dropped" and line["reason"] == "control_message" for line in logs
    )


def test_batch_without_events_is_dropped_as_empty() -> None:
    event = make_firehose_event([make_cwl_payload([], log_group=FLOW_GROUP)])

    with capture_logs() as logs:
        response = run(event)

    assert results(response) == [(event["records"][0]["recordId"], "Dropped")]
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["empty_batches"] == 1


def test_no_records_gives_an_empty_answer() -> None:
    assert run(make_firehose_event([])) == {"records": []}
    assert run({"invocationId": "x", "deliveryStreamArn": DELIVERY_STREAM_ARN}) == {"records": []}


# --- ProcessingFailed -------------------------------------------------------------------------


BAD_PAYLOADS = {
    "truncated_gzip": flow_payload(5)[:-12],
    "gzip_bomb": make_gzip_bomb(3 * 1024 * 1024),  # 1 MiB ceiling below
    "not_gzip": b"\x1f\x8b\x08\x00garbage that only looks like gzip",
    "not_json": gzip.compress(b"this is not JSON"),
    "json_list": gzip.compress(b"[1, 2, 3]"),
    "unknown_message_type": gzip.compress(
        json.dumps({"messageType": "SURPRISE", "logEvents": []}).encode()
    ),
    "missing_log_events": gzip.compress(json.dumps({"messageType": "DATA_MESSAGE"}).encode()),
    "log_events_not_list": gzip.compress(
        json.dumps({"messageType": "DATA_MESSAGE", "logEvents": {"id": "1"}}).encode()
    ),
    "event_without_message": gzip.compress(
        json.dumps(
            {"messageType": "DATA_MESSAGE", "logEvents": [{"id": "1", "timestamp": 1}]}
        ).encode()
    ),
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_record_fails_alone_with_its_original_data(payload: bytes) -> None:
    """GIVEN a bad record between good ones THEN it is ProcessingFailed, the others Ok."""
    event = make_firehose_event([flow_payload(2), payload, flow_payload(2, seed=9)])
    settings = make_settings(MAX_DECOMPRESSED_BYTES=str(1024 * 1024))

    with capture_logs() as logs:
        response = run(event, settings)

    ids = [record["recordId"] for record in event["records"]]
    assert results(response) == [(ids[0], "Ok"), (ids[1], "ProcessingFailed"), (ids[2], "Ok")]
    assert response["records"][1]["data"] == event["records"][1]["data"]
    assert [line["record_id"] for line in logs if line["event"] == "record_failed"] == [ids[1]]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"recordId": "r-1", "approximateArrivalTimestamp": 1}, "missing_data"),
        ({"recordId": "r-1", "data": None}, "missing_data"),
        ({"recordId": "r-1", "data": 42}, "missing_data"),
        ({"recordId": "r-1", "data": "not base64!"}, "invalid_base64"),
        ({"recordId": "r-1", "data": "QUJDRA"}, "invalid_base64"),  # missing padding
    ],
)
def test_record_without_usable_data_fails(record: dict[str, Any], reason: str) -> None:
    event = make_firehose_event([flow_payload(1)])
    event["records"].insert(0, record)

    with capture_logs() as logs:
        response = run(event)

    assert [result for _, result in results(response)] == ["ProcessingFailed", "Ok"]
    data = record.get("data")
    assert response["records"][0]["data"] == (data if isinstance(data, str) else "")
    assert {"event": "record_failed", "record_id": "r-1", "reason": reason}.items() <= next(
        line for line in logs if line["event"] == "record_failed"
    ).items()


def test_unexpected_error_fails_the_record_not_the_invocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug deep in the pipeline costs one record, logged with its traceback."""

    def explode_on_text(data: bytes, options: Any) -> Any:
        if data.startswith(b"boom"):
            raise KeyError("bug")
        return pipeline.transform_payload(data, options)

    monkeypatch.setattr(firehose_invocation, "transform_payload", explode_on_text)
    event = make_firehose_event([b"boom", flow_payload(1)])

    with capture_logs() as logs:
        response = run(event)

    assert [result for _, result in results(response)] == ["ProcessingFailed", "Ok"]
    failed = next(line for line in logs if line["event"] == "record_failed")
    assert failed["reason"] == "internal_error"
    assert failed["log_level"] == "error"


@pytest.mark.parametrize("event", [None, [], "records", 7])
def test_an_event_that_is_not_an_object_is_an_invalid_event(event: Any) -> None:
    """Found by fuzzing: a non-object event raised AttributeError deep in the handler."""
    firehose.use_settings(make_settings())
    with pytest.raises(firehose.InvalidEventError, match="not an object"):
        handler(event, FakeContext())


def test_record_without_record_id_is_an_invalid_event() -> None:
    with pytest.raises(firehose.InvalidEventError):
        run({"records": [{"data": "AA=="}]})


# --- the summary line -------------------------------------------------------------------------


def test_summary_line_counts_everything() -> None:
    lines = make_flow_lines(4)
    malformed = "2 123456789012 eni-1 this line is short"
    event = make_firehose_event(
        [
            make_cwl_payload([*lines, malformed], log_group=FLOW_GROUP),
            make_control_payload(),
            b"\x1f\x8bnot gzip",
        ]
    )

    with capture_logs() as logs:
        response = run(event)

    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    ok_bytes = len(base64.b64decode(response["records"][0]["data"]))
    raw_sizes = [len(base64.b64decode(record["data"])) for record in event["records"]]
    assert summary == {
        "event": "firehose_invocation_summarized",
        "log_level": "info",
        "records_in": 3,
        "ok": 1,
        "dropped": 1,
        "processing_failed": 1,
        "control_messages": 1,
        "empty_batches": 0,
        "events_out": 5,
        "unparsed_lines": 1,
        "events_filtered": 0,
        "events_sampled": 0,
        "time_unparsed": 0,
        "passthrough": 0,
        "bytes_in": sum(raw_sizes),
        "bytes_out": ok_bytes,
        "response_bytes": summary["response_bytes"],
        "reingested_records": 0,
        "split_records": 0,
        "reingested_pieces": 0,
        "reingested_bytes": 0,
        "reingest_failed_records": 0,
        "partially_reingested_records": 0,
        "demoted_records": 0,
    }
    assert summary["response_bytes"] >= response_size(response) - 4 * 2  # exact, bar separators


# --- the response size limit ------------------------------------------------------------------


def test_entry_size_matches_json_dumps() -> None:
    for record_id, result, data in [
        ("49546986683135544286507457936321625675700192471156785154", "Ok", "QUJD"),
        ('é\u2603\U0001f600"\\', "ProcessingFailed", ""),
        ("", "Dropped", ""),
    ]:
        entry = {"recordId": record_id, "result": result, "data": data}
        assert entry_size(record_id, result, len(data)) == len(json.dumps(entry))  # type: ignore[arg-type]


def test_overflow_is_reingested_with_original_data_and_the_answer_fits() -> None:
    """GIVEN outputs larger than the limit THEN the rest goes back to the source, Dropped."""
    payloads = [flow_payload(40, seed=i * 100) for i in range(12)]
    event = make_firehose_event(payloads)
    limit = 24 * 1024
    settings = make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(limit))
    reingester = RecordingReingester()

    with capture_logs() as logs:
        response = run(event, settings, reingester)

    outcome = [result for _, result in results(response)]
    assert [record["recordId"] for record in response["records"]] == [
        record["recordId"] for record in event["records"]
    ]
    assert "Ok" in outcome and "Dropped" in outcome
    assert response_size(response) <= response_budget(limit)
    dropped = [payloads[i] for i, result in enumerate(outcome) if result == "Dropped"]
    assert reingester.records == [(payload, None) for payload in dropped]
    assert len(reingester.calls) == 1
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["reingested_records"] == len(dropped) == summary["dropped"]
    reingested = next(line for line in logs if line["event"] == "records_reingested")
    assert reingested["records"] == len(dropped)


def test_overflow_keeps_kinesis_partition_keys() -> None:
    payloads = [flow_payload(40, seed=i * 100) for i in range(6)]
    event = make_firehose_event(payloads, kinesis_stream_arn=KINESIS_STREAM_ARN)
    keys = [record["kinesisRecordMetadata"]["partitionKey"] for record in event["records"]]
    reingester = RecordingReingester()

    response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="16384"), reingester)

    dropped = [i for i, (_, result) in enumerate(results(response)) if result == "Dropped"]
    assert dropped
    assert reingester.records == [(payloads[i], keys[i]) for i in dropped]


def test_processing_failed_echoes_are_kept_before_ok_outputs() -> None:
    """Echoing bad records is reserved first: an earlier large Ok overflows instead."""
    bad = b"\x1f\x8b" + b"x" * 3000
    event = make_firehose_event([flow_payload(30), bad])
    reingester = RecordingReingester()

    response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="8192"), reingester)

    assert [result for _, result in results(response)] == ["Dropped", "ProcessingFailed"]
    assert response["records"][1]["data"] == event["records"][1]["data"]
    assert response_size(response) <= 8192


def assert_accounted_for(
    event: dict[str, Any], response: FirehoseResponse, payloads: list[bytes], kept: list[bytes]
) -> None:
    """Every record is Ok, Dropped and put back, or ProcessingFailed with its original data."""
    went_back = []
    for record, payload, entry in zip(event["records"], payloads, response["records"], strict=True):
        assert entry["recordId"] == record["recordId"]
        if entry["result"] == "Dropped":
            went_back.append(payload)
        elif entry["result"] == "ProcessingFailed":
            assert entry["data"] == record["data"]
    assert sorted(went_back) == sorted(kept)


def test_reingestion_failure_answers_processing_failed_with_originals() -> None:
    """GIVEN overflow the source stream refuses THEN the invocation still answers: those
    records are ProcessingFailed with their original data (Firehose backs them up), never
    failing the invocation, which Firehose would retry whole."""
    payloads = [flow_payload(40, seed=i * 100) for i in range(6)]
    event = make_firehose_event(payloads)
    limit = 24 * 1024  # room for every original, not for every output

    with capture_logs() as logs:
        response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(limit)))

    outcome = [result for _, result in results(response)]
    assert "Dropped" not in outcome and "ProcessingFailed" in outcome
    assert_accounted_for(event, response, payloads, [])
    assert response_size(response) <= limit
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["reingested_records"] == 0
    reasons = [line["reason"] for line in logs if line["event"] == "record_failed"]
    assert summary["reingest_failed_records"] == reasons.count("reingest_failed") > 0
    assert set(reasons) <= {"reingest_failed", "answer_full"}


def test_only_the_records_that_did_not_go_back_fail() -> None:
    payloads = [flow_payload(40, seed=i * 100) for i in range(8)]
    event = make_firehose_event(payloads)
    reingester = RecordingReingester(failing=[1, 3])

    response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="16384"), reingester)

    [sent] = reingester.calls
    assert len(sent) >= 4
    outcome = [result for _, result in results(response)]
    assert outcome.count("Dropped") == len(sent) - 2
    assert_accounted_for(event, response, payloads, [data for data, _ in reingester.kept])
    assert response_size(response) <= 16384


def test_ok_records_make_room_for_the_echoes_of_failed_reingestion() -> None:
    """GIVEN a tight answer full of Ok output WHEN re-ingestion fails THEN Ok records become
    ProcessingFailed with their (smaller) original data until the echoes fit."""
    payloads = [flow_payload(60, seed=i * 100) for i in range(6)]
    event = make_firehose_event(payloads)
    limit = 32 * 1024

    with capture_logs() as logs:
        response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(limit)))

    assert response_size(response) <= response_budget(limit)
    assert_accounted_for(event, response, payloads, [])
    reasons = [line["reason"] for line in logs if line["event"] == "record_failed"]
    assert "answer_full" in reasons and "reingest_failed" in reasons
    assert "echo_omitted" not in reasons
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["demoted_records"] == reasons.count("answer_full")
    assert summary["response_bytes"] == response_size(response)


def test_a_split_record_with_a_piece_that_did_not_go_back_is_backed_up_whole() -> None:
    """The bound on duplicates: pieces that went back are delivered, and the original (all
    its events) is backed up for replay; counted as partially re-ingested."""
    payload = make_cwl_payload(make_flow_lines(400), log_group=FLOW_GROUP, log_stream="e")
    event = make_firehose_event([payload])
    reingester = RecordingReingester(failing=[0])

    with capture_logs() as logs:
        response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="32768"), reingester)

    [sent] = reingester.calls
    assert len(sent) >= 2
    [entry] = response["records"]
    assert (entry["result"], entry["data"]) == ("ProcessingFailed", event["records"][0]["data"])
    [summary] = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert summary["partially_reingested_records"] == 1
    assert summary["split_records"] == 0
    assert summary["reingested_pieces"] == len(sent) - 1
    failed = next(line for line in logs if line["event"] == "record_failed")
    assert (failed["pieces"], failed["pieces_reingested"]) == (len(sent), len(sent) - 1)


def test_handler_without_a_source_stream_answers_overflow_as_processing_failed() -> None:
    payloads = [flow_payload(40, seed=i * 100) for i in range(6)]
    event = make_firehose_event(payloads)
    del event["deliveryStreamArn"]
    firehose.use_settings(make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(24 * 1024)))

    with capture_logs() as logs:
        response = handler(event, FakeContext())

    assert "ProcessingFailed" in [result for _, result in results(response)]
    assert_accounted_for(event, response, payloads, [])
    assert any(line["event"] == "reingest_failed" for line in logs)


def _settle(
    payloads: list[bytes], settings: Settings, *, max_rounds: int = 20
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Feed re-ingested records back like Firehose would, until nothing overflows.

    Returns the HEC objects delivered, the results of failed records, and the rounds taken.
    """
    delivered: list[dict[str, Any]] = []
    failed: list[str] = []
    pending = payloads
    for round_number in range(1, max_rounds + 1):
        reingester = RecordingReingester()
        response = run(make_firehose_event(pending), settings, reingester)
        for entry in response["records"]:
            if entry["result"] == "Ok":
                delivered.extend(hec_objects(entry["data"]))
            elif entry["result"] == "ProcessingFailed":
                failed.append(entry["data"])
        pending = [data for data, _key in reingester.records]
        if not pending:
            return delivered, failed, round_number
    raise AssertionError("re-ingestion did not settle")


def test_record_too_large_alone_is_split_into_halves_and_reingested() -> None:
    """GIVEN one record whose output fits in no answer THEN its events go back in halves."""
    lines = make_flow_lines(400)
    payload = make_cwl_payload(lines, log_group=FLOW_GROUP, log_stream="eni-0a1b2c3d")
    limit = 32 * 1024
    settings = make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES=str(limit))
    reingester = RecordingReingester()

    event = make_firehose_event([payload], kinesis_stream_arn=KINESIS_STREAM_ARN)
    key = event["records"][0]["kinesisRecordMetadata"]["partitionKey"]

    with capture_logs() as logs:
        response = run(event, settings, reingester)

    assert [result for _, result in results(response)] == ["Dropped"]
    pieces = reingester.records
    assert len(pieces) >= 2
    original = decode_subscription_batch(payload, max_decompressed_bytes=2**26)
    decoded = [decode_subscription_batch(data, max_decompressed_bytes=2**26) for data, _ in pieces]
    assert [event for piece in decoded for event in piece.events] == list(original.events)
    assert {(piece.log_group, piece.log_stream, piece.owner) for piece in decoded} == {
        (original.log_group, original.log_stream, original.owner)
    }
    assert {piece_key for _, piece_key in pieces} == {key}
    split = next(line for line in logs if line["event"] == "record_dropped")
    assert split["reason"] == "split"
    assert split["pieces"] == len(pieces)

    delivered, failed, _rounds = _settle([payload], settings)
    assert failed == []
    assert [obj["event"] for obj in delivered] == lines


def test_split_settles_even_when_pieces_are_still_too_large() -> None:
    """A piece that is still too large is split again when it comes back: all arrive."""
    # Quotes double in JSON: the first half's output is twice its share of the message
    # bytes, so the first estimate is low and its pieces must be split again later.
    lines = [f"{i:03d}" + '"' * 1500 for i in range(16)] + [
        f"{i:03d}" + "x" * 1500 for i in range(16)
    ]
    payload = make_cwl_payload(lines, log_group="/app/noisy", log_stream="s")

    with capture_logs() as logs:
        delivered, failed, _rounds = _settle(
            [payload], make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="8192"), max_rounds=60
        )

    assert failed == []
    assert sorted(obj["event"] for obj in delivered) == sorted(lines)
    splits = [line for line in logs if line.get("reason") == "split"]
    assert len(splits) >= 2  # the first pieces were split again


def test_single_event_too_large_alone_fails_with_original_data() -> None:
    payload = make_cwl_payload(["y" * 20_000], log_group="/app/huge", log_stream="s")
    event = make_firehose_event([payload, flow_payload(1)])
    reingester = RecordingReingester()

    with capture_logs() as logs:
        response = run(event, make_settings(FIREHOSE_RESPONSE_LIMIT_BYTES="8192"), reingester)

    assert [result for _, result in results(response)] == ["ProcessingFailed", "Ok"]
    assert response["records"][0]["data"] == event["records"][0]["data"]
    assert reingester.calls == []
    assert any(
        line["event"] == "record_failed" and line["reason"] == "event_too_large" for line in logs
    )


# --- the Lambda entry point -------------------------------------------------------------------


class FakeContext:
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def test_handler_loads_settings_once_and_binds_the_request_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("SPLUNK_SOURCETYPE", "custom:default")
    event = make_firehose_event([make_cwl_payload(["hello"], log_group="/app/one", log_stream="s")])

    first = handler(event, FakeContext())
    monkeypatch.setenv("SPLUNK_SOURCETYPE", "changed:later")
    second = handler(event, FakeContext())

    assert first == second
    assert hec_objects(first["records"][0]["data"])[0]["sourcetype"] == "custom:default"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    summaries = [line for line in lines if line["event"] == "firehose_invocation_summarized"]
    assert len(summaries) == 2
    assert {line["aws_request_id"] for line in summaries} == {FakeContext.aws_request_id}
    assert structlog.contextvars.get_contextvars() == {}


def test_handler_fails_loudly_on_bad_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.errors import ConfigError

    monkeypatch.setenv("EVENT_FORMAT", "xml")
    with pytest.raises(ConfigError, match="EVENT_FORMAT"):
        handler(make_firehose_event([]), FakeContext())


def test_importing_and_running_the_handler_does_not_import_boto3() -> None:
    """Cold starts stay light: boto3 arrives only with the first overflow."""
    code = (
        "import sys, base64\n"
        "import transforms.firehose as f\n"
        "assert 'boto3' not in sys.modules, 'imported at import time'\n"
        "event = {'records': [{'recordId': '1', 'data': base64.b64encode(b'hi').decode()}]}\n"
        "assert f.handler(event, None)['records'][0]['result'] == 'Ok'\n"
        "assert 'boto3' not in sys.modules, 'imported by an invocation without overflow'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"LOG_LEVEL": "ERROR", "PATH": ""})
