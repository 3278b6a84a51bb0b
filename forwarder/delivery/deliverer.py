"""The deliverer: batch, send with retries, await indexer acks, backsplash what cannot go.

Every event handed to :meth:`Deliverer.submit` ends *acknowledged* (HEC's ack turned true, or a
200 when the token has acks off), or *backsplashed* with a reason; the :class:`Ledger` counts
both and balances after :meth:`Deliverer.flush`. If the backsplash itself fails,
``BacksplashError`` propagates and the events stay counted in flight: the caller decides (the
daemon spools, a Lambda fails its invocation).

Design: one thread keeps all the state; requests go out one at a time; between and during
sends (backoff sleeps, backpressure waits) that thread polls acks for every channel. That keeps
the bookkeeping simple and exact, and is fast enough because the per-event work is a length
and a join (see ``forwarder.delivery.batching``). Pipelining: a batch's first attempt is handed to
one background I/O thread that only does the POST (body already built and gzipped) and returns the
answer through a future; :meth:`Deliverer.submit` returns meanwhile, so the caller transforms
and the deliverer builds and gzips the next batch while the previous request is on the wire.
The answer is *landed* (handled by the deliverer's thread, exactly as a synchronous send's) before
the next request goes out, before any other use of the session (ack poll, health probe), at a
cut-off, and in :meth:`Deliverer.service`, :meth:`Deliverer.flush` and :meth:`Deliverer.close`:
at most one request is on the wire, the session is never used by two threads at once, and
retries (synchronous, rare), 413 splits and bad-event isolation see the same order of events as
before. One :class:`HecClient` (channel) per URL; URLs take
turns (round-robin); a URL with connection errors or an unhealthy answer (503 codes 18-20)
leaves the rotation for ``unhealthy_cooldown_s`` and comes back after a passing health probe.
Acks are always polled on the channel that took the request; a re-send may go to another URL.

What HEC says, and what happens (DESIGN.md §4):
    retry (busy, 5xx, timeouts)  back off (full jitter, ``Retry-After``), up to the retry
                                 duration from the first failure; then backsplash
    413                          halve and send both halves; a single event: backsplash
    bad event (6, 12, 13, 15)    cut it out (``invalid-event-number``) or bisect, send the rest,
                                 backsplash the bad one; 7 (incorrect index) likewise
    token / channel / URL        fatal: backsplash everything pending and whatever is submitted
                                 later; ``hec_fatal`` logged with HEC's text and code
    ack disabled (code 14)       warn once, count, treat the 200 as delivery
    ack timeout                  re-send (counted as a possible duplicate) within the duration

Bounding it in time: :meth:`Deliverer.set_deadline` (a clock time, kept until changed) and the
``deadline`` of :meth:`Deliverer.flush` (that flush only) are cut-offs: once past, no attempt,
re-send, backoff sleep or ack wait starts or goes on (a backoff sleep wakes at the deadline);
what is queued, being retried, in a partial batch or awaiting its ack is backsplashed
(``Splunk.Deadline``), and so is whatever is submitted later. :meth:`Deliverer.abort` is the
same at once and for good, with the caller's reason (``Splunk.Shutdown`` by default).

Every request is bounded as a whole (:class:`~forwarder.hec.client.RequestGuard`): by
``connect_timeout_s + read_timeout_s`` and by the time left to the deadline (a deadline set or a
flush started while a request is on the wire tightens its bound). :meth:`Deliverer.abort` cancels
the request on the wire (its socket is shut down, from whichever thread calls it). A request cut
off this way may have reached HEC: its batch counts as a possible duplicate and is
backsplashed. No wait for a request's answer is unbounded, so a HEC that never answers or drips
its answer one byte a second cannot hold a flush, a close, a deadline or an abort.
"""

from __future__ import annotations

import gzip
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from weakref import WeakKeyDictionary

import requests
import structlog
from tenacity import RetryCallState

from config.settings import Settings
from forwarder.backsplash.writers import BacksplashWriter, NullBacksplash
from forwarder.delivery.acks import AckTracker
from forwarder.delivery.batching import Batch, Batcher, halve, isolate, pack
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.retry import RetryBudget, budget_exhausted, build_retrying
from forwarder.errors import (
    AckUnavailableError,
    BacksplashError,
    DeliveryError,
    FatalHecError,
    RejectedBatchError,
    RetryableError,
)
from forwarder.hec.client import (
    DEFAULT_GZIP_LEVEL,
    HecClient,
    RequestGuard,
    SendResult,
    gzip_body,
)
from forwarder.hec.protocol import UNHEALTHY_CODES, Outcome
from transforms.records import EncodedEvent, RawTarget

#: While blocked on acks (backpressure, flush), polls start this soon and double up to the
#: configured poll interval: an ack that is already true is not waited for a whole interval.
_FIRST_BLOCKED_POLL_S: Final = 0.02
_MIN_SLEEP_S: Final = 0.001
#: The default sleep waits in slices this long, so that a deadline set or an abort requested
#: from another thread (or a signal handler) ends a long backoff promptly.
_NAP_SLICE_S: Final = 0.05
#: A request's I/O thread ends this soon after its socket is shut down (its guard fired); if it
#: has not by then (it cannot be woken), its answer is given up on and the thread left behind.
_STUCK_GRACE_S: Final = 5.0

#: One lock per ``requests.Session`` (not guaranteed thread-safe), held around every HEC call:
#: a session shared by several deliverers serves one request at a time even when one of them
#: has a request on the wire in its I/O thread.
_SESSION_LOCKS: WeakKeyDictionary[requests.Session, threading.Lock] = WeakKeyDictionary()
_SESSION_LOCKS_GUARD: Final = threading.Lock()


def _session_lock(session: requests.Session) -> threading.Lock:
    with _SESSION_LOCKS_GUARD:
        lock = _SESSION_LOCKS.get(session)
        if lock is None:
            lock = _SESSION_LOCKS[session] = threading.Lock()
        return lock


