"""The send-one-batch step (forwarder.delivery.sending) on `responses`: no server, a fake clock.

What HEC's answer does to a batch: 413 halves it, a bad event is cut out (or bisected towards),
retries stop at the budget and the batch is backsplashed, a fatal answer stops delivery. Every
test also checks that the ledger balances.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from typing import Any

import requests
import responses

from forwarder.backsplash.codec import Failure
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from tests.conftest import TEST_TOKEN, make_settings
from transforms.records import EncodedEvent

URL = "https://hec.example.com:8088"
EVENT_URL = f"{URL}/services/collector/event"
SUCCESS: tuple[int, dict[str, str], str] = (200, {}, json.dumps({"text": "Success", "code": 0}))


class FakeClock:
    """A monotonic clock that only moves when the deliverer sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class MemoryBacksplash:
    """Keeps (event id, error code, attempts, message) of every backsplashed event."""

    def __init__(self) -> None:
        self.records: list[tuple[str | None, str, int, str]] = []

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        self.records.extend(
            (e.event_id, failure.error_code, failure.attempts, failure.error_message)
            for e in events
        )
        return f"memory/{len(self.records)}"


def events(count: int) -> list[EncodedEvent]:
    return [EncodedEvent(json.dumps({"event": f"e{i}"}).encode(), f"id{i}") for i in range(count)]


def sent_ids(request: requests.PreparedRequest) -> list[str]:
    """The event ids of a request, in order (each event's body is ``{"event": "e<i>"}``)."""
    body = request.body
    assert isinstance(body, bytes)
    return [
        "id" + json.loads(line)["event"][1:] for line in gzip.decompress(body).split(b"\n") if line
    ]


def deliverer(backsplash: MemoryBacksplash, clock: FakeClock, **environ: str) -> Deliverer:
    """A synchronous deliverer (acks off) to :data:`URL`, sleeping on ``clock``."""
    settings = make_settings(
        SPLUNK_HEC_URL=URL,
        SPLUNK_HEC_TOKEN=TEST_TOKEN,
        SPLUNK_HEC_ACK="false",
        SPLUNK_HEC_RETRY_BACKOFF_BASE="0.001",
        SPLUNK_HEC_RETRY_BACKOFF_MAX="0.01",
        **environ,
    )
    return Deliverer(
        settings, backsplash=backsplash, clock=clock, sleep=clock.sleep, pipelined=False
    )


def serve(answer: Callable[[list[str]], tuple[int, dict[str, str], str]]) -> list[list[str]]:
    """Answer every data request with ``answer(ids)``; returns the ids of each request."""
    seen: list[list[str]] = []

    def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        ids = sent_ids(request)
        seen.append(ids)
        return answer(ids)

    responses.add_callback(responses.POST, EVENT_URL, callback=callback)
    return seen


def balanced(ledger: Ledger) -> dict[str, Any]:
    summary = ledger.summary()
    assert summary["events_in"] == summary["acknowledged"] + summary["backsplashed"]
    return summary


@responses.activate
def test_413_halves_the_batch_until_the_halves_fit() -> None:
    """Halves go to the front of the queue: depth first, the order of events kept."""
    seen = serve(lambda ids: (413, {}, "") if len(ids) > 2 else SUCCESS)
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(8))
    hec.close(summarize=False)
    assert [len(ids) for ids in seen] == [8, 4, 2, 2, 4, 2, 2]
    assert [i for ids in seen if len(ids) == 2 for i in ids] == [f"id{i}" for i in range(8)]
    summary = balanced(hec.ledger)
    assert (summary["acknowledged"], summary["requests"], summary["retries"]) == (8, 7, 0)
    assert backsplash.records == []


@responses.activate
def test_413_for_a_single_event_backsplashes_it() -> None:
    serve(lambda ids: (413, {}, "") if "id1" in ids else SUCCESS)
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(2))
    hec.close(summarize=False)
    assert [(r[0], r[1]) for r in backsplash.records] == [("id1", "Splunk.PayloadTooLarge")]
    assert "more than HEC takes" in backsplash.records[0][3]
    assert balanced(hec.ledger)["acknowledged"] == 1


