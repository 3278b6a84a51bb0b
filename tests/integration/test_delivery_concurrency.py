"""SPLUNK_HEC_CONCURRENCY against the HEC emulator: the same ledger at 1, 4 and adaptive.

Every fault scenario of the deliverer (busy, 5xx, resets, lost acks, acks off, 413, bad
events, code 7 with a fallback index, a fatal token, retries running out, deadlines, abort,
shutdown, an unhealthy URL, backpressure) is run at each concurrency; the outcome of each
event (acknowledged, or backsplashed with which error code) and the ledger's counts must be
the same. Order across requests is not compared: it is not guaranteed once N > 1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from forwarder.backsplash.codec import Failure
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.metrics import DaemonState, MetricsServer
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from tests.conftest import TEST_TOKEN, free_port
from tests.integration.conftest import delivery_settings, flow_events, indexed_ids
from tests.integration.test_delivery import NoEventNumber
from tests.integration.test_fallback_index import addressed
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration

MODES = ("1", "4", "adaptive")
#: Channels to one URL at each concurrency (adaptive: one per request up to its ceiling).
CHANNELS = {"1": 1, "4": 4, "adaptive": 16}


class MemoryBacksplash:
    """A backsplash that keeps each event's id and error code in memory."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, str]] = []
        self._lock = threading.Lock()

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        with self._lock:
            self.records.extend((event.event_id, failure.error_code) for event in events)
            return f"memory/{len(self.records)}"


@dataclass(frozen=True)
class Outcome:
    """What became of a run's events: the ledger's counts and each event's fate."""

    counts: dict[str, Any]  # events in, acknowledged, backsplashed, dropped by reason
    stored: dict[str, frozenset[str | None]]  # error code -> event ids backsplashed with it
    extra: dict[str, Any] = field(default_factory=dict)  # scenario-specific, deterministic


def outcome_of(deliverer: Deliverer, backsplash: MemoryBacksplash, **extra: Any) -> Outcome:
    ledger = deliverer.ledger
    assert ledger.balanced(), ledger.summary()
    assert deliverer.pending_acks == 0
    stored: dict[str, set[str | None]] = {}
    for event_id, code in backsplash.records:
        stored.setdefault(code, set()).add(event_id)
    assert len(backsplash.records) == ledger.backsplashed  # each event stored once
    counts = {
        "events_in": ledger.events_in,
        "acknowledged": ledger.acknowledged,
        "backsplashed": ledger.backsplashed,
        "dropped": dict(ledger.dropped),
    }
    return Outcome(counts, {code: frozenset(ids) for code, ids in stored.items()}, extra)


def deliver(deliverer: Deliverer, events: Sequence[EncodedEvent], chunk: int = 100) -> None:
    for start in range(0, len(events), chunk):
        deliverer.submit(events[start : start + chunk])
    deliverer.close()


def ids(events: Sequence[EncodedEvent]) -> frozenset[str | None]:
    return frozenset(event.event_id for event in events)


def delivered_all(events: Sequence[EncodedEvent], **extra: Any) -> Outcome:
    n = len(events)
    return Outcome({"events_in": n, "acknowledged": n, "backsplashed": 0, "dropped": {}}, {}, extra)


def stored_all(events: Sequence[EncodedEvent], code: str) -> Outcome:
    n = len(events)
    return Outcome(
        {"events_in": n, "acknowledged": 0, "backsplashed": n, "dropped": {}},
        {code: ids(events)},
    )


# ------------------------------------------------------------------------------ scenarios
# Each runs one delivery at concurrency ``mode`` against fresh emulators and returns
# (what happened, what must happen).

Scenario = Callable[[str], tuple[Outcome, Outcome]]


def happy(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(1000)
    with HecEmulator(token=TEST_TOKEN) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliver(deliverer, events)
        once = sorted(indexed_ids(emulator)) == sorted(str(e.event_id) for e in events)
    return outcome_of(deliverer, backsplash, indexed_once=once), delivered_all(
        events, indexed_once=True
    )


def transient(faults: FaultPlan) -> Scenario:
    def run(mode: str) -> tuple[Outcome, Outcome]:
        events = flow_events(300)
        with HecEmulator(token=TEST_TOKEN, faults=faults) as emulator:
            backsplash = MemoryBacksplash()
            deliverer = Deliverer(
                delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode),
                backsplash=backsplash,
            )
            deliver(deliverer, events)
        expected = faults.busy_requests + faults.error_500_requests + faults.reset_requests
        return outcome_of(deliverer, backsplash, retries=deliverer.ledger.retries), delivered_all(
            events, retries=expected
        )

    return run


