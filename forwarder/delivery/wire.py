"""The deliverer's requests on the wire: their bounds, the sessions' locks and the I/O threads.

At most one request per route (channel) is in progress at a time, and one per session: every
HEC call holds its session's lock. :meth:`Wire.call` makes one in the calling thread;
:meth:`Wire.launch` hands a batch's first attempt to a background I/O thread (one per route at
most) and :meth:`Wire.land` waits for an answer, never unbounded. Every request gets a
:class:`~forwarder.hec.transport.RequestGuard`: the client's own bound, tightened to the
deliverer's deadline (also when a deadline is set while requests are on the wire), and
cancelled at once by an abort (all of them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from weakref import WeakKeyDictionary

import requests

from forwarder.delivery.routes import Route
from forwarder.delivery.work import Work
from forwarder.errors import RetryableError
from forwarder.hec.client import SendResult
from forwarder.hec.transport import RequestGuard

#: How often a wait for the I/O thread's answer looks at aborts and deadlines.
WAIT_SLICE_S: Final = 0.05
#: A request's I/O thread ends this soon after its socket is shut down (its guard fired); if it
#: has not by then (it cannot be woken), its answer is given up on and the thread left behind.
STUCK_GRACE_S: Final = 5.0

#: One lock per ``requests.Session`` (not guaranteed thread-safe), held around every HEC call:
#: a session shared by several deliverers serves one request at a time even when one of them
#: has a request on the wire in its I/O thread.
_SESSION_LOCKS: WeakKeyDictionary[requests.Session, threading.Lock] = WeakKeyDictionary()
_SESSION_LOCKS_GUARD: Final = threading.Lock()

_T = TypeVar("_T")


def _session_lock(session: requests.Session) -> threading.Lock:
    with _SESSION_LOCKS_GUARD:
        lock = _SESSION_LOCKS.get(session)
        if lock is None:
            lock = _SESSION_LOCKS[session] = threading.Lock()
        return lock


@dataclass(slots=True, eq=False)
class Flight:
    """A batch's first attempt, on the wire in the I/O thread; its answer not yet handled."""

    work: Work
    route: Route
    future: Future[tuple[SendResult, float]]  # the answer and its round trip (seconds)
    guard: RequestGuard
    rtt_s: float | None = None  # the round trip, once landed with an answer


