"""The S3 backsplash against a moto server: Firehose's layout, read back, failures, the spool."""

from __future__ import annotations

import base64
import gzip
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from config.settings import BacksplashSettings
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import (
    Backsplash,
    FallbackBacksplash,
    LocalSpool,
    backsplash_from_settings,
)
from forwarder.errors import BacksplashError
from tests.conftest import free_port
from tests.integration.conftest import BUCKET, PREFIX
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()


def dead_s3() -> Any:
    """An S3 client pointed at a closed port: every call fails fast."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
    )


def test_write_then_read_back_in_firehose_layout(s3: Any) -> None:
    """Key under <prefix>splunk-failed/YYYY/MM/DD/HH/, gzip JSON lines, fields as Firehose's."""
    backsplash = Backsplash(s3, BUCKET, PREFIX, clock=lambda: NOW)
    events = [EncodedEvent(b'{"event":"one"}', "id-1"), EncodedEvent(b'{"event":"two"}', None)]
    key = backsplash.write(
        events,
        Failure(
            error_code="Splunk.AckTimeout",
            error_message="no ack within 300s",
            attempts=4,
            endpoint="event",
            arrival_ms=1741064000000,
        ),
    )
    assert key.startswith("failed/splunk-failed/2025/03/04/05/")
    assert key.endswith(".gz")
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    lines = gzip.decompress(body).decode().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {
        "attemptsMade",
        "arrivalTimestamp",
        "errorCode",
        "errorMessage",
        "attemptEndingTimestamp",
        "rawData",
        "EventId",
        "endpoint",
    }
    records = list(backsplash.read(key))
    assert [base64.b64decode(r["rawData"]) for r in records] == [e.payload for e in events]
    assert records[0]["EventId"] == "id-1"
    assert records[1]["EventId"] and records[1]["EventId"] != "id-1"
    assert {r["attemptEndingTimestamp"] for r in records} == {int(NOW * 1000)}
    assert list(backsplash.list_keys()) == [key]


def test_raw_metadata_round_trips(s3: Any) -> None:
    backsplash = Backsplash(s3, BUCKET, PREFIX)
    key = backsplash.write(
        [EncodedEvent(b"2 123 eni-1 - - - - - - - 1 2 - NODATA", None)],
        Failure(
            error_code="Splunk.InvalidIndex",
            error_message="HEC 400 code 7: Incorrect index",
            attempts=1,
            endpoint="raw",
            raw_target=RawTarget("g:s", "aws:cloudwatchlogs:vpcflow", "net", None),
        ),
    )
    (record,) = backsplash.read(key)
    assert (record["endpoint"], record["index"], record["source"]) == ("raw", "net", "g:s")


def test_reads_objects_written_by_firehose(s3: Any) -> None:
    """Firehose's own splunk-failed objects (concatenated records) read through the same API."""
    records = [
        {
            "attemptsMade": 1,
            "arrivalTimestamp": 1,
            "errorCode": "Splunk.ProxyWithoutStickySessions",
            "errorMessage": "x",
            "attemptEndingTimestamp": 2,
            "rawData": base64.b64encode(b'{"event":"e"}').decode(),
            "EventId": "49590338271490256608559692538361571095921575989136588898.0",
        }
    ] * 2
    key = f"{PREFIX}splunk-failed/2025/01/01/00/stream-1-2025-01-01-00-00-00-abc"
    s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(r) for r in records).encode())
    assert list(Backsplash(s3, BUCKET, PREFIX).read(key)) == records


def test_unreachable_s3_raises_after_bounded_retries() -> None:
    sleeps: list[float] = []
    backsplash = Backsplash(dead_s3(), BUCKET, PREFIX, attempts=3, sleep=sleeps.append)
    started = time.monotonic()
    with pytest.raises(BacksplashError, match=f"s3://{BUCKET}/{PREFIX}splunk-failed/"):
        backsplash.write(
            [EncodedEvent(b"{}", None)],
            Failure(error_code="x", error_message="y", attempts=1, endpoint="event"),
        )
    assert len(sleeps) == 2
    assert time.monotonic() - started < 10


def test_missing_bucket_raises(s3: Any) -> None:
    backsplash = Backsplash(s3, "no-such-bucket", sleep=lambda s: None)
    with pytest.raises(BacksplashError, match="NoSuchBucket"):
        backsplash.write(
            [EncodedEvent(b"{}", None)],
            Failure(error_code="x", error_message="y", attempts=1, endpoint="event"),
        )


def test_spool_while_s3_is_down_then_drain(s3: Any, tmp_path: Path) -> None:
    """The daemon's fallback: S3 down -> local spool; S3 back -> drained under the same keys."""
    down = FallbackBacksplash(
        Backsplash(dead_s3(), BUCKET, PREFIX, sleep=lambda s: None), LocalSpool(tmp_path, PREFIX)
    )
    key = down.write(
        [EncodedEvent(b'{"event":"kept"}', "7")],
        Failure(
            error_code="Splunk.ServerError", error_message="busy", attempts=9, endpoint="event"
        ),
    )
    assert key.startswith(f"spool:{PREFIX}splunk-failed/")
    up = FallbackBacksplash(Backsplash(s3, BUCKET, PREFIX), LocalSpool(tmp_path, PREFIX))
    assert up.drain() == 1
    stored = key.removeprefix("spool:")
    (record,) = Backsplash(s3, BUCKET, PREFIX).read(stored)
    assert (record["EventId"], record["attemptsMade"]) == ("7", 9)
    assert LocalSpool(tmp_path).list_keys() == []


def test_from_settings(s3: Any, tmp_path: Path) -> None:
    settings = BacksplashSettings(bucket=BUCKET, prefix=PREFIX, spool_dir=str(tmp_path))
    assert isinstance(backsplash_from_settings(settings, s3_client=s3), Backsplash)
    fallback = backsplash_from_settings(settings, s3_client=s3, use_spool=True)
    assert isinstance(fallback, FallbackBacksplash)