def lost_acks(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(200)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(lost_acks=2)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url,
            SPLUNK_HEC_ACK_TIMEOUT="0.5",
            SPLUNK_HEC_ACK_POLL_INTERVAL="0.05",
            SPLUNK_HEC_CONCURRENCY=mode,
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliver(deliverer, events)
    return outcome_of(deliverer, backsplash, resends=deliverer.ledger.resends), delivered_all(
        events, resends=2
    )


def acks_off(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(300)
    with HecEmulator(token=TEST_TOKEN, acks=False) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliver(deliverer, events)
    ledger = deliverer.ledger
    every_request = ledger.ack_unavailable == ledger.requests > 1
    return outcome_of(deliverer, backsplash, every_request=every_request), delivered_all(
        events, every_request=True
    )


def too_large(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(60)
    huge = EncodedEvent(json.dumps({"event": "x" * 5000}).encode(), "huge")
    events.insert(30, huge)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(max_body_bytes=1200)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url, SPLUNK_HEC_BATCH_MAX_BYTES="8192", SPLUNK_HEC_CONCURRENCY=mode
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliver(deliverer, events)
    expected = Outcome(
        {"events_in": 61, "acknowledged": 60, "backsplashed": 1, "dropped": {}},
        {"Splunk.PayloadTooLarge": frozenset({"huge"})},
    )
    return outcome_of(deliverer, backsplash), expected


def bad_event(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(200)
    bad = EncodedEvent(b'{"time":1764000000,"fields":{"event_id":"bad"}}', "bad")  # no "event"
    events.insert(117, bad)
    with HecEmulator(token=TEST_TOKEN) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliver(deliverer, events, chunk=201)
    expected = Outcome(
        {"events_in": 201, "acknowledged": 200, "backsplashed": 1, "dropped": {}},
        {"Splunk.InvalidEvent": frozenset({"bad"})},
    )
    return outcome_of(deliverer, backsplash), expected


def bisection(mode: str) -> tuple[Outcome, Outcome]:
    """No event number in the answer (a proxy strips it), through the caller's session."""
    events = flow_events(40)
    events.insert(29, EncodedEvent(b'{"event":""}', "blank"))  # code 13
    with HecEmulator(token=TEST_TOKEN) as emulator, NoEventNumber() as session:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode),
            session=session,
            backsplash=backsplash,
        )
        deliver(deliverer, events, chunk=41)
    expected = Outcome(
        {"events_in": 41, "acknowledged": 40, "backsplashed": 1, "dropped": {}},
        {"Splunk.InvalidEvent": frozenset({"blank"})},
    )
    return outcome_of(deliverer, backsplash), expected


def fallback_index(mode: str) -> tuple[Outcome, Outcome]:
    """Code 7: refused events go, once, to the fallback index; one refused there too."""
    events = addressed(flow_events(80), {4, 5, 21, 60}, "secret_ops")
    events = addressed(events, {70}, "nowhere")  # its fallback is refused as well: stored
    with HecEmulator(token=TEST_TOKEN, allowed_indexes={"main", "lastchance"}) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url, SPLUNK_FALLBACK_INDEX="lastchance", SPLUNK_HEC_CONCURRENCY=mode
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliver(deliverer, events, chunk=20)
        moved = frozenset(
            e["fields"]["event_id"]
            for e in emulator.indexed_events()
            if e.get("index") == "lastchance"
        )
    resent = deliverer.ledger.fallback_index_resent
    expected = Outcome(
        {"events_in": 80, "acknowledged": 80, "backsplashed": 0, "dropped": {}},
        {},
        {"moved": frozenset(str(events[n].event_id) for n in (4, 5, 21, 60, 70)), "resent": 5},
    )
    return outcome_of(deliverer, backsplash, moved=moved, resent=resent), expected


def bad_token(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(120)
    with HecEmulator(token="another-token") as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliverer.submit(events[:100])
        deliverer.flush()
        assert deliverer.fatal is not None
        deliverer.submit(events[100:])  # straight to the backsplash
        deliverer.close()
    return outcome_of(deliverer, backsplash), stored_all(events, "Splunk.InvalidToken")


def retries_run_out(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(30)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(busy_requests=10_000)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url, SPLUNK_HEC_RETRY_DURATION="0.2", SPLUNK_HEC_CONCURRENCY=mode
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliver(deliverer, events)
    return outcome_of(deliverer, backsplash), stored_all(events, "Splunk.ServerError")


def flush_deadline(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(100)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(ack_delay_s=30)) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliverer.submit(events)
        deliverer.flush(deadline=time.monotonic() + 0.3)
        deliverer.close()
    return outcome_of(deliverer, backsplash), stored_all(events, "Splunk.Deadline")


def standing_deadline(mode: str) -> tuple[Outcome, Outcome]:
    """HEC busy for good, an hour of retries: the deadline of set_deadline ends them."""
    events = flow_events(200)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(busy_requests=10_000)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url,
            SPLUNK_HEC_RETRY_DURATION="3600",
            SPLUNK_HEC_RETRY_BACKOFF_MAX="0.05",
            SPLUNK_HEC_CONCURRENCY=mode,
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliverer.set_deadline(time.monotonic() + 0.5)
        deliverer.submit(events)
        deliverer.close()
    return outcome_of(deliverer, backsplash), stored_all(events, "Splunk.Deadline")


def dripping_deadline(mode: str) -> tuple[Outcome, Outcome]:
    """HEC answers a byte a second (read timeout 30 s): the deadline cuts every request."""
    events = flow_events(100)
    faults = FaultPlan(drip_requests=1000, drip_interval_s=1.0)
    with HecEmulator(token=TEST_TOKEN, faults=faults) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url, SPLUNK_HEC_READ_TIMEOUT="30", SPLUNK_HEC_CONCURRENCY=mode
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliverer.set_deadline(time.monotonic() + 1.5)
        deliver(deliverer, events, chunk=20)
    cut = deliverer.ledger.duplicates_possible > 0  # cut off mid-answer: maybe taken
    expected = stored_all(events, "Splunk.Deadline")
    return outcome_of(deliverer, backsplash, cut=cut), Outcome(
        expected.counts, expected.stored, {"cut": True}
    )


def aborted(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(100)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(ack_delay_s=30)) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode), backsplash=backsplash
        )
        deliverer.submit(events[:60])
        deliverer.abort()
        deliverer.submit(events[60:])
        deliverer.close()
    return outcome_of(deliverer, backsplash), stored_all(events, "Splunk.Shutdown")


def shutdown(mode: str) -> tuple[Outcome, Outcome]:
    events = flow_events(40)
    stop = threading.Event()
    stop.set()
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(error_500_requests=10_000)) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode),
            backsplash=backsplash,
            stop_event=stop,
        )
        deliver(deliverer, events)
    retries = deliverer.ledger.retries
    expected = stored_all(events, "Splunk.Shutdown")
    return outcome_of(deliverer, backsplash, retries=retries), Outcome(
        expected.counts, expected.stored, {"retries": 0}
    )


