"""Replay's pure parts: streaming record decoding, payload detection, selection, keys, state."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forwarder.backsplash.codec import (
    CorruptLine,
    CorruptRecordError,
    RawRecord,
    decode_record,
    iter_records,
    record_kind,
    split_hec_payload,
)
from forwarder.backsplash.layout import (
    PROCESSING_FAILED,
    SPLUNK_FAILED,
    archive_key,
    key_hour,
    key_kind,
    source_root,
)
from forwarder.replay import state as replay_state
from forwarder.replay.options import ReplayOptions, Selection, parse_s3_uri, parse_time
from forwarder.replay.state import HandledRecords, ReplayState
from forwarder.replay.worker import RateLimiter
from transforms.options import TransformOptions


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def records_of(data: bytes, size: int = 7) -> list[RawRecord | CorruptLine]:
    return list(iter_records(chunks(data, size)))


def firehose_line(payload: bytes, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "attemptsMade": 4,
        "arrivalTimestamp": 1764000000000 + n,
        "errorCode": "Splunk.ServerError",
        "errorMessage": "boom",
        "attemptEndingTimestamp": 1764000100000,
        "rawData": base64.b64encode(payload).decode(),
        "EventId": f"49600000000000000000000000000000000000000000000000000000.{n}",
        **extra,
    }


def cwl_payload(*messages: str, group: str = "/app/web") -> bytes:
    return gzip.compress(
        json.dumps(
            {
                "messageType": "DATA_MESSAGE",
                "owner": "123456789012",
                "logGroup": group,
                "logStream": "s1",
                "subscriptionFilters": ["f"],
                "logEvents": [
                    {"id": f"3{i:055d}", "timestamp": 1764000000000 + i, "message": m}
                    for i, m in enumerate(messages)
                ],
            }
        ).encode()
    )


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("size", [1, 3, 64, 1 << 20])
@pytest.mark.parametrize("compress", [False, True])
def test_records_stream_in_any_chunking(size: int, compress: bool) -> None:
    """Newline-separated records decode the same whatever the chunk size, gzip or plain."""
    lines = [json.dumps({"n": i, "rawData": "YQ=="}) for i in range(50)]
    data = ("\n".join(lines) + "\n").encode()
    if compress:
        data = gzip.compress(data)
    got = records_of(data, size)
    assert [r.data["n"] for r in got if isinstance(r, RawRecord)] == list(range(50))
    assert [r.line for r in got if isinstance(r, RawRecord)] == list(range(1, 51))
    assert [r.record_no for r in got if isinstance(r, RawRecord)] == list(range(50))


def test_concatenated_records_without_newlines() -> None:
    """Firehose may concatenate records with no separator."""
    data = b"".join(json.dumps({"n": i}).encode() for i in range(5))
    got = records_of(data, 5)
    assert [r.data["n"] for r in got if isinstance(r, RawRecord)] == [0, 1, 2, 3, 4]
    assert all(r.line == 1 for r in got)


def test_multi_member_gzip() -> None:
    """Concatenated gzip members (as replay-failed objects may be) read as one stream."""
    data = gzip.compress(b'{"n":1}\n') + gzip.compress(b'{"n":2}\n')
    got = records_of(data, 4)
    assert [r.data["n"] for r in got if isinstance(r, RawRecord)] == [1, 2]


def test_corrupt_lines_are_reported_with_line_numbers_and_reading_goes_on() -> None:
    """GIVEN garbage, a JSON array and a truncated line WHEN read THEN each is a CorruptLine."""
    data = b'{"n":1}\nthis is not json\n[1,2]\n{"n":2}\n{"n":3,"x":\n{"n":4}\n'
    got = records_of(data, 3)
    good = [(r.line, r.data["n"]) for r in got if isinstance(r, RawRecord)]
    bad = [r.line for r in got if isinstance(r, CorruptLine)]
    assert good == [(1, 1), (4, 2), (6, 4)]
    assert bad == [2, 3, 5]


def test_truncated_gzip_yields_what_decoded_then_a_fatal_bad_line() -> None:
    """A gzip object cut short: the records before the cut, then one fatal CorruptLine."""
    body = ("\n".join(json.dumps({"n": i, "pad": "x" * 50}) for i in range(200)) + "\n").encode()
    data = gzip.compress(body)[:-200]
    got = records_of(data, 100)
    assert isinstance(got[-1], CorruptLine) and got[-1].fatal
    assert sum(isinstance(r, RawRecord) for r in got) > 0


def test_empty_object_has_no_records() -> None:
    assert records_of(b"") == []
    assert records_of(gzip.compress(b"")) == []


# ------------------------------------------------------------------ payloads


def test_event_payloads_detected_single_and_concatenated() -> None:
    one = b'{"time":1,"event":"a"}'
    assert split_hec_payload(one) == ("event", [one])
    two = b'{"event":"a"}{"event":{"b":1}}\n'
    assert split_hec_payload(two) == ("event", [b'{"event":"a"}', b'{"event":{"b":1}}'])


def test_raw_payloads_detected() -> None:
    """Text lines, and JSON lines without an ``event`` key (e.g. CloudTrail), are raw."""
    assert split_hec_payload(b"line one\r\nline two\n\n") == ("raw", [b"line one", b"line two"])
    cloudtrail = b'{"eventVersion":"1.08","eventName":"x"}'
    assert split_hec_payload(cloudtrail) == ("raw", [cloudtrail])
    assert split_hec_payload(b'{"event":"a"} trailing') == ("raw", [b'{"event":"a"} trailing'])


def test_stated_endpoint_is_trusted() -> None:
    assert split_hec_payload(b'{"x":1}', "event") == ("event", [b'{"x":1}'])
    assert split_hec_payload(b'{"event":"a"}', "raw") == ("raw", [b'{"event":"a"}'])


def test_decode_firehose_splunk_failed_event_record() -> None:
    payload = b'{"time":1764000000.000,"event":"hello","sourcetype":"s"}'
    decoded = decode_record(firehose_line(payload, 1), SPLUNK_FAILED, TransformOptions())
    assert decoded.endpoint == "event"
    assert [e.payload for e in decoded.events] == [payload]
    assert decoded.events[0].event_id == firehose_line(payload, 1)["EventId"]
    assert decoded.error_code == "Splunk.ServerError"
    assert decoded.arrival_ms == 1764000000001


def test_decode_multi_event_record_gives_distinct_ids() -> None:
    record = firehose_line(b'{"event":"a"}{"event":"b"}', 2)
    decoded = decode_record(record, SPLUNK_FAILED, TransformOptions())
    assert [e.event_id for e in decoded.events] == [
        f"{record['EventId']}:0",
        f"{record['EventId']}:1",
    ]


def test_decode_our_raw_record_keeps_metadata() -> None:
    record = firehose_line(b"2 123 eni-1 ...", 3, endpoint="raw", sourcetype="st", index="main")
    decoded = decode_record(record, SPLUNK_FAILED, TransformOptions())
    assert decoded.endpoint == "raw"
    assert decoded.raw_target is not None
    assert (decoded.raw_target.sourcetype, decoded.raw_target.index) == ("st", "main")
    assert decoded.raw_target.source is None


def test_decode_processing_failed_transforms_the_cloudwatch_payload() -> None:
    record = firehose_line(cwl_payload("one", "two"), 4, lambdaArn="arn:aws:lambda:x")
    del record["EventId"]
    kind = record_kind(record, None)
    assert kind == PROCESSING_FAILED
    decoded = decode_record(record, kind, TransformOptions())
    assert decoded.endpoint == "event"
    assert [json.loads(e.payload)["event"] for e in decoded.events] == ["one", "two"]
    assert all(e.event_id for e in decoded.events)


def test_decode_processing_failed_garbage_is_corrupt() -> None:
    record = firehose_line(b"\x1f\x8bnot really gzip", 5, lambdaArn="arn")
    with pytest.raises(CorruptRecordError):
        decode_record(record, PROCESSING_FAILED, TransformOptions())


@pytest.mark.parametrize("raw_data", [None, 12, "!!not base64!!"])
def test_decode_bad_raw_data_is_corrupt(raw_data: object) -> None:
    record = firehose_line(b"x", 6)
    record["rawData"] = raw_data
    with pytest.raises(CorruptRecordError):
        decode_record(record, SPLUNK_FAILED, TransformOptions())


# ------------------------------------------------------------------ keys and selection


def test_keys_kinds_roots_hours() -> None:
    key = "fh/splunk-failed/2025/11/24/16/stream-1-2025-11-24-16-00-00-abc.gz"
    assert key_kind(key) == ("splunk-failed", "fh/")
    assert key_kind("a/b.gz") == (None, "")
    assert key_hour(key) == datetime(2025, 11, 24, 16, tzinfo=UTC)
    assert key_hour("x/2025/13/01/00/y") is None
    assert source_root("fh/splunk-failed/2025/") == "fh/"
    assert source_root("fh/") == "fh/"
    assert source_root("fh/spl") == "fh/"
    assert source_root("") == ""
    assert archive_key(key, "fh/") == "fh/replayed/" + key.removeprefix("fh/")
    assert parse_s3_uri("s3://b/p/q") == ("b", "p/q")
    with pytest.raises(ValueError, match="s3://"):
        parse_s3_uri("b/p")


def test_parse_time_forms() -> None:
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert parse_time("2h", now) == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert parse_time("2025-01-01T05:00") == datetime(2025, 1, 1, 5, tzinfo=UTC)
    assert parse_time("2025-01-01T05:00Z") == datetime(2025, 1, 1, 5, tzinfo=UTC)
    assert parse_time("1735707600") == datetime(2025, 1, 1, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")


def test_selection_by_time_error_code_and_kind() -> None:
    since = datetime(2025, 1, 1, 10, tzinfo=UTC)
    until = datetime(2025, 1, 1, 12, tzinfo=UTC)
    sel = Selection.of(
        ReplayOptions(
            since=since,
            until=until,
            error_codes=("Splunk.AckTimeout", "Lambda.*"),
            exclude=frozenset({"processing-failed"}),
        )
    )
    ms = int(since.timestamp() * 1000)
    assert sel.time_matches(ms, "k")
    assert not sel.time_matches(ms - 1, "k")
    assert not sel.time_matches(int(until.timestamp() * 1000), "k")
    assert sel.time_matches(None, "p/splunk-failed/2025/01/01/11/x")
    assert not sel.time_matches(None, "p/x")
    assert sel.error_code_matches("Splunk.AckTimeout")
    assert sel.error_code_matches("Lambda.FunctionError")
    assert not sel.error_code_matches("Splunk.ServerError")
    assert not sel.object_may_match("p/processing-failed/2025/01/01/11/x")
    assert not sel.object_may_match("p/splunk-failed/2025/01/01/09/x")  # ended before since
    assert sel.object_may_match("p/splunk-failed/2025/01/01/10/x")
    assert sel.object_may_match("p/splunk-failed/2025/01/01/13/x")  # late writes: slack
    assert not sel.object_may_match("p/splunk-failed/2025/01/01/15/x")
    # a record: every part of the selection at once
    assert sel.record_matches("splunk-failed", "Splunk.AckTimeout", ms, "k")
    assert not sel.record_matches("processing-failed", "Splunk.AckTimeout", ms, "k")
    assert not sel.record_matches("splunk-failed", "Splunk.ServerError", ms, "k")
    assert not sel.record_matches("splunk-failed", "Splunk.AckTimeout", ms - 1, "k")


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        ReplayOptions(include=frozenset({"nope"}))
    with pytest.raises(ValueError, match="since must be before until"):
        ReplayOptions(
            since=datetime(2025, 1, 2, tzinfo=UTC), until=datetime(2025, 1, 1, tzinfo=UTC)
        )


def test_rate_limiter_sleeps_off_the_debt() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(100, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        limiter.acquire(50)
    # 500 events at 100/s with a 100-event bucket: about 4 s of sleeping
    assert sum(slept) == pytest.approx(4.0)


# ------------------------------------------------------------------ state


def test_handled_records_ranges() -> None:
    handled = HandledRecords([0, 1, 2, 5, 6, 9])
    assert handled.ranges == [(0, 2), (5, 6), (9, 9)]
    assert [n in handled for n in range(11)] == [
        True, True, True, False, False, True, True, False, False, True, False,
    ]  # fmt: skip
    assert len(handled) == 6


def test_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.sqlite"
    with ReplayState(path) as state:
        oid = state.begin_object("b", "k", "e", 10, "splunk-failed")
        assert state.begin_object("b", "k", "e", 10, "splunk-failed") == oid
        state.record_chunk(
            oid, [(0, "id0", 1, "delivered"), (1, "id1", 2, "mixed")], delivered=2, failed=1
        )
        assert list(state.handled("b", "k", "e").ranges) == [(0, 1)]
        assert not state.is_done("b", "k", "e")
        assert state.handled("b", "k", "other-etag").ranges == []
        state.finish_object(oid)
        assert state.is_done("b", "k", "e")
        assert state.record_rows("b", "k") == []
        [row] = state.objects()
        assert (row["events_delivered"], row["events_failed"], row["status"]) == (2, 1, "done")
    with ReplayState(path, readonly=True) as readonly:
        assert readonly.is_done("b", "k", "e")
    with ReplayState(tmp_path / "missing.sqlite", readonly=True) as missing:
        assert not missing.is_done("b", "k", "e")
        assert missing.objects() == []
    assert not (tmp_path / "missing.sqlite").exists()


def test_state_opened_by_threads_at_once(tmp_path: Path) -> None:
    """GIVEN a new state file opened by two threads at the same instant, many times
    WHEN each writes THEN none fails: turning a new file into WAL takes an exclusive lock that
    SQLite does not wait for ("database is locked" at once, whatever the busy timeout)."""
    errors: list[BaseException] = []

    def open_and_write(path: Path, barrier: threading.Barrier, n: int) -> None:
        try:
            barrier.wait()
            with ReplayState(path) as state:
                oid = state.begin_object("b", f"k{n}", "e", 1, "splunk-failed")
                state.record_chunk(oid, [(0, f"id{n}", 1, "delivered")], delivered=1, failed=0)
                state.finish_object(oid)
                state.set_disposition(oid, "kept")
        except BaseException as exc:
            errors.append(exc)

    for attempt in range(60):
        path = tmp_path / f"state{attempt}.sqlite"
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=open_and_write, args=(path, barrier, n)) for n in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"attempt {attempt}: {errors!r}"
        with ReplayState(path, readonly=True) as state:
            assert [row["status"] for row in state.objects()] == ["done", "done"]


def test_state_set_up_retries_while_another_process_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a set-up that finds the file locked twice WHEN opened THEN it retries and opens;
    other errors are not retried."""
    real_set_up = replay_state._set_up
    calls: list[str] = []

    def locked_twice(conn: sqlite3.Connection, path: str) -> None:
        calls.append(path)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        real_set_up(conn, path)

    monkeypatch.setattr(replay_state, "_SETUP_RETRY_S", 0.001)
    monkeypatch.setattr(replay_state, "_set_up", locked_twice)
    with ReplayState(tmp_path / "state.sqlite") as state:
        assert state.objects() == []
    assert len(calls) == 3

    def broken(conn: sqlite3.Connection, path: str) -> None:
        calls.append(path)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    monkeypatch.setattr(replay_state, "_set_up", broken)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        ReplayState(tmp_path / "other.sqlite")
    assert len(calls) == 1


def test_state_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with ReplayState(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={replay_state.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ValueError, match="newer than this forwarder"):
        ReplayState(path)
