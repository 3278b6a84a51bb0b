"""Bounding delivery in time: ``Deliverer.set_deadline`` and ``Deliverer.abort``.

Against the HEC emulator and a moto S3 backsplash. Every test checks that the ledger balances
and that each event is indexed or readable back from the backsplash with the expected reason.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from forwarder.backsplash.writers import Backsplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from tests.integration.conftest import backsplashed, delivery_settings, flow_events, indexed_ids
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration

#: HEC busy for good, and a retry policy that would wait it out for an hour.
PATIENT = {
    "SPLUNK_HEC_RETRY_DURATION": "3600",
    "SPLUNK_HEC_RETRY_BACKOFF_BASE": "1",
    "SPLUNK_HEC_RETRY_BACKOFF_MAX": "30",
    "SPLUNK_HEC_RETRY_AFTER_MAX": "30",
}
BUSY_FOR_GOOD = FaultPlan(busy_requests=1_000_000, retry_after_s=30)


def assert_accounted(
    events: list[EncodedEvent], emulator: HecEmulator, s3: Any, deliverer: Deliverer
) -> list[dict[str, Any]]:
    """Ledger balanced; each event indexed or backsplashed; the backsplash count matches."""
    ledger = deliverer.ledger
    records = backsplashed(s3)
    stored = {record["EventId"] for record in records}
    missing = {e.event_id for e in events} - set(indexed_ids(emulator)) - stored
    assert not missing, f"{len(missing)} events neither indexed nor backsplashed"
    assert ledger.balanced(), ledger.summary()
    assert ledger.backsplashed == len(records)
    assert ledger.acknowledged + ledger.backsplashed == ledger.events_in == len(events)
    return records


def test_deadline_ends_the_retries_of_a_busy_hec_during_submit(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN HEC busy for good and an hour of retries WHEN the deadline passes mid-submit THEN
    submit returns at the deadline and every event is backsplashed as Splunk.Deadline."""
    emulator.set_faults(BUSY_FOR_GOOD)
    events = flow_events(200)  # many full batches: sent (or not) inside submit
    deliverer = Deliverer(delivery_settings(emulator.url, **PATIENT), backsplash=backsplash)
    started = time.monotonic()
    deliverer.set_deadline(started + 0.5)
    deliverer.submit(events)
    assert time.monotonic() - started < 1.5
    deliverer.close()
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    # only the first batch was tried; the others were never sent
    assert emulator.stats().data_requests == deliverer.ledger.requests == 1
    assert any("code 9" in r["errorMessage"] for r in records)


