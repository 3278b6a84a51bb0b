"""The delivery facade (forwarder.delivery.destinations) on `responses`: one deliverer per
destination, each its own HEC, token, backsplash prefix and ledger row; a fatal token error
on one leaves the others delivering."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import responses
from structlog.testing import capture_logs

from config.settings import DestinationSettings, Settings
from forwarder.backsplash.codec import Failure, decode_records, encode_records
from forwarder.backsplash.writers import (
    Backsplash,
    DestinationBacksplash,
    FallbackBacksplash,
    LocalSpool,
    NullBacksplash,
    with_prefix,
)
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.destinations import (
    Destinations,
    build_delivery,
    keeps_delivering,
    member,
)
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.replay.chunks import _why_unrouted
from forwarder.replay.options import ReplayOptions
from tests.conftest import TEST_TOKEN, make_settings
from transforms.records import EncodedEvent

MAIN = "https://main.example.com:8088"
SEC = "https://sec.example.com:8088"
SEC_TOKEN = "sec-token-0001"
SUCCESS = json.dumps({"text": "Success", "code": 0})
REVOKED = json.dumps({"text": "Invalid token", "code": 4})


class MemoryBacksplash:
    """Keeps (event id, error code, destination) of every backsplashed event."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, str, str | None]] = []

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        self.records.extend((e.event_id, failure.error_code, failure.destination) for e in events)
        return f"memory/{len(self.records)}"


def events(prefix: str, count: int) -> list[EncodedEvent]:
    return [
        EncodedEvent(json.dumps({"event": f"{prefix}{i}"}).encode(), f"{prefix}{i}")
        for i in range(count)
    ]


def two_destinations(**environ: str) -> Settings:
    base = make_settings(
        SPLUNK_HEC_URL=MAIN,
        SPLUNK_HEC_TOKEN=TEST_TOKEN,
        SPLUNK_HEC_ACK="false",
        SPLUNK_HEC_RETRY_DURATION="0",
        **environ,
    )
    security = DestinationSettings(
        name="security",
        hec=replace(base.hec, urls=(SEC,), token=SEC_TOKEN),
        acks=base.acks,
        backsplash_prefix="sec/",
    )
    return replace(base, destinations=(security,))


def sent_events(request: requests.PreparedRequest) -> list[str]:
    body = request.body
    assert isinstance(body, bytes)
    return [json.loads(line)["event"] for line in gzip.decompress(body).split(b"\n") if line]


def test_without_destinations_it_is_the_one_deliverer() -> None:
    settings = make_settings(SPLUNK_HEC_URL=MAIN, SPLUNK_HEC_TOKEN=TEST_TOKEN)
    delivery = build_delivery(settings, backsplash=MemoryBacksplash(), pipelined=False)
    try:
        assert type(delivery) is Deliverer
        assert member(delivery, "default") is delivery
        assert not keeps_delivering(delivery)
        assert "destinations" not in delivery.ledger.summary()
    finally:
        delivery.release()


@responses.activate
def test_each_destination_gets_its_events_with_its_own_token() -> None:
    responses.add(responses.POST, f"{MAIN}/services/collector/event", status=200, body=SUCCESS)
    responses.add(responses.POST, f"{SEC}/services/collector/event", status=200, body=SUCCESS)
    backsplash = MemoryBacksplash()
    delivery = build_delivery(two_destinations(), backsplash=backsplash, pipelined=False)
    assert isinstance(delivery, Destinations)
    assert delivery.names == ("default", "security")
    assert delivery.urls == (MAIN, SEC)
    member(delivery, "default").submit(events("m", 3))
    delivery.submit(events("s", 2), destination="security")
    delivery.close(summarize=False)

    by_host = {
        str(call.request.url).split("/services")[0]: call.request for call in responses.calls
    }
    assert sent_events(by_host[MAIN]) == ["m0", "m1", "m2"]
    assert sent_events(by_host[SEC]) == ["s0", "s1"]
    assert by_host[MAIN].headers["Authorization"] == f"Splunk {TEST_TOKEN}"
    assert by_host[SEC].headers["Authorization"] == f"Splunk {SEC_TOKEN}"
    summary = delivery.ledger.summary()
    assert summary["events_in"] == 5 and summary["acknowledged"] == 5 and summary["balanced"]
    rows = summary["destinations"]
    assert rows["default"]["acknowledged"] == 3 and rows["default"]["balanced"]
    assert rows["security"]["acknowledged"] == 2 and rows["security"]["balanced"]
    assert backsplash.records == []
    assert delivery.fatal is None


@responses.activate
def test_a_revoked_token_stops_only_its_destination() -> None:
    responses.add(responses.POST, f"{MAIN}/services/collector/event", status=200, body=SUCCESS)
    responses.add(responses.POST, f"{SEC}/services/collector/event", status=403, body=REVOKED)
    backsplash = MemoryBacksplash()
    delivery = build_delivery(
        two_destinations(SPLUNK_HEC_BATCH_MAX_EVENTS="2"), backsplash=backsplash, pipelined=False
    )
    assert isinstance(delivery, Destinations)
    delivery.submit(events("s", 2), destination="security")
    delivery.submit(events("m", 2))
    assert delivery.fatal is not None  # exit status HEC_FATAL
    assert set(delivery.fatal_destinations) == {"security"}
    assert keeps_delivering(delivery)
    delivery.submit(events("t", 2), destination="security")  # straight to the backsplash
    delivery.submit(events("n", 2))  # the default destination goes on
    delivery.close(summarize=False)

    summary = delivery.ledger.summary()
    assert summary["balanced"] and summary["events_in"] == 8
    rows = summary["destinations"]
    assert (rows["default"]["acknowledged"], rows["default"]["backsplashed"]) == (4, 0)
    assert (rows["security"]["acknowledged"], rows["security"]["backsplashed"]) == (0, 4)
    assert {(code, dest) for _, code, dest in backsplash.records} == {
        ("Splunk.InvalidToken", "security")
    }
    assert sorted(str(i) for i, _, _ in backsplash.records) == ["s0", "s1", "t0", "t1"]


