"""The deliverer: batch, send with retries, await indexer acks, backsplash what cannot go.

Every event handed to :meth:`Deliverer.submit` ends *acknowledged* (HEC's ack turned true, or a
200 when the token has acks off), or *backsplashed* with a reason; the :class:`Ledger` counts
both and balances after :meth:`Deliverer.flush`. If the backsplash itself fails,
``BacksplashError`` propagates and the events stay counted in flight: the caller decides (the
daemon spools, a Lambda fails its invocation).

Design: one thread, the deliverer's, keeps all the state; up to ``SPLUNK_HEC_CONCURRENCY``
requests are on the wire; between and during sends (backoff sleeps, backpressure waits) that
thread polls acks for every channel. That keeps the bookkeeping simple and exact, and is fast
enough because that thread does no Python step per event: the transforms' events stay texts
until a batch's body is one join and one encode (``forwarder.delivery.texts``), and batches
are cut per batch (``forwarder.delivery.batching``).

Requests in flight: the deliverer has one :class:`HecClient` (a channel) per *route*: one per URL
at concurrency 1, else N routes (the adaptive ceiling for ``adaptive``) spread over the URLs in
turn, each with a session of its own (a session passed in is shared by all routes, whose
requests then take turns on it). A batch's first attempt is handed to an I/O thread that only
does the POST (body already built and gzipped) on a route with no request on the wire and room
for one more unacknowledged request; :meth:`Deliverer.submit` returns meanwhile, so the caller
transforms and the deliverer builds and gzips the next batch while requests are on the wire.
At most N are (with ``adaptive``, the limit of :mod:`~forwarder.delivery.concurrency` as it
stands: AIMD between 1 and its ceiling, fed every data request's answer and round trip). Each
answer is *landed* (handled by the deliverer's thread, exactly as a synchronous send's, the
first in first): answers already in before the next request goes out; the first to end when
the limit is reached; a route's own before its acks are polled; all of them before a
synchronous retry (retries stay on the deliverer's thread, rare as they are; the halves of a
413 and the events around a bad one go back to the queue), at a cut-off, and in
:meth:`Deliverer.service`, :meth:`Deliverer.flush` and :meth:`Deliverer.close`. So a session
is never used by two threads at once and the ledger comes out the same at any N; only the
order of requests (and of events at HEC) differs once N > 1.
Routes take turns (round-robin); a URL with connection errors or an unhealthy answer (503
codes 18-20) leaves the rotation, all its channels with it, for ``unhealthy_cooldown_s`` and
comes back after a passing health probe. Acks are always polled on the channel that took the
request; a re-send may go to another URL. ``max_pending`` bounds the unacknowledged requests
(those on the wire included) per channel, so memory is bounded by channels x ``max_pending``
parked bodies.

Where it lives: this module is the public face (submit, service, flush, close, set_deadline,
abort, release) and the queue pump; :mod:`~forwarder.delivery.sending` makes a batch's attempts
and acts on HEC's answers (the table below); :mod:`~forwarder.delivery.pending` holds the state
and ends each batch (ack polling and expiry, cut-offs, the backsplash);
:mod:`~forwarder.delivery.routes` the channels, their rotation and health;
:mod:`~forwarder.delivery.wire` the requests on the wire (their bounds, the session locks, the
I/O threads); :mod:`~forwarder.delivery.concurrency` the adaptive limit;
:mod:`~forwarder.delivery.work` a batch on its way.

What HEC says, and what happens (DESIGN.md §4):
    retry (busy, 5xx, timeouts)  back off (full jitter, ``Retry-After``), up to the retry
                                 duration from the first failure; then backsplash
    413                          halve and send both halves; a single event: backsplash
    bad event (6, 12, 13, 15)    cut it out (``invalid-event-number``) or bisect, send the rest,
                                 backsplash the bad one; 7 (incorrect index) likewise, or
                                 with ``SPLUNK_FALLBACK_INDEX`` the event is re-sent once to
                                 that index (``orig_index`` keeps its own; event endpoint)
    token / channel / URL        fatal: backsplash everything pending and whatever is submitted
                                 later; ``hec_fatal`` logged with HEC's text and code
    ack disabled (code 14)       warn once, count, treat the 200 as delivery
    ack timeout                  re-send (counted as a possible duplicate) within the duration;
                                 then backsplash (counted as a possible duplicate too, as is
                                 any batch HEC took whose ack is given up at a cut-off)

Bounding it in time: :meth:`Deliverer.set_deadline` (a clock time, kept until changed) and the
``deadline`` of :meth:`Deliverer.flush` (that flush only) are cut-offs: once past, no attempt,
re-send, backoff sleep or ack wait starts or goes on (a backoff sleep wakes at the deadline);
what is queued, being retried, in a partial batch or awaiting its ack is backsplashed
(``Splunk.Deadline``), and so is whatever is submitted later. :meth:`Deliverer.abort` is the
same at once and for good, with the caller's reason (``Splunk.Shutdown`` by default).

Every request is bounded as a whole (:class:`~forwarder.hec.transport.RequestGuard`): by
``connect_timeout_s + read_timeout_s`` and by the time left to the deadline (a deadline set or a
flush started while requests are on the wire tightens their bounds). :meth:`Deliverer.abort`
cancels every request on the wire (their sockets are shut down, from whichever thread calls
it). A request cut
off this way may have reached HEC: its batch counts as a possible duplicate and is
backsplashed. No wait for a request's answer is unbounded, so a HEC that never answers or drips
its answer one byte a second cannot hold a flush, a close, a deadline or an abort.
"""