def unhealthy_url(mode: str) -> tuple[Outcome, Outcome]:
    dead = f"http://127.0.0.1:{free_port()}"
    events = flow_events(400)
    with HecEmulator(token=TEST_TOKEN) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            dead, emulator.url, SPLUNK_HEC_UNHEALTHY_COOLDOWN="60", SPLUNK_HEC_CONCURRENCY=mode
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliver(deliverer, events)
    return outcome_of(deliverer, backsplash), delivered_all(events)


def backpressure(mode: str) -> tuple[Outcome, Outcome]:
    """Two unacknowledged requests per channel at most, however many requests are in flight."""
    events = flow_events(300)
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(ack_delay_s=0.05)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url,
            SPLUNK_HEC_MAX_PENDING_ACKS="2",
            SPLUNK_HEC_ACK_POLL_INTERVAL="1",
            SPLUNK_HEC_CONCURRENCY=mode,
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        channels = CHANNELS[mode]  # the bound is per channel
        peak = 0
        for start in range(0, 300, 10):
            deliverer.submit(events[start : start + 10])
            peak = max(peak, deliverer.pending_acks)
        deliverer.close()
    bounded = 0 < peak <= 2 * channels
    return outcome_of(deliverer, backsplash, bounded=bounded), delivered_all(events, bounded=True)


