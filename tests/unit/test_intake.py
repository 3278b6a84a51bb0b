"""forwarder.intake: the one intake of the push Lambda and the daemon, without AWS.

Opening a notified object (replay-failed skip by key and by content, backsplash sniffing),
streaming it as text chunks or as backsplash records, and dispatching payloads, lines and
backsplash records onto one ledger (unprocessable input stored, corrupt records and long
lines counted dropped with their log lines)."""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from config.settings import Settings
from forwarder.backsplash.codec import CorruptLine, DecodedRecord, decode_record, decode_records
from forwarder.backsplash.layout import PROCESSING_FAILED, SPLUNK_FAILED
from forwarder.backsplash.objects import CORRUPT_RECORD
from forwarder.backsplash.writers import LocalSpool, ReplayFailedBacksplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from forwarder.devtools.synthetic import cloudwatch_payload, control_payload
from forwarder.intake.dispatch import Intake, Redeliverers, store_unprocessable
from forwarder.intake.lines import LINE_TOO_LONG, LongLine
from forwarder.intake.notifications import REPLAY_FAILED_CONTENT_HINT, S3Object
from forwarder.intake.objects import (
    OpenedObject,
    SkippedObject,
    backsplash_items,
    object_chunks,
    open_object,
)
from tests.conftest import make_settings
from transforms.options import DropRule, Endpoint, Route, Shaping, TransformOptions
from transforms.records import EncodedEvent, RawTarget

HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"  # noqa: E501
FLOW = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 443 49152 6 10 840 1764000000 1764000060 ACCEPT OK"


class Body:
    """A StreamingBody stand-in: ``read(n)`` and ``close()``."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def close(self) -> None:
        self.closed = True


class FakeS3:
    """``get_object`` over a dict of keys; remembers the bodies it handed out."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.bodies: list[Body] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
        body = Body(self.objects[Key])
        self.bodies.append(body)
        return {"Body": body}


