"""Replay of the push Lambda's on-failure queue (``forwarder replay sqs://QUEUE_URL``, and the
drain when ``[drain] failure_queue`` is set).

An asynchronous invocation of the push Lambda (a CloudWatch Logs subscription) that exhausted
its retries lands in the template's ``FailedInvocationsQueue`` as an on-failure destination
record: ``{"version", "timestamp", "requestContext": {"requestId", "functionArn",
"condition", "approximateInvokeCount"}, "requestPayload": <the original event>,
"responseContext", "responsePayload"}``. A message whose body is itself a push event
(``{"awslogs": ...}`` or a Kinesis batch) is taken as it is.

The queue is read in batches of at most ten messages (a long poll of ``wait_s``), each kept
invisible for ``visibility_timeout_s`` and extended every third of it while its events are in
flight (:class:`_Visibility`). Every ``requestPayload`` goes through the push path
(:func:`forwarder.intake.events.deliver_event` onto one :class:`~forwarder.intake.dispatch.
Intake`), then the deliverer is flushed; a batch's messages are deleted only when, after the
flush, nothing is in flight: each event acknowledged, backsplashed (``splunk-failed/``, as
the push Lambda writes) or dropped for a counted reason. A backsplash write that fails stops
the run and deletes nothing of the batch: the messages come back after their visibility
timeout. The run ends when a receive finds no message, at a stop request, at the deadline or
when ``halt`` names a reason (the drain's sign of trouble).

A message that cannot be decoded (not JSON, no ``requestPayload``, an event of a shape the
push path does not deliver from payloads) is logged ``failure_record_unreadable`` with its
message id, counted once per run and left in the queue: it comes back after its visibility
timeout (and, with a redrive policy on the queue, is dead-lettered after
``maxReceiveCount``), so a person can look at it. A dry run receives and counts messages
and the events they hold, deletes nothing, and makes every message it held visible again.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from forwarder.backsplash.writers import BacksplashWriter
from forwarder.delivery.destinations import Delivery, build_delivery
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.intake.dispatch import Intake, Redeliverers
from forwarder.intake.events import PAYLOAD_SHAPES, deliver_event
from forwarder.status import ExitStatus, RunOutcome, incomplete, status_for
from transforms.errors import TransformError
from transforms.pipeline import transform_payload
from transforms.sniff import event_payloads, event_shape

#: SQS hands out at most ten messages per receive.
BATCH_MESSAGES: Final = 10
#: Long poll per receive, seconds (any wait above zero asks every SQS server).
WAIT_S: Final = 1
#: How long a received message stays invisible; extended every third of it while it works.
VISIBILITY_TIMEOUT_S: Final = 300
#: The prefix of the replay source naming a queue.
SQS_SCHEME: Final = "sqs://"

_log = structlog.get_logger("forwarder.replay.failure_queue")


def is_queue_uri(uri: str) -> bool:
    """Whether a replay source names an SQS queue (``sqs://``)."""
    return uri.strip().lower().startswith(SQS_SCHEME)


def parse_queue_uri(uri: str) -> str:
    """The queue URL of ``sqs://QUEUE_URL``: ``sqs://https://sqs.REGION.amazonaws.com/ACCOUNT/
    NAME``, or without the inner scheme (``https://`` is then assumed).

    Raises:
        ValueError: not ``sqs://`` or no queue named.
    """
    text = uri.strip()
    if not is_queue_uri(text):
        raise ValueError(f"expected sqs://QUEUE_URL, got {uri!r}")
    rest = text[len(SQS_SCHEME) :]
    if not rest.lower().startswith(("https://", "http://")):
        rest = f"https://{rest}"
    host_path = rest.split("://", 1)[1]
    if "/" not in host_path.strip("/"):
        raise ValueError(f"expected sqs://QUEUE_URL (https://HOST/ACCOUNT/NAME), got {uri!r}")
    return rest


@dataclass(frozen=True)
class Unreadable:
    """A message that is no destination record and no push event; ``reason`` says why."""

    reason: str


def decode_record(body: str) -> dict[str, Any] | Unreadable:
    """The push event in an SQS message body: a destination record's ``requestPayload``, or
    the body itself when it is a push event."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        return Unreadable(f"not JSON: {exc}")
    if not isinstance(document, dict):
        return Unreadable(f"not a JSON object: {type(document).__name__}")
    event: Any = document
    if "requestPayload" in document:
        event = document["requestPayload"]
    elif event_shape(document) not in PAYLOAD_SHAPES:
        return Unreadable("no requestPayload (not an on-failure destination record)")
    shape = event_shape(event)
    if shape not in PAYLOAD_SHAPES or not isinstance(event, dict):
        return Unreadable(f"requestPayload is no awslogs or Kinesis event (shape {shape})")
    return event


@dataclass
class FailureQueueReport:
    """What a failure-queue replay did (or, dry, would do). Counts are events unless named."""

    source: str
    dry_run: bool = False
    messages_received: int = 0
    messages_deleted: int = 0
    messages_unreadable: int = 0
    #: Messages left for a later run: their batch did not settle, or the delete failed.
    messages_kept: int = 0
    payloads: int = 0
    events_in: int = 0
    events_delivered: int = 0
    events_backsplashed: int = 0
    events_dropped: int = 0
    #: Dry run: events the payloads hold (unprocessable payloads count one each).
    events_counted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates_possible: int = 0
    interrupted: bool = False
    halted: str | None = None
    fatal: str | None = None
    backsplash_error: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    def take_ledger(self, summary: Mapping[str, Any]) -> None:
        """Copy a ledger summary's figures."""
        self.events_in = summary["events_in"]
        self.events_delivered = summary["acknowledged"]
        self.events_backsplashed = summary["backsplashed"]
        self.dropped = dict(summary["dropped"])
        self.events_dropped = sum(self.dropped.values())
        self.duplicates_possible = summary.get("duplicates_possible", 0)

    def outcome(self) -> RunOutcome:
        """The facts that decide the exit status."""
        summary = {"backsplashed": self.events_backsplashed, "dropped": self.dropped}
        return RunOutcome(
            backsplash_failed=self.backsplash_error is not None,
            hec_fatal=self.fatal is not None,
            error=self.error is not None,
            interrupted=self.interrupted,
            incomplete=incomplete(summary),
            partial_failure=bool(self.messages_unreadable or self.messages_kept),
        )

    @property
    def exit_status(self) -> ExitStatus:
        """The exit status (:func:`forwarder.status.status_for`)."""
        return status_for(self.outcome())

    def to_dict(self) -> dict[str, Any]:
        """Every figure, plus ``exit_status`` (``--json``)."""
        document = asdict(self)
        document["kind"] = "failure_queue"
        document["exit_status"] = int(self.exit_status)
        return document


def format_failure_queue_summary(report: FailureQueueReport) -> str:
    """The summary printed at the end, in the replay summary's style."""
    verb = "would replay" if report.dry_run else "replayed"
    lines = [
        f"forwarder replay {report.source}: {verb} in {report.elapsed_s:.1f}s",
        f"  messages: {report.messages_received} received, {report.messages_deleted} deleted, "
        f"{report.messages_unreadable} unreadable (left in the queue), "
        f"{report.messages_kept} kept for a later run",
    ]
    if report.dry_run:
        lines.append(f"  events: {report.events_counted} in {report.payloads} payloads")
    else:
        lines.append(
            f"  events: {report.events_in} in, {report.events_delivered} delivered, "
            f"{report.events_backsplashed} backsplashed, {report.events_dropped} dropped"
            + (f" {report.dropped}" if report.dropped else "")
        )
    for note, value in (
        ("interrupted", "a stop signal ended the run" if report.interrupted else None),
        ("halted", report.halted),
        ("HEC refused", report.fatal),
        ("backsplash failed", report.backsplash_error),
        ("error", report.error),
    ):
        if value:
            lines.append(f"  {note}: {value}")
    lines.append(f"  status: {int(report.exit_status)} ({report.exit_status.name})")
    return "\n".join(lines) + "\n"


class _Visibility:
    """Keeps messages invisible while their events are in flight: every third of the
    visibility timeout, a thread extends it (ChangeMessageVisibilityBatch)."""

    def __init__(self, sqs: Any, queue_url: str, timeout_s: int, log: Any) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._timeout_s = timeout_s
        self._log = log

    @contextmanager
    def held(self, messages: Sequence[Mapping[str, Any]]) -> Iterator[None]:
        done = threading.Event()
        thread = threading.Thread(
            target=self._extend, args=(messages, done), name="failure-queue-visibility", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _extend(self, messages: Sequence[Mapping[str, Any]], done: threading.Event) -> None:
        while not done.wait(self._timeout_s / 3):
            try:
                change_visibility(self._sqs, self._queue_url, messages, self._timeout_s)
            except Exception as exc:  # noqa: BLE001 - the message may come back: a duplicate
                self._log.warning("failure_record_visibility_failed", reason=str(exc))


def change_visibility(
    sqs: Any, queue_url: str, messages: Sequence[Mapping[str, Any]], timeout_s: int
) -> None:
    """Set the visibility timeout of ``messages`` (ten per call)."""
    for start in range(0, len(messages), BATCH_MESSAGES):
        chunk = messages[start : start + BATCH_MESSAGES]
        sqs.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout_s}
                for i, m in enumerate(chunk)
            ],
        )


