"""Hostile S3 objects end to end (moto server, the HEC emulator): a 100,000-deep JSON line in
a backsplash object and a 400 MB line in a ~0.4 MB flow-log gzip are one line's problem each,
counted, with every good line before and after them delivered, by the push Lambda (SQS of
S3), the daemon's sqs-s3 source and ``forwarder replay``; and each of their readers keeps
its peak memory bounded on the 400 MB line, measured in a subprocess."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from config.settings import Settings
from forwarder import push
from forwarder.backsplash.objects import CORRUPT_RECORD
from forwarder.devtools.emulator import HecEmulator
from forwarder.intake.lines import LINE_TOO_LONG
from forwarder.replay.engine import replay
from forwarder.replay.options import ReplayOptions
from tests.integration.conftest import BUCKET, delivery_settings
from tests.integration.test_daemon import queue_counts, running, sqs_daemon, wait_for
from tests.integration.test_push import (
    FLOW_BUCKET,
    HEADER,
    FakeContext,
    firehose_record,
    fixture_configure,
    hec_event,
    s3_body,
    sqs_event,
)
from tests.integration.test_replay import SOURCE, event_ids, hour_key, put_object
from tests.integration.test_replay import firehose_record as replay_record
from tests.integration.test_replay import hec_event as replay_event
from tests.unit.test_hostile_objects import DEEP, LONG_LINE_BYTES, bomb, good

pytestmark = pytest.mark.integration

__all__ = ["fixture_configure"]  # the push container fixture, shared

DEEP_KEY = "firehose/splunk-failed/2026/01/01/00/deep.gz"
LONG_KEY = "AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/01/01/long.log.gz"
FLOW = (
    "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 52.94.1.{n} 49152 443 6 10 8400 "
    "1764000000 1764000060 ACCEPT OK"
)


def put_hostile_objects(s3: Any) -> None:
    """A backsplash object: good, 100,000-deep, good; a flow-log gzip of ~0.4 MB: header,
    good, one 400 MB line, good."""
    s3.create_bucket(Bucket=FLOW_BUCKET)
    lines = [firehose_record(hec_event("before deep")), DEEP, firehose_record(hec_event("after"))]
    body = gzip.compress(("\n".join(lines) + "\n").encode())
    s3.put_object(Bucket=FLOW_BUCKET, Key=DEEP_KEY, Body=body)
    data = bomb(
        LONG_LINE_BYTES,
        prefix=f"{HEADER}\n{FLOW.format(n=1)}\n".encode(),
        suffix=f"\n{FLOW.format(n=2)}\n".encode(),
    )
    assert len(data) < 1024 * 1024
    s3.put_object(Bucket=FLOW_BUCKET, Key=LONG_KEY, Body=data)


def assert_good_lines_indexed(emulator: HecEmulator) -> None:
    texts = sorted(str(event["event"]) for event in emulator.indexed_events())
    assert texts == sorted(["before deep", "after", FLOW.format(n=1), FLOW.format(n=2)])


def test_push_delivers_around_a_deep_line_and_a_400_mb_line(
    emulator: HecEmulator, configure: Any, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN an SQS batch naming both objects WHEN the push handler runs THEN no item
    fails, the four good lines are indexed, the deep line is dropped as a corrupt record and
    the long one as line_too_long, and the ledger balances."""
    configure(emulator)
    put_hostile_objects(s3)
    event = sqs_event([s3_body(FLOW_BUCKET, DEEP_KEY), s3_body(FLOW_BUCKET, LONG_KEY)])

    result = push.handler(event, FakeContext(remaining_ms=120_000))

    assert result == {"batchItemFailures": []}
    assert_good_lines_indexed(emulator)
    output = capsys.readouterr()
    entries = [json.loads(x) for x in (output.out + output.err).splitlines() if x.startswith("{")]
    (summary,) = [e for e in entries if e.get("event") == "push_invocation_summarized"]
    assert summary["balanced"] and summary["acknowledged"] == 4
    assert summary["dropped"] == {CORRUPT_RECORD: 1, LINE_TOO_LONG: 1}
    (corrupt,) = [e for e in entries if e.get("event") == "backsplash_record_corrupt"]
    assert (corrupt["key"], corrupt["line"]) == (DEEP_KEY, 2)
    (long_line,) = [e for e in entries if e.get("event") == "line_dropped"]
    assert (long_line["key"], long_line["line"], long_line["bytes"]) == (
        LONG_KEY,
        3,
        LONG_LINE_BYTES,
    )


