"""Pipelined delivery: the first attempt goes out from the I/O thread while the caller goes on.

Against the HEC emulator over loopback. The promises are those of synchronous delivery: every
event acknowledged or backsplashed, the ledger balanced after a flush, one request on the wire
at a time, the session never used by two threads at once, ack polls from the deliverer's own
thread, and the same requests, in the same order, as ``pipelined=False`` makes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import requests

from forwarder.backsplash.codec import Failure
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import delivery_settings, flow_events, indexed_ids
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration

ACK_PATH = "/services/collector/ack"
#: 14 flow events fill one 4096-byte batch of the FAST settings.
ONE_BATCH = 20


class MemoryBacksplash:
    """A backsplash that keeps (event id, error code, attempts) in memory."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, str, int]] = []

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        self.records.extend(
            (event.event_id, failure.error_code, failure.attempts) for event in events
        )
        return f"memory/{len(self.records)}"


class WatchedSession(requests.Session):
    """Records which thread made each request and how many ran at once; can hold data posts."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a data post reached the session
        self._lock = threading.Lock()
        self._active = 0
        self.peak = 0
        self.data_threads: set[str] = set()
        self.other_threads: set[str] = set()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            name = threading.current_thread().name
            if (
                str(method).upper() == "POST"
                and "/services/collector/" in str(url)
                and not str(url).endswith(ACK_PATH)
            ):
                self.data_threads.add(name)
                self.entered.set()
                assert self.gate.wait(10), "gate never opened"
            else:
                self.other_threads.add(name)
            return super().request(method, url, *args, **kwargs)
        finally:
            with self._lock:
                self._active -= 1


def assert_balanced(deliverer: Deliverer, events: Sequence[EncodedEvent]) -> None:
    ledger = deliverer.ledger
    assert ledger.balanced(), ledger.summary()
    assert ledger.events_in == len(events)
    assert ledger.acknowledged + ledger.backsplashed == len(events)
    assert deliverer.pending_acks == 0


def test_submit_returns_while_the_request_is_on_the_wire(emulator: HecEmulator) -> None:
    """GIVEN a data post held on the wire WHEN a full batch is submitted THEN submit returns,
    the request counts as pending and due; once it answers, close acknowledges everything."""
    events = flow_events(ONE_BATCH)
    session = WatchedSession()
    session.gate.clear()
    deliverer = Deliverer(
        delivery_settings(emulator.url), session=session, backsplash=MemoryBacksplash()
    )
    threads_before = sum(t.name.startswith("hec-send") for t in threading.enumerate())
    try:
        deliverer.submit(events)  # one full batch goes out, the rest waits as a partial batch
        assert session.entered.wait(5)
        assert deliverer.pending_acks == 1
        wakeup = deliverer.next_wakeup()
        assert wakeup is not None and wakeup <= time.monotonic()
        assert emulator.stats().data_requests == 0
        assert deliverer.ledger.requests == 1
    finally:
        session.gate.set()
    deliverer.close()
    assert_balanced(deliverer, events)
    assert deliverer.ledger.acknowledged == ONE_BATCH
    assert sorted(indexed_ids(emulator)) == sorted(str(e.event_id) for e in events)
    assert session.data_threads and all(n.startswith("hec-send") for n in session.data_threads)
    assert session.other_threads == {threading.current_thread().name}  # ack polls
    assert session.peak == 1
    give_up_at = time.monotonic() + 5
    while sum(t.name.startswith("hec-send") for t in threading.enumerate()) > threads_before:
        assert time.monotonic() < give_up_at, "close did not end the I/O thread"
        time.sleep(0.01)
    session.close()


def test_the_session_serves_one_request_at_a_time(emulator: HecEmulator) -> None:
    """Many batches, slow acks, frequent polls and retries: never two requests at once."""
    emulator.set_faults(FaultPlan(ack_delay_s=0.03, busy_requests=3, reset_requests=2))
    events = flow_events(1500)
    session = WatchedSession()
    settings = delivery_settings(emulator.url, SPLUNK_HEC_MAX_PENDING_ACKS="3")
    deliverer = Deliverer(settings, session=session, backsplash=MemoryBacksplash())
    peak_pending = 0
    for start in range(0, len(events), 25):
        deliverer.submit(events[start : start + 25])
        peak_pending = max(peak_pending, deliverer.pending_acks)
    deliverer.close()
    assert_balanced(deliverer, events)
    assert deliverer.ledger.acknowledged == len(events)
    assert deliverer.ledger.retries == 5
    assert session.peak == 1
    assert peak_pending <= 3  # the request on the wire counts against max_pending
    assert session.other_threads == {threading.current_thread().name}
    session.close()


def test_two_deliverers_sharing_a_session_take_turns(emulator: HecEmulator) -> None:
    """A session handed to two deliverers serves one request at a time, from either thread."""
    emulator.set_faults(FaultPlan(ack_delay_s=0.02))
    events = flow_events(1200)
    session = WatchedSession()
    settings = delivery_settings(emulator.url)
    first = Deliverer(settings, session=session, backsplash=MemoryBacksplash())
    second = Deliverer(settings, session=session, backsplash=MemoryBacksplash())
    for start in range(0, 600, 20):
        first.submit(events[start : start + 20])
        second.submit(events[600 + start : 620 + start])
    first.close()
    second.close()
    assert_balanced(first, events[:600])
    assert_balanced(second, events[600:])
    assert first.ledger.acknowledged + second.ledger.acknowledged == len(events)
    assert session.peak == 1
    assert sorted(indexed_ids(emulator)) == sorted(str(e.event_id) for e in events)
    session.close()


def test_service_handles_the_answer() -> None:
    """Acks off: the 200 is the delivery; service() (the daemon's idle call) counts it."""
    with HecEmulator(token=TEST_TOKEN, acks=False) as emulator:
        events = flow_events(ONE_BATCH)
        deliverer = Deliverer(delivery_settings(emulator.url), backsplash=MemoryBacksplash())
        deliverer.submit(events)
        deliverer.service()
        assert deliverer.pending_acks == 0
        assert deliverer.next_wakeup() is not None  # the partial batch's linger
        sent = deliverer.ledger.acknowledged
        assert 0 < sent < ONE_BATCH
        assert sorted(indexed_ids(emulator)) == sorted(str(e.event_id) for e in events[:sent])
        deliverer.close()
        assert_balanced(deliverer, events)
        assert deliverer.ledger.acknowledged == ONE_BATCH


@pytest.mark.parametrize("reason", ["Splunk.Shutdown", "Splunk.Deadline"])
def test_abort_while_a_request_is_on_the_wire(emulator: HecEmulator, reason: str) -> None:
    """GIVEN a request on the wire WHEN aborted from another thread THEN it is cancelled, its
    batch (a possible duplicate) and the rest are backsplashed with the reason, and no other
    request is made."""
    events = flow_events(ONE_BATCH * 3)
    session = WatchedSession()
    session.gate.clear()
    backsplash = MemoryBacksplash()
    deliverer = Deliverer(delivery_settings(emulator.url), session=session, backsplash=backsplash)
    deliverer.submit(events[:ONE_BATCH])
    assert session.entered.wait(5)
    aborter = threading.Thread(target=deliverer.abort, args=(reason, "test abort"))
    aborter.start()
    aborter.join()
    opener = threading.Timer(0.1, session.gate.set)
    opener.start()
    deliverer.submit(events[ONE_BATCH:])  # handles the answer, then stores the rest
    deliverer.close()
    opener.join()
    assert_balanced(deliverer, events)
    assert deliverer.ledger.acknowledged == 0
    assert {code for _, code, _ in backsplash.records} == {reason}
    # Cancelled while held before its socket existed: it never reached HEC.
    assert emulator.stats().data_requests == 0
    assert deliverer.ledger.requests == 1
    assert deliverer.ledger.duplicates_possible > 0  # the cancelled batch
    session.close()


def test_deadline_passing_while_a_request_is_on_the_wire_stops_its_retries(
    emulator: HecEmulator,
) -> None:
    """HEC busy; the deadline passes during the (held) first request: no second attempt."""
    emulator.set_faults(FaultPlan(busy_requests=1_000, retry_after_s=30))
    events = flow_events(ONE_BATCH * 2)
    session = WatchedSession()
    session.gate.clear()
    backsplash = MemoryBacksplash()
    settings = delivery_settings(emulator.url, SPLUNK_HEC_RETRY_DURATION="3600")
    deliverer = Deliverer(settings, session=session, backsplash=backsplash)
    started = time.monotonic()
    deliverer.set_deadline(started + 0.2)
    opener = threading.Timer(0.3, session.gate.set)
    opener.start()
    deliverer.submit(events)  # the second batch waits for the first one's answer
    deliverer.close()
    opener.join()
    assert time.monotonic() - started < 2.0
    assert_balanced(deliverer, events)
    assert {code for _, code, _ in backsplash.records} == {"Splunk.Deadline"}
    assert max(attempts for _, _, attempts in backsplash.records) == 1
    # The held request ended at the deadline (its bound), before it reached HEC.
    assert emulator.stats().data_requests == 0
    assert deliverer.ledger.requests == 1
    session.close()


def _scenario_bad_event(events: list[EncodedEvent]) -> list[EncodedEvent]:
    bad = EncodedEvent(b'{"event":""}', "blank")  # code 13
    return [*events[:45], bad, *events[45:]]


def _scenario_huge_event(events: list[EncodedEvent]) -> list[EncodedEvent]:
    huge = EncodedEvent(json.dumps({"event": "x" * 5000}).encode(), "huge")
    return [*events[:70], huge, *events[70:]]


def _same(events: list[EncodedEvent]) -> list[EncodedEvent]:
    return events


SCENARIOS: dict[str, tuple[dict[str, Any], FaultPlan, Callable[..., list[EncodedEvent]]]] = {
    "healthy": ({}, FaultPlan(), _same),
    "busy": ({}, FaultPlan(busy_requests=3), _same),
    "500s": ({}, FaultPlan(error_500_requests=3), _same),
    "resets": ({}, FaultPlan(reset_requests=2), _same),
    "413": ({"SPLUNK_HEC_BATCH_MAX_BYTES": "8192"}, FaultPlan(max_body_bytes=1200), _same),
    "413-huge": (
        {"SPLUNK_HEC_BATCH_MAX_BYTES": "8192"},
        FaultPlan(max_body_bytes=1200),
        _scenario_huge_event,
    ),
    "bad-event": ({}, FaultPlan(), _scenario_bad_event),
    "acks-off": ({"acks": False}, FaultPlan(), _same),
    "bad-token": ({"token": "00000000-0000-0000-0000-0000000000ff"}, FaultPlan(), _same),
}
COMPARED = (
    "events_in",
    "acknowledged",
    "backsplashed",
    "requests",
    "retries",
    "resends",
    "duplicates_possible",
    "ack_unavailable",
    "bytes_sent",
    "batches_sent",
)


def _run(name: str, *, pipelined: bool) -> tuple[dict[str, Any], list[str], list[Any]]:
    environ, faults, shape = SCENARIOS[name]
    environ = dict(environ)
    acks = bool(environ.pop("acks", True))
    token = str(environ.pop("token", TEST_TOKEN))
    events = shape(flow_events(200))
    backsplash = MemoryBacksplash()
    with HecEmulator(token=token, acks=acks) as emulator:
        emulator.set_faults(faults)
        deliverer = Deliverer(
            delivery_settings(emulator.url, **environ),
            backsplash=backsplash,
            pipelined=pipelined,
        )
        for start in range(0, len(events), 30):
            deliverer.submit(events[start : start + 30])
        deliverer.close()
        assert_balanced(deliverer, events)
        summary = deliverer.ledger.summary()
        order = indexed_ids(emulator)
    stored = sorted((str(i), code) for i, code, _ in backsplash.records)
    return {key: summary[key] for key in COMPARED}, order, stored


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_pipelined_makes_the_same_requests_as_synchronous(name: str) -> None:
    """Retries, 413 splits, bad-event isolation, acks off, fatal token, exhausted retries: the
    same counters, the same events indexed in the same order, the same backsplash."""
    sync = _run(name, pipelined=False)
    piped = _run(name, pipelined=True)
    assert piped[0] == sync[0]
    assert piped[1] == sync[1]
    assert piped[2] == sync[2]
