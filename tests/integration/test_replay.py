"""``forwarder replay`` end to end: moto S3 in server mode, the HEC emulator, real sockets.

Objects are written the way Firehose writes them (gzip JSON lines: attemptsMade,
arrivalTimestamp, errorCode, errorMessage, attemptEndingTimestamp, rawData, EventId or
lambdaArn) and the way our own backsplash writes them; every test checks what the emulator
indexed, event by event, so a loss or a duplicate shows.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from forwarder.backsplash.codec import decode_records
from forwarder.backsplash.writers import Backsplash, ReplayFailedBacksplash
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, run
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import HecEmulator
from forwarder.replay.engine import replay
from forwarder.replay.options import ReplayOptions
from forwarder.replay.report import ReplayReport
from forwarder.replay.state import ReplayState
from forwarder.replay.worker import default_deliverer_factory
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import BUCKET, FAST, delivery_settings
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration

ROOT = "fh/"
SOURCE = f"s3://{BUCKET}/{ROOT}"
HOUR_MS = 3_600_000
BASE = datetime(2025, 11, 24, 16, tzinfo=UTC)
BASE_MS = int(BASE.timestamp() * 1000)


# ------------------------------------------------------------------ object makers


def hec_event(event_id: str, *, index: str | None = None) -> bytes:
    obj: dict[str, Any] = {
        "time": 1764000000.5,
        "sourcetype": "aws:cloudwatchlogs",
        "source": "/app/web:s1",
        "event": f"message {event_id}",
        "fields": {"event_id": event_id},
    }
    if index is not None:
        obj["index"] = index
    return json.dumps(obj, separators=(",", ":")).encode()


def firehose_record(
    payload: bytes,
    n: int,
    *,
    arrival_ms: int = BASE_MS,
    error_code: str = "Splunk.ServerError",
    processing: bool = False,
) -> dict[str, Any]:
    """One record as Firehose writes it under splunk-failed/ or processing-failed/."""
    record: dict[str, Any] = {
        "attemptsMade": 3 if not processing else 1,
        "arrivalTimestamp": arrival_ms,
        "errorCode": error_code,
        "errorMessage": "The Splunk server failed" if not processing else "Lambda failed",
        "attemptEndingTimestamp": arrival_ms + 60_000,
        "rawData": base64.b64encode(payload).decode("ascii"),
    }
    if processing:
        record["lambdaArn"] = "arn:aws:lambda:us-east-1:123456789012:function:transform:$LATEST"
    else:
        record["EventId"] = f"49546986683135544286507457936321625675700192471156785154.{n}"
    return record


def cwl_payload(prefix: str, count: int, group: str = "/app/worker") -> bytes:
    return gzip.compress(
        json.dumps(
            {
                "messageType": "DATA_MESSAGE",
                "owner": "123456789012",
                "logGroup": group,
                "logStream": "stream-1",
                "subscriptionFilters": ["to-firehose"],
                "logEvents": [
                    {
                        "id": f"{prefix}{i:050d}",
                        "timestamp": 1764000000000 + i,
                        "message": f"cwl {prefix}-{i}",
                    }
                    for i in range(count)
                ],
            }
        ).encode()
    )


def put_object(
    s3: Any,
    key: str,
    records: Sequence[dict[str, Any] | str],
    *,
    compress: bool = True,
    separator: str = "\n",
) -> None:
    """Write records (or literal corrupt lines) the way Firehose does."""
    text = separator.join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"
    body = gzip.compress(text.encode()) if compress else text.encode()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def hour_key(kind: str, name: str, hour: int = 0, *, root: str = ROOT) -> str:
    when = datetime.fromtimestamp((BASE_MS + hour * HOUR_MS) / 1000, UTC)
    return f"{root}{kind}/{when:%Y/%m/%d/%H}/{name}"


def event_ids(emulator: HecEmulator) -> list[str]:
    """What the emulator indexed, one name per event, duplicates included."""
    names = []
    for event in emulator.indexed_events():
        fields = event.get("fields")
        if isinstance(fields, dict) and "event_id" in fields:
            names.append(str(fields["event_id"]))
        else:
            names.append(str(event["event"]))
    return names


def keys_under(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def records_under(s3: Any, prefix: str) -> list[dict[str, Any]]:
    return [
        record
        for key in keys_under(s3, prefix)
        for record in decode_records(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    ]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(name="settings")
def fixture_settings(emulator: HecEmulator) -> Settings:
    return delivery_settings(emulator.url)


@pytest.fixture(name="state_path")
def fixture_state_path(tmp_path: Path) -> Path:
    return tmp_path / "replay.sqlite"


def do_replay(
    settings: Settings, s3: Any, state_path: Path, uri: str = SOURCE, **options: Any
) -> ReplayReport:
    return replay(settings, uri, ReplayOptions(state_path=state_path, **options), s3_client=s3)


@pytest.fixture(name="mixed_objects")
def fixture_mixed_objects(s3: Any) -> list[str]:
    """Every kind and shape; returns the event names the emulator must index, once each."""
    expected: list[str] = []
    # Firehose splunk-failed, gzip, event endpoint; record 2 holds two concatenated events.
    records = []
    for n in range(5):
        names = [f"fe{n}"] if n != 2 else ["fe2a", "fe2b"]
        expected += names
        records.append(firehose_record(b"".join(hec_event(x) for x in names), n))
    put_object(s3, hour_key("splunk-failed", "stream-1-a.gz"), records)
    # Firehose splunk-failed, plain (not gzip), records concatenated, raw endpoint lines.
    raw_records = []
    for n in range(3):
        lines = [f"raw line {n}-{i}" for i in range(2)]
        expected += lines
        raw_records.append(firehose_record(("\n".join(lines) + "\n").encode(), 10 + n))
    put_object(
        s3, hour_key("splunk-failed", "stream-1-b"), raw_records, compress=False, separator=""
    )
    # Firehose processing-failed: the original CloudWatch payload goes through the transform.
    put_object(
        s3,
        hour_key("processing-failed", "stream-1-c.gz"),
        [
            firehose_record(
                cwl_payload("p", 3), 0, processing=True, error_code="Lambda.FunctionError"
            ),
            firehose_record(
                cwl_payload("q", 2), 0, processing=True, error_code="Lambda.FunctionError"
            ),
        ],
    )
    expected += [f"cwl p-{i}" for i in range(3)] + [f"cwl q-{i}" for i in range(2)]
    # Our own backsplash: event payloads and raw payloads with their metadata.
    ours = Backsplash(s3, BUCKET, ROOT, sleep=lambda seconds: None)
    ours.write(
        [EncodedEvent(hec_event(f"ours{i}"), f"ours{i}") for i in range(4)],
        error_code="Splunk.AckTimeout",
        error_message="no ack",
        attempts=2,
        endpoint="event",
        arrival_ms=BASE_MS,
    )
    expected += [f"ours{i}" for i in range(4)]
    ours.write(
        [EncodedEvent(f"our raw {i}".encode(), f"r{i}") for i in range(3)],
        error_code="Splunk.ServerError",
        error_message="503",
        attempts=5,
        endpoint="raw",
        raw_target=RawTarget("my-source", "aws:cloudwatchlogs:vpcflow", None, None),
        arrival_ms=BASE_MS,
    )
    expected += [f"our raw {i}" for i in range(3)]
    return expected


# ------------------------------------------------------------------ tests


def test_every_kind_replayed_once_and_a_second_run_sends_nothing(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, mixed_objects: list[str]
) -> None:
    """GIVEN Firehose's two kinds and ours, gzip and plain, event and raw payloads
    WHEN replayed THEN each event is indexed exactly once; a second run sends nothing."""
    report = do_replay(settings, s3, state_path)
    assert Counter(event_ids(emulator)) == Counter(mixed_objects)
    assert report.exit_status == ExitStatus.OK, report.to_dict()
    assert report.events_delivered == len(mixed_objects)
    assert report.objects_done == 5
    assert set(report.by_kind) == {"splunk-failed", "processing-failed"}
    lambda_row = report.by_error_code["Lambda.FunctionError"]
    assert (lambda_row["records"], lambda_row["events"]) == (2, 5)
    raw = [e for e in emulator.indexed_events() if str(e["event"]).startswith("our raw")]
    assert {e.get("sourcetype") for e in raw} == {"aws:cloudwatchlogs:vpcflow"}
    assert {e.get("source") for e in raw} == {"my-source"}
    assert keys_under(s3, f"{ROOT}replay-failed/") == []
    before = emulator.stats().data_requests

    again = do_replay(settings, s3, state_path)
    assert emulator.stats().data_requests == before
    assert again.events_sent == 0
    assert again.objects_already_done == 5
    assert again.exit_status == ExitStatus.OK
    with ReplayState(state_path, readonly=True) as state:
        assert all(row["status"] == "done" for row in state.objects())


def test_dry_run_counts_and_sends_nothing(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, mixed_objects: list[str]
) -> None:
    """GIVEN objects WHEN dry-run THEN counts by kind and error code, no request, no state."""
    report = do_replay(settings, s3, state_path, dry_run=True)
    assert emulator.stats().requests == 0
    assert not state_path.exists()
    assert report.events_sent == len(mixed_objects)
    assert report.events_delivered == 0
    assert report.by_kind["processing-failed"]["events"] == 5
    assert report.by_kind["splunk-failed"]["events"] == len(mixed_objects) - 5
    assert report.by_error_code["Splunk.AckTimeout"]["events"] == 4
    assert report.exit_status == ExitStatus.OK
    assert "would send" in run_summary(report)


def run_summary(report: ReplayReport) -> str:
    from forwarder.replay.report import format_summary

    return format_summary(report)


def test_corrupt_line_is_reported_with_key_and_line_and_the_object_kept(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path
) -> None:
    """GIVEN an object with a corrupt line and a bad rawData WHEN replayed with --delete
    THEN the good records go, both lines are reported, the object stays, exit 5."""
    key = hour_key("splunk-failed", "corrupt.gz")
    bad_b64 = firehose_record(b"x", 9)
    bad_b64["rawData"] = "%%%"
    put_object(
        s3,
        key,
        [
            firehose_record(hec_event("c0"), 0),
            '{"attemptsMade": 3, "rawData": "trunc',
            firehose_record(hec_event("c1"), 1),
            bad_b64,
        ],
    )
    report = do_replay(settings, s3, state_path, after_success="delete")
    assert sorted(event_ids(emulator)) == ["c0", "c1"]
    assert [(c.key, c.line) for c in report.corrupt] == [(key, 2), (key, 4)]
    assert report.exit_status == ExitStatus.INCOMPLETE
    assert keys_under(s3, key) == [key]
    assert report.objects_kept == 1
    # A second run re-reads the kept object, re-reports, and sends nothing again.
    again = do_replay(settings, s3, state_path)
    assert sorted(event_ids(emulator)) == ["c0", "c1"]
    assert again.corrupt_total == 2
    assert again.records_already_handled == 2


class CrashingFactory:
    """Deliverers that raise on the ``crash_at``-th submit (counted over the run)."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.submits = 0

    def __call__(self, settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Deliverer:
        deliverer = default_deliverer_factory(settings, backsplash=backsplash)
        factory = self
        original = deliverer.submit

        def submit(events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
            factory.submits += 1
            if factory.crash_at is not None and factory.submits == factory.crash_at:
                raise RuntimeError("simulated crash")
            original(events, raw_target)

        deliverer.submit = submit  # type: ignore[method-assign]
        return deliverer


def big_objects(s3: Any, objects: int = 2, per_object: int = 120) -> list[str]:
    names = []
    for o in range(objects):
        records = []
        for n in range(per_object):
            name = f"big{o}-{n}"
            names.append(name)
            records.append(firehose_record(hec_event(name), o * 1000 + n))
        put_object(s3, hour_key("splunk-failed", f"big-{o}.gz"), records)
    return names


@pytest.mark.parametrize("how", ["crash", "stop"])
def test_interrupted_run_resumes_without_loss_or_duplicates(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, how: str
) -> None:
    """GIVEN a run that crashes (or is stopped) midway WHEN run again THEN every event is
    indexed exactly once."""
    names = big_objects(s3)
    options = ReplayOptions(state_path=state_path, chunk_bytes=2000)
    if how == "crash":
        first = replay(
            settings, SOURCE, options, s3_client=s3, deliverer_factory=CrashingFactory(10)
        )
        assert first.error is not None
        assert first.exit_status == ExitStatus.FAILURE
    else:
        stop = threading.Event()

        class StopAfter:
            def update(self, report: ReplayReport, *, final: bool = False) -> None:
                if report.events_sent >= 100:
                    stop.set()

        first = replay(
            settings, SOURCE, options, s3_client=s3, stop_event=stop, progress=StopAfter()
        )
        assert first.interrupted
        assert first.exit_status == ExitStatus.INTERRUPTED
    sent_first = Counter(event_ids(emulator))
    assert 0 < len(sent_first) < len(names)
    assert max(sent_first.values()) == 1

    second = replay(settings, SOURCE, options, s3_client=s3)
    assert second.exit_status == ExitStatus.OK, second.to_dict()
    assert Counter(event_ids(emulator)) == Counter(names)
    done_first = second.objects_already_done * 120  # finished objects are not even read
    assert second.records_already_handled + done_first == len(sent_first)


def test_failures_land_in_replay_failed_and_do_not_loop(s3: Any, state_path: Path) -> None:
    """GIVEN events HEC keeps refusing WHEN replayed repeatedly THEN they go to replay-failed/
    with a growing replayAttempts, never back to splunk-failed/, and stop at max_attempts."""
    with HecEmulator(token=TEST_TOKEN, allowed_indexes={"main"}) as emulator:
        settings = delivery_settings(emulator.url)
        key = hour_key("splunk-failed", "mixed.gz")
        put_object(
            s3,
            key,
            [
                firehose_record(hec_event("good0"), 0),
                firehose_record(hec_event("bad0", index="forbidden"), 1, arrival_ms=BASE_MS + 5),
                firehose_record(hec_event("good1"), 2),
            ],
        )
        first = do_replay(settings, s3, state_path, max_attempts=2)
        assert sorted(event_ids(emulator)) == ["good0", "good1"]
        assert first.events_failed == 1
        assert first.exit_status == ExitStatus.INCOMPLETE
        assert keys_under(s3, f"{ROOT}splunk-failed/") == [key]  # nothing written back there
        [failed] = records_under(s3, f"{ROOT}replay-failed/")
        assert failed["replayAttempts"] == 1
        assert failed["replaySource"] == f"s3://{BUCKET}/{key}"
        assert failed["arrivalTimestamp"] == BASE_MS + 5
        assert failed["errorCode"] == "Splunk.IncorrectIndex" or failed["errorCode"].startswith(
            "Splunk."
        )
        assert json.loads(base64.b64decode(failed["rawData"]))["fields"]["event_id"] == "bad0"
        assert emulator.stats().rejected.get(7) == 1  # the new object was not re-read this run

        second = do_replay(settings, s3, state_path, max_attempts=2)
        assert second.events_sent == 1 and second.events_failed == 1
        attempts = sorted(r["replayAttempts"] for r in records_under(s3, f"{ROOT}replay-failed/"))
        assert attempts == [1, 2]

        third = do_replay(settings, s3, state_path, max_attempts=2)
        assert third.events_sent == 0
        assert third.records_exhausted == 1
        assert third.exit_status == ExitStatus.INCOMPLETE
        assert emulator.stats().rejected.get(7) == 2
        assert sorted(event_ids(emulator)) == ["good0", "good1"]


@pytest.fixture(name="timed_objects")
def fixture_timed_objects(s3: Any) -> None:
    """Records across hours 0-5, with two error codes; a late object (hour 4) holds records
    that arrived in hour 1 (Firehose wrote them after its retries)."""
    for hour in range(6):
        records = [
            firehose_record(
                hec_event(f"h{hour}-{code[7:]}"),
                hour * 10 + i,
                arrival_ms=BASE_MS + hour * HOUR_MS + 1000,
                error_code=code,
            )
            for i, code in enumerate(("Splunk.ServerError", "Splunk.AckTimeout"))
        ]
        put_object(s3, hour_key("splunk-failed", f"t{hour}.gz", hour), records)
    put_object(
        s3,
        hour_key("splunk-failed", "late.gz", 4),
        [firehose_record(hec_event("late-h1"), 99, arrival_ms=BASE_MS + HOUR_MS + 5)],
    )


def test_since_until_select_exactly_by_arrival_time(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, timed_objects: None
) -> None:
    """GIVEN records in hours 0-5 WHEN --since hour 1 --until hour 3 THEN exactly the records
    that arrived in hours 1 and 2 (including the one written late, in hour 4)."""
    since = datetime.fromtimestamp((BASE_MS + HOUR_MS) / 1000, UTC)
    until = datetime.fromtimestamp((BASE_MS + 3 * HOUR_MS) / 1000, UTC)
    report = do_replay(settings, s3, state_path, since=since, until=until)
    assert sorted(event_ids(emulator)) == sorted(
        ["h1-ServerError", "h1-AckTimeout", "h2-ServerError", "h2-AckTimeout", "late-h1"]
    )
    assert report.objects_outside_window == 1  # hour 0 was not even read
    assert report.exit_status == ExitStatus.OK
    # The rest is still there for a later, wider run; nothing is sent twice.
    everything = do_replay(settings, s3, state_path)
    assert len(event_ids(emulator)) == 13
    assert Counter(event_ids(emulator)).most_common(1)[0][1] == 1
    assert everything.objects_already_done == 3  # hours 1, 2 and the late object: all done


def test_error_code_selects_exactly(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, timed_objects: None
) -> None:
    report = do_replay(settings, s3, state_path, error_codes=("Splunk.AckTimeout",))
    assert sorted(event_ids(emulator)) == sorted(f"h{h}-AckTimeout" for h in range(6))
    assert report.records_not_selected == 7
    assert set(report.by_error_code) == {"Splunk.AckTimeout"}
    glob = do_replay(settings, s3, state_path, dry_run=True, error_codes=("Splunk.*",))
    assert glob.events_sent == 7  # the rest, and only the rest


def test_include_exclude_kinds_and_limit(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, mixed_objects: list[str]
) -> None:
    only = do_replay(settings, s3, state_path, include=frozenset({"processing-failed"}))
    assert sorted(event_ids(emulator)) == sorted(
        f"cwl {p}-{i}" for p, n in (("p", 3), ("q", 2)) for i in range(n)
    )
    assert only.exit_status == ExitStatus.OK
    limited = do_replay(settings, s3, state_path, exclude=frozenset({"processing-failed"}), limit=4)
    assert limited.limited
    assert limited.events_sent == 4
    assert len(event_ids(emulator)) == 9


def test_archive_moves_done_objects_under_replayed(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path
) -> None:
    key = hour_key("splunk-failed", "a.gz")
    put_object(s3, key, [firehose_record(hec_event("a0"), 0)])
    report = do_replay(settings, s3, state_path, after_success="archive")
    assert report.objects_archived == 1
    assert keys_under(s3, f"{ROOT}splunk-failed/") == []
    assert keys_under(s3, f"{ROOT}replayed/") == [key.replace(ROOT, f"{ROOT}replayed/", 1)]
    again = do_replay(settings, s3, state_path.with_name("fresh.sqlite"))
    assert again.objects_listed == 0  # replayed/ is never replayed again
    assert event_ids(emulator) == ["a0"]


def test_hec_fatal_stops_and_exits_4(s3: Any, state_path: Path) -> None:
    """GIVEN a token HEC refuses WHEN replayed THEN exit 4, events kept in replay-failed/."""
    with HecEmulator(token="another-token-entirely") as emulator:
        settings = delivery_settings(emulator.url)
        put_object(s3, hour_key("splunk-failed", "a.gz"), [firehose_record(hec_event("x"), 0)])
        report = do_replay(settings, s3, state_path)
        assert report.exit_status == ExitStatus.HEC_FATAL
        assert report.fatal
        assert len(records_under(s3, f"{ROOT}replay-failed/")) == 1


def test_cli_run_with_overrides_and_json(
    emulator: HecEmulator, s3: Any, state_path: Path, mixed_objects: list[str]
) -> None:
    """GIVEN --hec-url/--token flags and --json WHEN run THEN the JSON report, exit 0."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [SOURCE, "--hec-url", emulator.url, "--token", TEST_TOKEN, "--state", str(state_path),
         "--json", "--no-progress", "--concurrency", "2", "--rate-limit", "100000"]
    )  # fmt: skip
    environ = {k: v for k, v in FAST.items() if k != "SPLUNK_HEC_TOKEN"}
    out = io.StringIO()
    status = run(args, CommandContext(args, environ, out))
    data = json.loads(out.getvalue())
    assert status == ExitStatus.OK, data
    assert data["events_delivered"] == len(mixed_objects)
    assert data["exit_status"] == 0
    assert Counter(event_ids(emulator)) == Counter(mixed_objects)

    bad = parser.parse_args([SOURCE, "--since", "not-a-time", "--state", str(state_path)])
    assert run(bad, CommandContext(bad, environ, io.StringIO())) == ExitStatus.USAGE


def test_concurrent_workers_share_a_new_state_file(
    emulator: HecEmulator, s3: Any, settings: Settings, tmp_path: Path
) -> None:
    """GIVEN many small objects and a state file that does not exist yet WHEN replayed by 4
    threads (one chunk per record, so a commit per record) THEN no "database is locked":
    every event is indexed once, every object is done; a second run sends nothing."""
    expected: list[str] = []
    for n in range(24):
        names = [f"many{n}-{i}" for i in range(2)]
        expected += names
        put_object(
            s3,
            hour_key("splunk-failed", f"many-{n:02d}.gz"),
            [firehose_record(hec_event(name), 100 * n + i) for i, name in enumerate(names)],
        )
    for attempt in range(3):
        state_path = tmp_path / f"replay{attempt}.sqlite"
        report = do_replay(settings, s3, state_path, concurrency=4, chunk_bytes=1)
        assert report.error is None, report.error
        assert report.exit_status == ExitStatus.OK, report.to_dict()
        assert report.objects_done == 24
        assert Counter(event_ids(emulator)) == Counter(expected * (attempt + 1))
        with ReplayState(state_path, readonly=True) as state:
            assert [row["status"] for row in state.objects()] == ["done"] * 24
        again = do_replay(settings, s3, state_path, concurrency=4)
        assert again.error is None, again.error
        assert (again.events_sent, again.objects_already_done) == (0, 24)


def test_state_file_records_handled_event_ids_of_partial_objects(
    emulator: HecEmulator, s3: Any, settings: Settings, state_path: Path, timed_objects: None
) -> None:
    do_replay(settings, s3, state_path, error_codes=("Splunk.AckTimeout",))
    with ReplayState(state_path, readonly=True) as state:
        rows = state.record_rows(BUCKET, hour_key("splunk-failed", "t0.gz", 0))
    assert [(no, outcome) for no, _, _, outcome in rows] == [(1, "delivered")]
    assert rows[0][1] == firehose_record(b"", 1)["EventId"]