from __future__ import annotations

from collections.abc import Sequence

from forwarder.delivery.batching import pack
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.pending import FIRST_BLOCKED_POLL_S
from forwarder.delivery.sending import BatchSending
from forwarder.delivery.texts import batchable
from forwarder.delivery.work import Work
from forwarder.errors import FatalHecError
from forwarder.hec.client import gzip_body
from transforms.records import EncodedEvent, RawTarget


class Deliverer(BatchSending):
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
            caller's work overlaps the requests on the wire (see the module notes); False:
            every request is made in the calling thread, one at a time.
    """

    # ------------------------------------------------------------------ public API

    @property
    def fatal(self) -> FatalHecError | None:
        """The token/channel/URL error that stopped delivery, if any (exit status HEC_FATAL)."""
        return self._fatal

    @property
    def pending_acks(self) -> int:
        """Requests sent and not yet acknowledged, over all channels.

        Counts the requests on the wire whose answers are not handled yet, so it is never more
        than ``max_pending`` per channel (a channel takes a request only with room for its
        ack) and is 0 after :meth:`flush`.
        """
        return self._routes.pending() + len(self._wire.flights)

    @property
    def urls(self) -> tuple[str, ...]:
        """The HEC URLs, in rotation order (each once, however many channels it has)."""
        return self._routes.urls

    @property
    def deadline(self) -> float | None:
        """The deadline set by :meth:`set_deadline`, or None."""
        return self._deadline

    @property
    def concurrency(self) -> int:
        """How many requests may be on the wire now (``SPLUNK_HEC_CONCURRENCY``; with
        ``adaptive``, the limit as it stands)."""
        return self._limit()

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called."""
        return self._aborted.is_set()

    def use_ledger(self, ledger: Ledger) -> None:
        """Count the next unit of work (an invocation, a checkpoint) on ``ledger``.

        Replaces :attr:`ledger` from then on; counts already made stay on the old one. As
        thread-safe as assigning the attribute: the ledger itself is thread-safe, and readers
        on other threads see the old or the new one.
        """
        self.ledger = ledger

    def set_deadline(self, deadline: float | None) -> None:
        """Bound every later wait: past ``deadline``, give up instead of retrying or waiting.

        From then on no attempt, re-send, backoff or ack wait starts or continues: what is
        queued, being retried, in a partial batch or awaiting its ack is backsplashed with
        ``Splunk.Deadline`` (at the deliverer's next step: a backoff sleep wakes at the
        deadline), and so are events submitted later. Requests on the wire end by the
        deadline too (their bounds are tightened). The deadline stays until set again;
        :meth:`flush` with its own deadline uses the earlier of the two. Safe to call from
        another thread or a signal handler.

        Args:
            deadline: a time on this deliverer's clock; None removes the deadline.
        """
        self._deadline = deadline
        self._wire.tighten()

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
        :meth:`flush` or :meth:`close` to have them done now. Every request on the wire is
        cancelled (its socket shut down): its batch is backsplashed as a possible duplicate. A
        second call changes nothing.

        Args:
            reason_code: the backsplash ``errorCode`` (``Splunk.Shutdown``, ``Splunk.Deadline``).
            message: the backsplash ``errorMessage`` (attempts and last error are appended).
        """
        if self._aborted.is_set():
            return
        self._abort_reason = (reason_code, message)
        self._aborted.set()
        self._wire.cancel()  # lock-free: shuts the request's socket down

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
        # Transforms hand over lazy sequences that encode on every pass: keep their texts
        # (encoded once per batch body), or list anything else once.
        events = batchable(events)
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
        self._queue.extend(Work.of(batch) for batch in self._batcher.add(events, raw_target))
        self._pump()

    def service(self) -> None:
        """Do what is due without waiting: send aged partial batches, poll due acks, re-send.

        The daemon calls this when idle (see :meth:`next_wakeup`). The answers to requests
        still on the wire are awaited and handled here.

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
        if self._wire.flights:
            return self._clock()  # requests are on the wire: their answers are to be handled
        due = [
            t for t in (self._batcher.next_due(), self._routes.next_ack_event()) if t is not None
        ]
        if due and self._aborted.is_set():
            return self._clock()  # the abort is carried out by the next call
        if due and self._deadline is not None:
            due.append(self._deadline)  # what is still pending then is backsplashed
        return min(due) if due else None

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
        self._wire.tighten()
        try:
            self._queue.extend(Work.of(batch) for batch in self._batcher.drain())
            delay = FIRST_BLOCKED_POLL_S
            while True:
                self._drain_queue()  # backsplashes everything once past a cut-off
                self._land()  # the answers to the last requests sent
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
            self._wire.stop()
            if summarize:
                self.ledger.log_summary(self._log, fatal=self._fatal is not None)
            self._close_sessions()

    def release(self) -> None:
        """Drop this deliverer without sending or storing anything more, and free its resources.

        For a deliverer whose bookkeeping is in doubt (a backsplash write failed): requests
        on the wire are cancelled, the I/O threads are stopped and own sessions are closed. What
        it still holds is not backsplashed: it stays counted in flight in the ledger (logged,
        ``deliverer_released``, when anything is) and the caller fails its work so that it
        comes again. Safe to call more than once, and after :meth:`close`.
        """
        if self._closed:
            return
        self._closed = True
        self._aborted.set()
        try:
            self._wire.stop()
        finally:
            self._close_sessions()
            pending = self._routes.pending()
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

    def _pump(self) -> None:
        self._queue.extend(Work.of(batch) for batch in self._batcher.due())
        self._drain_queue()

    def _drain_queue(self) -> None:
        while True:
            while self._queue:
                if self._wire.flights:
                    # Answers already in are handled before anything more is sent: they may
                    # put work ahead of this batch (split, bad event), end delivery, or leave
                    # it as it is.
                    self._land_ready()
                    if not self._queue:
                        continue
                    at_limit = len(self._wire.flights) >= self._limit()
                    if at_limit or not self._routes.has_room(self._wire.busy):
                        # No room on the wire: build the next body while the requests are
                        # out, then wait for the first answer.
                        if at_limit and self._limiter is not None:
                            self._limiter.saturated()  # more requests were ready than allowed
                        self._build_wire(self._queue[0])
                        self._land_one()
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

    def _build_wire(self, work: Work) -> bool:
        """Build (and gzip) the request body unless built; False: the payload is empty."""
        if work.wire is None:
            if self._cutoff() is not None or (work.budget.attempts and self._stop.is_set()):
                return True  # it will not be sent: leave it as it is
            body = work.restore(self._gzip).body()
            if not body or body.isspace():
                return False
            work.wire = gzip_body(body, self._gzip_level) if self._gzip else body
        return True

    def _deliver(self, work: Work) -> None:
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