@dataclass
class FailureQueueReplay:
    """One run over the queue (see the module notes).

    Args:
        settings: transform options and HEC settings (backsplash records' redeliverers).
        queue_url: the queue.
        sqs: a boto3 SQS client.
        delivery: the deliverer (its ledger counts the run); None for a dry run.
        backsplash: where unprocessable payloads go (and the redeliverers' ``replay-failed/``).
        dry_run: count only; delete nothing.
        stop: set to stop after the batch in flight.
        deadline: a time on ``clock`` by which the run ends (the deliverer gives up there).
        halt: asked after each batch; a reason stops the run (the drain's sign of trouble).
    """

    settings: Settings
    queue_url: str
    sqs: Any
    delivery: Delivery | None
    backsplash: BacksplashWriter
    dry_run: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    deadline: float | None = None
    halt: Callable[[], str | None] | None = None
    clock: Callable[[], float] = time.monotonic
    wait_s: int = WAIT_S
    visibility_timeout_s: int = VISIBILITY_TIMEOUT_S
    log: Any = _log

    def run(self) -> FailureQueueReport:
        """Read the queue until it is empty (or a stop, the deadline or a halt)."""
        started = self.clock()
        report = FailureQueueReport(f"{SQS_SCHEME}{self.queue_url}", dry_run=self.dry_run)
        log = self.log.bind(queue_url=self.queue_url)
        held: list[Mapping[str, Any]] = []  # dry run: made visible again at the end
        seen_unreadable: set[str] = set()
        redeliverers: Redeliverers | None = None
        intake: Intake | None = None
        if self.delivery is not None:
            delivery = self.delivery
            redeliverers = Redeliverers(
                self.settings,
                self.backsplash,
                log=log,
                prepare=lambda found: found.use_ledger(delivery.ledger),
            )
            intake = Intake(self.settings, delivery, self.backsplash, redeliverers.get, log=log)
        try:
            while True:
                if self.stop.is_set():
                    report.interrupted = True
                    break
                if self.deadline is not None and self.clock() >= self.deadline:
                    report.halted = "deadline"
                    break
                messages = self._receive()
                if not messages:
                    break
                report.messages_received += len(messages)
                readable: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
                for message in messages:
                    decoded = decode_record(str(message.get("Body", "")))
                    if isinstance(decoded, Unreadable):
                        self._unreadable(message, decoded, seen_unreadable, report, log)
                        if self.dry_run:
                            held.append(message)
                    else:
                        readable.append((message, decoded))
                if self.dry_run:
                    for message, event in readable:
                        held.append(message)
                        self._count(event, report)
                    continue
                if (
                    readable
                    and intake is not None
                    and redeliverers is not None
                    and not self._deliver(readable, intake, redeliverers, report, log)
                ):
                    break
                reason = self.halt() if self.halt is not None else None
                if reason is not None:
                    report.halted = reason
                    break
        except Exception as exc:  # the run failed; what is not deleted comes back
            report.error = f"{type(exc).__name__}: {exc}"
            log.exception("failure_queue_failed", reason=report.error)
        finally:
            if held:
                try:
                    change_visibility(self.sqs, self.queue_url, held, 0)
                except Exception as exc:  # noqa: BLE001 - they come back after the timeout
                    log.warning("failure_record_visibility_failed", reason=str(exc))
            if self.delivery is not None:
                report.take_ledger(self.delivery.ledger.summary())
            report.elapsed_s = self.clock() - started
        log.info(
            "failure_queue_replayed",
            dry_run=self.dry_run,
            messages_received=report.messages_received,
            messages_deleted=report.messages_deleted,
            messages_unreadable=report.messages_unreadable,
            messages_kept=report.messages_kept,
            events_in=report.events_in,
            events_delivered=report.events_delivered,
            events_backsplashed=report.events_backsplashed,
            events_counted=report.events_counted,
        )
        return report

    def _receive(self) -> list[Mapping[str, Any]]:
        answer = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=BATCH_MESSAGES,
            WaitTimeSeconds=self.wait_s,
            VisibilityTimeout=self.visibility_timeout_s,
        )
        return list(answer.get("Messages", []))

    def _unreadable(
        self,
        message: Mapping[str, Any],
        decoded: Unreadable,
        seen: set[str],
        report: FailureQueueReport,
        log: Any,
    ) -> None:
        message_id = str(message.get("MessageId"))
        if message_id in seen:
            return
        seen.add(message_id)
        report.messages_unreadable += 1
        log.error(
            "failure_record_unreadable",
            message_id=message_id,
            reason=decoded.reason,
            action="left in the queue",
        )

    def _count(self, event: dict[str, Any], report: FailureQueueReport) -> None:
        """Dry run: the events ``event``'s payloads hold (nothing is sent)."""
        shape = event_shape(event)
        assert shape is not None
        for data in event_payloads(event, shape):
            report.payloads += 1
            try:
                batch = transform_payload(_b64decode(data), self.settings.transform)
            except (TransformError, ValueError):
                report.events_counted += 1  # stored under processing-failed/ when sent
                continue
            report.events_counted += len(batch.events)

    def _deliver(
        self,
        readable: Sequence[tuple[Mapping[str, Any], dict[str, Any]]],
        intake: Intake,
        redeliverers: Redeliverers,
        report: FailureQueueReport,
        log: Any,
    ) -> bool:
        """Deliver a batch's events, flush, delete its messages once settled; False: stop."""
        delivery = intake.deliverer
        messages = [message for message, _ in readable]
        events: dict[int, int] = {}  # by message: what a failed delete would send again
        try:
            with _Visibility(self.sqs, self.queue_url, self.visibility_timeout_s, log).held(
                messages
            ):
                ledger = delivery.ledger
                for message, event in readable:
                    before = ledger.events_in - ledger.dropped_total
                    report.payloads += deliver_event(intake, event)
                    events[id(message)] = ledger.events_in - ledger.dropped_total - before
                for deliverer in (delivery, *redeliverers.all()):
                    deliverer.flush(self.deadline)
        except BacksplashError as exc:
            report.backsplash_error = str(exc)
            report.messages_kept += len(messages)
            log.critical("failure_queue_backsplash_failed", reason=str(exc), messages=len(messages))
            return False
        fatal = delivery.fatal
        if fatal is not None and report.fatal is None:
            report.fatal = str(fatal)
        pending = delivery.pending_acks + sum(d.pending_acks for d in redeliverers.all())
        summary = delivery.ledger.summary()
        if pending or not summary["balanced"]:
            report.messages_kept += len(messages)
            report.error = (
                f"after the flush {summary['in_flight']} events are in flight and "
                f"{pending} requests await their ack"
            )
            log.critical("failure_queue_unsettled", messages=len(messages), reason=report.error)
            return False
        self._delete(messages, events, delivery.ledger, report, log)
        return True

    def _delete(
        self,
        messages: Sequence[Mapping[str, Any]],
        events: Mapping[int, int],
        ledger: Ledger,
        report: FailureQueueReport,
        log: Any,
    ) -> None:
        """Delete settled messages. One that stays (a failed entry, or SQS down) comes back
        and is delivered again: its events count as possible duplicates."""
        for start in range(0, len(messages), BATCH_MESSAGES):
            chunk = messages[start : start + BATCH_MESSAGES]
            try:
                answer = self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(chunk)
                    ],
                )
            except (BotoCoreError, ClientError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                answer = {"Failed": [{"Id": str(i), "Message": reason} for i in range(len(chunk))]}
            failed = answer.get("Failed", [])
            report.messages_deleted += len(chunk) - len(failed)
            report.messages_kept += len(failed)
            for entry in failed:
                message = chunk[int(entry["Id"])]
                again = events.get(id(message), 0)
                ledger.add(duplicates_possible=again)
                log.error(
                    "failure_record_delete_failed",
                    message_id=message.get("MessageId"),
                    events=again,
                    reason=entry.get("Message") or entry.get("Code"),
                    action="it comes back and is delivered again (possible duplicates)",
                )


def _b64decode(data: str | None) -> bytes:
    if data is None:
        raise ValueError("no base64 data")
    return base64.b64decode(data, validate=True)


def ledger_trouble(delivery: Delivery) -> str | None:
    """A sign of trouble in the deliverer's ledger (the drain stops there): a retry (busy,
    5xx, connection error, timeout) or a re-send after an ack expired."""
    ledger = delivery.ledger
    if ledger.retries:
        return "HEC asked for a retry (busy, server error or no answer)"
    if ledger.resends:
        return "an ack timed out (batch re-sent)"
    return None


def replay_failure_queue(
    settings: Settings,
    queue_url: str,
    *,
    sqs: Any,
    backsplash: BacksplashWriter,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    stop_at_trouble: bool = False,
    log: Any = _log,
) -> FailureQueueReport:
    """One run over the queue with a deliverer of its own (none for a dry run), built from
    ``settings`` and released at the end.

    Args:
        settings: HEC, delivery and transform settings.
        queue_url: the queue.
        sqs: a boto3 SQS client.
        backsplash: where what HEC does not take goes (``splunk-failed/``).
        dry_run: count only.
        stop: set to stop after the batch in flight.
        deadline: a time on the monotonic clock by which the run ends.
        stop_at_trouble: end the run at the first retry or ack re-send (the drain).
        log: a structlog logger.
    """
    delivery = None if dry_run else build_delivery(settings, backsplash=backsplash, log=log)
    if delivery is not None and deadline is not None:
        delivery.set_deadline(deadline)
    halt = None
    if delivery is not None and stop_at_trouble:
        found = delivery

        def halt() -> str | None:
            return ledger_trouble(found)

    try:
        return FailureQueueReplay(
            settings,
            queue_url,
            sqs,
            delivery,
            backsplash,
            dry_run=dry_run,
            stop=stop if stop is not None else threading.Event(),
            deadline=deadline,
            halt=halt,
            log=log,
        ).run()
    finally:
        if delivery is not None:
            delivery.release()
