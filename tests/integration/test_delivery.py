"""The deliverer against the HEC emulator and a moto S3 backsplash, over real loopback sockets.

Every test checks the two promises: the ledger balances, and every input event is either
indexed by the emulator or readable back from the backsplash bucket.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
import requests
from botocore.config import Config
from structlog.testing import capture_logs

from config.logs import configure_logging
from config.settings import LogSettings
from forwarder.backsplash.writers import Backsplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.errors import BacksplashError
from tests.conftest import TEST_TOKEN, free_port
from tests.integration.conftest import (
    BUCKET,
    PREFIX,
    backsplashed,
    delivery_settings,
    flow_events,
    indexed_ids,
    raw_payload,
)
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration


def deliver(
    deliverer: Deliverer, events: Sequence[EncodedEvent], chunk: int = 100
) -> dict[str, Any]:
    """Submit in chunks, close (flush + summary), return the summary."""
    for start in range(0, len(events), chunk):
        deliverer.submit(events[start : start + chunk])
    deliverer.close()
    return deliverer.ledger.summary()


def assert_accounted(
    events: Sequence[EncodedEvent], emulator: HecEmulator, s3: Any, deliverer: Deliverer
) -> list[dict[str, Any]]:
    """Ledger balanced; each event indexed or backsplashed; counts match what is stored."""
    ledger = deliverer.ledger
    records = backsplashed(s3)
    stored = {record["EventId"] for record in records}
    at_hec = set(indexed_ids(emulator))
    missing = {e.event_id for e in events} - at_hec - stored
    assert not missing, f"{len(missing)} events neither indexed nor backsplashed"
    assert ledger.balanced(), ledger.summary()
    assert ledger.events_in == len(events)
    assert ledger.backsplashed == len(records)
    assert ledger.acknowledged + ledger.backsplashed == len(events)
    assert len(at_hec & {e.event_id for e in events}) >= ledger.acknowledged
    return records


def events_named(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[Any]:
    return [entry for entry in logs if entry["event"] == name]


def ids_of(events: Iterable[EncodedEvent]) -> list[str]:
    return sorted(str(event.event_id) for event in events)


def test_happy_path_with_acks(emulator: HecEmulator, s3: Any, backsplash: Backsplash) -> None:
    """GIVEN a healthy HEC with acks WHEN 1000 events go THEN all are acknowledged, once."""
    events = flow_events(1000)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events)
    assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 1000
    assert sorted(indexed_ids(emulator)) == ids_of(events)  # no duplicates
    stats = emulator.stats()
    assert stats.acks_confirmed == stats.data_requests == summary["requests"] > 1
    assert stats.channels == 1
    assert summary["ack_polls"] >= 1
    assert summary["retries"] == summary["resends"] == 0
    (line,) = events_named(logs, "delivery_summarized")
    assert line["balanced"] is True


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        (FaultPlan(busy_requests=3), 9),
        (FaultPlan(error_500_requests=3), 8),
        (FaultPlan(reset_requests=2), None),
    ],
    ids=["busy", "500s", "resets"],
)
def test_transient_failures_are_retried(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash, faults: FaultPlan, code: int | None
) -> None:
    """Busy, internal errors and connection resets: retried with backoff, all delivered."""
    emulator.set_faults(faults)
    events = flow_events(300)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events)
    assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 300
    expected = faults.busy_requests + faults.error_500_requests + faults.reset_requests
    assert summary["retries"] == expected
    retries = events_named(logs, "retry_scheduled")
    assert len(retries) == expected
    if code is not None:
        assert f"code {code}" in retries[0]["reason"]
    else:
        assert events_named(logs, "hec_url_unhealthy")


def test_busy_with_retry_after_is_honoured_and_capped(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """Retry-After: 1 from a busy HEC is waited, capped here at retry_after_max_s = 0.2."""
    emulator.set_faults(FaultPlan(busy_requests=1, retry_after_s=1))
    events = flow_events(10)
    settings = delivery_settings(emulator.url)
    settings = replace(settings, retry=replace(settings.retry, retry_after_max_s=0.2))
    deliverer = Deliverer(settings, backsplash=backsplash)
    started = time.monotonic()
    with capture_logs() as logs:
        deliver(deliverer, events)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert events_named(logs, "retry_scheduled")[0]["wait_s"] == 0.2
    assert_accounted(events, emulator, s3, deliverer)


def test_lost_acks_are_resent_after_the_ack_timeout(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """Two acks never turn true: their batches are re-sent (duplicates counted as possible)."""
    emulator.set_faults(FaultPlan(lost_acks=2))
    events = flow_events(200)
    settings = delivery_settings(
        emulator.url, SPLUNK_HEC_ACK_TIMEOUT="0.5", SPLUNK_HEC_ACK_POLL_INTERVAL="0.05"
    )
    deliverer = Deliverer(settings, backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events)
    assert_accounted(events, emulator, s3, deliverer)
    assert summary["resends"] == 2
    assert summary["backsplashed"] == 0
    expired = events_named(logs, "ack_expired")
    assert len(expired) == 2 and all(entry["resend"] for entry in expired)
    # The emulator indexed the lost-ack batches too: exactly the re-sent events are duplicates.
    ids = indexed_ids(emulator)
    assert len(ids) - len(set(ids)) == summary["duplicates_possible"] > 0


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_ack_timeout_backsplash_counts_possible_duplicates(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash, concurrency: str
) -> None:
    """GIVEN acks that never turn true and no retry duration left WHEN delivering THEN every
    batch HEC took is backsplashed as Splunk.AckTimeout and counted as a possible duplicate:
    HEC indexed it, so replaying the backsplash sends it twice."""
    emulator.set_faults(FaultPlan(lost_acks=1000))
    events = flow_events(200)
    settings = delivery_settings(
        emulator.url,
        SPLUNK_HEC_ACK_TIMEOUT="0.3",
        SPLUNK_HEC_ACK_POLL_INTERVAL="0.05",
        SPLUNK_HEC_RETRY_DURATION="0",
        SPLUNK_HEC_CONCURRENCY=concurrency,
    )
    deliverer = Deliverer(settings, backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events)
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {record["errorCode"] for record in records} == {"Splunk.AckTimeout"}
    assert summary["backsplashed"] == len(events) and summary["resends"] == 0
    assert not any(entry["resend"] for entry in events_named(logs, "ack_expired"))
    # Each backsplashed event is at HEC already: a replay duplicates exactly these.
    assert sorted(indexed_ids(emulator)) == ids_of(events)
    assert summary["duplicates_possible"] == len(events)


def test_ack_disabled_on_the_token(s3: Any, backsplash: Backsplash) -> None:
    """No ackId in answers: warned once, counted, delivered on the 200 alone."""
    with HecEmulator(token=TEST_TOKEN, acks=False) as emulator:
        events = flow_events(300)
        deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
        with capture_logs() as logs:
            summary = deliver(deliverer, events)
        assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 300
    assert summary["ack_unavailable"] == summary["requests"] > 1
    assert len(events_named(logs, "hec_ack_unavailable")) == 1


def test_ack_disabled_while_acks_are_pending(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """The ack endpoint answers 400 code 14: pending batches count as delivered on their 200."""
    emulator.set_faults(FaultPlan(ack_delay_s=30))
    events = flow_events(100)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    for start in range(0, 100, 20):
        deliverer.submit(events[start : start + 20])
    emulator.set_faults(FaultPlan(ack_disabled=True))
    with capture_logs() as logs:
        deliverer.close()
    assert_accounted(events, emulator, s3, deliverer)
    assert deliverer.ledger.ack_unavailable >= 1
    assert len(events_named(logs, "hec_ack_unavailable")) == 1


def test_413_splits_batches_and_backsplashes_an_event_too_large(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """Bodies over HEC's limit are halved until they fit; one event alone above it is stored."""
    emulator.set_faults(FaultPlan(max_body_bytes=1200))
    events = flow_events(60)
    huge = EncodedEvent(json.dumps({"event": "x" * 5000}).encode(), "huge")
    events.insert(30, huge)
    settings = delivery_settings(emulator.url, SPLUNK_HEC_BATCH_MAX_BYTES="8192")
    deliverer = Deliverer(settings, backsplash=backsplash)
    summary = deliver(deliverer, events)
    records = assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 60
    (record,) = records
    assert record["EventId"] == "huge"
    assert record["errorCode"] == "Splunk.PayloadTooLarge"
    assert raw_payload(record) == huge.payload
    assert emulator.stats().faults_injected["too_large"] > 1


