"""The one backsplash reader (``iter_records``, and ``decode_records``, its strict form) and the
one replay-failed writer (``ReplayFailedBacksplash``), as push, the daemon and replay use them."""

from __future__ import annotations

import base64
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from forwarder.backsplash.codec import (
    MAX_RECORD_CHARS,
    CorruptLine,
    Failure,
    RawRecord,
    decode_records,
    encode_records,
    iter_records,
)
from forwarder.backsplash.layout import REPLAY_FAILED, SPLUNK_FAILED, key_kind
from forwarder.backsplash.writers import (
    Backsplash,
    EventOrigin,
    FallbackBacksplash,
    LocalSpool,
    ReplayFailedBacksplash,
)
from forwarder.errors import BacksplashError
from transforms.records import EncodedEvent, RawTarget

NOW = 1_764_000_000.0  # 2025-11-24T16:00:00Z


def line(n: int) -> bytes:
    return json.dumps({"rawData": base64.b64encode(b"e%d" % n).decode(), "n": n}).encode()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def kinds(items: list[RawRecord | CorruptLine]) -> list[str]:
    return ["ok" if isinstance(item, RawRecord) else "bad" for item in items]


# ------------------------------------------------------------------ the streaming reader


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
@pytest.mark.parametrize("compress", [False, True])
def test_corrupt_lines_cost_only_themselves(size: int, compress: bool) -> None:
    """Not JSON, a JSON array, invalid UTF-8 outside a string: each one CorruptLine with its
    line number, never fatal; the records around them all come through."""
    data = b"\n".join([line(0), b"not json", line(1), b"[1, 2]", b"\xff\xfe{", line(2)]) + b"\n"
    blob = gzip.compress(data, mtime=0) if compress else data
    items = list(iter_records(pieces(blob, size)))
    assert kinds(items) == ["ok", "bad", "ok", "bad", "bad", "ok"]
    bad = [item for item in items if isinstance(item, CorruptLine)]
    assert [(b.line, b.fatal) for b in bad] == [(2, False), (4, False), (5, False)]
    assert [i.data["n"] for i in items if isinstance(i, RawRecord)] == [0, 1, 2]
    assert [i.record_no for i in items if isinstance(i, RawRecord)] == [0, 1, 2]


def test_truncated_gzip_ends_with_one_fatal_corrupt_line() -> None:
    data = gzip.compress(b"\n".join(line(n) for n in range(200)), mtime=0)
    items = list(iter_records(pieces(data[:-20], 1000)))
    assert isinstance(items[-1], CorruptLine) and items[-1].fatal
    assert "truncated" in items[-1].reason
    assert all(isinstance(item, RawRecord) for item in items[:-2])
    cut = items[-2]  # the line the cut went through, if the cut left part of one
    assert isinstance(cut, RawRecord) or not cut.fatal
    assert len(items) > 150  # what inflated before the cut is handed over first


def test_gzip_past_the_inflate_ceiling_is_fatal() -> None:
    data = gzip.compress(b"\n".join(line(n) for n in range(1000)), mtime=0)
    items = list(iter_records([data], max_inflated=4096))
    assert isinstance(items[-1], CorruptLine) and items[-1].fatal
    assert "ceiling" in items[-1].reason


def test_a_huge_line_is_skipped_as_it_streams() -> None:
    """A record longer than MAX_RECORD_CHARS: one CorruptLine (line_too_long), then the next."""
    huge = b'{"rawData": "' + b"A" * (MAX_RECORD_CHARS + (2 << 20)) + b'"}'  # past it by 2 reads
    data = b"\n".join([line(0), huge, line(1)]) + b"\n"
    items = list(iter_records(pieces(data, 1 << 20)))
    assert kinds(items) == ["ok", "bad", "ok"]
    bad = items[1]
    assert isinstance(bad, CorruptLine) and bad.line == 2 and not bad.fatal
    assert bad.reason.startswith("line_too_long")


