"""The deliverer's parts on their own: a parked batch (work), the URL rotation (routes) and the
request on the wire (wire). No server: the rotation's health probe is a fake, and the wire's
requests are plain functions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
import structlog

from config.settings import HecSettings
from forwarder.delivery.acks import AckTracker
from forwarder.delivery.batching import Batch, body_size
from forwarder.delivery.routes import Route, Routes, build_routes
from forwarder.delivery.wire import Wire
from forwarder.delivery.work import Work
from forwarder.errors import RequestCancelledError
from forwarder.hec.client import HecClient, SendResult, gzip_body
from forwarder.hec.protocol import Outcome
from forwarder.hec.transport import RequestGuard
from tests.conftest import TEST_TOKEN, make_settings
from transforms.records import EncodedEvent, RawTarget

URLS = ("https://a.example:8088", "https://b.example:8088", "https://c.example:8088")
LOG = structlog.get_logger("tests")


@pytest.fixture(name="session")
def fixture_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def route(session: requests.Session, url: str, *, max_pending: int = 4) -> Route:
    settings = HecSettings(urls=(url,), token=TEST_TOKEN)
    acks: AckTracker[Work] = AckTracker(timeout_s=60, poll_interval_s=1, max_pending=max_pending)
    return Route(HecClient(session, settings, url), acks, acks_on=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------- work


@pytest.mark.parametrize("gzipped", [True, False])
def test_a_parked_batch_is_restored_exactly(gzipped: bool) -> None:
    """Parking keeps only the body as sent, the lengths and the ids; restoring cuts the body
    back into the same payloads (empty ones and embedded newlines included)."""
    events = [
        EncodedEvent(b'{"event":"a"}', "id-a"),
        EncodedEvent(b"", None),
        EncodedEvent(b"line one\nline two", "id-c"),
    ]
    target = RawTarget("grp:stream", "aws:cloudwatchlogs", None, None)
    work = Work.of(Batch(events, body_size(events), target, 1234))
    body = work.restore(gzipped).body()
    work.wire = gzip_body(body) if gzipped else body
    work.park()
    assert work.batch is None and work.count == 3
    batch = work.restore(gzipped)
    assert [tuple(e) for e in batch.events] == [tuple(e) for e in events]
    assert (batch.raw_target, batch.arrival_ms, batch.nbytes) == (target, 1234, len(body))
    assert work.lengths is None and work.ids is None


def test_park_without_a_body_keeps_the_batch() -> None:
    events = [EncodedEvent(b"x", "1")]
    work = Work.of(Batch(events, 1))
    work.park()  # nothing sent yet: nothing to restore from
    assert work.batch is not None and work.restore(True).events == events


# ---------------------------------------------------------------------------------- routes


def rotation(
    session: requests.Session, probe_answers: list[bool] | None = None, **kw: int
) -> tuple[Routes, list[Route], Clock, list[str]]:
    clock = Clock()
    routes = [route(session, url, **kw) for url in URLS]
    probed: list[str] = []
    answers = iter(probe_answers or [])

    def probe(r: Route) -> tuple[bool, int | None, str]:
        probed.append(r.url)
        healthy = next(answers)
        return healthy, 17 if healthy else 18, "probe"

    return Routes(routes, cooldown_s=5, clock=clock, probe=probe, log=LOG), routes, clock, probed


def test_urls_take_turns(session: requests.Session) -> None:
    rotation_, routes, _clock, _probed = rotation(session)
    picked = [rotation_.next_with_room()[0] for _ in range(4)]
    assert picked == [routes[0], routes[1], routes[2], routes[0]]
    assert rotation_.urls == URLS


def test_a_full_channel_is_skipped_and_all_full_is_none(session: requests.Session) -> None:
    rotation_, routes, clock, _probed = rotation(session, max_pending=1)
    routes[1].acks.add(1, Work.of(Batch([EncodedEvent(b"x", None)], 1)), clock())
    assert [rotation_.next_with_room()[0] for _ in range(3)] == [routes[0], routes[2], routes[0]]
    assert rotation_.pending() == 1
    for index in (0, 2):
        routes[index].acks.add(1, Work.of(Batch([EncodedEvent(b"x", None)], 1)), clock())
    picked, candidates = rotation_.next_with_room()
    assert picked is None and candidates == routes


def test_an_unwell_url_rests_then_comes_back_after_a_passing_probe(
    session: requests.Session,
) -> None:
    rotation_, routes, clock, probed = rotation(session, probe_answers=[False, True])
    rotation_.mark_unhealthy(routes[0], "HEC 503 code 18")
    assert [rotation_.next_with_room()[0] for _ in range(2)] == [routes[1], routes[2]]
    assert probed == []  # still resting: no probe
    clock.now += 5
    assert rotation_.next_with_room()[0] == routes[1]  # the probe failed: another rest
    assert probed == [URLS[0]]
    clock.now += 4
    rotation_.next_with_room()
    assert probed == [URLS[0]]
    clock.now += 1
    assert rotation_.next_with_room()[0] == routes[0]  # probed healthy: back in turn
    assert probed == [URLS[0], URLS[0]] and routes[0].unhealthy_until is None


def test_all_unwell_keeps_every_url_usable(session: requests.Session) -> None:
    rotation_, routes, _clock, _probed = rotation(session)
    for r in routes:
        rotation_.mark_unhealthy(r, "down")
    picked, candidates = rotation_.next_with_room()
    assert picked is routes[0] and candidates == routes


def test_next_ack_event_is_the_earliest_poll_or_expiry(session: requests.Session) -> None:
    rotation_, routes, _clock, _probed = rotation(session)
    assert rotation_.next_ack_event() is None
    work = Work.of(Batch([EncodedEvent(b"x", None)], 1))
    routes[1].acks.add(7, work, 50.0)  # poll at 51, expiry at 110
    routes[2].acks.add(8, work, 40.0)  # poll at 41
    assert rotation_.next_ack_event() == 41.0


# ---------------------------------------------------------------------------------- wire


def make_wire(
    session: requests.Session, deadline: float | None = None
) -> tuple[Wire, threading.Event]:
    aborted = threading.Event()
    clock = time.monotonic
    return Wire(session, deadline=lambda: deadline, clock=clock, aborted=aborted, log=LOG), aborted


def answer() -> SendResult:
    return SendResult(Outcome("ok", "HEC 200 code 0: Success", 0), 200, None, 10)


def test_call_bounds_the_request_by_the_deadline(session: requests.Session) -> None:
    r = route(session, URLS[0])
    wire, _aborted = make_wire(session, deadline=time.monotonic() - 1)
    assert wire.call(r, lambda guard: guard.stopped) is True  # past the deadline already
    wire, _aborted = make_wire(session)
    bound = wire.call(r, lambda guard: guard.remaining())
    assert 0 < bound <= r.client.request_bound_s


def test_launch_then_land_gives_the_answer(session: requests.Session) -> None:
    r = route(session, URLS[0])
    wire, _aborted = make_wire(session)
    work = Work.of(Batch([EncodedEvent(b"x", None)], 1))
    wire.launch(work, r, lambda guard: answer())
    assert r in wire.flights
    landed = wire.land()
    assert landed is not None
    flight, result = landed
    assert flight.work is work and flight.route is r and result == answer()
    assert wire.land() is None  # landed once: nothing on the wire any more
    wire.stop()


def test_an_abort_cancels_the_request_on_the_wire(session: requests.Session) -> None:
    """The request ends when its guard is cancelled; what it raised is the answer."""
    r = route(session, URLS[0])
    wire, aborted = make_wire(session)
    started = threading.Event()

    def request(guard: RequestGuard) -> SendResult:
        started.set()
        while not guard.cancelled:
            time.sleep(0.01)
        raise RequestCancelledError("cancelled", url=r.url, maybe_delivered=True)

    wire.launch(Work.of(Batch([EncodedEvent(b"x", None)], 1)), r, request)
    assert started.wait(30)
    aborted.set()
    landed = wire.land()
    assert landed is not None and isinstance(landed[1], RequestCancelledError)
    wire.stop()


def test_stop_cancels_an_unlanded_request(session: requests.Session) -> None:
    r = route(session, URLS[0])
    wire, _aborted = make_wire(session)
    seen: list[RequestGuard] = []

    def request(guard: RequestGuard) -> SendResult:
        seen.append(guard)
        while not guard.cancelled:
            time.sleep(0.01)
        return answer()

    wire.launch(Work.of(Batch([EncodedEvent(b"x", None)], 1)), r, request)
    wire.stop()
    assert not wire.flights and seen and seen[0].cancelled


# ------------------------------------------------------------------ several requests at once


def own_route(url: str, **kw: int) -> Route:
    """A route with a session of its own (as SPLUNK_HEC_CONCURRENCY > 1 makes them)."""
    own = requests.Session()
    made = route(own, url, **kw)
    made.session = own
    return made


def test_build_routes_spreads_channels_over_the_urls_in_turn(session: requests.Session) -> None:
    settings = make_settings(SPLUNK_HEC_URL=",".join(URLS[:2]), SPLUNK_HEC_TOKEN=TEST_TOKEN)
    one = build_routes(settings, session, 1, 1, own_sessions=False)
    assert [r.url for r in one] == list(URLS[:2])  # one channel per URL, at least
    assert all(r.session is None for r in one)
    five = build_routes(settings, session, 5, 1, own_sessions=True)
    assert [r.url for r in five] == [URLS[0], URLS[1], URLS[0], URLS[1], URLS[0]]
    assert len({r.client.channel for r in five}) == 5
    assert len({id(r.session) for r in five}) == 5 and session not in {r.session for r in five}
    for r in five:
        assert r.session is not None
        r.session.close()


def test_a_busy_channel_is_skipped_and_its_url_not_probed() -> None:
    routes = [own_route(URLS[0]), own_route(URLS[1]), own_route(URLS[0])]
    probed: list[Route] = []

    def probe(r: Route) -> tuple[bool, int | None, str]:
        probed.append(r)
        return True, 17, "probe"

    clock = Clock()
    rotation_ = Routes(routes, cooldown_s=5, clock=clock, probe=probe, log=LOG)
    busy = {routes[0], routes[1]}
    assert rotation_.next_with_room(lambda r: r in busy)[0] is routes[2]
    assert rotation_.has_room(lambda r: r in busy)
    busy.add(routes[2])
    picked, _candidates = rotation_.next_with_room(lambda r: r in busy)
    assert picked is None and not rotation_.has_room(lambda r: r in busy)
    # An unwell URL rests with all its channels; after the rest, a free channel probes it.
    rotation_.mark_unhealthy(routes[2], "HEC 503 code 18")
    assert routes[0].unhealthy_until == routes[2].unhealthy_until is not None
    assert routes[1].unhealthy_until is None
    clock.now += 5
    busy = {routes[0]}
    assert rotation_.next_with_room(lambda r: r in busy)[0] is routes[1]
    # The rested URL is probed once, through its free channel (routes[0]'s session is taken),
    # and comes back with all its channels.
    assert probed == [routes[2]] and routes[0].unhealthy_until is None
    assert rotation_.next_with_room(lambda r: r in busy)[0] is routes[2]
    assert probed == [routes[2]]
    for r in routes:
        assert r.session is not None
        r.session.close()


def test_requests_on_two_channels_are_on_the_wire_together(session: requests.Session) -> None:
    """GIVEN two channels with sessions of their own WHEN both launch THEN both requests run
    at once; the first to end lands first; an abort cancels every one still on the wire."""
    first, second = own_route(URLS[0]), own_route(URLS[1])
    aborted = threading.Event()
    wire = Wire(
        session, deadline=lambda: None, clock=time.monotonic, aborted=aborted, log=LOG, workers=2
    )
    both_in = threading.Barrier(3, timeout=30)
    release_second = threading.Event()

    def slow(guard: RequestGuard) -> SendResult:
        both_in.wait()
        while not guard.cancelled:
            time.sleep(0.01)
        raise RequestCancelledError("cancelled", url=URLS[0], maybe_delivered=True)

    def quick(guard: RequestGuard) -> SendResult:
        both_in.wait()
        assert release_second.wait(30)
        return answer()

    wire.launch(Work.of(Batch([EncodedEvent(b"a", None)], 1)), first, slow)
    wire.launch(Work.of(Batch([EncodedEvent(b"b", None)], 1)), second, quick)
    both_in.wait()  # both requests are in their threads at the same time
    assert wire.busy(first) and wire.busy(second) and not wire.shares_session(first, second)
    release_second.set()
    landed = wire.land()
    assert landed is not None and landed[0].route is second and landed[1] == answer()
    assert landed[0].rtt_s is not None and landed[0].rtt_s >= 0
    assert list(wire.flights) == [first]
    aborted.set()
    wire.cancel()
    landed = wire.land()
    assert landed is not None and isinstance(landed[1], RequestCancelledError)
    assert not wire.flights and wire.land() is None
    wire.stop()
    for r in (first, second):
        assert r.session is not None
        r.session.close()


def test_routes_sharing_a_session_are_busy_together(session: requests.Session) -> None:
    """A caller's session shared by every channel: its requests take turns."""
    one, two = route(session, URLS[0]), route(session, URLS[1])
    wire, _aborted = make_wire(session)
    gate = threading.Event()

    def held(guard: RequestGuard) -> SendResult:
        assert gate.wait(30)
        return answer()

    wire.launch(Work.of(Batch([EncodedEvent(b"a", None)], 1)), one, held)
    assert wire.busy(two) and wire.shares_session(one, two)
    gate.set()
    assert wire.land(one) is not None and not wire.busy(two)
    wire.stop()