class FakeDeliverer:
    """What Intake uses of a Deliverer: ``ledger`` and ``submit``; submits are recorded."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        self.submitted: list[tuple[int, RawTarget | None]] = []

    def submit(self, events: list[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        self.ledger.add(events_in=len(events))
        self.submitted.append((len(events), raw_target))


def backsplash_line(payload: bytes, **extra: Any) -> bytes:
    record = {
        "attemptsMade": 4,
        "arrivalTimestamp": 1764000000000,
        "errorCode": "Splunk.AckTimeout",
        "errorMessage": "failed",
        "attemptEndingTimestamp": 1764000100000,
        "rawData": base64.b64encode(payload).decode(),
        **extra,
    }
    return json.dumps(record).encode() + b"\n"


def hec_event(text: str) -> bytes:
    return json.dumps({"time": 1764000000, "sourcetype": "t", "event": text}).encode()


# --------------------------------------------------------------------- open_object


def test_replay_failed_key_is_skipped_without_reading() -> None:
    s3 = FakeS3({})
    result = open_object(s3, S3Object("bkt", "root/replay-failed/2026/x.gz"))
    assert isinstance(result, SkippedObject)
    assert "forwarder replay s3://bkt/root/replay-failed/" in result.reason
    assert s3.bodies == []  # not even fetched


def test_replay_failed_content_is_skipped_and_its_body_closed() -> None:
    data = gzip.compress(backsplash_line(hec_event("x"), replayAttempts=1))
    s3 = FakeS3({"other/x.gz": data})
    result = open_object(s3, S3Object("bkt", "other/x.gz"))
    assert result == SkippedObject(REPLAY_FAILED_CONTENT_HINT)
    assert [body.closed for body in s3.bodies] == [True]


@pytest.mark.parametrize(
    ("key", "data", "backsplash", "kind"),
    [
        ("AWSLogs/1/vpcflowlogs/x.log", f"{HEADER}\n{FLOW}\n".encode(), False, None),
        ("a/splunk-failed/x.gz", backsplash_line(hec_event("x")), True, SPLUNK_FAILED),
        ("a/processing-failed/x.gz", b"", True, PROCESSING_FAILED),
        ("no-marker/x.gz", gzip.compress(backsplash_line(hec_event("x"))), True, SPLUNK_FAILED),
    ],
)
def test_open_object_tells_text_from_backsplash(
    key: str, data: bytes, backsplash: bool, kind: str | None
) -> None:
    s3 = FakeS3({key: data})
    opened = open_object(s3, S3Object("bkt", key))
    assert isinstance(opened, OpenedObject)
    assert (opened.backsplash, opened.kind) == (backsplash, kind)
    assert opened.body.read() == data  # the sniffed head comes back: the whole object


def test_open_object_raises_what_s3_raises() -> None:
    with pytest.raises(ClientError):
        open_object(FakeS3({}), S3Object("bkt", "missing.log"))


def test_open_object_closes_the_body_when_sniffing_fails() -> None:
    class Broken(Body):
        def read(self, size: int = -1) -> bytes:
            raise OSError("connection reset")

    body = Broken(b"")

    class S3:
        def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
            return {"Body": body}

    with pytest.raises(OSError, match="connection reset"):
        open_object(S3(), S3Object("bkt", "x.log"))
    assert body.closed


# --------------------------------------------------------------------- reading


def test_object_chunks_stream_gzip_lines_with_the_header_fields_and_close_the_body() -> None:
    body = Body(gzip.compress(f"{HEADER}\n{FLOW}\n\n{FLOW}\r\n".encode()))
    long: list[LongLine] = []
    chunks = list(object_chunks(body, 1, on_long_line=long.append))
    fields = tuple(HEADER.split())
    assert chunks == [([FLOW], fields), ([FLOW], fields)]
    assert long == []
    assert body.closed


def test_object_chunks_close_the_body_on_a_broken_stream() -> None:
    whole = gzip.compress(f"{FLOW}\n".encode() * 1000)
    body = Body(whole[: len(whole) // 2])
    with pytest.raises(ValueError):
        list(object_chunks(body, 10))
    assert body.closed


def test_object_chunks_cap_characters() -> None:
    body = Body(("x" * 10 + "\n").encode() * 6)
    chunks = list(object_chunks(body, 100, max_chars=20))
    assert [len(lines) for lines, _ in chunks] == [2, 2, 2]


def test_backsplash_items_yield_records_and_corrupt_lines() -> None:
    data = backsplash_line(hec_event("a")) + b"{not json\n" + backsplash_line(hec_event("b"))
    body = Body(data)
    opened = OpenedObject(cast(Any, body), True, SPLUNK_FAILED)
    items = list(backsplash_items(opened, TransformOptions()))
    assert [type(item).__name__ for item in items] == ["tuple", "CorruptLine", "tuple"]
    corrupt = items[1]
    assert isinstance(corrupt, CorruptLine) and corrupt.line == 2
    first = items[0]
    assert isinstance(first, tuple) and first[0] == 1 and len(first[1].events) == 1
    assert body.closed


def test_backsplash_items_raise_on_a_broken_stream_after_the_good_records() -> None:
    whole = gzip.compress(backsplash_line(hec_event("a")) * 50)
    body = Body(whole[: len(whole) - 12])
    opened = OpenedObject(cast(Any, body), True, SPLUNK_FAILED)
    got: list[object] = []
    with pytest.raises(ValueError, match=r"^line \d+: "):
        got.extend(backsplash_items(opened, TransformOptions()))
    assert len(got) >= 1
    assert body.closed


# --------------------------------------------------------------------- dispatch


@pytest.fixture(name="settings")
def fixture_settings(tmp_path: Path) -> Settings:
    return make_settings(
        SPLUNK_HEC_URL="http://127.0.0.1:9",
        SPLUNK_HEC_TOKEN="00000000-0000-0000-0000-000000000000",
        BACKSPLASH_SPOOL_DIR=str(tmp_path / "spool"),
    )


@pytest.fixture(name="spool")
def fixture_spool(tmp_path: Path) -> LocalSpool:
    return LocalSpool(tmp_path / "spool")


def spooled(spool: LocalSpool, kind: str) -> list[dict[str, Any]]:
    files = sorted(p for p in spool.directory.rglob("*") if p.is_file() and f"/{kind}/" in str(p))
    return [record for path in files for record in decode_records(path.read_bytes())]


def make_intake(
    settings: Settings, spool: LocalSpool
) -> tuple[Intake, FakeDeliverer, dict[Endpoint, FakeDeliverer]]:
    main = FakeDeliverer()
    others: dict[Endpoint, FakeDeliverer] = {}

    def redeliverer(endpoint: Endpoint, destination: str) -> Deliverer:
        assert destination in settings.destination_names
        return cast(Deliverer, others.setdefault(endpoint, FakeDeliverer(main.ledger)))

    intake = Intake(
        settings, cast(Deliverer, main), spool, redeliverer, log=structlog.get_logger("test")
    )
    return intake, main, others


def test_payload_and_lines_go_to_the_main_deliverer(settings: Settings, spool: LocalSpool) -> None:
    intake, main, _ = make_intake(settings, spool)
    intake.payload(cloudwatch_payload(["one", "two"]))
    intake.lines(
        [FLOW], log_group="bkt", log_stream="k", origin="s3", flow_fields=tuple(HEADER.split())
    )
    assert [count for count, _ in main.submitted] == [2, 1]
    assert main.ledger.events_in == 3


def test_control_message_is_dropped_as_such(settings: Settings, spool: LocalSpool) -> None:
    intake, main, _ = make_intake(settings, spool)
    intake.payload(control_payload())
    assert main.submitted == []
    assert main.ledger.summary()["dropped"] == {"control_message": 1}


def test_unprocessable_payload_is_stored_and_counted(settings: Settings, spool: LocalSpool) -> None:
    intake, main, _ = make_intake(settings, spool)
    with capture_logs() as logs:
        intake.payload(b"\x1f\x8bnot gzip")
    (record,) = spooled(spool, "processing-failed")
    assert base64.b64decode(record["rawData"]) == b"\x1f\x8bnot gzip"
    assert record["errorCode"] == "Transform.DecodeError"
    summary = main.ledger.summary()
    assert (summary["events_in"], summary["backsplashed"], summary["balanced"]) == (1, 1, True)
    assert [entry["event"] for entry in logs] == ["record_unprocessable"]


def test_store_unprocessable_names_its_key(spool: LocalSpool) -> None:
    key = store_unprocessable(
        spool, b"raw", error_code="Transform.DecodeError", message="bad", endpoint="event"
    )
    assert "processing-failed/" in key
    assert [base64.b64decode(r["rawData"]) for r in spooled(spool, "processing-failed")] == [b"raw"]


def decoded(endpoint: Endpoint, events: int, *, control: bool = False) -> DecodedRecord:
    return DecodedRecord(
        kind=SPLUNK_FAILED,
        error_code="Splunk.AckTimeout",
        arrival_ms=None,
        replay_attempts=0,
        endpoint=endpoint,
        events=[EncodedEvent(hec_event(str(i)), None) for i in range(events)],
        raw_target=None,
        payload_bytes=0,
        event_id=None,
        control=control,
    )


def test_backsplash_records_go_to_the_deliverer_of_their_endpoint_on_one_ledger(
    settings: Settings, spool: LocalSpool
) -> None:
    intake, main, others = make_intake(settings, spool)
    intake.backsplash_record(decoded("raw", 2))
    intake.backsplash_record(decoded("event", 1))
    intake.backsplash_record(decoded("raw", 1))
    intake.backsplash_record(decoded("event", 0, control=True))
    assert main.submitted == []
    assert {e: [c for c, _ in d.submitted] for e, d in others.items()} == {
        "raw": [2, 1],
        "event": [1],
    }
    summary = main.ledger.summary()
    # 4 submitted to the re-delivery deliverers, 1 control message counted in and dropped
    assert summary["events_in"] == 5 and summary["dropped"] == {"control_message": 1}


def test_a_record_for_an_unknown_destination_is_stored_under_replay_failed(
    settings: Settings, spool: LocalSpool
) -> None:
    intake, main, others = make_intake(settings, spool)
    record = replace(decoded("event", 2), destination="gone")
    with capture_logs() as logs:
        intake.backsplash_record(record)
    assert others == {}
    stored = spooled(spool, "replay-failed")
    assert len(stored) == 2
    assert {r["errorCode"] for r in stored} == {"Splunk.UnknownDestination"}
    assert {r["destination"] for r in stored} == {"gone"}
    assert {r["replayAttempts"] for r in stored} == {1}
    summary = main.ledger.summary()
    assert (summary["events_in"], summary["backsplashed"], summary["balanced"]) == (2, 2, True)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["backsplash_record_unrouted"]


def test_corrupt_records_and_long_lines_are_counted_dropped_and_logged(
    settings: Settings, spool: LocalSpool
) -> None:
    intake, main, _ = make_intake(settings, spool)
    with capture_logs() as logs:
        intake.corrupt_record("bkt", "a/splunk-failed/x.gz", 3, "not JSON")
        intake.dropped_line("bkt", "flow.log", 7, 9_000_000)
    assert intake.records_corrupt == 1
    assert main.ledger.summary()["dropped"] == {CORRUPT_RECORD: 1, LINE_TOO_LONG: 1}
    corrupt, long = logs
    assert corrupt["event"] == "backsplash_record_corrupt"
    assert (corrupt["key"], corrupt["line"], corrupt["reason"]) == (
        "a/splunk-failed/x.gz",
        3,
        "not JSON",
    )
    assert long["event"] == "line_dropped"
    assert (long["reason"], long["line"], long["bytes"]) == (LINE_TOO_LONG, 7, 9_000_000)


@pytest.fixture(name="redeliverers")
def fixture_redeliverers(settings: Settings, spool: LocalSpool) -> Iterator[Redeliverers]:
    prepared: list[Deliverer] = []
    found = Redeliverers(settings, spool, log=structlog.get_logger("test"), prepare=prepared.append)
    found.prepared = prepared  # type: ignore[attr-defined]
    yield found
    for deliverer in found.clear():
        deliverer.release()


def test_redeliverers_build_one_per_endpoint_writing_replay_failed(
    redeliverers: Redeliverers, spool: LocalSpool
) -> None:
    raw = redeliverers.get("raw")
    assert redeliverers.get("raw") is raw
    event = redeliverers.get("event")
    assert redeliverers.prepared == [raw, event]  # type: ignore[attr-defined]
    assert raw._endpoint == "raw" and event._endpoint == "event"
    assert isinstance(raw._backsplash, ReplayFailedBacksplash)
    assert raw._backsplash.writer is spool
    redeliverers.remove(raw)
    assert redeliverers.all() == [event]
    raw.release()


def test_use_ledger_shares_one_ledger(redeliverers: Redeliverers) -> None:
    ledger = Ledger()
    deliverer = redeliverers.get("event")
    deliverer.use_ledger(ledger)
    assert deliverer.ledger is ledger


def test_shaping_drops_are_counted_on_the_ledger(spool: LocalSpool, tmp_path: Path) -> None:
    """GIVEN a route that drops and samples WHEN a payload comes in THEN the events it removed
    are counted dropped (filtered, sampled) and the ledger balances with the rest."""
    base = make_settings(BACKSPLASH_SPOOL_DIR=str(tmp_path / "spool"))
    route = Route(log_group="*", shaping=Shaping(drop=(DropRule(message="drop*"),), sample=0.0))
    settings = replace(base, transform=replace(base.transform, routes=(route,)))
    intake, main, _ = make_intake(settings, spool)
    intake.payload(cloudwatch_payload(["drop me", "keep", "drop too"]))
    summary = main.ledger.summary()
    assert summary["dropped"] == {"filtered": 2, "sampled": 1}
    assert main.submitted == []
    assert summary["balanced"]


def test_processing_failed_record_counts_what_its_route_drops(
    settings: Settings, spool: LocalSpool
) -> None:
    """GIVEN a processing-failed record re-transformed with a dropping route WHEN dispatched
    THEN its dropped events are counted (filtered) next to the ones submitted."""
    route = Route(log_group="*", shaping=Shaping(drop=(DropRule(message="x*"),)))
    options = replace(settings.transform, routes=(route,))
    (record,) = decode_records(
        backsplash_line(cloudwatch_payload(["x1", "keep", "x2"]), lambdaArn="arn:aws:lambda:f")
    )
    decoded_record = decode_record(record, PROCESSING_FAILED, options)
    assert (decoded_record.filtered, decoded_record.sampled) == (2, 0)
    intake, main, others = make_intake(settings, spool)
    intake.backsplash_record(decoded_record)
    summary = main.ledger.summary()
    assert summary["dropped"] == {"filtered": 2}
    assert summary["events_in"] == 3
    assert [count for count, _ in others["event"].submitted] == [1]
