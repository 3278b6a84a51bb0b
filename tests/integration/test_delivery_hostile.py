"""A hostile HEC must not hold a deadline, a flush, a close or ``abort()``, nor fake a delivery.

Issue 9, items 2, 7 and 8, and the unbounded name resolution: against the purpose-built
servers of :mod:`tests.integration.hostile_hec` (never answers, drips one byte a second, a
proxy's HTML 200), each request has one wall-clock bound, ``abort()`` cancels the request on
the wire, and a 200 that is not HEC's answer never turns acks off. Waits are bounded by
generous limits; what is asserted is the outcome (returned, backsplashed, balanced).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from config.settings import HecSettings
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import HecEmulator
from forwarder.errors import RequestCancelledError, RetryableError
from forwarder.hec.client import HecClient
from forwarder.hec.transport import RequestGuard
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import (
    delivery_settings,
    flow_events,
    indexed_ids,
    self_signed_certificate,
)
from tests.integration.hostile_hec import HostileHec
from tests.integration.test_delivery_pipelined import MemoryBacksplash

pytestmark = pytest.mark.integration

#: Generous: what an unbounded wait would exceed many times over (a drip answer takes minutes).
BOUND_S = 20.0


def hec_settings(url: str, **overrides: Any) -> HecSettings:
    values: dict[str, Any] = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, **overrides}
    return HecSettings(urls=(url,), token=TEST_TOKEN, **values)


def wait_for(condition: Any, timeout: float = BOUND_S) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def assert_all_backsplashed(deliverer: Deliverer, backsplash: MemoryBacksplash, count: int) -> None:
    ledger = deliverer.ledger
    assert ledger.balanced() and ledger.in_flight == 0
    assert ledger.acknowledged == 0
    assert ledger.backsplashed == ledger.events_in == count == len(backsplash.records)
    assert deliverer.pending_acks == 0


# ------------------------------------------------------------------ the client's bound


@pytest.mark.parametrize("mode", ["drip", "blackhole"])
def test_a_request_has_one_wall_clock_bound(mode: str) -> None:
    """GIVEN a HEC that drips its answer (each read well within the read timeout) or never
    answers WHEN a batch is sent THEN the request fails as a retryable timeout that may have
    delivered, instead of lasting as long as the server likes."""
    with HostileHec(mode) as hec, requests.Session() as session:  # type: ignore[arg-type]
        client = HecClient(session, hec_settings(hec.url), hec.url)
        done = threading.Event()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                client.send(b'{"event":"x"}', endpoint="event")
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, daemon=True).start()
        assert done.wait(BOUND_S)
    (error,) = errors
    assert isinstance(error, RetryableError)
    assert error.error_code == "Splunk.ConnectionTimeout"
    assert error.maybe_delivered


def test_a_guard_cancelled_from_another_thread_ends_the_request() -> None:
    """GIVEN a request black-holed by HEC WHEN its guard is cancelled from another thread
    THEN it ends at once as cancelled, before its own (long) bound."""
    with HostileHec("blackhole") as hec, requests.Session() as session:
        client = HecClient(session, hec_settings(hec.url, read_timeout_s=600.0), hec.url)
        guard = RequestGuard()

        def cancel_once_sent() -> None:
            wait_for(lambda: hec.requests["data"] >= 1)
            guard.cancel()

        canceller = threading.Thread(target=cancel_once_sent)
        canceller.start()
        with pytest.raises(RequestCancelledError):
            client.send(b'{"event":"x"}', endpoint="event", guard=guard)
        canceller.join(BOUND_S)
        assert hec.requests["data"] == 1


# ------------------------------------------------------------------ name resolution


@pytest.fixture(name="resolver")
def fixture_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``socket.getaddrinfo`` with fake names: ``*.stuck.test`` hangs (up to a minute),
    other ``*.test`` names are 127.0.0.1; the rest resolve as usual."""
    real = socket.getaddrinfo
    state: dict[str, Any] = {
        "release": threading.Event(),
        "hung": threading.Event(),
        "returned": threading.Event(),
    }

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".stuck.test"):
            state["hung"].set()
            try:
                state["release"].wait(60)
                raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")
            finally:
                state["returned"].set()
        if isinstance(host, str) and host.endswith(".test"):
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield state
    state["release"].set()


def test_name_resolution_is_bounded(resolver: dict[str, Any]) -> None:
    """GIVEN a resolver that hangs WHEN a batch is sent THEN the request fails as a retryable
    connect timeout while the resolver is still hanging (getaddrinfo has no timeout of its
    own: the system resolver may take tens of seconds)."""
    url = "http://hec.stuck.test:8088"
    with requests.Session() as session:
        client = HecClient(session, hec_settings(url), url)
        with pytest.raises(RetryableError) as caught:
            client.send(b'{"event":"x"}', endpoint="event")
    assert resolver["hung"].is_set()
    assert not resolver["returned"].is_set()  # the send ended while getaddrinfo still hung
    assert caught.value.error_code == "Splunk.ConnectionTimeout"


