"""Every Firehose failure prefix, and replay through Firehose: moto in server mode (S3, SQS,
Firehose), the HEC emulator, real sockets.

Objects are written as Firehose writes them: ``decompression-failed/`` records carry the
original (still gzip) CloudWatch Logs record (Firehose's "Troubleshoot decompression" page),
``format-conversion-failed/`` records spell ``ErrorCode`` with a capital (its "Handling errors
for data format conversion" page), and a custom error prefix names no kind at all.
``--via-firehose`` puts into a real (moto) delivery stream; what the stream wrote to its bucket
is read back and fed through ``transforms.firehose.handler``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from forwarder import push
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, firehose_sink_factory, run
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.replay.engine import replay
from forwarder.replay.options import ReplayOptions
from forwarder.status import ExitStatus
from tests.conftest import boto_client, make_settings
from tests.factories import make_firehose_event
from tests.integration.conftest import BUCKET, FAST, delivery_settings
from transforms import firehose
from transforms.firehose_passthrough import MARKER_KEY

pytestmark = pytest.mark.integration

ROOT = "fh/"
HOUR = "2026/01/01/00"
STREAM = "to-splunk"
STREAM_BUCKET = "firehose-destination"
ARRIVAL_MS = 1767225600000


def failure_record(payload: bytes, n: int, *, code: str, capital: bool = False) -> dict[str, Any]:
    """One failure record as Firehose writes it (``ErrorCode`` capitalised: format conversion)."""
    code_key, message_key = (
        ("ErrorCode", "ErrorMessage") if capital else ("errorCode", "errorMessage")
    )
    return {
        "attemptsMade": 1,
        "arrivalTimestamp": ARRIVAL_MS + n,
        code_key: code,
        message_key: "failed",
        "attemptEndingTimestamp": ARRIVAL_MS + 60_000,
        "rawData": base64.b64encode(payload).decode("ascii"),
    }


def put_records(s3: Any, bucket: str, key: str, records: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(record) + "\n" for record in records)
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body.encode()))


def cwl(group: str, texts: list[str], first_id: int) -> bytes:
    return cloudwatch_payload(texts, log_group=group, first_id=first_id)


def hec_event(text: str) -> bytes:
    return json.dumps(
        {"time": 1767225600.5, "source": "/app/fh", "sourcetype": "aws:cloudwatchlogs",
         "event": text},
        separators=(",", ":"),
    ).encode()  # fmt: skip


def put_failure_prefix_objects(s3: Any, bucket: str = BUCKET) -> dict[str, str]:
    """A decompression-failed object (two good payloads and one that does not decompress), a
    format-conversion-failed one, and one under a custom error prefix naming no kind."""
    keys = {
        "decompression": f"{ROOT}decompression-failed/{HOUR}/d-1.gz",
        "conversion": f"{ROOT}format-conversion-failed/{HOUR}/c-1.gz",
        "custom": f"{ROOT}my-errors/{HOUR}/x-1.gz",
    }
    put_records(
        s3,
        bucket,
        keys["decompression"],
        [
            failure_record(cwl("/app/dc", ["dc 0", "dc 1"], 100), 0, code="Decompression.Failed"),
            failure_record(b"\x1f\x8b\x08\x00broken", 1, code="Decompression.Failed"),
            failure_record(cwl("/app/dc", ["dc 2"], 200), 2, code="Decompression.Failed"),
        ],
    )
    put_records(
        s3,
        bucket,
        keys["conversion"],
        [
            failure_record(
                cwl("/app/fc", ["fc 0"], 300), 0, code="DataFormatConversion.Bad", capital=True
            )
        ],
    )
    put_records(
        s3,
        bucket,
        keys["custom"],
        [failure_record(cwl("/app/cx", ["cx 0", "cx 1"], 400), 0, code="HttpEndpoint.Failed")],
    )
    return keys


EXPECTED = ["dc 0", "dc 1", "dc 2", "fc 0", "cx 0", "cx 1"]


def indexed_texts(emulator: HecEmulator) -> Counter[str]:
    return Counter(str(event["event"]) for event in emulator.indexed_events())


# ------------------------------------------------------------------ replay to HEC


def test_replay_reads_decompression_failed_and_gzip_raw_data_under_any_prefix(
    emulator: HecEmulator, s3: Any, tmp_path: Path
) -> None:
    """GIVEN Firehose's decompression-failed and format-conversion-failed objects and one under
    a custom error prefix WHEN replayed THEN every CloudWatch Logs event inside is indexed once
    (each payload went through the transform), the payload that does not decompress is one
    corrupt record, and the kinds and error codes are reported."""
    put_failure_prefix_objects(s3)
    settings = delivery_settings(emulator.url)
    options = ReplayOptions(state_path=tmp_path / "state.sqlite")

    report = replay(settings, f"s3://{BUCKET}/{ROOT}", options, s3_client=s3)

    assert indexed_texts(emulator) == Counter(EXPECTED)
    assert report.corrupt_total == 1
    assert report.by_kind["decompression-failed"]["records"] == 2
    assert report.by_kind["processing-failed"]["records"] == 2  # recognised by content
    assert set(report.by_error_code) == {
        "Decompression.Failed",
        "DataFormatConversion.Bad",
        "HttpEndpoint.Failed",
    }
    assert report.events_delivered == len(EXPECTED)
    sources = {str(e["source"]) for e in emulator.indexed_events()}
    assert all(source.split(":")[0] in {"/app/dc", "/app/fc", "/app/cx"} for source in sources)


# ------------------------------------------------------------------ the push Lambda's S3 path


@pytest.fixture(name="push_configured")
def fixture_push_configured(s3: Any, aws_endpoint: str) -> Iterator[Any]:
    def configure(emulator: HecEmulator) -> None:
        push.configure(
            delivery_settings(emulator.url),
            client_factory=lambda service: boto_client(service, aws_endpoint),
        )

    yield configure
    push.reset()


def notification(bucket: str, key: str) -> dict[str, Any]:
    body = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
            }
        ]
    }
    return {
        "eventSource": "aws:sqs",
        "messageId": key,
        "receiptHandle": "r",
        "body": json.dumps(body),
    }


class Context:
    aws_request_id = "req-prefixes"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def test_push_redelivers_decompression_failed_and_content_recognised_objects(
    emulator: HecEmulator, s3: Any, push_configured: Any
) -> None:
    """GIVEN S3 notifications naming the decompression-failed object, the format-conversion
    one and the custom-prefix one WHEN the push Lambda handles them THEN their CloudWatch Logs
    events are indexed once each, the undecompressable record is counted corrupt, no message
    fails."""
    push_configured(emulator)
    keys = put_failure_prefix_objects(s3)
    event = {"Records": [notification(BUCKET, key) for key in keys.values()]}

    result = push.handler(event, Context())

    assert result == {"batchItemFailures": []}
    assert indexed_texts(emulator) == Counter(EXPECTED)


# ------------------------------------------------------------------ replay via Firehose


@pytest.fixture(name="delivery_stream")
def fixture_delivery_stream(aws_endpoint: str, s3: Any) -> Iterator[str]:
    """A DirectPut delivery stream into its own bucket (moto writes one object per put)."""
    s3.create_bucket(Bucket=STREAM_BUCKET)
    client = boto_client("firehose", aws_endpoint)
    client.create_delivery_stream(
        DeliveryStreamName=STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
            "BucketARN": f"arn:aws:s3:::{STREAM_BUCKET}",
            "Prefix": "landed/",
        },
    )
    yield STREAM
    client.close()
    firehose.use_settings(None)


def split_records(blob: bytes) -> list[bytes]:
    """The records moto concatenated into one object: gzip members or JSON envelopes."""
    records: list[bytes] = []
    decoder = json.JSONDecoder()
    while blob:
        if blob[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            inflater.decompress(blob)
            consumed = len(blob) - len(inflater.unused_data)
        else:
            text = blob.decode("utf-8")
            _, end = decoder.raw_decode(text)
            consumed = len(text[:end].encode("utf-8"))
        records.append(blob[:consumed])
        blob = blob[consumed:]
    return records


def landed(s3: Any) -> list[bytes]:
    listing = s3.list_objects_v2(Bucket=STREAM_BUCKET, Prefix="landed/").get("Contents", [])
    return [
        record
        for item in sorted(listing, key=lambda item: item["Key"])
        for record in split_records(
            s3.get_object(Bucket=STREAM_BUCKET, Key=item["Key"])["Body"].read()
        )
    ]


def put_replay_objects(s3: Any) -> list[bytes]:
    """Firehose's splunk-failed (three HEC events, two concatenated in one record) and
    processing-failed objects; returns the HEC events."""
    events = [hec_event("sf 0"), hec_event("sf 1"), hec_event("sf 2")]
    splunk_failed = [
        {**failure_record(events[0], 0, code="Splunk.ServerError"), "EventId": "e0"},
        {**failure_record(events[1] + events[2], 1, code="Splunk.AckTimeout"), "EventId": "e1"},
    ]
    put_records(s3, BUCKET, f"{ROOT}splunk-failed/{HOUR}/s-1.gz", splunk_failed)
    processing = {
        **failure_record(cwl("/app/pf", ["pf 0", "pf 1"], 500), 0, code="Lambda.FunctionError"),
        "lambdaArn": "arn:aws:lambda:us-east-1:123456789012:function:transform",
    }
    put_records(s3, BUCKET, f"{ROOT}processing-failed/{HOUR}/p-1.gz", [processing])
    return events


def transformed(records: list[bytes]) -> list[bytes]:
    """What the stream's transform answers for ``records`` (one Ok payload each)."""
    firehose.use_settings(make_settings())
    response = firehose.handler(make_firehose_event(records), Context())
    assert [entry["result"] for entry in response["records"]] == ["Ok"] * len(records)
    return [base64.b64decode(entry["data"]) for entry in response["records"]]


