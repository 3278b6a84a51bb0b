"""The Ledger: events in = acknowledged + backsplashed + dropped + in flight, at every edge."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from forwarder.delivery.ledger import Ledger

COUNTERS = (
    "events_in",
    "acknowledged",
    "backsplashed",
    "backsplash_failed",
    "requests",
    "retries",
    "ack_polls",
    "resends",
    "duplicates_possible",
    "ack_unavailable",
    "bytes_sent",
    "batches_sent",
    "backsplash_objects",
    "time_unparsed",
    "fallback_index_resent",
)


class RecordingLog:
    """A logger double that records which level each call used."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.calls.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.calls.append(("warning", event, fields))


def test_a_new_ledger_has_every_counter_at_zero_and_balances() -> None:
    ledger = Ledger()
    for name in COUNTERS:
        assert getattr(ledger, name) == 0, name
    assert ledger.dropped == {}
    assert (ledger.dropped_total, ledger.in_flight) == (0, 0)
    assert ledger.balanced() is True


@pytest.mark.parametrize("name", COUNTERS)
def test_add_increments_exactly_the_named_counter(name: str) -> None:
    """Each counter moves by the amount given, the others stay where they were."""
    ledger = Ledger()
    ledger.add(**{name: 3})
    ledger.add(**{name: 4})
    for other in COUNTERS:
        assert getattr(ledger, other) == (7 if other == name else 0), other
    assert ledger.summary()[name] == 7


def test_add_several_counters_in_one_call() -> None:
    ledger = Ledger()
    ledger.add(requests=1, bytes_sent=512, batches_sent=1)
    assert (ledger.requests, ledger.bytes_sent, ledger.batches_sent) == (1, 512, 1)


def test_add_of_an_unknown_counter_raises_and_changes_nothing() -> None:
    """A typo in a counter name is a bug: it fails loudly, naming the counter."""
    ledger = Ledger()
    with pytest.raises(AttributeError, match="unknown ledger counter 'acked'"):
        ledger.add(acked=1)
    with pytest.raises(AttributeError, match="'dropped'"):
        ledger.add(dropped=1)  # dropped is by reason: only drop() moves it
    assert ledger.summary()["events_in"] == 0
    assert ledger.dropped == {}


def test_events_in_flight_until_acknowledged_or_backsplashed() -> None:
    """The invariant: in_flight = events_in - acknowledged - backsplashed - dropped."""
    ledger = Ledger()
    ledger.add(events_in=10)
    assert (ledger.in_flight, ledger.balanced()) == (10, False)
    ledger.add(acknowledged=6)
    assert (ledger.in_flight, ledger.balanced()) == (4, False)
    ledger.add(backsplashed=3)
    assert (ledger.in_flight, ledger.balanced()) == (1, False)
    ledger.drop("filtered")  # a drop counts its own event in: still one in flight
    assert (ledger.in_flight, ledger.balanced()) == (1, False)
    ledger.add(acknowledged=1)
    assert (ledger.in_flight, ledger.balanced()) == (0, True)


def test_drop_counts_the_events_in_and_by_reason() -> None:
    """Dropped events came in too, so a drop alone keeps the ledger balanced."""
    ledger = Ledger()
    ledger.drop("control_message")
    ledger.drop("control_message", 2)
    ledger.drop("filtered", 5)
    assert ledger.events_in == 8
    assert ledger.dropped == {"control_message": 3, "filtered": 5}
    assert ledger.dropped_total == 8
    assert ledger.in_flight == 0
    assert ledger.balanced()


def test_a_failed_backsplash_write_leaves_events_in_flight() -> None:
    """backsplash_failed is reported, but those events are neither delivered nor stored."""
    ledger = Ledger()
    ledger.add(events_in=4, acknowledged=1, backsplash_failed=3)
    assert ledger.in_flight == 3
    assert not ledger.balanced()
    assert ledger.summary()["backsplash_failed"] == 3


def test_over_acknowledging_is_not_balanced() -> None:
    """More events accounted for than came in is a bug: in_flight goes negative, not zero."""
    ledger = Ledger()
    ledger.add(events_in=1, acknowledged=2)
    assert ledger.in_flight == -1
    assert not ledger.balanced()
    assert ledger.summary()["balanced"] is False


def test_summary_holds_every_counter_dropped_in_flight_and_balanced() -> None:
    ledger = Ledger()
    ledger.add(**{name: index + 1 for index, name in enumerate(COUNTERS)})
    ledger.drop("filtered", 20)
    data = ledger.summary()
    assert set(data) == {*COUNTERS, "dropped", "in_flight", "balanced"}
    for index, name in enumerate(COUNTERS):
        expected = index + 1 + (20 if name == "events_in" else 0)
        assert data[name] == expected, name
    assert data["dropped"] == {"filtered": 20}
    # events_in 21 - acknowledged 2 - backsplashed 3 - dropped 20
    assert data["in_flight"] == 21 - 2 - 3 - 20 == ledger.in_flight
    assert data["balanced"] is False


def test_summary_balanced_when_every_event_is_accounted_for() -> None:
    ledger = Ledger()
    ledger.add(events_in=5, acknowledged=2, backsplashed=1)
    ledger.drop("filtered", 2)
    data = ledger.summary()
    assert data["events_in"] == 7
    assert (data["in_flight"], data["balanced"]) == (2, False)
    ledger.add(acknowledged=2)
    data = ledger.summary()
    assert (data["in_flight"], data["balanced"]) == (0, True)


def test_summary_is_a_snapshot_not_a_view() -> None:
    ledger = Ledger()
    ledger.drop("filtered")
    data = ledger.summary()
    ledger.drop("filtered")
    data["dropped"]["other"] = 9
    assert data["dropped"] == {"filtered": 1, "other": 9}
    assert ledger.dropped == {"filtered": 2}


def test_log_summary_logs_info_when_balanced_with_context() -> None:
    ledger = Ledger()
    ledger.add(events_in=2, acknowledged=2)
    log = RecordingLog()
    data = ledger.log_summary(log, invocation="abc")
    ((level, event, fields),) = log.calls
    assert (level, event) == ("info", "delivery_summarized")
    assert fields == {"invocation": "abc", **data}
    assert data == ledger.summary()
    assert data["balanced"] is True


def test_log_summary_warns_when_unbalanced() -> None:
    ledger = Ledger()
    ledger.add(events_in=2, acknowledged=1)
    log = RecordingLog()
    data = ledger.log_summary(log)
    ((level, event, fields),) = log.calls
    assert (level, event) == ("warning", "delivery_summarized")
    assert fields["in_flight"] == 1
    assert data["balanced"] is False


def test_log_summary_defaults_to_the_forwarder_ledger_logger() -> None:
    ledger = Ledger()
    ledger.add(events_in=3, backsplashed=3)
    with capture_logs() as logs:
        data = ledger.log_summary(run="r1")
    (entry,) = logs
    assert entry["event"] == "delivery_summarized"
    assert entry["log_level"] == "info"
    assert entry["run"] == "r1"
    assert entry["backsplashed"] == 3
    assert data["balanced"] is True


def test_concurrent_adds_and_drops_lose_no_count() -> None:
    """Deliverer threads share one ledger: every increment lands."""
    ledger = Ledger()
    rounds = 2000

    def work() -> None:
        for _ in range(rounds):
            ledger.add(events_in=1, acknowledged=1)
            ledger.drop("filtered")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert ledger.events_in == 4 * rounds * 2
    assert ledger.acknowledged == 4 * rounds
    assert ledger.dropped == {"filtered": 4 * rounds}
    assert ledger.balanced()