class Wire:
    """Requests over (possibly shared) sessions, one per route and session at a time, each
    within its bound.

    Args:
        session: the session of routes that bring none of their own.
        deadline: the deliverer's effective deadline on its clock, or None (read at each use).
        clock: the deliverer's clock (``deadline`` is a time on it).
        aborted: set when the deliverer aborts: requests are cancelled.
        log: a structlog logger.
        workers: I/O threads at most (requests on the wire at once).
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        deadline: Callable[[], float | None],
        clock: Callable[[], float],
        aborted: threading.Event,
        log: Any,
        workers: int = 1,
    ) -> None:
        self.session = session
        self._session_lock = _session_lock(session)
        self._deadline = deadline
        self._clock = clock
        self._aborted = aborted
        self._log = log
        self._workers = max(1, workers)
        self._executor: ThreadPoolExecutor | None = None  # the I/O threads, made on first use
        #: The requests on the wire, answers not yet handled, by route, in launch order.
        self.flights: dict[Route, Flight] = {}
        #: The requests in progress (any thread): what an abort cancels and a deadline bounds.
        self._guards: set[RequestGuard] = set()
        self._locks: dict[Route, threading.Lock] = {}  # each route's session lock

    # ------------------------------------------------------------------ sessions

    def _lock(self, route: Route) -> threading.Lock:
        lock = self._locks.get(route)
        if lock is None:
            session = route.session
            lock = self._session_lock if session is None else _session_lock(session)
            self._locks[route] = lock
        return lock

    def shares_session(self, one: Route, other: Route) -> bool:
        """Whether two routes' requests go through the same session (they take turns)."""
        return self._lock(one) is self._lock(other)

    def busy(self, route: Route) -> bool:
        """True while a request on the wire holds ``route``'s session (its own, or shared)."""
        if not self.flights:
            return False
        if route in self.flights:
            return True
        lock = self._lock(route)
        return any(self._lock(other) is lock for other in self.flights)

    # ------------------------------------------------------------------ bounds

    def _guard_deadline(self) -> float | None:
        """The effective deadline as a ``time.monotonic()`` time (the guards' clock), or None."""
        deadline = self._deadline()
        if deadline is None:
            return None
        return time.monotonic() + (deadline - self._clock())

    def _new_guard(self, route: Route) -> RequestGuard:
        """The guard of the next request: the client's bound and the deadline; cancelled
        at once when aborted (an abort between the cut-off check and the request)."""
        guard = RequestGuard(self._guard_deadline())
        guard.tighten(time.monotonic() + route.client.request_bound_s)
        self._guards.add(guard)
        if self._aborted.is_set():
            guard.cancel()
        return guard

    def _end_guard(self, guard: RequestGuard) -> None:
        self._guards.discard(guard)

    def tighten(self) -> None:
        """A deadline set (or a flush started) while requests are on the wire bounds them too.

        Lock-free: the deliverer's ``set_deadline`` calls this from signal handlers.
        """
        guards = list(self._guards)  # a copy: other threads add and remove
        if guards:
            deadline = self._guard_deadline()
            if deadline is not None:
                for guard in guards:
                    guard.tighten(deadline)

    def cancel(self) -> None:
        """Cancel every request in progress (lock-free: shuts their sockets down)."""
        for guard in list(self._guards):
            guard.cancel()

    @contextmanager
    def _hold_session(self, lock: threading.Lock, guard: RequestGuard) -> Iterator[None]:
        """The session's lock, waited for no longer than the request's bound.

        Raises:
            RetryableError: the session stayed busy (a request left behind still holds it).
        """
        if not lock.acquire(timeout=guard.remaining()):
            raise RetryableError("the HEC session stayed busy past the request's time bound")
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ requests

    def call(self, route: Route, request: Callable[[RequestGuard], _T]) -> _T:
        """Make one request to ``route`` in this thread, within its bound.

        Raises:
            RetryableError: what ``request`` raises, or the session stayed busy.
        """
        guard = self._new_guard(route)
        try:
            with self._hold_session(self._lock(route), guard):
                return request(guard)
        finally:
            self._end_guard(guard)

    def launch(
        self, work: Work, route: Route, request: Callable[[RequestGuard], SendResult]
    ) -> None:
        """Make ``work``'s request in an I/O thread; :meth:`land` gives its answer.

        ``route`` must not have a request on the wire already.
        """
        assert route not in self.flights
        guard = self._new_guard(route)
        hold, lock = self._hold_session, self._lock(route)

        def post() -> tuple[SendResult, float]:
            with hold(lock, guard):
                started = time.monotonic()
                result = request(guard)
                return result, time.monotonic() - started

        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="hec-send"
            )
        self.flights[route] = Flight(work, route, self._executor.submit(post), guard)

    def ready(self) -> list[Route]:
        """The routes whose request has its answer (or failure) in, in launch order."""
        return [route for route, flight in self.flights.items() if flight.future.done()]

    def land(self, route: Route | None = None) -> tuple[Flight, SendResult | Exception] | None:
        """Wait for a request on the wire: ``route``'s, or (None) the first to end of all.

        Returns:
            The request and its answer (or what ended it); None: nothing to wait for.
        """
        if route is not None:
            flight = self.flights.get(route)
            waiting = [flight] if flight is not None else []
        else:
            waiting = list(self.flights.values())
        if not waiting:
            return None
        flight, landed = self._await(waiting)
        del self.flights[flight.route]
        self._end_guard(flight.guard)
        if isinstance(landed, tuple):
            result, flight.rtt_s = landed
            return flight, result
        return flight, landed

    def _await(self, waiting: list[Flight]) -> tuple[Flight, tuple[SendResult, float] | Exception]:
        """The first of ``waiting`` to end, with its answer or what ended it; never waits
        unbounded.

        Waits in slices: an abort cancels the requests and a deadline set meanwhile tightens
        their bounds (the guards' watchdog then ends them). A request whose thread has not
        ended ``STUCK_GRACE_S`` after its bound or its cancel is given up on (a retryable
        timeout) and its I/O thread left behind; later requests get new ones.
        """
        give_up_at = {id(f): f.guard.deadline + STUCK_GRACE_S for f in waiting}
        noted: set[int] = set()
        while True:
            aborted = self._aborted.is_set()
            for flight in waiting:
                if id(flight) not in noted and (aborted or flight.guard.cancelled):
                    noted.add(id(flight))
                    flight.guard.cancel()  # (again: abort() cancels the guards it sees)
                    give_up_at[id(flight)] = min(
                        give_up_at[id(flight)], time.monotonic() + STUCK_GRACE_S
                    )
            self.tighten()
            for flight in waiting:
                give_up_at[id(flight)] = min(
                    give_up_at[id(flight)], flight.guard.deadline + STUCK_GRACE_S
                )
            wait([f.future for f in waiting], timeout=WAIT_SLICE_S, return_when=FIRST_COMPLETED)
            for flight in waiting:  # launch order: the oldest answer in is handled first
                if flight.future.done():
                    error = flight.future.exception()
                    if error is not None and not isinstance(error, Exception):
                        raise error
                    # What ``send`` raised is dealt with as if raised here.
                    return flight, error if error is not None else flight.future.result()
            now = time.monotonic()
            for flight in waiting:
                if now >= give_up_at[id(flight)]:
                    return flight, self._stuck(flight)

    def _stuck(self, flight: Flight) -> RetryableError:
        flight.guard.cancel()
        self._abandon_io()
        self._log.error("hec_request_stuck", url=flight.route.url, events=flight.work.count)
        return RetryableError(
            f"{flight.route.url}: the request did not end within its time bound",
            error_code="Splunk.ConnectionTimeout",
            url=flight.route.url,
            unhealthy=True,
            maybe_delivered=True,
        )

    def _abandon_io(self) -> None:
        """Leave a stuck I/O thread behind (it ends when its request does); requests still
        on the wire in the others end as they would."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def stop(self) -> None:
        """Cancel the requests still on the wire (answers unhandled) and end the I/O threads.

        Bounded: the requests' threads get ``STUCK_GRACE_S`` to end once their sockets are
        shut down; the events stay counted in flight.
        """
        flights = list(self.flights.values())
        self.flights.clear()
        for flight in flights:
            flight.guard.cancel()
        stuck = False
        give_up_at = time.monotonic() + STUCK_GRACE_S
        for flight in flights:
            try:
                flight.future.exception(timeout=max(0.0, give_up_at - time.monotonic()))
            except TimeoutError:
                stuck = True
                self._log.error("hec_request_stuck", url=flight.route.url, events=flight.work.count)
            self._end_guard(flight.guard)
        if self._executor is not None:
            # Idle now (or stuck): joining idle workers takes no time; a stuck one is left.
            self._executor.shutdown(wait=not stuck)
            self._executor = None
