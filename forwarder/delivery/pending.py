"""What a deliverer holds until it is acknowledged, and every way it lets go of it.

:class:`PendingWork` is the deliverer's state: the queue of batches to send, the partial
batches (the batcher), the acks awaited per URL (:class:`~forwarder.delivery.routes.Routes`)
and the requests on the wire (:class:`~forwarder.delivery.wire.Wire`). Here each batch ends:
acknowledged when its ack turns true (ack polling), re-sent when its ack expires within the
retry duration, or backsplashed: at a cut-off (deadline, abort, fatal HEC error), when its
retries or ack waits are spent, or when HEC refuses it. Sending, retrying and handling HEC's
answers build on this in :mod:`forwarder.delivery.sending`; the public face is
:class:`~forwarder.delivery.deliverer.Deliverer`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import requests
import structlog

from config.settings import Settings
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import BacksplashWriter, NullBacksplash
from forwarder.delivery.batching import Batcher
from forwarder.delivery.concurrency import AdaptiveLimit
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.retry import budget_exhausted
from forwarder.delivery.routes import Route, Routes, build_routes
from forwarder.delivery.wire import WAIT_SLICE_S, Wire
from forwarder.delivery.work import GiveUp, Work
from forwarder.errors import (
    AckUnavailableError,
    BacksplashError,
    DeliveryError,
    FatalHecError,
    RejectedBatchError,
    RetryableError,
)
from forwarder.hec.client import DEFAULT_GZIP_LEVEL
from transforms.records import EncodedEvent, RawTarget

#: While blocked on acks (backpressure, flush), polls start this soon and double up to the
#: configured poll interval: an ack that is already true is not waited for a whole interval.
FIRST_BLOCKED_POLL_S: Final = 0.02
MIN_SLEEP_S: Final = 0.001


class PendingWork:
    """The deliverer's state and bookkeeping (see the module notes); the constructor is
    :class:`~forwarder.delivery.deliverer.Deliverer`'s, documented there."""

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
        # Code 7 re-sends go to this index (event endpoint only: raw requests carry no fields).
        self._fallback_index = hec.fallback_index if hec.endpoint == "event" else None
        self._gzip = hec.gzip
        self._gzip_level = gzip_level
        self._policy = settings.retry
        self._acks_wanted = settings.acks.enabled
        self._own_session = session is None
        self._session = session if session is not None else requests.Session()
        self._clock = clock
        self._aborted = threading.Event()
        self._log = log if log is not None else structlog.get_logger("forwarder.delivery.deliverer")
        # SPLUNK_HEC_CONCURRENCY: a fixed number, or an adaptive limit up to its ceiling.
        concurrency = hec.concurrency
        self._limiter: AdaptiveLimit | None = None
        if isinstance(concurrency, int):
            self._concurrency = concurrency
        else:
            self._limiter = AdaptiveLimit(clock=clock, log=self._log)
            self._concurrency = self._limiter.ceiling
        routes = build_routes(
            settings,
            self._session,
            self._concurrency,
            gzip_level,
            own_sessions=session is None and self._concurrency > 1,
        )
        self._wire = Wire(
            self._session,
            deadline=self._effective_deadline,
            clock=clock,
            aborted=self._aborted,
            log=self._log,
            workers=len(routes),
        )
        self._routes = Routes(
            routes,
            cooldown_s=hec.unhealthy_cooldown_s,
            clock=clock,
            probe=self._probe,
            log=self._log,
        )
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
        self._queue: deque[Work] = deque()
        self._fatal: FatalHecError | None = None
        self._deadline: float | None = None  # set_deadline(): until changed
        self._flush_deadline: float | None = None  # flush(deadline): during that flush only
        self._abort_reason: tuple[str, str] = ("Splunk.Shutdown", "delivery aborted")
        self._ack_unavailable_warned = False
        self._closed = False
        self._pipelined = pipelined
        self.ledger = Ledger()

    # ------------------------------------------------------------------ cut-offs

    def _nap(self, seconds: float) -> None:
        # Ends early on abort and at the deadline (checked every slice: either may be set from
        # another thread), and on shutdown; once shut down, waits (for acks) go on.
        stopped = self._stop.is_set()
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or self._aborted.is_set() or self._past_deadline():
                return
            step = min(remaining, WAIT_SLICE_S)
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
        self._land()  # the requests on the wire finish; their answers are handled first
        while self._queue:
            self._give_up(self._queue.popleft(), None)
        for batch in self._batcher.drain():
            self._store_work(Work.of(batch), error_code, f"not sent: {why}")
        for route in self._routes:
            for work in route.acks.drain():
                self._store_unacknowledged(
                    work, error_code, f"not acknowledged by {route.url}: {why}"
                )

    def _land(self, only: Callable[[Route], bool] | None = None) -> None:
        """Handle the answers to the requests on the wire (those on routes ``only`` accepts),
        waiting for them (see ``sending``)."""
        raise NotImplementedError

    def _land_one(self) -> None:
        """Wait for the first request on the wire to end and handle its answer."""
        raise NotImplementedError

    def _limit(self) -> int:
        """How many requests may be on the wire now."""
        return self._limiter.limit if self._limiter is not None else self._concurrency

    def _close_sessions(self) -> None:
        """Close the sessions this deliverer made (its own, and its routes')."""
        if self._own_session:
            self._session.close()
        for route in self._routes:
            if route.session is not None:
                route.session.close()

    # ------------------------------------------------------------------ URLs and acks

    def _choose_route(self, *, launch: bool = False) -> Route:
        """The next channel in rotation with room for another unacknowledged request.

        Args:
            launch: for a first attempt in the I/O threads: a channel with no request on the
                wire (they stay there). Otherwise (a synchronous attempt) every answer is
                landed first, as a synchronous send always was.
        """
        if not launch:
            self._land()
        delay = FIRST_BLOCKED_POLL_S
        while True:
            route, candidates = self._routes.next_with_room(self._wire.busy)
            if route is not None:
                return route
            cut = self._cutoff()
            if cut is not None:
                raise GiveUp(cut[0], f"{cut[1]} (waiting for room for another request)")
            if self._wire.flights:
                self._land_one()  # its channel is free again (and its ack counted)
                continue
            # Backpressure: every usable channel is full. Poll acks until one has room.
            self._poll_routes(force=True)
            self._expire(self._clock())
            if any(not r.acks.full for r in candidates):
                continue
            self._wait(delay)
            delay = min(delay * 2, self._settings.acks.poll_interval_s)

    def _probe(self, route: Route) -> tuple[bool, int | None, str]:
        """Ask an unwell URL's health (for the rotation)."""
        try:
            return self._wire.call(route, lambda guard: route.client.health(guard=guard))
        except RetryableError as exc:
            return False, None, exc.message

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
        self._sleep(max(limit, MIN_SLEEP_S))

    def _poll_routes(self, *, force: bool) -> None:
        if self._wire.flights:
            now = self._clock()
            due = [route for route in self._routes if self._poll_due(route, force, now)]
            if due:
                # A poll uses its channel's session: the request on the wire there lands
                # first (its ackId joins this poll, as a synchronous send's would).
                shares = self._wire.shares_session
                self._land(lambda flying: any(shares(flying, route) for route in due))
        now = self._clock()
        for route in self._routes:
            if self._poll_due(route, force, now):
                self._poll(route)

    @staticmethod
    def _poll_due(route: Route, force: bool, now: float) -> bool:
        # Polled whether or not the URL's acks are on: a batch that got an ackId is delivered
        # when its ack turns true (or HEC's ack endpoint itself says acks are off).
        return bool(len(route.acks) and (force or route.acks.poll_due(now)))

    def _poll(self, route: Route) -> None:
        ids = route.acks.ids()
        self.ledger.add(ack_polls=1)
        try:
            answer = self._wire.call(route, lambda guard: route.client.query_acks(ids, guard=guard))
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
        route.acks.polled(self._clock())
        for work in route.acks.confirm(answer):
            self._acknowledge(work)
            self._log.debug("ack_confirmed", url=route.url, events=work.count)

    def _expire(self, now: float) -> None:
        for route in self._routes:
            for work in route.acks.expire(now):
                self._ack_expired(work, route, f"no ack within {route.acks.timeout_s:g}s")

    def _ack_expired(self, work: Work, route: Route, why: str) -> None:
        now = self._clock()
        if work.budget.started_at is None:
            work.budget.started_at = now  # the ack timeout is this batch's first failure
        message = f"{route.url}: {why}"
        if self._fatal is not None or self._aborted.is_set():
            # HEC took the request (200 and an ackId): what is backsplashed may be indexed.
            self.ledger.add(duplicates_possible=work.count)
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
            self._store_unacknowledged(
                work, "Splunk.AckTimeout", f"{message} after {work.budget.attempts} attempts"
            )

    def _acks_unavailable(self, route: Route, reason: str, *, drain: bool = False) -> None:
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

    def _acknowledge(self, work: Work, *, unconfirmed: bool = False) -> None:
        count = work.count
        if unconfirmed:
            self.ledger.add(acknowledged=count, ack_unavailable=1)
        else:
            self.ledger.add(acknowledged=count)

    # ------------------------------------------------------------------ giving up

    def _give_up(self, work: Work, exc: RetryableError | None) -> None:
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
                self._store_unacknowledged(work, exc.error_code, message)
        while self._queue:
            self._store_work(self._queue.popleft(), exc.error_code, message)
        for batch in self._batcher.drain():
            self._store_work(Work.of(batch), exc.error_code, message)

    def _store_unacknowledged(self, work: Work, error_code: str, message: str) -> None:
        """Backsplash a batch HEC took (200 and an ackId) whose ack never turned true.

        HEC may have indexed it: a replay of these events is a possible duplicate, counted as
        for a request cut off on the wire or an ack-timeout re-send.
        """
        self.ledger.add(duplicates_possible=work.count)
        self._store_work(work, error_code, message)

    def _store_work(self, work: Work, error_code: str, message: str) -> None:
        batch = work.restore(self._gzip)
        self._store(
            batch.events if work.original is None else [work.original],
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
                Failure(error_code, message, attempts, self._endpoint, raw_target, arrival_ms),
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