@dataclass(slots=True, eq=False)
class _Work:
    """A batch on its way, with its retry budget (shared across re-sends).

    While it waits for its ack the batch is *parked*: only the request body as sent (gzip,
    about a seventh of the events' size), the payload lengths and the event ids are kept, so
    ``max_pending`` unacknowledged requests cost little memory. A re-send reuses the body as
    is; a backsplash cuts it back into the exact payloads.
    """

    batch: Batch | None
    count: int
    raw_target: RawTarget | None
    arrival_ms: int
    budget: RetryBudget = field(default_factory=RetryBudget)
    wire: bytes | None = None  # the request body as sent (gzip-compressed when gzip is on)
    lengths: array[int] | None = None  # parked: payload sizes, to cut the body into events
    ids: list[str | None] | None = None  # parked: the events' ids

    @classmethod
    def of(cls, batch: Batch, budget: RetryBudget | None = None) -> _Work:
        return cls(batch, len(batch), batch.raw_target, batch.arrival_ms, budget or RetryBudget())

    def park(self) -> None:
        """Drop the events, keeping what restores them exactly (``wire`` must be set)."""
        if self.batch is not None and self.wire is not None:
            events = self.batch.events
            self.lengths = array("I", [len(event[0]) for event in events])
            self.ids = [event[1] for event in events]
            self.batch = None

    def restore(self, gzipped: bool) -> Batch:
        """The batch, rebuilt from the parked body when it was parked."""
        if self.batch is not None:
            return self.batch
        assert self.wire is not None and self.lengths is not None and self.ids is not None
        body = gzip.decompress(self.wire) if gzipped else self.wire
        events: list[EncodedEvent] = []
        offset = 0
        for length, event_id in zip(self.lengths, self.ids, strict=True):
            events.append(EncodedEvent(body[offset : offset + length], event_id))
            offset += length + 1
        self.batch = Batch(events, len(body), self.raw_target, self.arrival_ms)
        self.lengths = self.ids = None
        return self.batch


@dataclass(slots=True, eq=False)
class _Route:
    """One HEC URL: its client (channel), its pending acks, its health."""

    client: HecClient
    acks: AckTracker[_Work]
    acks_on: bool
    unhealthy_until: float | None = None

    @property
    def url(self) -> str:
        return self.client.url


@dataclass(slots=True, eq=False)
class _Flight:
    """A batch's first attempt, on the wire in the I/O thread; its answer not yet handled."""

    work: _Work
    route: _Route
    future: Future[SendResult]
    guard: RequestGuard


