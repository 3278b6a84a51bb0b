"""Replay and shaping (issue 12): a replay keeps dedup keys (what Splunk indexes after a
backsplash and a replay carries the same ``SPLUNK_DEDUP_FIELD`` values the first attempt
did), and counts the events its routes drop when it re-transforms a payload."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import Backsplash
from forwarder.devtools.emulator import HecEmulator
from forwarder.status import ExitStatus
from tests.integration.conftest import BUCKET, delivery_settings
from tests.integration.test_replay import (
    BASE_MS,
    ROOT,
    do_replay,
    firehose_record,
    hour_key,
    put_object,
)
from transforms.options import DropRule, Route, Shaping
from transforms.pipeline import transform_lines, transform_payload

pytestmark = pytest.mark.integration


def cwl_payload(messages: list[str]) -> bytes:
    events = [
        {"id": f"{i:056d}", "timestamp": 1_764_000_000_000 + i, "message": m}
        for i, m in enumerate(messages)
    ]
    document = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/app/dedup",
        "logStream": "s1",
        "subscriptionFilters": [],
        "logEvents": events,
    }
    return gzip.compress(json.dumps(document).encode())


def keys(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["fields"]["dedup_key"] for p in payloads]


def test_replay_keeps_dedup_keys(emulator: HecEmulator, s3: Any, tmp_path: Path) -> None:
    """GIVEN events with dedup keys backsplashed (ours) and an original payload Firehose could
    not transform WHEN replayed THEN Splunk gets each event with the key it first had."""
    settings = delivery_settings(emulator.url, SPLUNK_DEDUP_FIELD="dedup_key")
    options = settings.transform
    cloudwatch = transform_payload(cwl_payload([f"cw {i}" for i in range(3)]), options)
    lines = transform_lines(
        [f"file line {i}" for i in range(3)], log_group="bucket", log_stream="k", options=options
    )
    first = keys([e.payload for e in cloudwatch.events]) + keys([e.payload for e in lines.events])
    assert first[:3] == [f"{i:056d}" for i in range(3)]
    assert len(set(first[3:])) == 3

    ours = Backsplash(s3, BUCKET, ROOT, sleep=lambda seconds: None)
    for batch in (cloudwatch, lines):
        ours.write(
            list(batch.events),
            Failure(
                error_code="Splunk.AckTimeout",
                error_message="no ack",
                attempts=2,
                endpoint="event",
                arrival_ms=BASE_MS,
            ),
        )
    original = cwl_payload([f"again {i}" for i in range(2)])
    put_object(
        s3,
        hour_key("processing-failed", "stream-1.gz"),
        [firehose_record(original, 0, processing=True, error_code="Lambda.FunctionError")],
    )

    report = do_replay(settings, s3, tmp_path / "replay.sqlite")

    assert report.exit_status == ExitStatus.OK, report.to_dict()
    indexed = {str(e["event"]): e["fields"]["dedup_key"] for e in emulator.indexed_events()}
    assert [indexed[f"cw {i}"] for i in range(3)] == first[:3]
    assert [indexed[f"file line {i}"] for i in range(3)] == first[3:]
    assert [indexed[f"again {i}"] for i in range(2)] == [f"{i:056d}" for i in range(2)]


def test_replay_counts_events_its_routes_drop(
    emulator: HecEmulator, s3: Any, tmp_path: Path
) -> None:
    """GIVEN a processing-failed payload and a route that drops some of its events WHEN
    replayed THEN the rest is indexed and the dropped ones are counted (``filtered``)."""
    base = delivery_settings(emulator.url)
    route = Route(log_group="/app/dedup", shaping=Shaping(drop=(DropRule(message="noise*"),)))
    settings = replace(base, transform=replace(base.transform, routes=(route,)))
    original = cwl_payload(["keep 0", "noise 1", "keep 2", "noise 3"])
    put_object(
        s3,
        hour_key("processing-failed", "stream-2.gz"),
        [firehose_record(original, 0, processing=True, error_code="Lambda.FunctionError")],
    )
    with capture_logs() as logs:
        report = do_replay(settings, s3, tmp_path / "replay.sqlite")
    assert report.exit_status == ExitStatus.OK, report.to_dict()
    assert sorted(str(e["event"]) for e in emulator.indexed_events()) == ["keep 0", "keep 2"]
    (summary,) = [line for line in logs if line["event"] == "delivery_summarized"]
    assert summary["dropped"] == {"filtered": 2}
    assert summary["balanced"]