def test_replay_via_firehose_puts_every_record_once_and_the_transform_passes_hec_events_through(
    s3: Any, aws_endpoint: str, delivery_stream: str, tmp_path: Path
) -> None:
    """GIVEN splunk-failed HEC events and a processing-failed CloudWatch Logs payload
    WHEN replayed --via-firehose into a moto delivery stream THEN every HEC event lands once,
    marked, and the original payload lands as it was; fed through the Firehose transform, each
    HEC event comes out byte for byte as it went in (not wrapped again) and the payload becomes
    its events; the state says handed-to-firehose, and a second run puts nothing."""
    events = put_replay_objects(s3)
    settings = make_settings()
    state_path = tmp_path / "state.sqlite"
    options = ReplayOptions(state_path=state_path, via_firehose=delivery_stream)
    factory = firehose_sink_factory(
        delivery_stream, client_factory=lambda service: boto_client(service, aws_endpoint)
    )

    limited = replay(
        settings,
        f"s3://{BUCKET}/{ROOT}",
        replace(options, limit=2),
        s3_client=s3,
        deliverer_factory=factory,
    )
    assert limited.limited and limited.events_delivered == 2
    with sqlite3.connect(state_path) as connection:
        rows = connection.execute("SELECT record_no, events, outcome FROM records").fetchall()
    assert rows == [(0, 1, "handed-to-firehose")]  # the splunk-failed object's first record

    report = replay(
        settings, f"s3://{BUCKET}/{ROOT}", options, s3_client=s3, deliverer_factory=factory
    )

    assert report.exit_status == ExitStatus.OK, report.to_dict()
    assert report.events_delivered == 2  # the rest: the two events of record 1
    records = landed(s3)
    assert len(records) == 4
    marked = [r for r in records if r.startswith(b'{"' + MARKER_KEY.encode())]
    originals = [r for r in records if r[:2] == b"\x1f\x8b"]
    assert len(marked) == 3 and len(originals) == 1
    outputs = transformed(records)
    passed = [out for record, out in zip(records, outputs, strict=True) if record in marked]
    assert Counter(passed) == Counter(events)  # each once, byte for byte: never wrapped twice
    assert all(MARKER_KEY not in out.decode() for out in outputs)
    [made] = [out for record, out in zip(records, outputs, strict=True) if record in originals]
    decoder = json.JSONDecoder()
    shaped, text = [], made.decode()
    while text:
        obj, end = decoder.raw_decode(text)
        shaped.append(obj["event"])
        text = text[end:]
    assert shaped == ["pf 0", "pf 1"]
    with sqlite3.connect(state_path) as connection:
        done = connection.execute("SELECT COUNT(*) FROM objects WHERE status = 'done'").fetchone()
    assert done == (2,)

    again = replay(
        settings, f"s3://{BUCKET}/{ROOT}", options, s3_client=s3, deliverer_factory=factory
    )
    assert again.objects_already_done == 2
    assert len(landed(s3)) == 4