def test_a_host_name_is_resolved_and_used(resolver: dict[str, Any]) -> None:
    """A name (not an IP literal) goes through the bounded resolver and reaches HEC."""
    with HecEmulator(token=TEST_TOKEN) as emulator:
        url = emulator.url.replace("127.0.0.1", "hec.test")
        with Deliverer(delivery_settings(url), backsplash=MemoryBacksplash()) as deliverer:
            events = flow_events(30)
            deliverer.submit(events)
            deliverer.flush()
        assert deliverer.ledger.acknowledged == 30
        assert sorted(indexed_ids(emulator)) == sorted(str(e.event_id) for e in events)


def test_tls_still_checks_the_url_host_name(resolver: dict[str, Any], tmp_path: Path) -> None:
    """GIVEN HEC over TLS with a certificate for ``hec.test`` WHEN reached as ``hec.test``
    THEN it works (SNI and verification use the URL's name, not the resolved address);
    reached as ``other.test`` (same address) THEN verification fails."""
    from cryptography import x509

    cert, key = self_signed_certificate(tmp_path, "hec.test", x509.DNSName("hec.test"))
    with HecEmulator(token=TEST_TOKEN, tls_certfile=cert, tls_keyfile=key) as emulator:
        port = emulator.url.rsplit(":", 1)[1]
        with requests.Session() as session:
            good = f"https://hec.test:{port}"
            result = HecClient(session, hec_settings(good, ca_bundle=str(cert)), good).send(
                b'{"event":"x"}', endpoint="event"
            )
            assert result.outcome.action == "ok"
            bad = f"https://other.test:{port}"
            with pytest.raises(RetryableError) as caught:
                HecClient(session, hec_settings(bad, ca_bundle=str(cert)), bad).send(
                    b'{"event":"x"}', endpoint="event"
                )
            assert caught.value.error_code == "Splunk.SSLHandshake"
    assert ipaddress.ip_address("127.0.0.1")  # the names above all resolved here


# ------------------------------------------------------------------ the deliverer


@pytest.mark.parametrize("pipelined", [True, False])
def test_flush_with_a_deadline_against_a_dripping_hec(pipelined: bool) -> None:
    """GIVEN a HEC that answers one byte a second WHEN flush(deadline 2 s away) THEN it returns
    (well before the drip would end) with every event backsplashed and the ledger balanced."""
    backsplash = MemoryBacksplash()
    with HostileHec("drip") as hec:
        settings = delivery_settings(hec.url, SPLUNK_HEC_READ_TIMEOUT="30")
        deliverer = Deliverer(settings, backsplash=backsplash, pipelined=pipelined)
        events = flow_events(10)  # one partial batch: the flush sends it
        finished = threading.Event()

        def run() -> None:
            deliverer.submit(events)
            deliverer.flush(time.monotonic() + 2.0)
            finished.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        assert finished.wait(BOUND_S)
        worker.join(BOUND_S)
        deliverer.close()
    assert_all_backsplashed(deliverer, backsplash, 10)
    assert {code for _, code, _ in backsplash.records} == {"Splunk.Deadline"}
    assert deliverer.ledger.duplicates_possible > 0  # the batch cut off mid-answer


@pytest.mark.parametrize("pipelined", [True, False])
def test_abort_from_another_thread_during_a_black_holed_request(pipelined: bool) -> None:
    """GIVEN a request HEC never answers (read timeout 10 minutes) WHEN abort() is called from
    another thread THEN the deliverer's call returns and every event is backsplashed with the
    abort's reason."""
    backsplash = MemoryBacksplash()
    with HostileHec("blackhole") as hec:
        settings = delivery_settings(hec.url, SPLUNK_HEC_READ_TIMEOUT="600")
        deliverer = Deliverer(settings, backsplash=backsplash, pipelined=pipelined)
        events = flow_events(40)
        finished = threading.Event()

        def run() -> None:
            deliverer.submit(events)
            deliverer.close()
            finished.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        wait_for(lambda: hec.requests["data"] >= 1)
        deliverer.abort("Splunk.Shutdown", "second shutdown signal")
        assert finished.wait(BOUND_S)
        worker.join(BOUND_S)
    assert_all_backsplashed(deliverer, backsplash, 40)
    assert {code for _, code, _ in backsplash.records} == {"Splunk.Shutdown"}
    assert hec.requests["data"] == 1  # nothing more was sent after the abort