def test_one_invalid_event_is_isolated(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """400 code 12 with invalid-event-number: the bad event is stored, the rest delivered."""
    events = flow_events(50)
    bad = EncodedEvent(b'{"time":1764000000,"fields":{"event_id":"bad"}}', "bad")  # no "event"
    events.insert(17, bad)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events, chunk=51)
    records = assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 50
    (record,) = records
    assert (record["EventId"], record["errorCode"]) == ("bad", "Splunk.InvalidEvent")
    assert "code 12" in record["errorMessage"]
    assert raw_payload(record) == bad.payload
    (rejected,) = events_named(logs, "hec_rejected")
    assert rejected["code"] == 12


class NoEventNumber(requests.Session):
    """A HEC (or proxy) that does not say which event was bad: the deliverer must bisect."""

    def post(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().post(url, *args, **kwargs)
        if response.status_code == 400:
            body = response.json()
            body.pop("invalid-event-number", None)
            response._content = json.dumps(body).encode()
        return response


def test_bad_event_without_a_number_is_found_by_bisection(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    events = flow_events(40)
    bad = EncodedEvent(b'{"event":""}', "blank")  # code 13
    events.insert(29, bad)
    with NoEventNumber() as session:
        deliverer = Deliverer(
            delivery_settings(emulator.url), session=session, backsplash=backsplash
        )
        summary = deliver(deliverer, events, chunk=41)
    (record,) = assert_accounted(events, emulator, s3, deliverer)
    assert record["EventId"] == "blank"
    assert summary["acknowledged"] == 40
    assert sorted(indexed_ids(emulator)) == ids_of(e for e in events if e is not bad)


def test_invalid_token_backsplashes_everything_in_firehose_format(
    s3: Any, backsplash: Backsplash
) -> None:
    """403 code 4: delivery stops, hec_fatal is loud, every event is stored and readable."""
    with HecEmulator(token="another-token") as emulator:
        events = flow_events(120)
        deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
        with capture_logs() as logs:
            deliverer.submit(events[:100])
            assert deliverer.fatal is not None
            deliverer.submit(events[100:])  # straight to the backsplash
            deliverer.close()
        records = assert_accounted(events, emulator, s3, deliverer)
        assert emulator.stats().data_requests == 1
    assert deliverer.ledger.acknowledged == 0
    assert {r["EventId"] for r in records} == {e.event_id for e in events}
    by_id = {r["EventId"]: r for r in records}
    for event in events:
        record = by_id[event.event_id]
        assert raw_payload(record) == event.payload
        assert record["errorCode"] == "Splunk.InvalidToken"
        assert "code 4" in record["errorMessage"]
        assert record["endpoint"] == "event"
        assert isinstance(record["arrivalTimestamp"], int)
        assert record["attemptEndingTimestamp"] >= record["arrivalTimestamp"]
    (fatal,) = events_named(logs, "hec_fatal")
    assert fatal["code"] == 4
    assert fatal["log_level"] == "critical"
    assert "Invalid token" in fatal["reason"]


def test_s3_unreachable_raises_and_counts_nothing_as_backsplashed(
    aws_env: None,
) -> None:
    """HEC refuses, S3 is down: BacksplashError propagates; the ledger does not balance."""
    import boto3

    dead = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
    )
    with HecEmulator(token="another-token") as emulator:
        deliverer = Deliverer(
            delivery_settings(emulator.url),
            backsplash=Backsplash(dead, BUCKET, PREFIX, sleep=lambda s: None),
        )
        deliverer.submit(flow_events(10))  # a partial batch: nothing sent yet
        with capture_logs() as logs, pytest.raises(BacksplashError):
            deliverer.flush()
    ledger = deliverer.ledger
    assert ledger.backsplashed == 0
    assert ledger.backsplash_failed == 10
    assert not ledger.balanced()
    assert events_named(logs, "backsplash_failed")


def test_no_backsplash_configured_raises() -> None:
    with HecEmulator(token="another-token") as emulator:
        deliverer = Deliverer(delivery_settings(emulator.url), backsplash=None)
        deliverer.submit(flow_events(3))
        with pytest.raises(BacksplashError, match="no backsplash bucket"):
            deliverer.flush()
    assert deliverer.ledger.in_flight == 3


def test_several_urls_with_one_down(emulator: HecEmulator, s3: Any, backsplash: Backsplash) -> None:
    """A dead URL leaves the rotation (hec_url_unhealthy); everything goes via the live one."""
    dead = f"http://127.0.0.1:{free_port()}"
    events = flow_events(400)
    settings = delivery_settings(dead, emulator.url, SPLUNK_HEC_UNHEALTHY_COOLDOWN="60")
    deliverer = Deliverer(settings, backsplash=backsplash)
    with capture_logs() as logs:
        summary = deliver(deliverer, events)
    assert_accounted(events, emulator, s3, deliverer)
    assert summary["acknowledged"] == 400
    unhealthy = events_named(logs, "hec_url_unhealthy")
    assert [entry["url"] for entry in unhealthy] == [dead]
    assert summary["retries"] == 1


def test_url_down_for_a_while_recovers_and_shares_the_load(s3: Any, backsplash: Backsplash) -> None:
    """A URL that resets connections for a window leaves, is probed back, takes traffic again."""
    with (
        HecEmulator(token=TEST_TOKEN) as first,
        HecEmulator(token=TEST_TOKEN, faults=FaultPlan(down_for_s=0.3)) as second,
    ):
        events = flow_events(600)
        deliverer = Deliverer(
            delivery_settings(first.url, second.url, SPLUNK_HEC_UNHEALTHY_COOLDOWN="0.05"),
            backsplash=backsplash,
        )
        with capture_logs() as logs:
            for start in range(0, 300, 20):
                deliverer.submit(events[start : start + 20])
            time.sleep(0.35)
            for start in range(300, 600, 20):
                deliverer.submit(events[start : start + 20])
            deliverer.close()
        ids = indexed_ids(first) + indexed_ids(second)
        assert sorted(set(ids)) == ids_of(events)
        assert deliverer.ledger.balanced()
        assert second.stats().events_indexed > 0
        assert second.stats().channels == first.stats().channels == 1
        assert [e["url"] for e in events_named(logs, "hec_url_unhealthy")] == [second.url]
        assert [e["url"] for e in events_named(logs, "hec_url_recovered")] == [second.url]


def test_retry_duration_exhausted_backsplashes(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """HEC busy for good: after the retry duration the batch is stored as Splunk.ServerError."""
    emulator.set_faults(FaultPlan(busy_requests=10_000))
    events = flow_events(30)
    settings = delivery_settings(emulator.url, SPLUNK_HEC_RETRY_DURATION="0.2")
    deliverer = Deliverer(settings, backsplash=backsplash)
    started = time.monotonic()
    summary = deliver(deliverer, events)
    assert time.monotonic() - started < 5
    records = assert_accounted(events, emulator, s3, deliverer)
    assert summary["backsplashed"] == 30
    assert summary["retries"] >= 2
    assert {r["errorCode"] for r in records} == {"Splunk.ServerError"}
    assert all("code 9" in r["errorMessage"] for r in records)
    assert all(r["attemptsMade"] >= 3 for r in records)


@pytest.mark.parametrize("gzip", ["true", "false"])
def test_flush_deadline_backsplashes_what_is_unacknowledged(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash, gzip: str
) -> None:
    """Acks too slow for the deadline: the pending batches are stored as Splunk.Deadline."""
    emulator.set_faults(FaultPlan(ack_delay_s=30))
    events = flow_events(50)
    settings = delivery_settings(emulator.url, SPLUNK_HEC_GZIP=gzip)
    deliverer = Deliverer(settings, backsplash=backsplash)
    deliverer.submit(events)
    deliverer.flush(deadline=time.monotonic() + 0.3)
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert deliverer.pending_acks == 0
    # Parked batches keep only the gzip body: the stored payloads are still byte-exact.
    by_id = {r["EventId"]: raw_payload(r) for r in records}
    assert by_id == {e.event_id: e.payload for e in events}
    deliverer.close()


def test_backpressure_keeps_pending_acks_bounded(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """With max_pending 2 and slow acks, the sender waits: never more than 2 pending."""
    emulator.set_faults(FaultPlan(ack_delay_s=0.05))
    events = flow_events(300)
    settings = delivery_settings(
        emulator.url, SPLUNK_HEC_MAX_PENDING_ACKS="2", SPLUNK_HEC_ACK_POLL_INTERVAL="1"
    )
    deliverer = Deliverer(settings, backsplash=backsplash)
    peak = 0
    for start in range(0, 300, 10):
        deliverer.submit(events[start : start + 10])
        peak = max(peak, deliverer.pending_acks)
    deliverer.close()
    assert peak <= 2
    assert_accounted(events, emulator, s3, deliverer)
    assert deliverer.ledger.acknowledged == 300


def test_raw_endpoint_keeps_targets_apart(s3: Any, backsplash: Backsplash) -> None:
    """Raw lines go with their source/sourcetype/index in the query; targets never mix."""
    a = RawTarget("grp:a", "aws:cloudwatchlogs:vpcflow", None, "host-a")
    b = RawTarget("grp:b", "aws:cloudwatchlogs", None, None)
    lines_a = [EncodedEvent(flow_line_raw(i).encode(), f"a{i}") for i in range(30)]
    lines_b = [EncodedEvent(f"plain line {i}".encode(), f"b{i}") for i in range(30)]
    with HecEmulator(token=TEST_TOKEN) as emulator:
        settings = delivery_settings(emulator.url, SPLUNK_HEC_ENDPOINT="raw")
        deliverer = Deliverer(settings, backsplash=backsplash)
        for start in range(0, 30, 7):
            deliverer.submit(lines_a[start : start + 7], a)
            deliverer.submit(lines_b[start : start + 7], b)
        deliverer.close()
        indexed = emulator.indexed_events()
    assert deliverer.ledger.balanced() and deliverer.ledger.acknowledged == 60
    by_source = {"grp:a": [], "grp:b": []}  # type: dict[str, list[str]]
    for event in indexed:
        by_source[event["source"]].append(event["event"])
    assert sorted(by_source["grp:a"]) == sorted(e.payload.decode() for e in lines_a)
    assert sorted(by_source["grp:b"]) == sorted(e.payload.decode() for e in lines_b)
    assert all(e.get("host") == "host-a" for e in indexed if e["source"] == "grp:a")


def flow_line_raw(i: int) -> str:
    return f"2 123456789012 eni-1 10.0.0.{i % 250} 10.0.1.1 443 49152 6 1 40 1 2 ACCEPT OK"


def test_shutdown_backsplashes_instead_of_retrying(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """With the stop event set, a failing batch is stored as Splunk.Shutdown, not retried."""
    import threading

    stop = threading.Event()
    emulator.set_faults(FaultPlan(error_500_requests=10_000))
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash, stop_event=stop)
    stop.set()
    events = flow_events(20)
    summary = deliver(deliverer, events)
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {"Splunk.Shutdown"}
    assert summary["retries"] == 0
    assert summary["requests"] == summary["backsplash_objects"]  # one attempt per batch


def test_the_token_never_appears_in_logs_or_errors(aws_env: None, s3: Any) -> None:
    """Fatal token, busy, resets, S3 down: no log line, rendered or captured, holds the token."""
    import boto3

    dead = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
    )

    def scenario() -> list[str]:
        messages: list[str] = []
        with HecEmulator(token=TEST_TOKEN) as good, HecEmulator(token="wrong-token") as bad:
            good.set_faults(FaultPlan(busy_requests=2, reset_requests=1))
            deliverer = Deliverer(
                delivery_settings(good.url, f"http://127.0.0.1:{free_port()}"),
                backsplash=Backsplash(s3, BUCKET, PREFIX),
            )
            deliverer.submit(flow_events(100))
            deliverer.close()
            failing = Deliverer(
                delivery_settings(bad.url),
                backsplash=Backsplash(dead, BUCKET, PREFIX, sleep=lambda s: None),
            )
            try:
                failing.submit(flow_events(10))
                failing.flush()
            except BacksplashError as exc:
                messages.extend((str(exc), repr(exc)))
            messages.append(repr(failing.fatal))
            messages.append(str(failing.fatal))
            messages.append(json.dumps(failing.ledger.summary()))
        return messages

    with capture_logs() as logs:
        messages = scenario()
    assert events_named(logs, "hec_fatal") and events_named(logs, "retry_scheduled")
    stream = io.StringIO()
    configure_logging(LogSettings(level="DEBUG", format="json"), stream=stream)
    messages += scenario()
    rendered = stream.getvalue()
    assert "hec_fatal" in rendered and "retry_scheduled" in rendered
    for text in (repr(logs), rendered, *messages):
        assert TEST_TOKEN not in text
