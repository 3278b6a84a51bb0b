"""The deliverer's request on the wire: its bound, the session's lock and the I/O thread.

At most one request of a deliverer is in progress at a time. :meth:`Wire.call` makes one in the
calling thread; :meth:`Wire.launch` hands a batch's first attempt to a background I/O thread
(pipelining) and :meth:`Wire.land` waits for its answer, never unbounded. Every request gets a
:class:`~forwarder.hec.transport.RequestGuard`: the client's own bound, tightened to the
deliverer's deadline (also when a deadline is set while the request is on the wire), and
cancelled at once by an abort.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    future: Future[SendResult]
    guard: RequestGuard


class Wire:
    """One request at a time over a (possibly shared) session, each within its bound.

    Args:
        session: the session every request goes through.
        deadline: the deliverer's effective deadline on its clock, or None (read at each use).
        clock: the deliverer's clock (``deadline`` is a time on it).
        aborted: set when the deliverer aborts: requests are cancelled.
        log: a structlog logger.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        deadline: Callable[[], float | None],
        clock: Callable[[], float],
        aborted: threading.Event,
        log: Any,
    ) -> None:
        self.session = session
        self._session_lock = _session_lock(session)
        self._deadline = deadline
        self._clock = clock
        self._aborted = aborted
        self._log = log
        self._executor: ThreadPoolExecutor | None = None  # the I/O thread, made on first use
        self.flight: Flight | None = None  # the request on the wire, answer not yet handled
        self._guard: RequestGuard | None = None  # the request in progress (any thread)

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
        self._guard = guard
        if self._aborted.is_set():
            guard.cancel()
        return guard

    def _end_guard(self, guard: RequestGuard) -> None:
        if self._guard is guard:
            self._guard = None

    def tighten(self) -> None:
        """A deadline set (or a flush started) while a request is on the wire bounds it too.

        Lock-free: the deliverer's ``set_deadline`` calls this from signal handlers.
        """
        guard = self._guard
        if guard is not None:
            deadline = self._guard_deadline()
            if deadline is not None:
                guard.tighten(deadline)

    def cancel(self) -> None:
        """Cancel the request in progress, if any (lock-free: shuts its socket down)."""
        guard = self._guard
        if guard is not None:
            guard.cancel()

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

    # ------------------------------------------------------------------ requests

    def call(self, route: Route, request: Callable[[RequestGuard], _T]) -> _T:
        """Make one request to ``route`` in this thread, within its bound.

        Raises:
            RetryableError: what ``request`` raises, or the session stayed busy.
        """
        guard = self._new_guard(route)
        try:
            with self._hold_session(guard):
                return request(guard)
        finally:
            self._end_guard(guard)

    def launch(
        self, work: Work, route: Route, request: Callable[[RequestGuard], SendResult]
    ) -> None:
        """Make ``work``'s request in the I/O thread; :meth:`land` gives its answer."""
        guard = self._new_guard(route)
        hold = self._hold_session

        def post() -> SendResult:
            with hold(guard):
                return request(guard)

        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hec-send")
        self.flight = Flight(work, route, self._executor.submit(post), guard)

    def land(self) -> tuple[Flight, SendResult | Exception] | None:
        """Wait for the request on the wire, if any: it and its answer (or what ended it)."""
        flight = self.flight
        if flight is None:
            return None
        landed = self._await(flight)
        self.flight = None
        self._end_guard(flight.guard)
        return flight, landed

    def _await(self, flight: Flight) -> SendResult | Exception:
        """The answer of the request on the wire, or what ended it; never waits unbounded.

        Waits in slices: an abort cancels the request and a deadline set meanwhile tightens
        its bound (the guard's watchdog then ends it). If its thread has not ended
        ``STUCK_GRACE_S`` after the bound or the cancel, the answer is given up on (a
        retryable timeout) and the I/O thread left behind; the next request gets a new one.
        """
        future, guard = flight.future, flight.guard
        give_up_at = guard.deadline + STUCK_GRACE_S
        cancelled = False
        while True:
            if not cancelled and (self._aborted.is_set() or guard.cancelled):
                cancelled = True
                guard.cancel()  # (again: abort() cancels the guard it sees)
                give_up_at = min(give_up_at, time.monotonic() + STUCK_GRACE_S)
            self.tighten()
            give_up_at = min(give_up_at, guard.deadline + STUCK_GRACE_S)
            try:
                error = future.exception(timeout=WAIT_SLICE_S)
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

    def stop(self) -> None:
        """Cancel a request still on the wire (its answer unhandled) and end the I/O thread.

        Bounded: the request's thread gets ``STUCK_GRACE_S`` to end once its socket is shut
        down; the events stay counted in flight.
        """
        flight, self.flight = self.flight, None
        stuck = False
        if flight is not None:
            flight.guard.cancel()
            try:
                flight.future.exception(timeout=STUCK_GRACE_S)
            except TimeoutError:
                stuck = True
                self._log.error("hec_request_stuck", url=flight.route.url, events=flight.work.count)
            self._end_guard(flight.guard)
        if self._executor is not None:
            # Idle now (or stuck): joining an idle worker takes no time; a stuck one is left.
            self._executor.shutdown(wait=not stuck)
            self._executor = None
