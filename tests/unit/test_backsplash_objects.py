"""Backsplash objects named by notifications: recognition, streamed decoding, replay-failed/."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from forwarder.backsplash.codec import CorruptLine, Failure, decode_records
from forwarder.backsplash.layout import (
    PROCESSING_FAILED,
    REPLAY_FAILED,
    SPLUNK_FAILED,
    kind_from_key,
)
from forwarder.backsplash.objects import body_chunks, decode_object, sniff
from forwarder.backsplash.writers import LocalSpool, NullBacksplash, ReplayFailedBacksplash
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.errors import BacksplashError
from transforms.options import TransformOptions
from transforms.records import EncodedEvent, RawTarget


class Body:
    """A StreamingBody stand-in: ``read(n)`` and ``close()``."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def close(self) -> None:
        self.closed = True


def record(payload: bytes, **extra: Any) -> str:
    return json.dumps({"rawData": base64.b64encode(payload).decode(), **extra})


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("splunk-failed/2026/01/01/00/x.gz", SPLUNK_FAILED),
        ("a/b/processing-failed/x.gz", PROCESSING_FAILED),
        ("root/replay-failed/2026/x.gz", REPLAY_FAILED),
        ("root/splunk-failed/replay-failed/x.gz", REPLAY_FAILED),  # the loop guard wins
        ("AWSLogs/1/vpcflowlogs/x.log.gz", None),
        ("splunk-failed.gz", None),
    ],
)
def test_kind_from_key(key: str, kind: str | None) -> None:
    assert kind_from_key(key) == kind


@pytest.mark.parametrize("gz", [True, False])
def test_sniff_recognises_records_and_gives_the_whole_body_back(gz: bool) -> None:
    data = (record(b'{"event":"x"}', EventId="1") + "\n").encode() * 3
    raw = gzip.compress(data) if gz else data
    body, _, _ = sniff(Body(raw), size=16)
    assert b"".join(body_chunks(body, 7)) == raw  # the sniffed head comes back first
    if not gz:  # the first record is not whole: recognised, kind decided per record
        assert sniff(Body(raw), size=40)[1:] == (True, None)
    _, is_backsplash, kind = sniff(Body(raw))
    assert (is_backsplash, kind) == (True, SPLUNK_FAILED)


def test_sniff_kinds_from_the_first_record() -> None:
    processing = record(b"x", lambdaArn="arn:aws:lambda:x").encode()
    assert sniff(Body(processing))[1:] == (True, PROCESSING_FAILED)
    again = record(b"x", replayAttempts=1, endpoint="event").encode()
    assert sniff(Body(again))[1:] == (True, REPLAY_FAILED)


@pytest.mark.parametrize(
    "data",
    [
        b"version account-id interface-id\n2 1 eni-1\n",
        b'{"message": "a JSON log line without rawData"}\n',
        b"",
        b"\x1f\x8bnot gzip at all",
    ],
)
def test_sniff_leaves_other_objects_alone(data: bytes) -> None:
    body, is_backsplash, _ = sniff(Body(data))
    assert not is_backsplash
    assert body.read() == data


def test_decode_object_event_raw_processing_and_corrupt_lines() -> None:
    cwl = cloudwatch_payload(["pf 0", "pf 1"], log_group="/app/pf")
    lines = [
        record(b'{"event":"a"}{"event":"b"}', EventId="e1"),  # Firehose: concatenated events
        "{not json",
        record(b"raw 1\nraw 2\n", endpoint="raw", source="s", sourcetype="st", index="i"),
        json.dumps({"rawData": "%%%"}),
        record(cwl, lambdaArn="arn:aws:lambda:x"),  # processing-failed, kind from the record
        "[1, 2]",
    ]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    items = list(decode_object(iter([data[:10], data[10:]]), None, TransformOptions()))
    corrupt = [item for item in items if isinstance(item, CorruptLine)]
    assert [(c.line, c.fatal) for c in corrupt] == [(2, False), (4, False), (6, False)]
    decoded = [item for item in items if not isinstance(item, CorruptLine)]
    assert [line for line, _ in decoded] == [1, 3, 5]
    event, raw, processing = (d for _, d in decoded)
    assert event.endpoint == "event"
    assert [e.payload for e in event.events] == [b'{"event":"a"}', b'{"event":"b"}']
    assert [e.event_id for e in event.events] == ["e1:0", "e1:1"]
    assert raw.endpoint == "raw"
    assert [e.payload for e in raw.events] == [b"raw 1", b"raw 2"]
    assert raw.raw_target == RawTarget("s", "st", "i", None)
    assert processing.kind == PROCESSING_FAILED
    assert len(processing.events) == 2


def test_decode_object_truncated_gzip_is_fatal_after_the_good_records() -> None:
    data = gzip.compress("\n".join(record(f"r{i}".encode()) for i in range(50)).encode())
    items = list(decode_object(iter([data[:-12]]), SPLUNK_FAILED, TransformOptions()))
    assert isinstance(items[-1], CorruptLine) and items[-1].fatal
    good = [item for item in items if not isinstance(item, CorruptLine)]
    assert len(good) >= 40  # what decoded before the break is handed over first


def test_replay_failed_backsplash_writes_under_replay_failed(tmp_path: Path) -> None:
    spool = LocalSpool(tmp_path, "root/", clock=lambda: 1_764_000_000.0)
    writer = ReplayFailedBacksplash(spool, clock=lambda: 1_764_000_000.0)
    key = writer.write(
        [EncodedEvent(b"raw line", "id-1")],
        Failure(
            error_code="Splunk.Deadline",
            error_message="late",
            attempts=1,
            endpoint="raw",
            raw_target=RawTarget("src", "st", None, None),
        ),
    )
    assert key.startswith("root/replay-failed/2025/11/24/")
    assert kind_from_key(key) == REPLAY_FAILED
    (stored,) = list(decode_records(spool.read_bytes(key)))
    assert stored["replayAttempts"] == 1
    assert (stored["endpoint"], stored["source"], stored["sourcetype"]) == ("raw", "src", "st")
    assert base64.b64decode(stored["rawData"]) == b"raw line"


def test_replay_failed_backsplash_without_a_bucket_raises() -> None:
    writer = ReplayFailedBacksplash(NullBacksplash())
    with pytest.raises(BacksplashError):
        writer.write(
            [EncodedEvent(b"x", None)],
            Failure(
                error_code="Splunk.Deadline", error_message="late", attempts=0, endpoint="event"
            ),
        )