def test_use_ledger_moves_every_destination_to_rows_of_the_new_ledger() -> None:
    delivery = build_delivery(two_destinations(), backsplash=MemoryBacksplash(), pipelined=False)
    try:
        assert isinstance(delivery, Destinations)
        ledger = Ledger()
        delivery.use_ledger(ledger)
        assert delivery.ledger is ledger
        assert delivery.member("security").ledger is ledger.destination("security")
        ledger.destination("security").add(events_in=2, acknowledged=2)
        ledger.drop("control_message")
        summary = ledger.summary()
        assert summary["events_in"] == 3 and summary["balanced"]
        assert summary["destinations"]["security"]["events_in"] == 2
        with pytest.raises(KeyError):
            delivery.submit(events("x", 1), destination="nowhere")
    finally:
        delivery.release()


def test_the_destination_is_recorded_in_the_backsplash_record_and_read_back() -> None:
    inner: list[bytes] = []

    class Capture:
        def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
            inner.append(encode_records(events, failure, ending_ms=1))
            return "k"

    writer = DestinationBacksplash(Capture(), "security", None)
    failure = Failure("Splunk.InvalidToken", "refused", 1, "event")
    writer.write(events("s", 1), failure)
    (record,) = decode_records(inner[0])
    assert record["destination"] == "security"
    # The default destination's records stay as they always were.
    (plain,) = decode_records(encode_records(events("m", 1), failure, ending_ms=1))
    assert "destination" not in plain
    default = replace(failure, destination="default")
    (named_default,) = decode_records(encode_records(events("m", 1), default, ending_ms=1))
    assert "destination" not in named_default


def test_with_prefix_copies_bucket_and_spool_writers(tmp_path: Path) -> None:
    bucket = Backsplash(None, "bucket", "main/")
    moved = with_prefix(bucket, "sec/")
    assert isinstance(moved, Backsplash) and moved.prefix == "sec/" and bucket.prefix == "main/"
    spool = LocalSpool(str(tmp_path), "main/")
    both = with_prefix(FallbackBacksplash(bucket, spool), "sec/")
    assert isinstance(both, FallbackBacksplash)
    assert (both.primary.prefix, both.spool.prefix) == ("sec/", "sec/")
    assert spool.prefix == "main/"
    null = NullBacksplash()
    assert with_prefix(null, "sec/") is null


def test_replay_parks_what_it_cannot_route(tmp_path: Path) -> None:
    settings = two_destinations()
    plain = ReplayOptions(state_path=tmp_path / "state.sqlite")
    assert _why_unrouted("default", settings, plain) is None
    assert _why_unrouted("security", settings, plain) is None
    assert _why_unrouted("gone", settings, plain) == "no [destinations.gone] in the settings"
    via = replace(plain, via_firehose="splunk-delivery")
    assert _why_unrouted("default", settings, via) is None
    # Firehose delivers to its one Splunk: another estate's events are parked, not sent there.
    assert _why_unrouted("security", settings, via) == (
        "--via-firehose reaches the default destination only, not security"
    )


class FailingBacksplash:
    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        raise BacksplashError("bucket unreachable")


@responses.activate
def test_a_failed_backsplash_on_close_releases_every_destination_and_still_summarizes() -> None:
    responses.add(responses.POST, f"{MAIN}/services/collector/event", status=200, body=SUCCESS)
    responses.add(responses.POST, f"{SEC}/services/collector/event", status=403, body=REVOKED)
    delivery = build_delivery(two_destinations(), backsplash=FailingBacksplash(), pipelined=False)
    assert isinstance(delivery, Destinations)
    delivery.submit(events("s", 2), destination="security")  # partial batches, sent on flush
    delivery.member("default").submit(events("m", 1))
    with capture_logs() as logs, pytest.raises(BacksplashError):
        delivery.close()
    (summary,) = [e for e in logs if e["event"] == "delivery_summarized"]
    assert summary["backsplash_failed"] == 2 and summary["in_flight"] == 2
    assert summary["destinations"]["default"]["acknowledged"] == 1
    assert set(summary["destinations"]) == {"default", "security"}
    delivery.close()  # closed: a second call does nothing
    with pytest.raises(RuntimeError):
        delivery.member("default").submit(events("n", 1))


def test_each_destination_keeps_its_own_concurrency_and_the_facade_reports_their_sum() -> None:
    settings = two_destinations(SPLUNK_HEC_CONCURRENCY="2")
    (security,) = settings.destinations
    settings = replace(
        settings, destinations=(replace(security, hec=replace(security.hec, concurrency=3)),)
    )
    delivery = build_delivery(settings, backsplash=MemoryBacksplash(), pipelined=False)
    try:
        assert isinstance(delivery, Destinations)
        assert delivery.member("default").concurrency == 2
        assert delivery.member("security").concurrency == 3
        assert delivery.concurrency == 5
    finally:
        delivery.release()