def test_nesting_too_deep_to_decode_is_one_corrupt_line() -> None:
    """The RecursionError path: a line nested deeper than the recursion limit."""
    depth = sys.getrecursionlimit() * 2
    deep = b'{"a":' * depth + b"1" + b"}" * depth
    items = list(iter_records([line(0) + b"\n" + deep + b"\n" + line(1)]))
    assert kinds(items) == ["ok", "bad", "ok"]
    assert isinstance(items[1], CorruptLine) and "nested too deeply" in items[1].reason


def test_encoded_objects_read_back_record_for_record() -> None:
    events = [EncodedEvent(b'{"event":"a"}', "id-a"), EncodedEvent(b'{"event":"b"}', None)]
    body = encode_records(
        events,
        Failure(
            error_code="Splunk.ServerError",
            error_message="boom",
            attempts=3,
            endpoint="event",
            raw_target=None,
            arrival_ms=1,
        ),
        ending_ms=2,
    )
    items = list(iter_records(pieces(body, 7)))
    assert kinds(items) == ["ok", "ok"]
    assert next(i.data["EventId"] for i in items if isinstance(i, RawRecord)) == "id-a"
    assert [r["rawData"] for r in decode_records(body)] == [
        base64.b64encode(e.payload).decode() for e in events
    ]


def test_one_failure_describes_every_record_of_the_object() -> None:
    """GIVEN a Failure without an arrival time WHEN encoded THEN every line carries its
    fields, and the arrival time is the write time (attemptEndingTimestamp)."""
    failure = Failure(
        "Splunk.InvalidIndex", "HEC 400 code 7", 4, "raw", RawTarget("s", "st", None, None)
    )
    body = encode_records([EncodedEvent(b"a", "1"), EncodedEvent(b"b", "2")], failure, ending_ms=9)
    records = list(decode_records(body))
    assert [
        (
            r["errorCode"],
            r["errorMessage"],
            r["attemptsMade"],
            r["endpoint"],
            r["source"],
            r["sourcetype"],
            r["arrivalTimestamp"],
            r["attemptEndingTimestamp"],
        )
        for r in records
    ] == [("Splunk.InvalidIndex", "HEC 400 code 7", 4, "raw", "s", "st", 9, 9)] * 2
    assert "index" not in records[0]


def test_strict_reader_raises_at_the_first_corrupt_line_after_the_good_ones() -> None:
    data = b"\n".join([line(0), line(1), b"{broken", line(2)])
    read: list[dict[str, Any]] = []
    with pytest.raises(ValueError, match="line 3: not JSON"):
        read.extend(decode_records(data))
    assert [r["n"] for r in read] == [0, 1]


# ------------------------------------------------------------------ the replay-failed writer


def stored(spool: LocalSpool, key: str) -> list[dict[str, Any]]:
    return list(decode_records(spool.read_bytes(key.removeprefix("spool:"))))


def write(writer: ReplayFailedBacksplash, events: list[EncodedEvent]) -> str:
    return writer.write(
        events,
        Failure(
            error_code="Splunk.ServerError", error_message="again", attempts=2, endpoint="event"
        ),
    )


def test_untracked_writer_counts_one_attempt_and_keeps_no_keys(tmp_path: Path) -> None:
    """Push and the daemon: replayAttempts 1, under replay-failed/, nothing remembered."""
    spool = LocalSpool(tmp_path, "root/")
    writer = ReplayFailedBacksplash(spool, clock=lambda: NOW)
    key = write(writer, [EncodedEvent(b'{"event":1}', "e1")])
    assert key_kind(key) == (REPLAY_FAILED, "root/")
    assert key.startswith("root/replay-failed/2025/11/24/16/")
    (record,) = stored(spool, key)
    assert record["replayAttempts"] == 1
    assert record["arrivalTimestamp"] == record["attemptEndingTimestamp"] == int(NOW * 1000)
    assert "replaySource" not in record
    assert writer.keys == [] and writer.failed_records == {} and writer.events_written == 1


