"""The drain: the replay engine (:mod:`forwarder.replay.engine`) run in cycles while HEC is
healthy, until the backsplash bucket is empty.

One cycle:

1. **Gate.** HEC is probed (:class:`~forwarder.drain.gate.HecGate`). Unhealthy: nothing is
   replayed; the caller pauses (:class:`~forwarder.drain.gate.Backoff`) and gates again.
2. **Replay.** Every object under the source but ``replay-failed/`` (and ``replayed/``) is
   replayed once, with ``concurrency`` objects at a time (1 by default) and at most
   ``max_events_per_s`` events per second (the engine's token bucket), so live traffic keeps
   priority. Done objects are deleted (or archived), so the bucket empties.
3. **Watch.** While the cycle runs, a watch thread stops it at the first sign of trouble:
   a deliverer retried (busy 503 code 9, 5xx, connection error, timeout) or re-sent a batch
   whose ack expired, or HEC's health probe (every ``probe_interval_s`` and after every
   object) failed. The engine then stops after the chunk in flight, which the deliverer
   handles as usual within ``settle_s`` (its deadline): acknowledged, or backsplashed. The
   cycle ends ``troubled`` and the caller pauses before gating again, so a flapping HEC never
   spins a tight loop.

Re-failures (:class:`~forwarder.backsplash.writers.ReplayFailedBacksplash` with
``requeue_below = max_attempts``): an event that fails again goes back under
``splunk-failed/`` with ``replayAttempts + 1`` and is retried by a later cycle; once that
count reaches ``max_attempts`` it goes under ``replay-failed/`` instead, where the drain never
reads: the one place automation gives up (``events_abandoned``, logged and counted).

Log events: ``drain_gate_closed``, ``drain_cycle_stopped`` (trouble, stop or deadline, with
the reason), ``drain_cycle_finished`` (the cycle's figures), ``drain_paused`` (the wait before
the next gate) and ``drain_stopped``; the engine's own (``replay_*``) come with them.

With ``failure_queue`` set, a cycle whose bucket replay ended ``drained`` or ``empty`` (so the
gate was open and nothing troubled it) then replays the push Lambda's on-failure queue
(:func:`~forwarder.replay.failure_queue.replay_failure_queue`, logged
``failure_queue_replayed``), stopping at the first retry or ack re-send (the cycle ends
``troubled``) or ``settle_s`` before the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from config.drain import DrainSettings
from config.errors import ConfigError
from config.settings import Settings
from forwarder import aws
from forwarder.backsplash.layout import REPLAY_FAILED
from forwarder.backsplash.writers import ReplayFailedBacksplash, backsplash_from_settings
from forwarder.drain.gate import Backoff, GateResult, HecGate
from forwarder.replay.engine import replay
from forwarder.replay.failure_queue import FailureQueueReport, replay_failure_queue
from forwarder.replay.options import ReplayOptions, parse_state_spec
from forwarder.replay.report import ReplayReport
from forwarder.replay.worker import DelivererFactory, Sink, default_deliverer_factory

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_log = structlog.get_logger("forwarder.drain")

#: How often the watch thread looks at the deliverers' ledgers during a cycle.
WATCH_INTERVAL_S: Final = 0.05

Outcome = Literal["drained", "empty", "closed", "troubled", "stopped", "failed"]
Probe = Callable[[], GateResult]

#: The counters of :class:`DrainCounters`, with their help text (the daemon's ``/metrics``).
COUNTERS: Final = {
    "cycles": "Drain cycles run (gate open).",
    "cycles_troubled": "Drain cycles stopped at a sign of trouble (busy, 5xx, ack timeout).",
    "gates_closed": "Times the drain found HEC unhealthy and did not replay.",
    "objects_deleted": "Backsplash objects fully replayed and deleted by the drain.",
    "objects_archived": "Backsplash objects fully replayed and archived by the drain.",
    "events_delivered": "Events the drain delivered (acknowledged).",
    "events_requeued": "Events that failed again and went back to the pool (replayAttempts + 1).",
    "events_abandoned": "Events the drain gave up on after max_attempts (under replay-failed/).",
    "duplicates_possible": "Events the drain re-sent after an ack was lost (possible duplicates).",
    "leases_taken_over": "Objects whose expired lease (a crashed owner's) the drain took over: "
    "what that owner sent but did not record is sent again.",
}


class DrainCounters:
    """Totals over every cycle of one drainer (thread-safe; read by ``/metrics``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, **counts: int) -> None:
        """Add to counters (names of :data:`COUNTERS`)."""
        with self._lock:
            for name, count in counts.items():
                if name not in self._values:
                    raise AttributeError(f"unknown drain counter {name!r}")
                self._values[name] += count

    def snapshot(self) -> dict[str, int]:
        """Every counter's value now."""
        with self._lock:
            return dict(self._values)


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did.

    Attributes:
        outcome: ``drained`` (every selected object replayed), ``empty`` (nothing to
            replay), ``closed`` (the gate was shut: nothing replayed), ``troubled`` (stopped
            at a sign of trouble), ``stopped`` (a stop request or the deadline) or
            ``failed`` (HEC refused the token, a write to the bucket failed, a bug).
        reason: why, in words.
        report: the engine's report (None when the gate was shut).
        events_requeued: events that went back to the pool with ``replayAttempts + 1``.
        events_abandoned: events that reached ``max_attempts`` (``replay-failed/``).
        duplicates_possible: events re-sent after a lost ack.
    """

    outcome: Outcome
    reason: str
    report: ReplayReport | None = None
    events_requeued: int = 0
    events_abandoned: int = 0
    duplicates_possible: int = 0

    @property
    def worked(self) -> bool:
        """The cycle sent or removed something (another may find more to do)."""
        report = self.report
        return report is not None and bool(
            report.events_sent or report.objects_deleted or report.objects_archived
        )


@dataclass
class _CycleWatch:
    """One cycle's deliverers and writers, its stop, and the trouble seen (if any)."""

    stop: threading.Event
    deadline: float | None
    deliverers: list[Sink] = field(default_factory=list)
    writers: list[ReplayFailedBacksplash] = field(default_factory=list)
    trouble: str | None = None
    halt: str | None = None  # stopped from outside, or for the deadline
    settle_at: float | None = None
    object_ended: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ObjectEnds:
    """The engine's progress hook, used only to tell the watch that an object ended (the
    health probe runs between objects)."""

    def __init__(self, watch: _CycleWatch) -> None:
        self._watch = watch
        self._seen = 0

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        ended = report.objects_done + report.objects_partial + report.objects_failed
        if ended != self._seen:
            self._seen = ended
            self._watch.object_ended.set()