def test_close_with_a_deadline_against_a_black_hole() -> None:
    """close(deadline) is bounded too, with the I/O thread stopped afterwards."""
    backsplash = MemoryBacksplash()
    threads_before = set(threading.enumerate())
    with HostileHec("blackhole") as hec:
        settings = delivery_settings(hec.url, SPLUNK_HEC_READ_TIMEOUT="600")
        deliverer = Deliverer(settings, backsplash=backsplash)
        deliverer.submit(flow_events(10))  # a partial batch: close() sends it
        finished = threading.Event()

        def close() -> None:
            deliverer.close(time.monotonic() + 1.0)
            finished.set()

        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        assert finished.wait(BOUND_S)
    assert_all_backsplashed(deliverer, backsplash, 10)
    new_threads = set(threading.enumerate()) - threads_before
    assert not [t for t in new_threads if t.name.startswith("hec-send")]


class StuckSession(requests.Session):
    """Holds every request before it has a socket, where no shutdown can reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.gate.wait(120)
        return super().request(method, url, *args, **kwargs)


def test_abort_gives_up_on_a_request_thread_that_cannot_be_woken(emulator: HecEmulator) -> None:
    """GIVEN the I/O thread stuck where no socket shutdown reaches it (held before its
    socket exists) WHEN abort() is called THEN the deliverer's call still returns, the batch
    is backsplashed, and the stuck thread is left behind (logged ``hec_request_stuck``)."""
    session = StuckSession()
    backsplash = MemoryBacksplash()
    deliverer = Deliverer(delivery_settings(emulator.url), session=session, backsplash=backsplash)
    finished = threading.Event()

    def run() -> None:
        deliverer.submit(flow_events(10))
        deliverer.close()
        finished.set()

    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        assert session.entered.wait(BOUND_S)
        deliverer.abort("Splunk.Shutdown", "second shutdown signal")
        assert finished.wait(BOUND_S)
    finally:
        session.gate.set()  # let the stuck thread go
    worker.join(BOUND_S)
    assert_all_backsplashed(deliverer, backsplash, 10)
    assert {code for _, code, _ in backsplash.records} == {"Splunk.Shutdown"}
    assert emulator.stats().data_requests == 0
    session.close()


# ------------------------------------------------------------------ untrusted answers


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_proxys_html_200_does_not_turn_acks_off(pipelined: bool) -> None:
    """GIVEN a proxy's HTML 200 and then HEC answers with ackIds whose acks never turn true
    WHEN delivering THEN nothing is counted acknowledged: the HTML answer is retried, the
    batches are re-sent on ack timeout and end in the backsplash; the ledger balances."""
    backsplash = MemoryBacksplash()
    with HostileHec("html_then_acks_lost") as hec:
        settings = delivery_settings(
            hec.url, SPLUNK_HEC_ACK_TIMEOUT="0.3", SPLUNK_HEC_RETRY_DURATION="1"
        )
        deliverer = Deliverer(settings, backsplash=backsplash, pipelined=pipelined)
        events = flow_events(60)
        deliverer.submit(events)
        deliverer.flush(time.monotonic() + BOUND_S)
        deliverer.close()
    assert_all_backsplashed(deliverer, backsplash, 60)
    assert deliverer.ledger.ack_unavailable == 0
    assert {code for _, code, _ in backsplash.records} <= {"Splunk.AckTimeout", "Splunk.Deadline"}
    assert hec.requests["ack"] > 0


def test_acks_come_back_when_hec_hands_out_ackids_again() -> None:
    """GIVEN HEC's own success without an ackId (acks off: that batch is delivered on its 200)
    and then answers with ackIds that never turn true THEN those later batches are not
    counted acknowledged."""
    backsplash = MemoryBacksplash()
    with HostileHec("noack_then_acks_lost") as hec:
        settings = delivery_settings(
            hec.url, SPLUNK_HEC_ACK_TIMEOUT="0.3", SPLUNK_HEC_RETRY_DURATION="1"
        )
        deliverer = Deliverer(settings, backsplash=backsplash, pipelined=False)
        events = flow_events(60)
        deliverer.submit(events)
        deliverer.flush(time.monotonic() + BOUND_S)
        deliverer.close()
    ledger = deliverer.ledger
    assert ledger.balanced() and ledger.in_flight == 0
    first_batch = ledger.acknowledged
    assert 0 < first_batch < 60  # only the batch HEC took with acks off
    assert ledger.ack_unavailable == 1
    assert ledger.backsplashed == 60 - first_batch == len(backsplash.records)


def test_a_flood_of_an_answer_costs_bounded_memory() -> None:
    """GIVEN a HEC that answers 200 with a 400 MB body WHEN a batch is sent THEN the client
    reads at most 1 MiB of it, drops the connection and fails the request as a retryable
    server error that may have delivered (the answer is not HEC's), in bounded memory."""
    with HostileHec("flood") as hec, requests.Session() as session:
        client = HecClient(session, hec_settings(hec.url), hec.url)
        tracemalloc.start()
        try:
            with pytest.raises(RetryableError) as caught:
                client.send(b'{"event":"x"}', endpoint="event")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert caught.value.error_code == "Splunk.ServerError"
    assert caught.value.maybe_delivered
    assert "over 1048576 bytes" in str(caught.value)
    assert peak < 16 * 1024 * 1024