@responses.activate
def test_a_named_bad_event_is_cut_out_and_the_rest_sent() -> None:
    """``invalid-event-number``: the bad event is backsplashed, the events on either side are
    sent again, and those before it count as possible duplicates (HEC may have indexed them)."""

    def answer(ids: list[str]) -> tuple[int, dict[str, str], str]:
        if "id2" in ids:
            body = {
                "text": "Invalid data format",
                "code": 6,
                "invalid-event-number": ids.index("id2"),
            }
            return 400, {}, json.dumps(body)
        return SUCCESS

    seen = serve(answer)
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(5))
    hec.close(summarize=False)
    assert seen == [["id0", "id1", "id2", "id3", "id4"], ["id0", "id1"], ["id3", "id4"]]
    assert [(r[0], r[1], r[2]) for r in backsplash.records] == [("id2", "Splunk.InvalidEvent", 1)]
    assert "(event 2 of the request)" in backsplash.records[0][3]
    summary = balanced(hec.ledger)
    assert (summary["acknowledged"], summary["duplicates_possible"]) == (4, 2)


@responses.activate
def test_an_unnamed_bad_event_is_found_by_bisection() -> None:
    def answer(ids: list[str]) -> tuple[int, dict[str, str], str]:
        if "id5" in ids:
            return 400, {}, json.dumps({"text": "Invalid data format", "code": 6})
        return SUCCESS

    seen = serve(answer)
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(8))
    hec.close(summarize=False)
    assert [(r[0], r[1]) for r in backsplash.records] == [("id5", "Splunk.InvalidEvent")]
    assert sorted(i for ids in seen if "id5" not in ids for i in ids) == sorted(
        f"id{i}" for i in range(8) if i != 5
    )
    assert balanced(hec.ledger)["acknowledged"] == 7


@responses.activate
def test_retries_stop_at_the_attempt_budget_and_the_batch_is_backsplashed() -> None:
    seen = serve(lambda ids: (503, {}, json.dumps({"text": "Server is busy", "code": 9})))
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock, SPLUNK_HEC_RETRY_MAX_ATTEMPTS="3")
    hec.submit(events(3))
    hec.close(summarize=False)
    assert len(seen) == 3
    assert {(r[1], r[2]) for r in backsplash.records} == {("Splunk.ServerError", 3)}
    message = backsplash.records[0][3]
    assert message.startswith("gave up after 3 attempts; last error:")
    assert "code 9" in message
    summary = balanced(hec.ledger)
    assert (summary["backsplashed"], summary["requests"], summary["retries"]) == (3, 3, 2)


@responses.activate
def test_retries_stop_at_the_retry_duration() -> None:
    """The budget is time too: backoff sleeps move the clock until the duration is spent."""
    seen = serve(lambda ids: (503, {}, json.dumps({"text": "Server is busy", "code": 9})))
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock, SPLUNK_HEC_RETRY_DURATION="0.05")
    start = clock.now
    hec.submit(events(2))
    hec.close(summarize=False)
    assert len(seen) >= 2
    assert clock.now - start >= 0.05
    assert {r[1] for r in backsplash.records} == {"Splunk.ServerError"}
    assert balanced(hec.ledger)["backsplashed"] == 2


@responses.activate
def test_a_retry_that_succeeds_delivers_the_batch() -> None:
    answers = iter([(503, {}, json.dumps({"code": 9})), SUCCESS])
    seen = serve(lambda ids: next(answers))
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(4))
    hec.close(summarize=False)
    assert len(seen) == 2 and seen[0] == seen[1]
    summary = balanced(hec.ledger)
    assert (summary["acknowledged"], summary["retries"]) == (4, 1)
    assert backsplash.records == []


@responses.activate
def test_a_fatal_answer_stops_delivery_and_backsplashes_later_submits() -> None:
    seen = serve(lambda ids: (403, {}, json.dumps({"text": "Invalid token", "code": 4})))
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    hec.submit(events(2))
    hec.flush()
    hec.submit(events(3))
    hec.close(summarize=False)
    assert len(seen) == 1  # nothing is sent after a fatal answer
    assert hec.fatal is not None and hec.fatal.error_code == "Splunk.InvalidToken"
    assert [r[1] for r in backsplash.records] == ["Splunk.InvalidToken"] * 5
    assert backsplash.records[-1][3].startswith("not sent: delivery stopped:")
    assert balanced(hec.ledger)["backsplashed"] == 5


@responses.activate
def test_use_ledger_counts_the_next_unit_of_work_on_the_new_ledger() -> None:
    serve(lambda ids: SUCCESS)
    backsplash, clock = MemoryBacksplash(), FakeClock()
    hec = deliverer(backsplash, clock)
    first = hec.ledger
    hec.submit(events(2))
    hec.flush()
    second = Ledger()
    hec.use_ledger(second)
    assert hec.ledger is second
    hec.submit(events(3))
    hec.close(summarize=False)
    assert balanced(first)["acknowledged"] == 2
    assert balanced(second)["acknowledged"] == 3