def test_daemon_delivers_around_a_deep_line_and_a_400_mb_line(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN a queue naming both objects WHEN the daemon runs THEN it stays up, the four good
    lines are indexed, both messages are deleted, and the ledger counts one corrupt record and
    one line_too_long."""
    put_hostile_objects(s3)
    bodies = [s3_body(FLOW_BUCKET, DEEP_KEY), s3_body(FLOW_BUCKET, LONG_KEY)]
    daemon, sqs, url = sqs_daemon(emulator, tmp_path, aws_endpoint, bodies)
    ledger = daemon.deliverer.ledger
    with structlog.testing.capture_logs() as logs, running(daemon) as status:
        wait_for(lambda: ledger.acknowledged == 4, timeout=120, what="acks")
        wait_for(lambda: queue_counts(sqs, url) == (0, 0), timeout=60, what="messages deleted")
        summary = ledger.summary()
    assert status == [0]
    assert_good_lines_indexed(emulator)
    assert summary["balanced"]
    assert summary["dropped"] == {"backsplash_record_corrupt": 1, LINE_TOO_LONG: 1}
    (long_line,) = [e for e in logs if e["event"] == "line_dropped"]
    assert (long_line["key"], long_line["line"]) == (LONG_KEY, 3)


@pytest.fixture(name="replay_settings")
def fixture_replay_settings(emulator: HecEmulator) -> Settings:
    return delivery_settings(emulator.url)


def test_replay_delivers_around_a_deep_line_and_a_400_mb_record(
    emulator: HecEmulator, s3: Any, replay_settings: Settings, tmp_path: Path
) -> None:
    """GIVEN backsplash objects holding a 100,000-deep line and a 400 MB record, each between
    good ones WHEN replayed THEN the run goes on to the end, every good record is delivered,
    both bad lines are reported with key and line, and a second run sends nothing again."""
    deep_key = hour_key("splunk-failed", "deep.gz")
    put_object(
        s3,
        deep_key,
        [replay_record(replay_event("d0"), 0), DEEP, replay_record(replay_event("d1"), 1)],
    )
    long_key = hour_key("splunk-failed", "long.gz")
    first = json.dumps(replay_record(replay_event("l0"), 2))
    last = json.dumps(replay_record(replay_event("l1"), 3))
    data = bomb(
        LONG_LINE_BYTES,
        prefix=f'{first}\n{{"rawData": "'.encode(),
        suffix=f'"}}\n{last}\n'.encode(),
    )
    s3.put_object(Bucket=BUCKET, Key=long_key, Body=data)
    options = ReplayOptions(state_path=tmp_path / "replay.sqlite")

    report = replay(replay_settings, SOURCE, options, s3_client=s3)

    assert report.error is None
    assert sorted(event_ids(emulator)) == ["d0", "d1", "l0", "l1"]
    assert sorted((c.key, c.line) for c in report.corrupt) == [(deep_key, 2), (long_key, 2)]
    assert report.corrupt_total == 2
    assert report.objects_partial == 2
    again = replay(replay_settings, SOURCE, options, s3_client=s3)
    assert again.error is None
    assert sorted(event_ids(emulator)) == ["d0", "d1", "l0", "l1"]


# --------------------------------------------------------------------- memory, measured

PEAK_LIMIT_BYTES = 150 * 1024 * 1024

_MEASURE = r"""
import json, sys, tracemalloc
from forwarder import push
from forwarder.intake.lines import read_chunks
from forwarder.intake.objects import object_chunks
from forwarder.backsplash.objects import decode_object
from forwarder.backsplash.codec import iter_records, RawRecord, CorruptLine
from transforms.options import TransformOptions

path, which = sys.argv[1], sys.argv[2]


class Body:
    def __init__(self):
        self._file = open(path, "rb")

    def read(self, size=-1):
        return self._file.read(size)

    def close(self):
        self._file.close()


tracemalloc.start()
good, long = [], []
if which == "push":
    for lines, _ in object_chunks(Body(), push.CHUNK_LINES, on_long_line=long.append):
        good.extend(lines)
elif which == "sqs-s3":
    for lines, _ in object_chunks(Body(), 100, on_long_line=long.append):
        good.extend(lines)
elif which == "replay":
    for item in iter_records(read_chunks(Body(), 1 << 20)):
        (good if isinstance(item, RawRecord) else long).append(item.line)
else:
    chunks = iter(read_chunks(Body(), 1 << 20))
    for item in decode_object(chunks, "splunk-failed", TransformOptions()):
        (long if hasattr(item, "reason") else good).append(1)
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"peak": peak, "good": len(good), "long": len(long)}))
"""


@pytest.fixture(name="bomb_files", scope="module")
def fixture_bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A flow-log object and a backsplash object, each ~0.4 MB of gzip holding one 400 MB
    line between good ones."""
    folder = tmp_path_factory.mktemp("bombs")
    flow = folder / "flow.log.gz"
    line = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 443 49152 6 1 40 1764000000 1764000060 ACCEPT OK"
    flow.write_bytes(
        bomb(LONG_LINE_BYTES, prefix=f"{line}\n".encode(), suffix=f"\n{line}\n".encode())
    )
    records = folder / "records.gz"
    records.write_bytes(
        bomb(
            LONG_LINE_BYTES,
            prefix=f'{good("before")}\n{{"rawData": "'.encode(),
            suffix=f'"}}\n{good("after")}\n'.encode(),
        )
    )
    return {"text": flow, "records": records}


@pytest.mark.parametrize(
    ("which", "kind"),
    [("push", "text"), ("sqs-s3", "text"), ("replay", "records"), ("backsplash", "records")],
)
def test_a_400_mb_line_costs_bounded_memory(
    bomb_files: dict[str, Path], which: str, kind: str
) -> None:
    """GIVEN ~0.4 MB of gzip holding one 400 MB line between two good lines
    WHEN read by the push Lambda's, the daemon's sqs-s3, replay's or the backsplash reader
    THEN the peak of Python allocations stays under 150 MB, both good lines come out and the
    long line is reported once."""
    path = bomb_files[kind]
    assert path.stat().st_size < 1024 * 1024
    answer = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), which],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    result = json.loads(answer.stdout)
    assert (result["good"], result["long"]) == (2, 1)
    assert result["peak"] < PEAK_LIMIT_BYTES, result
