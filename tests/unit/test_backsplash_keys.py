"""Backsplash keys and records: Firehose's layout, readable back, spool and fallback."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from config.settings import BacksplashSettings
from forwarder.backsplash.codec import Failure, decode_records, encode_records, payload_event_id
from forwarder.backsplash.layout import object_key
from forwarder.backsplash.writers import (
    Backsplash,
    FallbackBacksplash,
    LocalSpool,
    NullBacksplash,
    backsplash_from_settings,
)
from forwarder.errors import BacksplashError
from transforms.records import EncodedEvent, RawTarget

NOW = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def test_object_key_layout() -> None:
    """<prefix>splunk-failed/YYYY/MM/DD/HH/<time-sortable unique>.gz, in UTC."""
    key = object_key(NOW, prefix="logs/", unique="abc")
    assert key == "logs/splunk-failed/2025/03/04/05/forwarder-2025-03-04-05-06-07-890123-abc.gz"
    east = NOW.astimezone(timezone(timedelta(hours=9)))
    assert object_key(east, unique="abc") == object_key(NOW, unique="abc")


def test_object_keys_sort_by_time_and_are_unique() -> None:
    keys = [object_key(NOW + timedelta(microseconds=i)) for i in range(50)]
    assert keys == sorted(keys)
    assert len(set(keys)) == 50
    same = {object_key(NOW) for _ in range(50)}
    assert len(same) == 50


def test_records_have_firehose_fields_and_round_trip() -> None:
    """One JSON line per event; rawData is base64 of the payload; EventId stable."""
    events = [EncodedEvent(b'{"event":"a"}', "3690"), EncodedEvent(b'{"event":"b"}', None)]
    data = encode_records(
        events,
        Failure(
            error_code="Splunk.InvalidToken",
            error_message="HEC 403 code 4: Invalid token",
            attempts=2,
            endpoint="event",
            raw_target=None,
            arrival_ms=1000,
        ),
        ending_ms=2000,
    )
    lines = gzip.decompress(data).decode().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "attemptsMade": 2,
        "arrivalTimestamp": 1000,
        "errorCode": "Splunk.InvalidToken",
        "errorMessage": "HEC 403 code 4: Invalid token",
        "attemptEndingTimestamp": 2000,
        "rawData": base64.b64encode(b'{"event":"a"}').decode(),
        "EventId": "3690",
        "endpoint": "event",
    }
    assert second["EventId"] == payload_event_id(b'{"event":"b"}')
    assert list(decode_records(data)) == [first, second]


def test_raw_records_carry_their_metadata() -> None:
    data = encode_records(
        [EncodedEvent(b"2 123 eni-1 ACCEPT OK", None)],
        Failure(
            error_code="Splunk.AckTimeout",
            error_message="x",
            attempts=1,
            endpoint="raw",
            raw_target=RawTarget("g:s", "aws:cloudwatchlogs:vpcflow", None, "h"),
            arrival_ms=1,
        ),
        ending_ms=2,
    )
    (record,) = decode_records(data)
    assert record["endpoint"] == "raw"
    assert (record["source"], record["sourcetype"], record["host"]) == (
        "g:s",
        "aws:cloudwatchlogs:vpcflow",
        "h",
    )
    assert "index" not in record
    assert base64.b64decode(record["rawData"]) == b"2 123 eni-1 ACCEPT OK"


def test_decode_reads_firehose_objects() -> None:
    """Firehose concatenates records, with or without newlines, gzip or not."""
    records = [{"rawData": "YQ==", "EventId": "1"}, {"rawData": "Yg==", "EventId": "2"}]
    plain = "".join(json.dumps(r) for r in records).encode()
    assert list(decode_records(plain)) == records
    assert list(decode_records(gzip.compress(plain))) == records
    with pytest.raises(ValueError, match="gzip"):
        list(decode_records(b"\x1f\x8bnot gzip"))


def test_payload_event_id_is_stable() -> None:
    assert payload_event_id(b"x") == payload_event_id(b"x") != payload_event_id(b"y")


def test_no_bucket_raises() -> None:
    """Nothing configured: a write fails loudly instead of dropping."""
    with pytest.raises(BacksplashError, match="no backsplash bucket"):
        Backsplash(None, None).write(
            [], Failure(error_code="x", error_message="x", attempts=0, endpoint="event")
        )
    with pytest.raises(BacksplashError, match="no backsplash bucket"):
        NullBacksplash().write(
            [], Failure(error_code="x", error_message="x", attempts=0, endpoint="event")
        )
    assert isinstance(backsplash_from_settings(BacksplashSettings()), NullBacksplash)


def test_local_spool_writes_the_same_format(tmp_path: Path) -> None:
    spool = LocalSpool(tmp_path, "p/", clock=NOW.timestamp)
    key = spool.write(
        [EncodedEvent(b"{}", "1")],
        Failure(
            error_code="Splunk.ServerError", error_message="boom", attempts=3, endpoint="event"
        ),
    )
    assert key.startswith("p/splunk-failed/2025/03/04/05/")
    assert spool.list_keys() == [key]
    (record,) = spool.read(key)
    assert record["attemptsMade"] == 3
    assert record["arrivalTimestamp"] == int(NOW.timestamp() * 1000)
    assert not list(tmp_path.rglob(".tmp-*"))
    spool.remove(key)
    assert spool.list_keys() == []
    with pytest.raises(ValueError, match="escapes"):
        spool.read_bytes("../../etc/passwd")


class BrokenS3:
    def put_object(self, **kwargs: object) -> None:
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


class MemoryS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> None:
        self.objects[Key] = Body


def test_fallback_spools_when_s3_fails_and_drains_later(tmp_path: Path) -> None:
    """S3 down: the object goes to the spool; drain() moves it to S3 under the same key."""
    broken = Backsplash(BrokenS3(), "bucket", sleep=lambda s: None)  # type: ignore[arg-type]
    fallback = FallbackBacksplash(broken, LocalSpool(tmp_path))
    key = fallback.write(
        [EncodedEvent(b"{}", "1")],
        Failure(error_code="x", error_message="y", attempts=1, endpoint="event"),
    )
    assert key.startswith("spool:splunk-failed/")
    memory = MemoryS3()
    healthy = Backsplash(memory, "bucket")  # type: ignore[arg-type]
    assert FallbackBacksplash(healthy, LocalSpool(tmp_path)).drain() == 1
    assert list(memory.objects) == [key.removeprefix("spool:")]
    assert LocalSpool(tmp_path).list_keys() == []


def test_s3_failure_raises_after_bounded_retries() -> None:
    sleeps: list[float] = []
    backsplash = Backsplash(BrokenS3(), "bucket", attempts=3, sleep=sleeps.append)  # type: ignore[arg-type]
    with pytest.raises(BacksplashError, match="EndpointConnectionError"):
        backsplash.write(
            [EncodedEvent(b"{}", None)],
            Failure(error_code="x", error_message="y", attempts=1, endpoint="event"),
        )
    assert len(sleeps) == 2