def test_tracked_writer_counts_attempts_per_origin_and_forgets_each_chunk(tmp_path: Path) -> None:
    """Replay: each event's previous replayAttempts + 1, its source and original arrival time;
    keys and events failed per record until the chunk is committed."""
    spool = LocalSpool(tmp_path)
    writer = ReplayFailedBacksplash(spool, clock=lambda: NOW, tracked=True)
    known = [EncodedEvent(b'{"event":1}', "e1"), EncodedEvent(b'{"event":2}', "e2")]
    writer.expect(known, EventOrigin(7, 1_700_000_000_000, 2, "s3://b/splunk-failed/x.gz"))
    key = write(writer, [*known, EncodedEvent(b'{"event":3}', "unknown")])
    first, second, third = stored(spool, key)
    assert (first["replayAttempts"], second["replayAttempts"], third["replayAttempts"]) == (3, 3, 1)
    assert first["replaySource"] == "s3://b/splunk-failed/x.gz"
    assert first["arrivalTimestamp"] == 1_700_000_000_000
    assert third["arrivalTimestamp"] == int(NOW * 1000)
    assert writer.keys == [key] and writer.failed_records == {7: 2}
    writer.next_chunk()
    assert writer.keys == [] and writer.failed_records == {}
    write(writer, known)  # origins forgotten with the chunk
    assert writer.failed_records == {} and writer.events_written == 5


class BrokenS3:
    def put_object(self, **kwargs: Any) -> None:
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="https://s3.invalid")


def test_writer_behind_a_fallback_spools_under_replay_failed(tmp_path: Path) -> None:
    broken = Backsplash(BrokenS3(), "bucket", "p/", sleep=lambda s: None)  # type: ignore[arg-type]
    spool = LocalSpool(tmp_path, "p/")
    writer = ReplayFailedBacksplash(FallbackBacksplash(broken, spool), clock=lambda: NOW)
    key = write(writer, [EncodedEvent(b'{"event":1}', "e1")])
    assert key.startswith("spool:p/replay-failed/2025/11/24/16/")
    assert stored(spool, key)[0]["replayAttempts"] == 1


def test_writer_without_a_bucket_raises() -> None:
    writer = ReplayFailedBacksplash(Backsplash(None, None), tracked=True)
    with pytest.raises(BacksplashError):
        write(writer, [EncodedEvent(b"x", None)])
    assert writer.keys == [] and writer.events_written == 0


def test_writer_requeues_below_max_attempts_and_parks_the_rest(tmp_path: Path) -> None:
    """The drain's writer: an event whose new replayAttempts is below ``requeue_below``
    goes back under splunk-failed/ (the drain's pool), the others under replay-failed/;
    both are tracked for the chunk's commit and counted."""
    spool = LocalSpool(tmp_path, "p/")
    writer = ReplayFailedBacksplash(spool, clock=lambda: NOW, tracked=True)
    writer.requeue_below = 3
    young, old = EncodedEvent(b'{"event":1}', "e1"), EncodedEvent(b'{"event":2}', "e2")
    writer.expect([young], EventOrigin(0, None, 1, "s3://b/p/splunk-failed/a.gz"))
    writer.expect([old], EventOrigin(1, None, 2, "s3://b/p/splunk-failed/b.gz"))
    write(writer, [young, old])
    parked, requeued = sorted(writer.keys)
    assert key_kind(requeued) == (SPLUNK_FAILED, "p/")
    assert key_kind(parked) == (REPLAY_FAILED, "p/")
    assert [r["replayAttempts"] for r in stored(spool, requeued)] == [2]
    assert [r["replayAttempts"] for r in stored(spool, parked)] == [3]
    assert writer.failed_records == {0: 1, 1: 1}
    assert (writer.events_requeued, writer.events_abandoned, writer.events_written) == (1, 1, 2)