def test_replay_command_via_firehose_needs_no_hec(
    s3: Any, aws_endpoint: str, delivery_stream: str, tmp_path: Path
) -> None:
    """GIVEN no HEC URL WHEN ``forwarder replay --via-firehose STREAM --json`` THEN it puts the
    records through the one AWS client factory and says so; an unknown stream stops the run
    (exit 4) with what was in flight stored under replay-failed/."""
    events = put_replay_objects(s3)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    environ = {k: v for k, v in FAST.items() if not k.startswith("SPLUNK_HEC")}
    args = parser.parse_args(
        [f"s3://{BUCKET}/{ROOT}", "--via-firehose", STREAM, "--state",
         str(tmp_path / "a.sqlite"), "--json", "--no-progress"]
    )  # fmt: skip
    out = io.StringIO()
    status = run(args, CommandContext(args, environ, out))
    data = json.loads(out.getvalue())
    assert status == ExitStatus.OK, data
    assert (data["via_firehose"], data["events_delivered"]) == (STREAM, 4)
    assert len([r for r in landed(s3) if r.startswith(b'{"')]) == len(events)

    missing = parser.parse_args(
        [f"s3://{BUCKET}/{ROOT}", "--via-firehose", "no-such-stream", "--state",
         str(tmp_path / "b.sqlite"), "--json", "--no-progress"]
    )  # fmt: skip
    out = io.StringIO()
    status = run(missing, CommandContext(missing, environ, out))
    data = json.loads(out.getvalue())
    assert status == ExitStatus.HEC_FATAL, data
    assert "ResourceNotFoundException" in data["fatal"]
    stored = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{ROOT}replay-failed/").get("Contents", [])
    assert stored