SCENARIOS: dict[str, Scenario] = {
    "happy": happy,
    "busy": transient(FaultPlan(busy_requests=3)),
    "500s": transient(FaultPlan(error_500_requests=3)),
    "resets": transient(FaultPlan(reset_requests=2)),
    "lost_acks": lost_acks,
    "acks_off": acks_off,
    "413": too_large,
    "bad_event": bad_event,
    "bisection": bisection,
    "fallback_index": fallback_index,
    "bad_token": bad_token,
    "retries_run_out": retries_run_out,
    "flush_deadline": flush_deadline,
    "standing_deadline": standing_deadline,
    "dripping_deadline": dripping_deadline,
    "abort": aborted,
    "shutdown": shutdown,
    "unhealthy_url": unhealthy_url,
    "backpressure": backpressure,
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_fault_gives_the_same_ledger_at_1_4_and_adaptive(name: str) -> None:
    """GIVEN a fault scenario WHEN run at SPLUNK_HEC_CONCURRENCY 1, 4 and adaptive THEN each
    run gives what the scenario must give, so all three give the same ledger."""
    scenario = SCENARIOS[name]
    seen = {}
    for mode in MODES:
        got, expected = scenario(mode)
        assert got == expected, f"concurrency {mode}"
        seen[mode] = got
    assert seen["1"] == seen["4"] == seen["adaptive"]


# ------------------------------------------------------------------ several on the wire


def test_four_requests_are_on_the_wire_at_once_and_abort_ends_them_all() -> None:
    """GIVEN N = 4 and a HEC that never answers WHEN batches are submitted THEN four requests
    are open at the emulator at the same time (on four channels); an abort then cancels all
    four at once (their bound is a minute) and backsplashes every event."""
    events = flow_events(200)  # many batches: four on the wire, the rest queued
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(blackhole_requests=1000)) as emulator:
        backsplash = MemoryBacksplash()
        settings = delivery_settings(
            emulator.url, SPLUNK_HEC_READ_TIMEOUT="60", SPLUNK_HEC_CONCURRENCY="4"
        )
        deliverer = Deliverer(settings, backsplash=backsplash)
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                deliver(deliverer, events)
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        give_up_at = time.monotonic() + 30
        while emulator.stats().data_requests < 4:
            assert time.monotonic() < give_up_at, "four requests never reached the emulator"
            time.sleep(0.01)
        # None is answered (black hole): with one request at a time the second could not
        # have started before the first's minute-long bound.
        stats = emulator.stats()
        assert stats.data_requests == 4 and stats.connections == 4  # a session per channel
        assert stats.faults_injected["blackhole"] == 4
        assert deliverer.pending_acks >= 4
        deliverer.abort()
        assert done.wait(30), "abort did not end the requests on the wire"
        worker.join(5)
    assert not errors
    got = outcome_of(deliverer, backsplash)
    assert got == stored_all(events, "Splunk.Shutdown")
    assert deliverer.ledger.requests == 4  # nothing was sent after the abort
    assert deliverer.ledger.duplicates_possible >= 4  # cut off on the wire: maybe taken


def test_adaptive_grows_past_one_against_a_healthy_hec() -> None:
    """GIVEN adaptive concurrency and a healthy HEC WHEN many batches go THEN the limit grows
    above 1 (requests were ready and latency held), logged as concurrency_limit_changed, and
    never past its ceiling."""
    events = flow_events(3000)
    with HecEmulator(token=TEST_TOKEN) as emulator:
        backsplash = MemoryBacksplash()
        deliverer = Deliverer(
            delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY="adaptive"),
            backsplash=backsplash,
        )
        assert deliverer.concurrency == 1
        with capture_logs() as logs:
            deliver(deliverer, events)
    changes = [entry for entry in logs if entry["event"] == "concurrency_limit_changed"]
    assert changes and changes[0]["reason"] == "latency_held" and changes[0]["limit"] == 2
    assert all(1 <= entry["limit"] <= 16 for entry in changes)
    assert outcome_of(deliverer, backsplash) == delivered_all(events)


def test_the_metrics_show_the_concurrency_in_force() -> None:
    """The daemon's /metrics exports the deliverer's current limit as a gauge."""
    with HecEmulator(token=TEST_TOKEN) as emulator:
        for mode, expected in (("4", 4.0), ("adaptive", 1.0)):
            deliverer = Deliverer(
                delivery_settings(emulator.url, SPLUNK_HEC_CONCURRENCY=mode),
                backsplash=MemoryBacksplash(),
            )

            def limit(watched: Deliverer = deliverer) -> int:
                return watched.concurrency

            state = DaemonState(ledger=deliverer.ledger, concurrency=limit)
            server = MetricsServer(state).start()
            try:
                text = requests.get(f"{server.url}/metrics", timeout=5).text
            finally:
                server.stop()
                deliverer.close()
            assert f"forwarder_hec_concurrency {expected}" in text