class _GiveUp(Exception):
    """No attempt can be made (deadline passed while waiting for capacity)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class _Halted(Exception):
    """A backoff sleep ended at a cut-off (deadline, abort, fatal, shutdown): no next attempt."""


class Deliverer:
    """Delivers encoded events to HEC with acks, retries and the backsplash.

    Not thread-safe: one thread submits, flushes and closes (the ledger may be read from any).

    Args:
        settings: HEC, acks, retry and batching settings.
        session: a ``requests.Session`` to share; one is made (and closed) when None.
        backsplash: where undeliverable events go; None: nowhere, so giving up raises
            ``BacksplashError`` (nothing is ever dropped silently).
        clock: monotonic clock (ack timeouts, retry duration, linger, deadlines).
        sleep: how to wait; by default a sleep that a shutdown (``stop_event``), an
            :meth:`abort` and the deadline (:meth:`set_deadline`) cut short. An injected sleep
            is the caller's: the deliverer only checks the cut-offs before and after it.
        stop_event: set on shutdown: no new retries or re-sends; what cannot be sent is
            backsplashed with ``Splunk.Shutdown``. Acks are still awaited (see :meth:`abort`
            for giving up on those too).
        wall_clock: epoch seconds for arrival timestamps.
        gzip_level: zlib level for request bodies.
        log: a structlog logger (bound context welcome).
        pipelined: send a batch's first attempt from a background I/O thread, so that the
            caller's work overlaps the request on the wire (see the module notes); False:
            every request is made in the calling thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        backsplash: BacksplashWriter | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        stop_event: threading.Event | None = None,
        wall_clock: Callable[[], float] = time.time,
        gzip_level: int = DEFAULT_GZIP_LEVEL,
        log: Any = None,
        pipelined: bool = True,
    ) -> None:
        hec = settings.hec
        if not hec.urls:
            raise ValueError("no HEC URL configured (SPLUNK_HEC_URL)")
        self._settings = settings
        self._endpoint = hec.endpoint
        self._gzip = hec.gzip
        self._gzip_level = gzip_level
        self._policy = settings.retry
        self._acks_wanted = settings.acks.enabled
        self._cooldown = hec.unhealthy_cooldown_s
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._session_lock = _session_lock(self._session)
        self._routes = [
            _Route(
                HecClient(self._session, hec, url, gzip_level=gzip_level),
                AckTracker(
                    timeout_s=settings.acks.timeout_s,
                    poll_interval_s=settings.acks.poll_interval_s,
                    max_pending=settings.acks.max_pending,
                ),
                acks_on=settings.acks.enabled,
            )
            for url in hec.urls
        ]
        self._next_route = 0
        self._clock = clock
        self._wall_clock = wall_clock
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._nap
        self._batcher = Batcher(
            settings.batching.max_bytes,
            settings.batching.max_events,
            settings.batching.linger_s,
            clock=clock,
            wall_ms=lambda: int(wall_clock() * 1000),
        )
        self._backsplash: BacksplashWriter = (
            backsplash if backsplash is not None else NullBacksplash()
        )
        self._queue: deque[_Work] = deque()
        self._fatal: FatalHecError | None = None
        self._deadline: float | None = None  # set_deadline(): until changed
        self._flush_deadline: float | None = None  # flush(deadline): during that flush only
        self._abort_reason: tuple[str, str] = ("Splunk.Shutdown", "delivery aborted")
        self._aborted = threading.Event()
        self._ack_unavailable_warned = False
        self._closed = False
        self._pipelined = pipelined
        self._executor: ThreadPoolExecutor | None = None  # the I/O thread, made on first use
        self._flight: _Flight | None = None  # the request on the wire, answer not yet handled
        self._guard: RequestGuard | None = None  # the request in progress (any thread)
        self._log = log if log is not None else structlog.get_logger("forwarder.delivery.deliverer")
        self.ledger = Ledger()

    # ------------------------------------------------------------------ public API

    @property
    def fatal(self) -> FatalHecError | None:
        """The token/channel/URL error that stopped delivery, if any (exit status HEC_FATAL)."""
        return self._fatal

    @property
    def pending_acks(self) -> int:
        """Requests sent and not yet acknowledged, over all channels.

        Counts the request on the wire whose answer is not handled yet (pipelining), so it is
        never more than ``max_pending`` per channel and is 0 after :meth:`flush`.
        """
        flying = 1 if self._flight is not None else 0
        return sum(len(route.acks) for route in self._routes) + flying

    @property
    def urls(self) -> tuple[str, ...]:
        """The HEC URLs, in rotation order."""
        return tuple(route.url for route in self._routes)

    @property
    def deadline(self) -> float | None:
        """The deadline set by :meth:`set_deadline`, or None."""
        return self._deadline

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called."""
        return self._aborted.is_set()

    def set_deadline(self, deadline: float | None) -> None:
        """Bound every later wait: past ``deadline``, give up instead of retrying or waiting.

        From then on no attempt, re-send, backoff or ack wait starts or continues: what is
        queued, being retried, in a partial batch or awaiting its ack is backsplashed with
        ``Splunk.Deadline`` (at the deliverer's next step: a backoff sleep wakes at the
        deadline), and so are events submitted later. A request on the wire ends by the
        deadline too (its bound is tightened). The deadline stays until set again;
        :meth:`flush` with its own deadline uses the earlier of the two. Safe to call from
        another thread or a signal handler.

        Args:
            deadline: a time on this deliverer's clock; None removes the deadline.
        """
        self._deadline = deadline
        self._tighten_guard()

    def abort(
        self, reason_code: str = "Splunk.Shutdown", message: str = "delivery aborted"
    ) -> None:
        """Give up for good: backsplash everything not yet acknowledged, and all later submits.

        Queued batches, partial batches, batches being retried and batches awaiting their
        acks go to the backsplash with ``reason_code``; later :meth:`submit` calls store their
        events there without sending. Delivery is not fatal: :attr:`fatal` stays None.

        Safe from any thread and from a signal handler: this only records the abort and wakes
        the deliverer's sleep. The backsplash writes happen in the deliverer's thread, inside
        the call in progress (submit, service, flush), or else at the next call; call
        :meth:`flush` or :meth:`close` to have them done now. A request on the wire is cancelled
        (its socket shut down): its batch is backsplashed as a possible duplicate. A second
        call changes nothing.

        Args:
            reason_code: the backsplash ``errorCode`` (``Splunk.Shutdown``, ``Splunk.Deadline``).
            message: the backsplash ``errorMessage`` (attempts and last error are appended).
        """
        if self._aborted.is_set():
            return
        self._abort_reason = (reason_code, message)
        self._aborted.set()
        guard = self._guard
        if guard is not None:
            guard.cancel()  # lock-free: shuts the request's socket down

    def submit(self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        """Hand events over for delivery; full batches are sent before this returns.

        May block: while a channel has ``max_pending`` unacknowledged requests (backpressure)
        and during retry backoff, but not past the deadline (:meth:`set_deadline`) nor after
        :meth:`abort`. Partial batches wait for more events, their linger time or :meth:`flush`.

        Args:
            events: encoded events (payload bytes and CloudWatch event id).
            raw_target: raw-endpoint metadata for these events (ignored on the event endpoint;
                batches never mix targets).

        Raises:
            BacksplashError: events had to be backsplashed and the write failed.
            RuntimeError: the deliverer is closed.
        """
        count = len(events)
        if not count:
            return
        self._check_open()
        if not isinstance(events, list):
            # Transforms hand over lazy sequences that encode on every pass; batching, body
            # building and parking each take one, so encode once here.
            events = list(events)
        self.ledger.add(events_in=count)
        if self._endpoint == "event":
            raw_target = None
        cut = self._cutoff()
        if cut is not None:  # fatal, aborted or past the deadline: straight to the backsplash
            self._settle(cut)
            error_code, why = cut
            arrival_ms = int(self._wall_clock() * 1000)
            for batch in pack(events, self._batcher.max_bytes, self._batcher.max_events):
                self._store(
                    batch.events,
                    raw_target=raw_target,
                    arrival_ms=arrival_ms,
                    attempts=0,
                    error_code=error_code,
                    message=f"not sent: {why}",
                )
            return
        self._queue.extend(_Work.of(batch) for batch in self._batcher.add(events, raw_target))
        self._pump()

    def service(self) -> None:
        """Do what is due without waiting: send aged partial batches, poll due acks, re-send.

        The daemon calls this when idle (see :meth:`next_wakeup`). The answer to a request
        still on the wire (pipelining) is awaited and handled here.

        Raises:
            BacksplashError: a backsplash write failed.
        """
        self._check_open()
        self._pump()
        self._land()
        while self._queue:  # the answer asked for a re-send (split, bad event, acks off)
            self._drain_queue()
            self._land()

    def next_wakeup(self) -> float | None:
        """Clock time at which :meth:`service` has something to do, or None."""
        if self._flight is not None:
            return self._clock()  # a request is on the wire: its answer is to be handled
        due = [t for t in (self._batcher.next_due(), self._next_ack_event()) if t is not None]
        if due and self._aborted.is_set():
            return self._clock()  # the abort is carried out by the next call
        if due and self._deadline is not None:
            due.append(self._deadline)  # what is still pending then is backsplashed
        return min(due) if due else None

    def _next_ack_event(self) -> float | None:
        """Clock time of the next due ack poll or expiry over all channels, or None."""
        times = [
            t
            for route in self._routes
            for t in (route.acks.next_poll_at(), route.acks.next_expiry_at())
            if t is not None
        ]
        return min(times) if times else None

    def flush(self, deadline: float | None = None) -> None:
        """Send every partial batch and wait until everything is acknowledged or backsplashed.

        When it returns (without raising), nothing is queued, in a partial batch or awaiting
        its ack (:attr:`pending_acks` is 0), and the ledger balances: a cut-off (deadline,
        abort, fatal error) reached at any point of the flush backsplashes what is left with
        its reason.

        Args:
            deadline: a time on this deliverer's clock (``time.monotonic()`` by default): what
                is not acknowledged by then is backsplashed (``Splunk.Deadline``). It holds for
                this flush only; the deadline of :meth:`set_deadline`, if earlier, wins. None:
                wait as long as acks and retries take (both are bounded by settings).

        Raises:
            BacksplashError: a backsplash write failed.
        """
        self._check_open()
        self._flush_deadline = deadline
        self._tighten_guard()
        try:
            self._queue.extend(_Work.of(batch) for batch in self._batcher.drain())
            delay = _FIRST_BLOCKED_POLL_S
            while True:
                self._drain_queue()  # backsplashes everything once past a cut-off
                self._land()  # the answer to the last request sent
                if self._queue:
                    continue  # split, bad event cut out, acks turned off: send the rest
                cut = self._cutoff()
                if cut is not None:
                    # The cut-off may have passed after _drain_queue's own check (during its
                    # routine ack poll, say): settle here too, so nothing is left pending.
                    self._settle(cut)
                    break
                if not self.pending_acks:
                    break
                self._poll_routes(force=True)
                self._expire(self._clock())
                if self._queue or not self.pending_acks:
                    continue
                self._wait(delay)
                delay = min(delay * 2, self._settings.acks.poll_interval_s)
        finally:
            self._flush_deadline = None

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        """Flush, log the ledger (``delivery_summarized``) and release the session.

        Args:
            deadline: as for :meth:`flush`.
            summarize: log the ledger summary.

        Raises:
            BacksplashError: a backsplash write failed while flushing.
        """
        if self._closed:
            return
        try:
            self.flush(deadline)
        finally:
            self._closed = True
            self._stop_io()
            if summarize:
                self.ledger.log_summary(self._log, fatal=self._fatal is not None)
            if self._own_session:
                self._session.close()

    def release(self) -> None:
        """Drop this deliverer without sending or storing anything more, and free its resources.

        For a deliverer whose bookkeeping is in doubt (a backsplash write failed): a request
        on the wire is cancelled, the I/O thread is stopped and an own session is closed. What
        it still holds is not backsplashed: it stays counted in flight in the ledger (logged,
        ``deliverer_released``, when anything is) and the caller fails its work so that it
        comes again. Safe to call more than once, and after :meth:`close`.
        """
        if self._closed:
            return
        self._closed = True
        self._aborted.set()
        try:
            self._stop_io()
        finally:
            if self._own_session:
                self._session.close()
            pending = sum(len(route.acks) for route in self._routes)
            if self.ledger.in_flight or pending or self._queue:
                self._log.warning(
                    "deliverer_released",
                    in_flight=self.ledger.in_flight,
                    pending_acks=pending,
                    queued=len(self._queue),
                )

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the send loop

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Deliverer is closed")

    def _nap(self, seconds: float) -> None:
        # Ends early on abort and at the deadline (checked every slice: either may be set from
        # another thread), and on shutdown; once shut down, waits (for acks) go on.
        stopped = self._stop.is_set()
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or self._aborted.is_set() or self._past_deadline():
                return
            step = min(remaining, _NAP_SLICE_S)
            if stopped:
                self._aborted.wait(step)
            elif self._stop.wait(step):
                return

    def _effective_deadline(self) -> float | None:
        """The earlier of the standing deadline and the flush's, or None."""
        deadlines = [d for d in (self._deadline, self._flush_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def _past_deadline(self) -> bool:
        deadline = self._effective_deadline()
        return deadline is not None and self._clock() >= deadline

    def _cutoff(self) -> tuple[str, str] | None:
        """Why nothing more may be sent or awaited, as (error code, message); None: go on."""
        if self._fatal is not None:
            return self._fatal.error_code, f"delivery stopped: {self._fatal.message}"
        if self._aborted.is_set():
            return self._abort_reason
        if self._past_deadline():
            return "Splunk.Deadline", "deadline reached"
        return None

    def _abort_retries(self) -> bool:
        return self._cutoff() is not None

    def _settle(self, cut: tuple[str, str]) -> None:
        """Past a cut-off: backsplash the queue, the partial batches and what awaits its ack."""
        error_code, why = cut
        self._land()  # a request on the wire finishes; its answer is handled first
        while self._queue:
            self._give_up(self._queue.popleft(), None)
        for batch in self._batcher.drain():
            self._store_work(_Work.of(batch), error_code, f"not sent: {why}")
        for route in self._routes:
            for work in route.acks.drain():
                self._store_work(work, error_code, f"not acknowledged by {route.url}: {why}")

    def _pump(self) -> None:
        self._queue.extend(_Work.of(batch) for batch in self._batcher.due())
        self._drain_queue()

    def _drain_queue(self) -> None:
        while True:
            while self._queue:
                if self._flight is not None:
                    # Build the next body while the previous request is on the wire, then
                    # handle that request's answer before sending: it may put work ahead of
                    # this batch (split, bad event), end delivery, or leave it as it is.
                    self._build_wire(self._queue[0])
                    self._land()
                    continue
                self._deliver(self._queue.popleft())
            cut = self._cutoff()
            if cut is not None:
                self._settle(cut)
                return
            self._poll_routes(force=False)
            self._expire(self._clock())
            if not self._queue:
                return

    def _build_wire(self, work: _Work) -> bool:
        """Build (and gzip) the request body unless built; False: the payload is empty."""
        if work.wire is None:
            if self._cutoff() is not None or (work.budget.attempts and self._stop.is_set()):
                return True  # it will not be sent: leave it as it is
            body = work.restore(self._gzip).body()
            if not body or body.isspace():
                return False
            work.wire = gzip_body(body, self._gzip_level) if self._gzip else body
        return True

    def _deliver(self, work: _Work) -> None:
        if self._cutoff() is not None or (work.budget.attempts and self._stop.is_set()):
            self._give_up(work, None)
            return
        if not self._build_wire(work):
            self._store_work(work, "Splunk.InvalidEvent", "empty payload (HEC code 5 No data)")
            return
        if self._pipelined:
            self._launch(work)
        else:
            self._run(work, None)

    def _launch(self, work: _Work) -> None:
        """Make the first attempt in the I/O thread; :meth:`_land` handles its answer."""
        work.budget.attempts += 1  # as the retry loop's ``before`` does for each attempt
        try:
            route = self._choose_route()
        except _GiveUp as exc:
            self._store_work(work, exc.error_code, exc.message)
            return
        self.ledger.add(requests=1)
        wire = work.wire
        assert wire is not None
        client, endpoint, raw_target, count = (
            route.client,
            self._endpoint,
            work.raw_target,
            work.count,
        )

        guard = self._new_guard(route)
        hold = self._hold_session

        def post() -> SendResult:
            with hold(guard):
                return client.send(
                    wire,
                    endpoint=endpoint,
                    raw_target=raw_target,
                    event_count=count,
                    compressed=True,
                    guard=guard,
                )

        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hec-send")
        self._flight = _Flight(work, route, self._executor.submit(post), guard)

    def _land(self) -> None:
        """Wait for the request on the wire, if any, and handle its answer (retries included)."""
        flight = self._flight
        if flight is None:
            return
        landed = self._await(flight)
        self._flight = None
        self._end_guard(flight.guard)
        flight.work.budget.attempts -= 1  # the retry loop counts this attempt again
        self._run(flight.work, (flight.route, landed))

    def _await(self, flight: _Flight) -> SendResult | Exception:
        """The answer of the request on the wire, or what ended it; never waits unbounded.

        Waits in slices: an abort cancels the request and a deadline set meanwhile tightens
        its bound (the guard's watchdog then ends it). If its thread has not ended
        ``_STUCK_GRACE_S`` after the bound or the cancel, the answer is given up on (a
        retryable timeout) and the I/O thread left behind; the next request gets a new one.
        """
        future, guard = flight.future, flight.guard
        give_up_at = guard.deadline + _STUCK_GRACE_S
        cancelled = False
        while True:
            if not cancelled and (self._aborted.is_set() or guard.cancelled):
                cancelled = True
                guard.cancel()  # (again: abort() cancels the guard it sees)
                give_up_at = min(give_up_at, time.monotonic() + _STUCK_GRACE_S)
            self._tighten_guard()
            give_up_at = min(give_up_at, guard.deadline + _STUCK_GRACE_S)
            try:
                error = future.exception(timeout=_NAP_SLICE_S)
            except TimeoutError:
                if time.monotonic() < give_up_at:
                    continue
                guard.cancel()
                self._abandon_io()
                self._log.error("hec_request_stuck", url=flight.route.url, events=flight.work.count)
                return RetryableError(
                    f"{flight.route.url}: the request did not end within its time bound",
                    error_code="Splunk.ConnectionTimeout",
                    url=flight.route.url,
                    unhealthy=True,
                    maybe_delivered=True,
                )
            if error is not None and not isinstance(error, Exception):
                raise error
            # What ``send`` raised is dealt with as if raised here.
            return error if error is not None else future.result()

    def _abandon_io(self) -> None:
        """Leave a stuck I/O thread behind (it ends when its request does)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _stop_io(self) -> None:
        """Cancel a request still on the wire (its answer unhandled) and end the I/O thread.

        Bounded: the request's thread gets ``_STUCK_GRACE_S`` to end once its socket is shut
        down; the events stay counted in flight.
        """
        flight, self._flight = self._flight, None
        stuck = False
        if flight is not None:
            flight.guard.cancel()
            try:
                flight.future.exception(timeout=_STUCK_GRACE_S)
            except TimeoutError:
                stuck = True
                self._log.error("hec_request_stuck", url=flight.route.url, events=flight.work.count)
            self._end_guard(flight.guard)
        if self._executor is not None:
            # Idle now (or stuck): joining an idle worker takes no time; a stuck one is left.
            self._executor.shutdown(wait=not stuck)
            self._executor = None

    # ------------------------------------------------------------------ request bounds

    def _guard_deadline(self) -> float | None:
        """The effective deadline as a ``time.monotonic()`` time (the guards' clock), or None."""
        deadline = self._effective_deadline()
        if deadline is None:
            return None
        return time.monotonic() + (deadline - self._clock())

    def _new_guard(self, route: _Route) -> RequestGuard:
        """The guard of the next request: the client's bound and the deadline; cancelled
        at once when aborted (an abort between the cut-off check and the request)."""
        guard = RequestGuard(self._guard_deadline())
        guard.tighten(time.monotonic() + route.client.request_bound_s)
        self._guard = guard
        if self._aborted.is_set():
            guard.cancel()
        return guard

    def _end_guard(self, guard: RequestGuard) -> None:
        if self._guard is guard:
            self._guard = None

    def _tighten_guard(self) -> None:
        """A deadline set (or a flush started) while a request is on the wire bounds it too.

        Lock-free: :meth:`set_deadline` calls this from signal handlers.
        """
        guard = self._guard
        if guard is not None:
            deadline = self._guard_deadline()
            if deadline is not None:
                guard.tighten(deadline)

    @contextmanager
    def _hold_session(self, guard: RequestGuard) -> Iterator[None]:
        """The session's lock, waited for no longer than the request's bound.

        Raises:
            RetryableError: the session stayed busy (a request left behind still holds it).
        """
        if not self._session_lock.acquire(timeout=guard.remaining()):
            raise RetryableError("the HEC session stayed busy past the request's time bound")
        try:
            yield
        finally:
            self._session_lock.release()

    def _run(self, work: _Work, first: tuple[_Route, SendResult | Exception] | None) -> None:
        """The retry loop for one batch; ``first``: its first attempt's route and answer."""
        retrying = build_retrying(
            self._policy,
            self._stop,
            clock=self._clock,
            sleep=self._backoff,
            budget=work.budget,
            abort=self._abort_retries,
            on_retry=self._count_retry,
            log=self._log.bind(events=work.count),
        )
        result: SendResult | None = None
        route: _Route | None = None
        last_error: RetryableError | None = None
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        if first is not None:
                            route, landed = first
                            first = None
                            result = self._finish(route, work, landed)
                        else:
                            route = self._choose_route()
                            result = self._attempt(route, work)
                    except RetryableError as exc:
                        last_error = exc
                        raise
        except RetryableError as exc:
            self._give_up(work, exc)
            return
        except _Halted:
            self._give_up(work, last_error)
            return
        except _GiveUp as exc:
            self._store_work(work, exc.error_code, exc.message)
            return
        except FatalHecError as exc:
            self._go_fatal(exc, route.url if route is not None else None)
            self._store_work(work, exc.error_code, exc.message)
            return
        assert result is not None and route is not None  # the loop ended without raising
        self._handle(work, route, result)

    def _attempt(self, route: _Route, work: _Work) -> SendResult:
        self.ledger.add(requests=1)
        assert work.wire is not None
        guard = self._new_guard(route)
        try:
            with self._hold_session(guard):
                result = route.client.send(
                    work.wire,
                    endpoint=self._endpoint,
                    raw_target=work.raw_target,
                    event_count=work.count,
                    compressed=True,
                    guard=guard,
                )
        except RetryableError as exc:
            return self._finish(route, work, exc)
        finally:
            self._end_guard(guard)
        return self._finish(route, work, result)

    def _finish(self, route: _Route, work: _Work, landed: SendResult | Exception) -> SendResult:
        """Account for a request's answer (or failure); raise what the retry loop acts on."""
        if isinstance(landed, Exception):
            if isinstance(landed, RetryableError):
                if landed.unhealthy:  # not a request we cancelled, nor a busy session
                    self._mark_unhealthy(route, landed.message)
                if landed.maybe_delivered:
                    self.ledger.add(duplicates_possible=work.count)
            raise landed
        result = landed
        outcome = result.outcome
        if outcome.action == "retry":
            if outcome.code in UNHEALTHY_CODES:
                self._mark_unhealthy(route, outcome.reason)
            raise RetryableError(
                f"{route.url}: {outcome.reason}",
                error_code=outcome.error_code,
                hec_code=outcome.code,
                retry_after=outcome.retry_after,
                url=route.url,
            )
        return result

    def _count_retry(self, retry_state: RetryCallState) -> None:
        self.ledger.add(retries=1)

    def _backoff(self, seconds: float) -> None:
        """tenacity's sleep: wait, polling acks of every channel meanwhile.

        Wakes no later than the deadline. Raises ``_Halted`` (no next attempt) once a cut-off
        is reached or shutdown is requested.
        """
        end = self._clock() + seconds
        deadline = self._effective_deadline()
        if deadline is not None:
            end = min(end, deadline)
        while True:
            if self._cutoff() is not None or self._stop.is_set():
                raise _Halted
            now = self._clock()
            if now >= end:
                return
            self._poll_routes(force=False)
            now = self._clock()
            self._expire(now)
            remaining = end - now
            if remaining <= 0:
                continue  # the loop's top decides: deadline reached, or back off no longer
            wake = self._next_ack_event()  # partial batches wait: we are mid-send
            step = remaining if wake is None else min(remaining, max(wake - now, _MIN_SLEEP_S))
            self._sleep(step)

    def _give_up(self, work: _Work, exc: RetryableError | None) -> None:
        attempts = work.budget.attempts
        last = f"; last error: {exc.message}" if exc is not None else ""
        cut = self._cutoff()
        if cut is not None:
            code, why = cut
            message = f"{why} after {attempts} attempts{last}" if attempts else why
        elif self._stop.is_set():
            code, message = "Splunk.Shutdown", f"shutdown after {attempts} attempts{last}"
        elif exc is not None:
            code = exc.error_code
            message = f"gave up after {attempts} attempts{last}"
        else:
            code, message = "Splunk.ServerError", f"gave up after {attempts} attempts"
        self._store_work(work, code, message)

    def _handle(self, work: _Work, route: _Route, result: SendResult) -> None:
        outcome = result.outcome
        action = outcome.action
        if action == "ok":
            self.ledger.add(batches_sent=1, bytes_sent=result.wire_bytes)
            self._log.debug(
                "batch_sent",
                url=route.url,
                events=work.count,
                bytes=result.wire_bytes,
                ack_id=result.ack_id,
            )
            if result.ack_id is not None and self._acks_wanted:
                if not route.acks_on:
                    # HEC hands out ackIds again (the token's acks back on, or another indexer
                    # behind a load balancer): this batch is delivered when its ack turns true.
                    route.acks_on = True
                    self._log.warning("hec_ack_restored", url=route.url)
                work.park()
                displaced = route.acks.add(result.ack_id, work, self._clock())
                if displaced is not None:
                    self._ack_expired(displaced, route, "HEC reused its ackId")
            elif route.acks_on:
                # HEC's own JSON success without an ackId (``classify`` only calls a 2xx ``ok``
                # when its body is HEC's answer with code 0): the token has acks off.
                self._acks_unavailable(route, f"{route.url} answered 200 without an ackId")
                self._acknowledge(work, unconfirmed=True)
            else:
                self._acknowledge(work, unconfirmed=self._acks_wanted)
            return
        batch = work.restore(self._gzip)
        work.wire = None  # any re-send of these events builds a new body
        if action == "split":
            if len(batch) > 1:
                self._requeue_front(work, halve(batch))
            else:
                self._reject(
                    work,
                    route,
                    outcome,
                    f"{outcome.reason}: one event of {batch.nbytes} bytes is more than HEC takes",
                )
        elif action == "isolate":
            self._isolate(work, route, outcome)
        elif action == "ack_unavailable" and route.acks_on:
            # 400 code 14 on a data request: send it again without expecting an ack.
            self._acks_unavailable(route, f"{route.url}: {outcome.reason}")
            self._queue.appendleft(work)
        elif action == "fatal":
            self._go_fatal(
                FatalHecError(
                    f"{route.url}: {outcome.reason}",
                    error_code=outcome.error_code,
                    hec_code=outcome.code,
                ),
                route.url,
            )
            self._store_work(work, outcome.error_code, f"{route.url}: {outcome.reason}")
        else:  # reject, or ack_unavailable again with acks already off
            self._reject(work, route, outcome, outcome.reason)

    def _requeue_front(self, work: _Work, parts: Sequence[Batch | None]) -> None:
        for part in reversed(parts):
            if part is not None:
                self._queue.appendleft(_Work.of(part, work.budget.copy()))

    def _reject(self, work: _Work, route: _Route, outcome: Outcome, message: str) -> None:
        self._log.error(
            "hec_rejected",
            url=route.url,
            code=outcome.code,
            reason=message,
            events=work.count,
            error_code=outcome.error_code,
        )
        self._store_work(work, outcome.error_code, f"{route.url}: {message}")

    def _isolate(self, work: _Work, route: _Route, outcome: Outcome) -> None:
        batch = work.restore(self._gzip)
        index = outcome.invalid_event
        if index is not None and 0 <= index < len(batch):
            before, bad, after = isolate(batch, index)
            self._log.error(
                "hec_rejected",
                url=route.url,
                code=outcome.code,
                reason=outcome.reason,
                events=1,
                event_number=index,
                error_code=outcome.error_code,
            )
            if before is not None:
                # Splunk may have indexed the events ahead of the bad one: sending them again
                # is the at-least-once choice, and a possible duplicate.
                self.ledger.add(duplicates_possible=len(before))
            self._requeue_front(work, (before, after))
            self._store(
                [bad],
                raw_target=batch.raw_target,
                arrival_ms=batch.arrival_ms,
                attempts=work.budget.attempts,
                error_code=outcome.error_code,
                message=f"{route.url}: {outcome.reason} (event {index} of the request)",
            )
        elif len(batch) > 1:
            self._requeue_front(work, halve(batch))  # bisect towards the bad event
        else:
            self._reject(work, route, outcome, outcome.reason)

    def _acknowledge(self, work: _Work, *, unconfirmed: bool = False) -> None:
        count = work.count
        if unconfirmed:
            self.ledger.add(acknowledged=count, ack_unavailable=1)
        else:
            self.ledger.add(acknowledged=count)

    # ------------------------------------------------------------------ URLs and health

    def _choose_route(self) -> _Route:
        """The next URL in rotation with room for another unacknowledged request."""
        self._land()  # (none in practice) a probe or poll must not share the session with it
        delay = _FIRST_BLOCKED_POLL_S
        while True:
            now = self._clock()
            routes = self._routes
            healthy = [route for route in routes if self._in_rotation(route, now)]
            candidates = healthy or routes  # all unwell: keep trying, the backoff paces us
            count = len(routes)
            for step in range(count):
                index = (self._next_route + step) % count
                route = routes[index]
                if route in candidates and not route.acks.full:
                    self._next_route = index + 1
                    return route
            # Backpressure: every usable channel is full. Poll acks until one has room.
            cut = self._cutoff()
            if cut is not None:
                raise _GiveUp(cut[0], f"{cut[1]} (waiting for room for another request)")
            self._poll_routes(force=True)
            self._expire(self._clock())
            if any(not r.acks.full for r in candidates):
                continue
            self._wait(delay)
            delay = min(delay * 2, self._settings.acks.poll_interval_s)

    def _in_rotation(self, route: _Route, now: float) -> bool:
        if route.unhealthy_until is None:
            return True
        if now < route.unhealthy_until:
            return False
        guard = self._new_guard(route)
        try:
            with self._hold_session(guard):
                healthy, code, reason = route.client.health(guard=guard)
        except RetryableError as exc:
            healthy, code, reason = False, None, exc.message
        finally:
            self._end_guard(guard)
        if healthy:
            route.unhealthy_until = None
            self._log.info("hec_url_recovered", url=route.url, code=code)
            return True
        route.unhealthy_until = self._clock() + self._cooldown
        self._log.debug("hec_url_probe_failed", url=route.url, code=code, reason=reason)
        return False

    def _mark_unhealthy(self, route: _Route, reason: str) -> None:
        if route.unhealthy_until is None:
            self._log.warning(
                "hec_url_unhealthy", url=route.url, reason=reason, cooldown_s=self._cooldown
            )
        route.unhealthy_until = self._clock() + self._cooldown

    # ------------------------------------------------------------------ acks

    def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, no later than the deadline or the next due poll/expiry."""
        now = self._clock()
        limit = seconds
        deadline = self._effective_deadline()
        if deadline is not None:
            limit = min(limit, deadline - now)
        for route in self._routes:
            expiry = route.acks.next_expiry_at()
            if expiry is not None:
                limit = min(limit, expiry - now)
        self._sleep(max(limit, _MIN_SLEEP_S))

    def _poll_routes(self, *, force: bool) -> None:
        if self._flight is not None:
            now = self._clock()
            if any(self._poll_due(route, force, now) for route in self._routes):
                self._land()  # its ackId joins this poll, as a synchronous send's would
        now = self._clock()
        for route in self._routes:
            if self._poll_due(route, force, now):
                self._poll(route)

    @staticmethod
    def _poll_due(route: _Route, force: bool, now: float) -> bool:
        # Polled whether or not the URL's acks are on: a batch that got an ackId is delivered
        # when its ack turns true (or HEC's ack endpoint itself says acks are off).
        return bool(len(route.acks) and (force or route.acks.poll_due(now)))

    def _poll(self, route: _Route) -> None:
        ids = route.acks.ids()
        self.ledger.add(ack_polls=1)
        guard = self._new_guard(route)
        try:
            with self._hold_session(guard):
                answer = route.client.query_acks(ids, guard=guard)
        except AckUnavailableError as exc:
            route.acks.polled(self._clock())
            self._acks_unavailable(route, exc.message, drain=True)
            return
        except FatalHecError as exc:
            route.acks.polled(self._clock())
            self._go_fatal(exc, route.url)
            return
        except (RetryableError, RejectedBatchError) as exc:
            route.acks.polled(self._clock())
            self._log.debug("ack_poll_failed", url=route.url, reason=exc.message)
            return
        finally:
            self._end_guard(guard)
        route.acks.polled(self._clock())
        for work in route.acks.confirm(answer):
            self._acknowledge(work)
            self._log.debug("ack_confirmed", url=route.url, events=work.count)

    def _expire(self, now: float) -> None:
        for route in self._routes:
            for work in route.acks.expire(now):
                self._ack_expired(work, route, f"no ack within {route.acks.timeout_s:g}s")

    def _ack_expired(self, work: _Work, route: _Route, why: str) -> None:
        now = self._clock()
        if work.budget.started_at is None:
            work.budget.started_at = now  # the ack timeout is this batch's first failure
        message = f"{route.url}: {why}"
        if self._fatal is not None or self._aborted.is_set():
            self._give_up(work, None)
            return
        exhausted = budget_exhausted(self._policy, work.budget, now)
        resend = not (exhausted or self._stop.is_set() or self._past_deadline())
        self._log.warning(
            "ack_expired",
            url=route.url,
            events=work.count,
            reason=why,
            resend=resend,
            attempts=work.budget.attempts,
        )
        if resend:
            self.ledger.add(resends=1, duplicates_possible=work.count)
            self._queue.append(work)
        else:
            self._store_work(
                work, "Splunk.AckTimeout", f"{message} after {work.budget.attempts} attempts"
            )

    def _acks_unavailable(self, route: _Route, reason: str, *, drain: bool = False) -> None:
        """The token has acks off: later 200s without an ackId are delivery on their own.

        Batches that got an ackId stay pending and polled (a 200 without an ackId, or a code 14
        on a data request, says nothing about them) unless ``drain``: HEC's ack endpoint itself
        answered code 14, so their acks can never be asked for and their 200 is all there is.
        """
        route.acks_on = False
        if not self._ack_unavailable_warned:
            self._ack_unavailable_warned = True
            self._log.warning("hec_ack_unavailable", url=route.url, reason=reason)
        if drain:
            for work in route.acks.drain():
                self._acknowledge(work, unconfirmed=True)

    # ------------------------------------------------------------------ giving up

    def _go_fatal(self, exc: DeliveryError, url: str | None) -> None:
        if self._fatal is not None:
            return
        self._fatal = (
            exc
            if isinstance(exc, FatalHecError)
            else FatalHecError(exc.message, error_code=exc.error_code, hec_code=exc.hec_code)
        )
        self._log.critical(
            "hec_fatal",
            url=url,
            code=exc.hec_code,
            reason=exc.message,
            error_code=exc.error_code,
            action="stopped; everything pending goes to the backsplash",
        )
        message = f"delivery stopped: {exc.message}"
        self._land()  # (none in practice) its batch is stored below or by its own handling
        for route in self._routes:
            if len(route.acks):
                self._poll(route)  # last chance: what is already acknowledged is not re-stored
            for work in route.acks.drain():
                self._store_work(work, exc.error_code, message)
        while self._queue:
            self._store_work(self._queue.popleft(), exc.error_code, message)
        for batch in self._batcher.drain():
            self._store_work(_Work.of(batch), exc.error_code, message)

    def _store_work(self, work: _Work, error_code: str, message: str) -> None:
        batch = work.restore(self._gzip)
        self._store(
            batch.events,
            raw_target=batch.raw_target,
            arrival_ms=batch.arrival_ms,
            attempts=work.budget.attempts,
            error_code=error_code,
            message=message,
        )

    def _store(
        self,
        events: Sequence[EncodedEvent],
        *,
        raw_target: RawTarget | None,
        arrival_ms: int,
        attempts: int,
        error_code: str,
        message: str,
    ) -> None:
        count = len(events)
        try:
            key = self._backsplash.write(
                events,
                error_code=error_code,
                error_message=message,
                attempts=attempts,
                endpoint=self._endpoint,
                raw_target=raw_target,
                arrival_ms=arrival_ms,
            )
        except BacksplashError as exc:
            self.ledger.add(backsplash_failed=count)
            self._log.critical(
                "backsplash_failed",
                reason=exc.message,
                events=count,
                error_code=error_code,
                error_message=message,
            )
            raise
        self.ledger.add(backsplashed=count, backsplash_objects=1)
        self._log.warning(
            "backsplash_written", key=key, events=count, error_code=error_code, reason=message
        )

    def use_ledger(self, ledger: Ledger) -> None:
        """Count into ``ledger`` from now on (one ledger shared by several deliverers: a push
        invocation's, or the daemon's with its re-delivery deliverers). Call between
        deliveries, with nothing in flight on the old ledger."""
        self.ledger = ledger
