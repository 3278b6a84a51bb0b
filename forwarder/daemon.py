"""``forwarder daemon``: read a source, deliver with acks, checkpoint, serve health and metrics.

The loop, in cycles: poll the source, transform each record, hand the events to the
:class:`~forwarder.delivery.deliverer.Deliverer`; every ``checkpoint_interval_s`` seconds or
``checkpoint_max_records`` records, :meth:`Deliverer.flush` (everything acknowledged or
backsplashed) and only then commit the source (Kinesis checkpoint, SQS delete). So a checkpoint
never passes a record with an event still in doubt, and a ``kill -9`` costs at most one cycle of
duplicates.

Signals (two stages): the first SIGTERM/SIGINT stops reading and gives the deliverer a deadline
``shutdown_grace_s`` away (:meth:`Deliverer.set_deadline`): sends, retries and ack waits go on until
then, and what is still unacknowledged at the deadline is backsplashed (``Splunk.Deadline``); the
source is committed and the exit status is 0. Records already polled but not yet handed to the
deliverer are not taken in (:meth:`Source.release`): they are not committed, so Kinesis and SQS give
them again after a restart. A second signal aborts (:meth:`Deliverer.abort`): everything pending is
backsplashed at once (``Splunk.Shutdown``), committed, exit 130.

A ``firehose-http`` source's answer waits for the checkpoint, and Firehose waits 3 minutes for an
answer: the checkpoint's flush is bounded by the oldest request's arrival plus ``answer_timeout_s``
(:meth:`FirehoseHttpSource.answer_deadline`): what is not acknowledged by then is backsplashed
(``Splunk.Deadline``), so every request is answered 200 in time once its events are acknowledged or
durably stored.

Files and stdin keep no checkpoint. Reading is bounded (a poll is a few thousand lines), so the
deliverer's backpressure (pending acks, retries while HEC is down) stops the reading and memory does
not grow with the input. A run that reads its input to the end exits 0 when everything was
acknowledged, 5 when something was backsplashed or dropped. A signal before the end exits 0 as above
once what was taken in is acknowledged or backsplashed, and logs ``input_not_finished`` (lines
taken, where it stopped): the rest of the input is not read, and a later run reads the files from
the start again (stdin: whatever is fed to it again).

Backsplash objects named by the ``sqs-s3`` source come as records already decoded
(:class:`~forwarder.sources.base.SourceRecord` ``decoded``) and are dispatched by
:class:`~forwarder.intake.dispatch.Intake` as in the push Lambda (DESIGN.md §6): to deliverers of
their own, one per endpoint, whose failures go under ``replay-failed/``. Every deliverer shares the
main deliverer's ledger (so health, metrics and the summary read one ledger), and the checkpoint
flushes them all: an SQS message is deleted only once every event of its objects is acknowledged or
stored.

Source failures are supervised (:mod:`forwarder.sources.supervision`): retried with a capped backoff
while the deliverers keep being serviced; a failed Kinesis poll re-attaches the source from its last
checkpoint (duplicates, never a gap). A :class:`~config.loader.ConfigError` (a ``files`` source
naming a missing path) is not retried: the daemon logs ``daemon_stopped`` with the problem and exits
2.

The backsplash is S3 with the local spool behind it (``BACKSPLASH_SPOOL_DIR``): while S3 is
unreachable objects go to the spool, which is drained to S3 every ``spool_drain_interval_s`` and at
start-up (so it survives restarts). If even the spool fails, the daemon stops without committing
(exit 6): a restart resumes from the last checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import BinaryIO, Final

import requests
import structlog

from config.daemon import DaemonSettings
from config.errors import ConfigError
from config.settings import Settings
from forwarder import aws
from forwarder.backsplash.writers import (
    BacksplashWriter,
    FallbackBacksplash,
    backsplash_from_settings,
)
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.destinations import Delivery, build_delivery, keeps_delivering
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.metrics import DaemonState, MetricsServer
from forwarder.drain.service import DrainService
from forwarder.errors import BacksplashError, FatalHecError
from forwarder.hec.client import HecClient
from forwarder.intake.dispatch import Intake, Redeliverers
from forwarder.sources.base import Source, SourceRecord
from forwarder.sources.build import build_source, check_source
from forwarder.sources.files import FileSource
from forwarder.sources.firehose_http import FirehoseHttpSource
from forwarder.sources.supervision import SourceSupervisor, describe
from forwarder.status import ExitStatus, RunOutcome, incomplete, status_for

#: The shortest idle wait of a poll when a deliverer has work due (a floor, so that a wake-up
#: time that stays in the past cannot turn the loop into a busy loop).
_MIN_IDLE_WAIT_S: Final = 0.01

_log = structlog.get_logger("forwarder.daemon")


class Daemon:
    """One daemon run; usable in-process (tests, ``make demo``) or from ``forwarder daemon``
    (:mod:`forwarder.commands.daemon`).

    Args:
        settings: HEC, delivery and backsplash settings (token resolved).
        daemon_settings: the ``[daemon]`` and ``[source]`` settings.
        client_factory: builds boto3 clients by service name.
        source: a ready-made source (tests); built from ``daemon_settings`` when None.
        backsplash: a ready-made backsplash; from settings (S3 + spool) when None.
        stdin: the stream for the stdin source.
    """

    def __init__(
        self,
        settings: Settings,
        daemon_settings: DaemonSettings,
        *,
        client_factory: aws.ClientFactory = aws.client,
        source: Source | None = None,
        backsplash: BacksplashWriter | None = None,
        stdin: BinaryIO | None = None,
    ) -> None:
        self.settings = settings
        self.daemon_settings = daemon_settings
        self.stop_event = threading.Event()
        self._clock = time.monotonic
        self._clients = client_factory
        self._signals = 0
        self._forced = False
        self._stop_deadline: float | None = None
        self.backsplash: BacksplashWriter = (
            backsplash
            if backsplash is not None
            else backsplash_from_settings(
                settings.backsplash,
                s3_client=client_factory("s3") if settings.backsplash.bucket else None,
                use_spool=True,
            )
        )
        self.deliverer = build_delivery(  # one Deliverer per [destinations.NAME]
            settings,
            backsplash=self.backsplash,
            clock=self._clock,
            log=_log,
        )
        #: Deliverers for re-delivered backsplash records, by endpoint (failures go under
        #: replay-failed/); built on first use, sharing the main deliverer's ledger.
        self.redeliverers = Redeliverers(
            settings,
            self.backsplash,
            log=_log,
            clock=self._clock,
            prepare=self._prepare_redeliverer,
        )
        self.intake = Intake(
            settings, self.deliverer, self.backsplash, self.redeliverers.get, log=_log
        )
        self._stdin = stdin
        #: Whether a failed poll re-attaches the source from its checkpoints (Kinesis).
        self._reattach_after_poll_failure = source is None and (
            daemon_settings.source.type == "kinesis"
        )
        self._source_stale = False
        self.source: Source = source if source is not None else self._build_source(stdin)
        self.state = DaemonState(
            ledger=self.deliverer.ledger,
            pending_acks=self.pending_acks,
            concurrency=lambda: self.deliverer.concurrency,
            source_lag=self._source_lag,
            source_attached=lambda: self.source.attached,
            hec_probe=self._probe_hec,
            spool_dir=settings.backsplash.spool_dir,
            stall_after_s=max(300.0, daemon_settings.shutdown_grace_s * 2),
            probe_ttl_s=daemon_settings.health_check_interval_s,
        )
        self.metrics: MetricsServer | None = None
        self.drain = DrainService(
            settings, daemon_settings.drain, client_factory=client_factory, stop=self.stop_event
        )
        self._probe_session = requests.Session()
        self._next_drain = 0.0
        self.supervisor = SourceSupervisor(
            self.state,
            self.stop_event,
            backoff_s=daemon_settings.source_retry_backoff_s,
            backoff_max_s=daemon_settings.source_retry_backoff_max_s,
            source_name=lambda: self.source.name,
            service=self._service,
            clock=self._clock,
        )

    def _source_lag(self) -> float | None:
        return self.source.lag_seconds()  # the current source: a re-attach replaces it

    # ------------------------------------------------------------------ deliverers

    def deliverers(self) -> list[Delivery]:
        """Every deliverer (the main one first, then the re-delivery ones)."""
        return [self.deliverer, *self.redeliverers.all()]

    def pending_acks(self) -> int:
        """Requests awaiting their ack, over every deliverer."""
        return sum(deliverer.pending_acks for deliverer in self.deliverers())

    @property
    def fatal(self) -> FatalHecError | None:
        """The first fatal HEC error of any deliverer, or None."""
        for deliverer in self.deliverers():
            if deliverer.fatal is not None:
                return deliverer.fatal
        return None

    def _prepare_redeliverer(self, deliverer: Deliverer) -> None:
        """A new re-delivery deliverer: on the main ledger, under any stop already asked."""
        deliverer.use_ledger(self.deliverer.ledger)  # one ledger for the daemon (thread-safe)
        if self._stop_deadline is not None:
            deliverer.set_deadline(self._stop_deadline)
        if self._forced:
            deliverer.abort("Splunk.Shutdown", "second shutdown signal")

    # ------------------------------------------------------------------ building

    def _build_source(self, stdin: BinaryIO | None) -> Source:
        return build_source(
            self.daemon_settings,
            self.settings.transform,
            self._clients,
            stop_event=self.stop_event,
            stdin=stdin,
        )

    def _probe_hec(self) -> tuple[bool, str]:
        reasons = []
        for url in self.settings.hec.urls:
            client = HecClient(self._probe_session, self.settings.hec, url)
            healthy, code, reason = client.health()
            if healthy:
                return True, "ok"
            reasons.append(f"{url}: {reason} (code {code})")
        return False, "; ".join(reasons) or "no HEC URL"

    # ------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        """First stage: stop reading, flush within the grace period, commit, exit 0.

        The grace period is the deliverer's deadline: sends, retries and ack waits go on
        until then, and whatever still waits at the deadline (acks, a batch in retry backoff)
        is backsplashed as ``Splunk.Deadline``. A second call is the second stage
        (:meth:`request_abort`). Safe from a signal handler: both only set flags.
        """
        self._signals += 1
        if self._signals == 1:
            grace = self.daemon_settings.shutdown_grace_s
            _log.warning("shutdown_requested", grace_s=grace)
            self._stop_deadline = self._clock() + grace
            for deliverer in self.deliverers():
                deliverer.set_deadline(self._stop_deadline)
            self.stop_event.set()
        else:
            self.request_abort()

    def request_abort(self) -> None:
        """Second stage: backsplash everything pending now, commit, exit 130."""
        if not self._forced:
            _log.warning("shutdown_forced")
        self._forced = True
        self.stop_event.set()
        for deliverer in self.deliverers():
            deliverer.abort("Splunk.Shutdown", "second shutdown signal")

    # ------------------------------------------------------------------ the loop

    def run(self) -> ExitStatus:
        """Run until the source is exhausted or a signal arrives; returns the exit status."""
        daemon = self.daemon_settings
        if daemon.metrics_enabled:
            self.metrics = MetricsServer(self.state, daemon.metrics_host, daemon.metrics_port)
            self.metrics.start()
            _log.info("metrics_started", url=self.metrics.url)
        self.drain.start(self.metrics)  # [drain] enabled: drain the backsplash beside the source
        try:
            return self._run()
        finally:
            self.drain.close()
            self.state.stopped = True
            self.source.close()
            if self.metrics is not None:
                self.metrics.stop()
            self._probe_session.close()

    # ------------------------------------------------------------------ supervision

    def _service(self) -> None:
        """During a source backoff: heartbeat, and service the deliverers (acks, retries)."""
        self.state.beat()
        for deliverer in self.deliverers():
            deliverer.service()

    def _attach(self) -> bool:
        """Attach the source (retried while it fails); False when a stop came first.

        Raises:
            ConfigError: the source's settings are wrong (a missing file): not retried.
        """

        def attach() -> None:
            check_source(self.daemon_settings.source)
            self.source.attach()

        try:
            self.supervisor.run("attach", attach)
        except (ConfigError, BacksplashError):
            raise
        except Exception:  # noqa: BLE001 - a stop came while it failed (counted, logged)
            return False
        return True

    def _poll(self, want: int) -> list[SourceRecord]:
        """One poll; a Kinesis source that failed a poll is re-attached from its checkpoints
        first (the failed poll may have read some shards past what the daemon received).

        A poll with nothing to give waits no longer than until the deliverers' next wake-up
        (a partial batch ageing out, an ack poll), so a record read while the input goes quiet
        is sent when its batch is due, not a whole ``poll_interval_s`` later."""
        if self._source_stale:
            self._reattach()
        try:
            return self.source.poll(want, wait_s=self._idle_wait())
        except Exception:
            if self._reattach_after_poll_failure:
                self._source_stale = True
            raise

    def _idle_wait(self) -> float | None:
        """Seconds until a deliverer has something to do (at least :data:`_MIN_IDLE_WAIT_S`,
        so a wake-up that stays due cannot spin the loop), or None when none has."""
        wakeups = [t for d in self.deliverers() if (t := d.next_wakeup()) is not None]
        if not wakeups:
            return None
        return max(min(wakeups) - self._clock(), _MIN_IDLE_WAIT_S)

    def _reattach(self) -> None:
        old = self.source
        old.close()
        self.source = self._build_source(self._stdin)
        self.source.attach()
        self._source_stale = False
        _log.warning(
            "source_reattached",
            source=self.source.name,
            reason="a poll failed; reading again from the last checkpoint",
        )

    def _run(self) -> ExitStatus:
        daemon = self.daemon_settings
        self._drain_spool(force=True)
        _log.info("daemon_started", source=self.source.name)
        max_records = daemon.source.max_records
        cycle_records = 0
        # A checkpoint skipped or failed: records delivered and not committed. Tried again
        # once ``checkpoint_interval_s`` has passed, whether or not new records come in.
        uncommitted = False
        cycle_start = self._clock()
        try:
            if not self._attach():
                return self._finish()
            while not self.stop_event.is_set():
                self.state.beat()
                want = max(1, min(max_records, daemon.checkpoint_max_records - cycle_records))
                try:
                    records = self.supervisor.run("poll", partial(self._poll, want))
                except (ConfigError, BacksplashError):
                    raise
                except Exception:  # noqa: BLE001 - a stop came while polling failed
                    break
                taken = self._deliver_all(records)
                cycle_records += taken
                if taken < len(records):  # a stop request: the rest is not taken in
                    self._release(records[taken:])
                    break
                now = self._clock()
                elapsed = now - cycle_start
                answer_by = self._answer_deadline()
                if (
                    cycle_records >= daemon.checkpoint_max_records
                    or ((cycle_records or uncommitted) and elapsed >= daemon.checkpoint_interval_s)
                    or (answer_by is not None and now >= answer_by)
                    or self.source.exhausted
                ):
                    uncommitted = not self._checkpoint(deadline=None)
                    cycle_records = 0
                    cycle_start = self._clock()
                    fatal = self.fatal
                    if fatal is not None and not keeps_delivering(self.deliverer):
                        _log.critical("daemon_stopped", reason=fatal.message)
                        break
                else:
                    for deliverer in self.deliverers():
                        deliverer.service()
                self._drain_spool()
                if self.source.exhausted:
                    break
        except ConfigError as exc:
            return self._config_failed(exc)
        except BacksplashError as exc:
            return self._backsplash_failed(exc)
        return self._finish()

    def _deliver_all(self, records: Sequence[SourceRecord]) -> int:
        """Deliver records until a stop is requested; returns how many were taken in.

        A stop ends this between two records (a record is taken in whole or not at all): what
        is not taken is released back to the source, so it is neither delivered nor committed.
        """
        for taken, record in enumerate(records):
            if self.stop_event.is_set():
                return taken
            self._deliver(record)
        return len(records)

    def _deliver(self, record: SourceRecord) -> None:
        intake = self.intake
        if record.dropped is not None:  # a line too long to read (sqs-s3 text objects)
            intake.dropped_line(
                record.log_group, record.log_stream, record.line, record.size, record.dropped
            )
        elif record.decoded is not None:  # a backsplash record (sqs-s3)
            intake.backsplash_record(record.decoded)
        elif record.corrupt is not None:
            intake.corrupt_record(record.log_group, record.log_stream, record.line, record.corrupt)
        elif record.payload is not None:
            intake.payload(record.payload)
        else:
            intake.lines(
                record.lines or (),
                log_group=record.log_group,
                log_stream=record.log_stream,
                origin=record.origin,
                flow_fields=record.flow_fields,
            )

    def _checkpoint(self, deadline: float | None) -> bool:
        """Flush (everything acknowledged or backsplashed), then commit the source.

        Every deliverer is flushed (the main one and the re-delivery ones). The commit happens
        only when the flush left no ack pending in any of them and the (shared) ledger balances;
        otherwise (a bug: events unaccounted for) ``checkpoint_skipped`` is logged and the
        source is not committed, so those records come again (duplicates, never a loss).
        Returns whether the source was committed.
        """
        answer_by = self._answer_deadline()
        if answer_by is not None:  # firehose-http: Firehose must have its answer in time
            deadline = answer_by if deadline is None else min(deadline, answer_by)
        for deliverer in self.deliverers():
            deliverer.flush(deadline)
        pending = self.pending_acks()
        ledger = self.deliverer.ledger
        if pending or not ledger.balanced():
            _log.error(
                "checkpoint_skipped",
                source=self.source.name,
                pending_acks=pending,
                in_flight=ledger.in_flight,
                reason="events neither acknowledged, backsplashed nor dropped; not committing",
            )
            return False
        try:
            committed = self.supervisor.run("commit", self.source.commit)
        except (ConfigError, BacksplashError):
            raise
        except Exception as exc:  # noqa: BLE001 - a stop came while the commit failed
            _log.error(
                "checkpoint_skipped",
                source=self.source.name,
                reason=f"commit failed until shutdown: {describe(exc)}; those records "
                "are read again after a restart (duplicates, not loss)",
            )
            return False
        self.state.checkpoints += 1
        summary = self.deliverer.ledger.summary()
        _log.info("checkpoint_saved", source=self.source.name, committed=committed, **summary)
        return True

    def _answer_deadline(self) -> float | None:
        """firehose-http: when the oldest request taken in must be settled (acknowledged or
        backsplashed) so that its answer reaches Firehose before Firehose gives up on it."""
        source = self.source
        return source.answer_deadline() if isinstance(source, FirehoseHttpSource) else None

    def _release(self, records: Sequence[SourceRecord]) -> None:
        """Hand records back to the source (retried like any source operation)."""
        try:
            self.supervisor.run("release", lambda: self.source.release(records))
        except (ConfigError, BacksplashError):
            raise
        except Exception:  # noqa: BLE001 - not committed either: they come again after a restart
            _log.warning(
                "source_release_failed",
                source=self.source.name,
                records=len(records),
                reason="not committed: read again after a restart",
            )

    def _drain_spool(self, *, force: bool = False) -> None:
        if not isinstance(self.backsplash, FallbackBacksplash):
            return
        now = self._clock()
        if not force and now < self._next_drain:
            return
        self._next_drain = now + self.daemon_settings.spool_drain_interval_s
        if not self.backsplash.spool.list_keys():
            return
        try:
            moved = self.backsplash.drain()
        except BacksplashError as exc:
            _log.warning("spool_drain_failed", reason=exc.message)
            return
        if moved:
            _log.info("spool_drained", objects=moved)

    def _finish(self) -> ExitStatus:
        """Shutdown: flush within the grace period, commit, close; the exit status."""
        if self._stop_deadline is not None:  # a signal: the deliverer has this deadline already
            deadline = self._stop_deadline
        else:  # the source ended (files, stdin) or delivery stopped: same grace
            deadline = self._clock() + self.daemon_settings.shutdown_grace_s
        try:
            if isinstance(self.source, FileSource):
                # stdin cannot be read again: what left the pipe is delivered (or, past the
                # grace, backsplashed), never dropped.
                for record in self.source.unread():
                    self._deliver(record)
            self._checkpoint(deadline=deadline)  # ends at once after request_abort()
            for deliverer in self.deliverers():
                deliverer.close(summarize=False)
        except BacksplashError as exc:
            return self._backsplash_failed(exc)
        grace_over = self._stop_deadline is not None and self._clock() >= self._stop_deadline
        if grace_over and not self._forced:
            _log.warning("shutdown_grace_expired")  # what was still pending is backsplashed
        self._drain_spool(force=True)
        if isinstance(self.source, FileSource):
            self.source.log_unread()
        ledger = self.deliverer.ledger
        status = status_for(
            RunOutcome(
                hec_fatal=self.fatal is not None,
                # A graceful stop is no interruption; a forced one (second signal) is.
                interrupted=self._forced,
                # A finite run (files, stdin): say that not everything was indexed.
                incomplete=self.source.exhausted and incomplete(ledger.summary()),
            )
        )
        ledger.log_summary(_log, source=self.source.name, exit_status=int(status))
        _log.info("daemon_stopped", exit_status=int(status))
        return status

    def _config_failed(self, exc: ConfigError) -> ExitStatus:
        """A configuration problem found at run time (a files source's missing path): exit 2."""
        status = status_for(exc)
        _log.critical(
            "daemon_stopped", reason=f"configuration error: {exc}", exit_status=int(status)
        )
        return status

    def _backsplash_failed(self, exc: BacksplashError) -> ExitStatus:
        _log.critical(
            "daemon_stopped",
            reason=f"backsplash and spool both failed: {exc.message}; nothing committed",
            exit_status=int(ExitStatus.BACKSPLASH_FAILED),
        )
        self.deliverer.ledger.log_summary(_log, source=self.source.name)
        return status_for(RunOutcome(backsplash_failed=True))


# --------------------------------------------------------------------- in-process runs


def run_daemon_demo(
    settings: Settings,
    daemon_settings: DaemonSettings,
    *,
    until: Callable[[Ledger], bool],
    timeout_s: float = 60.0,
    client_factory: aws.ClientFactory = aws.client,
) -> tuple[int, str]:
    """Run a daemon in a thread until ``until(ledger)`` holds (or the timeout), then stop it.

    For ``make demo``: the daemon reads, delivers and checkpoints as in production; the
    caller decides when enough is delivered.

    Returns:
        (exit status, the Prometheus metrics text at the end).
    """
    daemon = Daemon(settings, daemon_settings, client_factory=client_factory)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), name="daemon")
    thread.start()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and thread.is_alive() and not until(daemon.deliverer.ledger):
        time.sleep(0.05)
    daemon.request_stop()
    thread.join(timeout=daemon_settings.shutdown_grace_s + 30)
    metrics = daemon.metrics.exposition().decode() if daemon.metrics is not None else ""
    return (result[0] if result else ExitStatus.FAILURE), metrics