class Drainer:
    """Runs drain cycles over one source (see the module notes).

    Args:
        settings: delivery settings (HEC, acks, retries, batching, backsplash).
        drain: the drain's settings.
        s3_client: a boto3 S3 client.
        state: the replay state as ``forwarder replay --state`` takes it (a file, or
            ``dynamodb://TABLE``: shared with other drainers and replays, a lease per
            object); None: the engine's default file.
        probe: the health gate (default: :class:`~forwarder.drain.gate.HecGate`).
        deliverer_factory: builds the deliverers (tests inject fakes).
        stop: set to stop: the cycle in flight ends after its chunk (within ``settle_s``).
        clock: monotonic clock (deadlines, the probe interval, the rate limit).
        sleep: the rate limit's sleep (default: the cycle's stop-aware wait).
        watch_interval_s: how often the watch looks at the deliverers.
        sqs_client: a boto3 SQS client for ``failure_queue`` (default: built on first use).
    """

    def __init__(
        self,
        settings: Settings,
        drain: DrainSettings,
        *,
        s3_client: S3Client,
        state: str | Path | None = None,
        probe: Probe | None = None,
        deliverer_factory: DelivererFactory = default_deliverer_factory,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        watch_interval_s: float = WATCH_INTERVAL_S,
        sqs_client: Any = None,
    ) -> None:
        self.settings = settings
        self.drain = drain
        self.source = drain.source or _backsplash_source(settings)
        self.options = ReplayOptions(
            exclude=frozenset({REPLAY_FAILED}),
            max_attempts=drain.max_attempts,
            after_success=drain.after_success,
            state=parse_state_spec(None if state is None else str(state), {}, key="drain.state"),
            concurrency=drain.concurrency,
            rate_limit=drain.max_events_per_s,
            chunk_bytes=max(int(drain.chunk_mb * 1024 * 1024), 1),
        )
        self._s3 = s3_client
        self._probe = probe if probe is not None else HecGate(settings)
        self._factory = deliverer_factory
        self.stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._sleep = sleep
        self._watch_interval_s = watch_interval_s
        self.backoff = Backoff(drain.pause_s, drain.pause_max_s)
        self.counters = DrainCounters()
        self.log = _log.bind(source=self.source)
        self._sqs = sqs_client
        #: The last cycle's run over ``failure_queue`` (None before the first).
        self.failure_queue_report: FailureQueueReport | None = None

    # ------------------------------------------------------------------ the loop

    def run(self, *, once: bool = False, deadline: float | None = None) -> CycleResult:
        """Cycle until stopped (or, ``once``, one cycle; or until ``deadline``).

        With a ``deadline`` (a Lambda's), the loop also ends when a cycle found nothing
        more to do or the gate was shut: the next invocation resumes, and a Lambda does not
        wait paying for its time.

        Returns:
            The last cycle's result.
        """
        result = CycleResult("stopped", "stopped before the first cycle")
        while not self.stop.is_set():
            if deadline is not None and self._clock() >= deadline - self.drain.settle_s:
                result = CycleResult("stopped", "deadline")
                break
            result = self.cycle(deadline=deadline)
            if once or result.outcome == "stopped" or self.stop.is_set():
                break
            if deadline is not None and (
                result.outcome in ("closed", "troubled", "failed") or not result.worked
            ):
                break
            if result.outcome in ("closed", "troubled", "failed"):
                pause = self.backoff.next()
                self.log.warning(
                    "drain_paused", pause_s=pause, outcome=result.outcome, reason=result.reason
                )
            elif result.worked:
                self.backoff.reset()
                continue  # what failed again went back to the pool: look again now
            else:
                self.backoff.reset()
                pause = self.drain.interval_s
            if deadline is not None:
                pause = min(pause, max(deadline - self._clock(), 0.0))
            self.stop.wait(pause)
        self.log.info("drain_stopped", outcome=result.outcome, **self.counters.snapshot())
        return result

    def gate(self) -> GateResult:
        """Probe HEC; a shut gate is counted and logged."""
        result = self._probe()
        if not result.healthy:
            self.counters.add(gates_closed=1)
            self.log.warning("drain_gate_closed", reason=result.reason)
        return result

    # ------------------------------------------------------------------ one cycle

    def cycle(self, *, deadline: float | None = None) -> CycleResult:
        """Gate, then replay the source once under the watch (see the module notes).

        Args:
            deadline: a time on the clock by which the cycle must be over (a Lambda's);
                the deliverers give up there, and the cycle stops ``settle_s`` before.
        """
        gate = self.gate()
        if not gate.healthy:
            return CycleResult("closed", gate.reason)
        watch = _CycleWatch(threading.Event(), deadline)
        watcher = threading.Thread(
            target=self._watch, args=(watch,), name="drain-watch", daemon=True
        )
        watcher.start()
        try:
            report = replay(
                self.settings,
                self.source,
                self.options,
                s3_client=self._s3,
                deliverer_factory=self._tracking_factory(watch),
                stop_event=watch.stop,
                progress=_ObjectEnds(watch),
                clock=self._clock,
                sleep=self._sleep if self._sleep is not None else watch.stop.wait,
            )
        finally:
            watch.done.set()
            watcher.join()
        result = self._result(watch, report)
        if self.drain.failure_queue and result.outcome in ("drained", "empty"):
            result = self._failure_queue(result, deadline)
        self._count(result)
        self.log.info(
            "drain_cycle_finished",
            outcome=result.outcome,
            reason=result.reason,
            objects_selected=report.objects_selected,
            objects_done=report.objects_done,
            objects_deleted=report.objects_deleted,
            objects_archived=report.objects_archived,
            events_sent=report.events_sent,
            events_delivered=report.events_delivered,
            events_requeued=result.events_requeued,
            events_abandoned=result.events_abandoned,
            duplicates_possible=result.duplicates_possible,
            records_exhausted=report.records_exhausted,
        )
        return result

    def _failure_queue(self, result: CycleResult, deadline: float | None) -> CycleResult:
        """With the gate open and the bucket drained, the push Lambda's on-failure queue
        (:mod:`forwarder.replay.failure_queue`), stopping at the first sign of trouble."""
        assert self.drain.failure_queue is not None
        if self._sqs is None:
            self._sqs = aws.client("sqs")
        queue = replay_failure_queue(
            self.settings,
            self.drain.failure_queue,
            sqs=self._sqs,
            backsplash=backsplash_from_settings(self.settings.backsplash, s3_client=self._s3),
            stop=self.stop,
            deadline=None if deadline is None else deadline - self.drain.settle_s,
            stop_at_trouble=True,
            log=self.log,
        )
        self.failure_queue_report = queue
        if queue.fatal or queue.backsplash_error or queue.error:
            reason = f"failure queue: {queue.fatal or queue.backsplash_error or queue.error}"
            return replace(result, outcome="failed", reason=reason)
        if queue.halted and queue.halted != "deadline":
            return replace(result, outcome="troubled", reason=f"failure queue: {queue.halted}")
        return result

    def _tracking_factory(self, watch: _CycleWatch) -> DelivererFactory:
        """The engine's deliverer factory, wrapped: writers requeue below ``max_attempts``,
        and the watch sees every deliverer (and bounds it in time)."""
        inner = self._factory
        max_attempts = self.drain.max_attempts

        def build(settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Sink:
            backsplash.requeue_below = max_attempts
            sink = inner(settings, backsplash=backsplash)
            with watch.lock:
                watch.deliverers.append(sink)
                watch.writers.append(backsplash)
                bound = _earliest(watch.deadline, watch.settle_at)
            if bound is not None:
                _set_deadline(sink, bound)
            return sink

        return build

    def _watch(self, watch: _CycleWatch) -> None:
        """Stop the cycle at the first sign of trouble, a stop request or the deadline."""
        next_probe = self._clock() + self.drain.probe_interval_s
        while not watch.done.wait(self._watch_interval_s):
            if self.stop.is_set():
                self._halt(watch, "stop requested")
                return
            now = self._clock()
            if watch.deadline is not None and now >= watch.deadline - self.drain.settle_s:
                self._halt(watch, "deadline")
                return
            trouble = _ledger_trouble(list(watch.deliverers))
            if trouble is None and (watch.object_ended.is_set() or now >= next_probe):
                watch.object_ended.clear()
                next_probe = now + self.drain.probe_interval_s
                probed = self._probe()
                if not probed.healthy:
                    trouble = f"health probe: {probed.reason}"
            if trouble is not None:
                watch.trouble = trouble
                self._halt(watch, trouble)
                return

    def _halt(self, watch: _CycleWatch, reason: str) -> None:
        """Stop the engine after its chunk in flight; bound what is in flight by
        ``settle_s`` (then it is backsplashed and goes back to the pool)."""
        if watch.trouble is None:
            watch.halt = reason
        watch.stop.set()
        settle_at = self._clock() + self.drain.settle_s
        with watch.lock:
            watch.settle_at = settle_at
            deliverers = list(watch.deliverers)
        bound = _earliest(watch.deadline, settle_at)
        for sink in deliverers:
            _set_deadline(sink, bound)
        self.log.warning(
            "drain_cycle_stopped",
            reason=reason,
            trouble=watch.trouble is not None,
            settle_s=self.drain.settle_s,
        )

    def _result(self, watch: _CycleWatch, report: ReplayReport) -> CycleResult:
        requeued = sum(writer.events_requeued for writer in watch.writers)
        abandoned = sum(writer.events_abandoned for writer in watch.writers)
        duplicates = report.events_unrecorded + sum(
            sink.ledger.duplicates_possible for sink in watch.deliverers
        )
        outcome: Outcome
        if report.fatal or report.backsplash_error or report.error or report.refused:
            outcome = "failed"
            reason = str(report.fatal or report.backsplash_error or report.refused or report.error)
        elif watch.trouble is not None:
            outcome, reason = "troubled", watch.trouble
        elif watch.halt is not None or report.interrupted:
            outcome, reason = "stopped", watch.halt or "interrupted"
        elif not report.objects_selected:
            outcome, reason = "empty", "nothing to replay"
        else:
            outcome, reason = "drained", "every selected object replayed"
        return CycleResult(outcome, reason, report, requeued, abandoned, duplicates)

    def _count(self, result: CycleResult) -> None:
        report = result.report
        assert report is not None
        self.counters.add(
            cycles=1,
            cycles_troubled=int(result.outcome == "troubled"),
            objects_deleted=report.objects_deleted,
            objects_archived=report.objects_archived,
            events_delivered=report.events_delivered,
            events_requeued=result.events_requeued,
            events_abandoned=result.events_abandoned,
            duplicates_possible=result.duplicates_possible,
            leases_taken_over=report.leases_taken_over,
        )


def _backsplash_source(settings: Settings) -> str:
    """``s3://BACKSPLASH_BUCKET/BACKSPLASH_PREFIX``: the drain's default source."""
    bucket = settings.backsplash.bucket
    if not bucket:
        raise ConfigError(
            "drain.source", "nothing to drain: set it (s3://BUCKET/PREFIX) or BACKSPLASH_BUCKET"
        )
    return f"s3://{bucket}/{settings.backsplash.prefix}"


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _set_deadline(sink: Any, deadline: float | None) -> None:
    """Bound a deliverer in time (sinks without deadlines, such as test fakes, are left)."""
    setter = getattr(sink, "set_deadline", None)
    if setter is not None:
        current = getattr(sink, "deadline", None)
        setter(_earliest(current, deadline))


def _ledger_trouble(sinks: list[Sink]) -> str | None:
    """A sign of trouble in the deliverers' ledgers: a retry (busy, 5xx, connection error,
    timeout) or a re-send after an ack expired."""
    for sink in sinks:
        ledger = sink.ledger
        if ledger.retries:
            return "HEC asked for a retry (busy, server error or no answer)"
        if ledger.resends:
            return "an ack timed out (batch re-sent)"
    return None
