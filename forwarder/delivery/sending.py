"""Sending one batch: its attempts with retries, and what HEC's answer does to it.

What each of HEC's answers does is the table in :mod:`forwarder.delivery.deliverer`'s notes
(DESIGN.md §4); an ack timeout's re-send is in :mod:`forwarder.delivery.pending`.

A batch's first attempt may be made in an I/O thread (:meth:`BatchSending._launch`), on a
channel with no request on the wire; its answer is handled here, in the deliverer's thread,
exactly as a synchronous send's (:meth:`BatchSending._land`). Retries are synchronous (every
answer on the wire is landed first); their backoff sleeps poll acks. Every data request's
answer feeds the adaptive concurrency limit, when there is one.
Halves and the events around a bad one go back to the front of the queue with the batch's
retry budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tenacity import RetryCallState

from forwarder.delivery.batching import Batch, halve, isolate
from forwarder.delivery.concurrency import Signal
from forwarder.delivery.fallback import reindex
from forwarder.delivery.pending import MIN_SLEEP_S, PendingWork
from forwarder.delivery.retry import build_retrying
from forwarder.delivery.routes import Route
from forwarder.delivery.work import GiveUp, Halted, Work
from forwarder.errors import FatalHecError, RequestCancelledError, RetryableError
from forwarder.hec.client import SendResult
from forwarder.hec.protocol import CODE_INCORRECT_INDEX, UNHEALTHY_CODES, Outcome
from forwarder.hec.transport import RequestGuard


class BatchSending(PendingWork):
    """Sends batches with retries and acts on HEC's answers (see the module notes)."""

    def _launch(self, work: Work) -> None:
        """Make the first attempt in an I/O thread; :meth:`_land` handles its answer."""
        work.budget.attempts += 1  # as the retry loop's ``before`` does for each attempt
        try:
            route = self._choose_route(launch=True)
        except GiveUp as exc:
            self._store_work(work, exc.error_code, exc.message)
            return
        self.ledger.add(requests=1)
        self._wire.launch(work, route, self._request(route, work))

    def _land(self, only: Callable[[Route], bool] | None = None) -> None:
        """Wait for the requests on the wire (those on routes ``only`` accepts), and handle
        their answers (retries included), the first in first."""
        while True:
            if only is None:
                route = None
            else:
                route = next((r for r in self._wire.flights if only(r)), None)
                if route is None:
                    return
            if not self._land_from(route):
                return

    def _land_one(self) -> None:
        self._land_from(None)

    def _land_ready(self) -> None:
        """Handle the answers already in, without waiting."""
        for route in self._wire.ready():
            if route in self._wire.flights:  # (handling one may have landed others)
                self._land_from(route)

    def _land_from(self, route: Route | None) -> bool:
        """Land ``route``'s request (None: the first to end); False: none on the wire."""
        landed = self._wire.land(route)
        if landed is None:
            return False
        flight, answer = landed
        flight.work.budget.attempts -= 1  # the retry loop counts this attempt again
        self._run(flight.work, (flight.route, answer, flight.rtt_s))
        return True

    def _request(self, route: Route, work: Work) -> Callable[[RequestGuard], SendResult]:
        """``work``'s data request to ``route``, for this thread or an I/O thread (it reads
        nothing of the deliverer's when it runs)."""
        client, endpoint, raw_target, count = (
            route.client,
            self._endpoint,
            work.raw_target,
            work.count,
        )
        wire = work.wire
        assert wire is not None

        def send(guard: RequestGuard) -> SendResult:
            return client.send(
                wire,
                endpoint=endpoint,
                raw_target=raw_target,
                event_count=count,
                compressed=True,
                guard=guard,
            )

        return send

    def _run(
        self, work: Work, first: tuple[Route, SendResult | Exception, float | None] | None
    ) -> None:
        """The retry loop for one batch; ``first``: its first attempt's route, answer and
        round trip."""
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
        route: Route | None = None
        last_error: RetryableError | None = None
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        if first is not None:
                            route, landed, rtt_s = first
                            first = None
                            result = self._finish(route, work, landed, rtt_s)
                        else:
                            route = self._choose_route()
                            result = self._attempt(route, work)
                    except RetryableError as exc:
                        last_error = exc
                        raise
        except RetryableError as exc:
            self._give_up(work, exc)
            return
        except Halted:
            self._give_up(work, last_error)
            return
        except GiveUp as exc:
            self._store_work(work, exc.error_code, exc.message)
            return
        except FatalHecError as exc:
            self._go_fatal(exc, route.url if route is not None else None)
            self._store_work(work, exc.error_code, exc.message)
            return
        assert result is not None and route is not None  # the loop ended without raising
        self._handle(work, route, result)

    def _attempt(self, route: Route, work: Work) -> SendResult:
        self.ledger.add(requests=1)
        started = time.monotonic()
        try:
            result = self._wire.call(route, self._request(route, work))
        except RetryableError as exc:
            return self._finish(route, work, exc, None)
        return self._finish(route, work, result, time.monotonic() - started)

    def _finish(
        self, route: Route, work: Work, landed: SendResult | Exception, rtt_s: float | None
    ) -> SendResult:
        """Account for a request's answer (or failure); raise what the retry loop acts on."""
        if self._limiter is not None:
            self._limiter.observe(load_signal(landed), rtt_s)
        if isinstance(landed, Exception):
            if isinstance(landed, RetryableError):
                if landed.unhealthy:  # not a request we cancelled, nor a busy session
                    self._routes.mark_unhealthy(route, landed.message)
                if landed.maybe_delivered:
                    self.ledger.add(duplicates_possible=work.count)
            raise landed
        result = landed
        outcome = result.outcome
        if outcome.action == "retry":
            if outcome.code in UNHEALTHY_CODES:
                self._routes.mark_unhealthy(route, outcome.reason)
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

        Wakes no later than the deadline. Raises ``Halted`` (no next attempt) once a cut-off
        is reached or shutdown is requested.
        """
        end = self._clock() + seconds
        deadline = self._effective_deadline()
        if deadline is not None:
            end = min(end, deadline)
        while True:
            if self._cutoff() is not None or self._stop.is_set():
                raise Halted
            now = self._clock()
            if now >= end:
                return
            self._poll_routes(force=False)
            now = self._clock()
            self._expire(now)
            remaining = end - now
            if remaining <= 0:
                continue  # the loop's top decides: deadline reached, or back off no longer
            wake = self._routes.next_ack_event()  # partial batches wait: we are mid-send
            step = remaining if wake is None else min(remaining, max(wake - now, MIN_SLEEP_S))
            self._sleep(step)

    def _handle(self, work: Work, route: Route, result: SendResult) -> None:
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
        elif action == "isolate" or (
            action == "reject" and outcome.code == CODE_INCORRECT_INDEX and self._fallback_index
        ):
            # With a fallback index, a code 7 that names no event is bisected towards it too.
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

    def _requeue_front(self, work: Work, parts: Sequence[Batch | None]) -> None:
        for part in reversed(parts):
            if part is not None:
                self._queue.appendleft(Work.of(part, work.budget.copy()))

    def _reject(self, work: Work, route: Route, outcome: Outcome, message: str) -> None:
        self._log.error(
            "hec_rejected",
            url=route.url,
            code=outcome.code,
            reason=message,
            events=work.count,
            error_code=outcome.error_code,
        )
        self._store_work(work, outcome.error_code, f"{route.url}: {message}")

    def _isolate(self, work: Work, route: Route, outcome: Outcome) -> None:
        batch = work.restore(self._gzip)
        index = outcome.invalid_event
        if index is not None and 0 <= index < len(batch):
            before, bad, after = isolate(batch, index)
            if before is not None:
                # Splunk may have indexed the events ahead of the bad one: sending them again
                # is the at-least-once choice, and a possible duplicate.
                self.ledger.add(duplicates_possible=len(before))
            self._requeue_front(work, (before, after))
            if self._fall_back(work, batch.derive([bad]), route, outcome):
                return
            self._log.error(
                "hec_rejected",
                url=route.url,
                code=outcome.code,
                reason=outcome.reason,
                events=1,
                event_number=index,
                error_code=outcome.error_code,
            )
            self._store(
                [bad if work.original is None else work.original],
                raw_target=batch.raw_target,
                arrival_ms=batch.arrival_ms,
                attempts=work.budget.attempts,
                error_code=outcome.error_code,
                message=f"{route.url}: {outcome.reason} (event {index} of the request)",
            )
        elif len(batch) > 1:
            self._requeue_front(work, halve(batch))  # bisect towards the bad event
        elif not self._fall_back(work, batch, route, outcome):
            self._reject(work, route, outcome, outcome.reason)

    def _fall_back(self, work: Work, single: Batch, route: Route, outcome: Outcome) -> bool:
        """Code 7 on one event: re-send it, once, to ``SPLUNK_FALLBACK_INDEX`` with its index
        in ``fields.orig_index``, ahead of everything queued. False: it is not re-sent (no
        fallback index, another code, a re-send already, or it names the fallback index)."""
        fallback = self._fallback_index
        if fallback is None or outcome.code != CODE_INCORRECT_INDEX or work.original is not None:
            return False
        original = single.events[0]
        moved = reindex(original, fallback)
        if moved is None:
            return False
        self.ledger.add(fallback_index_resent=1)
        self._log.warning(
            "fallback_index_resent",
            url=route.url,
            reason=outcome.reason,
            index=fallback,
            event_id=original.event_id,
        )
        self._queue.appendleft(Work.of(single.derive([moved]), work.budget.copy(), original))
        return True


#: HTTP statuses that say HEC (or the balancer in front) has more than it can take.
_PUSHBACK_STATUSES = frozenset({429, 503, 504})


def load_signal(landed: SendResult | Exception) -> Signal:
    """What a data request's answer says about HEC's load (the adaptive limit's input).

    Pushback (503 busy or unhealthy, 429, 504), timeouts and failed connections are
    ``overload``; a success is ``ok`` (its round trip counts); anything else (a refused event,
    a 413, a request we cancelled) says nothing about load.
    """
    if isinstance(landed, RequestCancelledError):
        return "ignore"
    if isinstance(landed, RetryableError):
        return "overload"
    if isinstance(landed, Exception):
        return "ignore"
    if landed.outcome.action == "ok":
        return "ok"
    return "overload" if landed.status in _PUSHBACK_STATUSES else "ignore"