def test_backoff_sleep_wakes_at_the_deadline(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN Retry-After 30 and a deadline 2 s away WHEN backing off THEN the sleep is 2 s,
    no second attempt is made and the batch is stored with its attempt count and last error."""
    emulator.set_faults(BUSY_FOR_GOOD)
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    events = flow_events(5)
    deliverer = Deliverer(
        delivery_settings(emulator.url, **PATIENT),
        backsplash=backsplash,
        clock=lambda: now[0],
        sleep=sleep,
    )
    deliverer.set_deadline(1002.0)
    deliverer.submit(events)  # a partial batch
    deliverer.flush()  # no flush deadline: the standing one applies
    assert slept == [pytest.approx(2.0)]
    (record, *_) = assert_accounted(events, emulator, s3, deliverer)
    assert record["errorCode"] == "Splunk.Deadline"
    assert record["attemptsMade"] == 1
    assert "code 9" in record["errorMessage"]
    assert emulator.stats().data_requests == 1
    deliverer.close()


def test_deadline_backsplashes_pending_acks_without_a_flush(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN batches awaiting slow acks WHEN the deadline passes THEN the next service() call
    backsplashes them (Splunk.Deadline); next_wakeup() names the deadline."""
    emulator.set_faults(FaultPlan(ack_delay_s=30))
    events = flow_events(100)
    settings = delivery_settings(emulator.url, SPLUNK_HEC_ACK_POLL_INTERVAL="5")
    deliverer = Deliverer(settings, backsplash=backsplash)
    deadline = time.monotonic() + 0.3
    deliverer.set_deadline(deadline)
    deliverer.submit(events)
    assert deliverer.pending_acks > 0
    wakeup = deliverer.next_wakeup()
    assert wakeup is not None and wakeup <= deadline
    time.sleep(max(deadline - time.monotonic(), 0) + 0.01)
    deliverer.service()
    assert deliverer.pending_acks == 0
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert deliverer.deadline == deadline
    deliverer.close()


def test_a_deadline_is_a_setting_not_an_end(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """Past the deadline submits are backsplashed unsent; once cleared, delivery resumes."""
    early, late = flow_events(10), flow_events(10, start=10)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    deliverer.set_deadline(time.monotonic() - 1)
    deliverer.submit(early)
    assert deliverer.ledger.backsplashed == 10
    deliverer.set_deadline(None)
    deliverer.submit(late)
    deliverer.close()
    records = assert_accounted(early + late, emulator, s3, deliverer)
    assert {r["EventId"] for r in records} == {e.event_id for e in early}
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert deliverer.ledger.acknowledged == 10


@pytest.mark.parametrize("reason", ["Splunk.Shutdown", "Splunk.Deadline"])
def test_abort_backsplashes_pending_acks_and_later_submits(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash, reason: str
) -> None:
    """GIVEN batches awaiting acks WHEN aborted THEN the next call backsplashes them with the
    reason at once, and later submits are stored without a request."""
    emulator.set_faults(FaultPlan(ack_delay_s=30))
    events = flow_events(100)
    deliverer = Deliverer(delivery_settings(emulator.url), backsplash=backsplash)
    deliverer.submit(events[:80])
    assert deliverer.pending_acks > 0
    deliverer.abort(reason, "test abort")
    assert deliverer.aborted and deliverer.fatal is None
    started = time.monotonic()
    deliverer.flush()
    assert time.monotonic() - started < 1.0
    assert deliverer.pending_acks == 0
    requests = emulator.stats().data_requests
    deliverer.submit(events[80:])
    assert emulator.stats().data_requests == requests
    deliverer.close()
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {reason}
    assert all("test abort" in r["errorMessage"] for r in records)


def test_abort_from_another_thread_ends_a_long_backoff(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN a submit backing off 30 s from a busy HEC WHEN another thread aborts THEN submit
    returns promptly with the batch backsplashed (Splunk.Shutdown), not sent again."""
    emulator.set_faults(BUSY_FOR_GOOD)
    events = flow_events(20)
    deliverer = Deliverer(delivery_settings(emulator.url, **PATIENT), backsplash=backsplash)
    timer = threading.Timer(0.3, deliverer.abort)
    timer.start()
    started = time.monotonic()
    try:
        deliverer.submit(events)
        deliverer.flush()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.0
    deliverer.close()
    records = assert_accounted(events, emulator, s3, deliverer)
    assert {r["errorCode"] for r in records} == {"Splunk.Shutdown"}
    assert emulator.stats().data_requests == 1


def test_flush_settles_when_the_deadline_passes_during_a_routine_ack_poll(
    emulator: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN acks that never come and an ack endpoint that takes 0.7 s (fake clock) WHEN the
    flush deadline passes during the routine ack poll inside the drain (the audit's race, p2)
    THEN flush still backsplashes what awaits its ack: it returns with no ack pending, nothing
    queued or in a partial batch, and a balanced ledger, for every deadline tried."""
    import requests

    now = [1000.0]

    class SlowAckSession(requests.Session):
        def post(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
            response = super().post(url, *args, **kwargs)
            if str(url).endswith("/services/collector/ack"):
                now[0] += 0.7
            return response

    def sleep(seconds: float) -> None:
        now[0] += seconds

    emulator.set_faults(FaultPlan(ack_delay_s=3600))
    settings = delivery_settings(
        emulator.url, SPLUNK_HEC_ACK_POLL_INTERVAL="1", SPLUNK_HEC_ACK_TIMEOUT="300"
    )
    total = 0
    for step in range(16):  # the audit saw the race for budgets 7.2 s to 7.8 s
        budget = 6.6 + step * 0.1
        deliverer = Deliverer(
            settings,
            session=SlowAckSession(),
            backsplash=backsplash,
            clock=lambda: now[0],
            sleep=sleep,
        )
        events = flow_events(10, start=total)
        total += 10
        start = now[0]
        deliverer.submit(events)
        deliverer.flush(start + budget)
        assert deliverer.pending_acks == 0, f"budget {budget:.1f}s"
        assert not deliverer._queue and deliverer._batcher.pending_events == 0
        ledger = deliverer.ledger
        assert ledger.balanced(), (budget, ledger.summary())
        assert ledger.backsplashed == 10 and ledger.acknowledged == 0
        deliverer.close(summarize=False)
    records = backsplashed(s3)
    assert len(records) == total
    assert {record["errorCode"] for record in records} == {"Splunk.Deadline"}
