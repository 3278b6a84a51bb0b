"""The push Lambda (``forwarder.push.handler``): events from AWS, delivered to HEC with acks.

The event is recognised by its shape:

- a CloudWatch Logs subscription: ``{"awslogs": {"data": base64(gzip JSON)}}``;
- a Kinesis event source batch: ``{"Records": [{"eventSource": "aws:kinesis", "kinesis":
  {"data", "sequenceNumber"}}]}``, each record a gzip CloudWatch Logs payload;
- an SQS batch of S3 event notifications (plain, or wrapped in an SNS notification):
  ``{"Records": [{"eventSource": "aws:sqs", "messageId", "body"}]}``. The ``s3:TestEvent`` is
  ignored. Named objects are flow-log files (gzip or plain text, a header line naming the
  fields) read line by line, or backsplash objects (below).

Backsplash objects (DESIGN.md §6), recognised by key (``splunk-failed/``,
``processing-failed/``, ``replay-failed/`` anywhere in it) or by content (JSON records with a
``rawData`` string), are re-delivered record by record, streamed
(:mod:`forwarder.intake.objects`, with the decoder ``forwarder replay`` uses):
``splunk-failed`` records send their HEC payload as it was (event JSON to the event endpoint;
raw lines to the raw endpoint with the ``source``, ``sourcetype``, ``index`` and ``host`` our
records keep), ``processing-failed`` records go through the transform first. They go through
deliverers of their own, one per endpoint (the configured HEC with the endpoint the record
needs, as replay does), sharing the invocation's ledger and deadline, whose backsplash writes
under ``replay-failed/`` (``replayAttempts: 1``), never ``splunk-failed/``. Objects under
``replay-failed/`` are not re-delivered here (loop guard: a notification on the backsplash
bucket would otherwise send a failing event round forever); they are counted, logged
(``object_skipped``, with the ``forwarder replay`` command to run) and left in place. A
corrupt record is dropped (ledger reason ``backsplash_record_corrupt``) and logged with its
key and line number. The push Lambda only reads: every object stays where it is, so replay can
still read it.

Delivery is bounded by the invocation's remaining time minus a safety margin, read once when
the invocation starts and given to the deliverer as its deadline (:meth:`Deliverer.set_deadline`):
sends, retries of a busy HEC (however long ``SPLUNK_HEC_RETRY_DURATION``) and ack waits stop
there, and what is not acknowledged by then goes to the backsplash bucket (``Splunk.Deadline``),
so the invocation answers, with its ledger, before Lambda's timeout. Records
the transform refuses go to the backsplash under ``processing-failed/``. Kinesis and SQS batches
answer ``{"batchItemFailures": [{"itemIdentifier": ...}]}`` for items not handled (an S3
object that cannot be read, a body that is no S3 notification, items not started before the
time ran short) so Lambda retries only those. An object that cannot be read or decoded (S3
refused it, a corrupt or truncated gzip stream, a header naming a field twice) fails its own
message only: events already submitted from it are delivered, the message comes back (and,
after the queue's ``maxReceiveCount``, goes to its dead-letter queue); the object stays where
it is. Objects are read as streams in chunks of at most ``CHUNK_LINES`` lines and
``MAX_CHUNK_CHARS`` characters (:mod:`forwarder.intake.lines`); a line longer than its
``MAX_LINE_BYTES`` is skipped as it streams and counted dropped (``line_too_long``, logged
``line_dropped``), a line that is not usable JSON in a backsplash object is one corrupt
record. If the backsplash write itself fails, the handler raises: AWS retries the whole
invocation, nothing is lost. The ledger is logged per invocation (``push_invocation_summarized``).

Ledger check: after the final flush the ledger must balance and no ack may be pending. If not
(a bug: events neither acknowledged, backsplashed nor counted as dropped), the handler does not
answer at all: it raises ``LedgerUnbalancedError``, so AWS retries the whole invocation. That
is preferred over naming every item in ``batchItemFailures`` because it also holds for awslogs
events (which have no item answer) and for event source mappings without
``ReportBatchItemFailures`` (which would take any answer as success). On any exception but
``BacksplashError`` (which already means the deliverer could not store), the container's
deliverer is aborted (what it still holds is backsplashed, ``Splunk.Shutdown``) and dropped, so
nothing of a failed invocation stays behind to be counted, or lost, in a later one.

Settings, the deliverer and boto3 clients are built once per container, on first use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import structlog

from config.loader import load_settings, require_hec, warnings_for
from config.logs import configure_logging, register_secret
from config.settings import Settings
from forwarder import aws
from forwarder.backsplash.codec import CorruptLine
from forwarder.backsplash.writers import BacksplashWriter, backsplash_from_settings
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.destinations import Delivery, build_delivery
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.intake.dispatch import Intake, Redeliverers
from forwarder.intake.events import deliver_encoded
from forwarder.intake.lines import LongLine
from forwarder.intake.notifications import S3Object, parse_s3_notification
from forwarder.intake.objects import (
    OBJECT_READ_ERRORS,
    OpenedObject,
    SkippedObject,
    backsplash_items,
    object_chunks,
    open_object,
)
from forwarder.secrets import resolve_token
from transforms.options import Endpoint
from transforms.sniff import event_shape

Shape = Literal["awslogs", "kinesis", "sqs"]
_T = TypeVar("_T")

#: Kept free at the end of the invocation for backsplash writes and the answer: a fifth of the
#: remaining time, at least SAFETY_MARGIN_MIN_S and at most SAFETY_MARGIN_MAX_S seconds. An item
#: is started only while more than twice the margin remains.
SAFETY_MARGIN_MAX_S: Final = 10.0
SAFETY_MARGIN_FRACTION: Final = 0.2
SAFETY_MARGIN_MIN_S: Final = 0.25
#: Flow-log lines per HEC submit when reading an S3 object (and at most
#: ``forwarder.intake.lines.MAX_CHUNK_CHARS`` characters, so long lines cannot make a chunk
#: exhaust the Lambda's memory).
CHUNK_LINES: Final = 5000

_log = structlog.get_logger("forwarder.push")


class ObjectReadError(Exception):
    """An S3 object cannot be read or decoded; ``__cause__`` says why."""

    def __init__(self, obj: S3Object, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.obj = obj


class LedgerUnbalancedError(RuntimeError):
    """After the flush, events are neither acknowledged, backsplashed nor dropped (a bug):
    the invocation fails so that AWS retries it rather than losing them."""


@dataclass
class _Container:
    """What one Lambda container builds once and keeps."""

    settings: Settings
    backsplash: BacksplashWriter
    client_factory: aws.ClientFactory
    deliverer: Delivery | None = None
    #: Deliverers for re-delivered backsplash records, by endpoint and destination (failures:
    #: replay-failed/).
    redeliverers: Redeliverers = field(init=False)
    clients: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redeliverers = Redeliverers(self.settings, self.backsplash, log=_log)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.client_factory(service)
        return self.clients[service]

    def get_deliverer(self) -> Delivery:
        if self.deliverer is None:
            self.deliverer = build_delivery(self.settings, backsplash=self.backsplash, log=_log)
        return self.deliverer

    def forget_deliverers(self) -> None:
        """Drop every deliverer (their bookkeeping is in doubt); the next invocation builds
        new ones. Each is released first: a request on the wire is cancelled, its I/O thread
        stopped and its session closed, so a container that fails many invocations does not
        pile up threads and sockets."""
        dropped = [self.deliverer, *self.redeliverers.clear()]
        self.deliverer = None
        for deliverer in dropped:
            if deliverer is not None:
                deliverer.release()


_container: _Container | None = None
_container_lock = threading.Lock()


def configure(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    client_factory: aws.ClientFactory = aws.client,
    backsplash: BacksplashWriter | None = None,
) -> None:
    """Build (or rebuild) the container's state; the handler calls it on first use.

    Args:
        settings: ready settings (tests); else loaded from ``environ`` (``os.environ``).
        environ: the environment to load from.
        client_factory: boto3 clients by service name.
        backsplash: a ready backsplash (tests); else S3 from settings (never a spool here:
            a Lambda fails its invocation instead, so AWS retries it).
    """
    global _container  # noqa: PLW0603 - one per Lambda container, by design
    if _container is not None:
        _container.forget_deliverers()  # rebuilt: the old deliverers are released, not leaked
    if settings is None:
        settings = load_settings(os.environ if environ is None else environ)
    settings = require_hec(resolve_token(settings, client_factory))
    register_secret(settings.hec.token)
    configure_logging(settings.log)
    for warning in warnings_for(settings):
        _log.warning("settings_warning", problem=warning)
    if backsplash is None:
        s3 = client_factory("s3") if settings.backsplash.bucket else None
        backsplash = backsplash_from_settings(settings.backsplash, s3_client=s3)
    _container = _Container(settings, backsplash, client_factory)


def reset() -> None:
    """Forget the container's state (tests); its deliverers are released."""
    global _container  # noqa: PLW0603
    if _container is not None:
        _container.forget_deliverers()
    _container = None


def _get_container() -> _Container:
    with _container_lock:
        if _container is None:
            configure()
        assert _container is not None
        return _container


def shape_of(event: Any) -> Shape | None:
    """Which of the push Lambda's events this is (:func:`transforms.sniff.event_shape`, the
    sniffer ``forwarder forward`` uses too), or None (a Firehose event is not one of them)."""
    shape = event_shape(event)
    return None if shape == "firehose" else shape


class _Invocation:
    """One invocation: its ledger, deadline and per-item outcome."""

    def __init__(self, container: _Container, context: Any) -> None:
        self.container = container
        self.deliverer = container.get_deliverer()
        self.deliverer.use_ledger(Ledger())  # one ledger per invocation (DESIGN.md §5)
        self.settings = container.settings
        self._context = context
        self._clock = time.monotonic
        self.objects_skipped = 0
        self.objects_failed = 0
        self.objects_redelivered = 0
        self.messages_ignored = 0
        self._redeliverers: dict[tuple[Endpoint, str], Deliverer] = {}
        self.deadline = self._deadline()
        self.deliverer.set_deadline(self.deadline)  # every submit and the flush stop there
        self.intake = Intake(
            self.settings, self.deliverer, container.backsplash, self.redeliverer, log=_log
        )

    def redeliverer(self, endpoint: Endpoint, destination: str) -> Deliverer:
        """The container's deliverer for backsplash records for ``endpoint`` of
        ``destination``, on this invocation's ledger and deadline.

        Raises:
            KeyError: no such destination.
        """
        found = self._redeliverers.get((endpoint, destination))
        if found is None:
            found = self.container.redeliverers.get(endpoint, destination)
            found.use_ledger(self.deliverer.ledger)  # one ledger per invocation (thread-safe)
            found.set_deadline(self.deadline)
            self._redeliverers[(endpoint, destination)] = found
        return found

    def deliverers(self) -> list[Delivery]:
        """Every deliverer this invocation used (the main one first)."""
        return [self.deliverer, *self._redeliverers.values()]

    def remaining_s(self) -> float | None:
        getter = getattr(self._context, "get_remaining_time_in_millis", None)
        if getter is None:
            return None
        return float(getter()) / 1000.0

    def margin_s(self, remaining: float) -> float:
        return min(
            SAFETY_MARGIN_MAX_S, max(remaining * SAFETY_MARGIN_FRACTION, SAFETY_MARGIN_MIN_S)
        )

    def _deadline(self) -> float | None:
        """Clock time by which delivery must end (None: the context has no clock)."""
        remaining = self.remaining_s()
        if remaining is None:
            return None
        return self._clock() + max(remaining - self.margin_s(remaining), 0.0)

    def time_short(self) -> bool:
        """Too little time left to start another item (kept for a retry instead)."""
        remaining = self.remaining_s()
        return remaining is not None and remaining <= 2 * self.margin_s(remaining)

    def s3_object(self, obj: S3Object) -> None:
        """Deliver one object's lines, or re-deliver its backsplash records.

        Raises:
            ObjectReadError: the object cannot be read or decoded (events of it read before
                the error are submitted).
            BacksplashError: a backsplash write failed.
        """
        s3 = self.container.client("s3")
        try:
            opened = open_object(s3, obj)
        except OBJECT_READ_ERRORS as exc:
            raise ObjectReadError(obj, exc) from exc
        if isinstance(opened, SkippedObject):
            self.objects_skipped += 1
            _log.warning("object_skipped", bucket=obj.bucket, key=obj.key, reason=opened.reason)
            return
        if opened.backsplash:
            try:
                self.backsplash_object(obj, opened)
            finally:
                opened.body.close()
            return

        def long_line(item: LongLine) -> None:
            self.intake.dropped_line(obj.bucket, obj.key, item.line, item.size)

        self.text_object(obj, object_chunks(opened.body, CHUNK_LINES, on_long_line=long_line))

    def text_object(
        self, obj: S3Object, chunks: Iterator[tuple[list[str], tuple[str, ...] | None]]
    ) -> None:
        """Deliver a text object's lines (flow logs), chunk by chunk. A line too long to read
        was counted dropped (``line_too_long``) while the chunks streamed.

        Raises:
            ObjectReadError: the object cannot be read or decoded.
        """
        for lines, fields in _reading(obj, chunks):
            self.intake.lines(
                lines, log_group=obj.bucket, log_stream=obj.key, origin="s3", flow_fields=fields
            )

    def backsplash_object(self, obj: S3Object, opened: OpenedObject) -> None:
        """Re-deliver a backsplash object's records, streamed (see the module docstring).

        Raises:
            ObjectReadError: S3 broke off the read, or the gzip stream is broken or truncated
                (records before that point are submitted; the message comes back).
            BacksplashError: a backsplash write failed.
        """
        kind = opened.kind
        _log.info("backsplash_object_redelivering", bucket=obj.bucket, key=obj.key, kind=kind)
        records = 0
        for item in _reading(obj, backsplash_items(opened, self.settings.transform)):
            if isinstance(item, CorruptLine):
                self.intake.corrupt_record(obj.bucket, obj.key, item.line, item.reason)
                continue
            records += 1
            self.intake.backsplash_record(item[1])
        self.objects_redelivered += 1
        _log.info(
            "backsplash_object_submitted",
            bucket=obj.bucket,
            key=obj.key,
            kind=kind,
            records=records,
        )


def _reading(obj: S3Object, items: Iterator[_T]) -> Iterator[_T]:
    """``items``, read from ``obj``: a read or decode error becomes :class:`ObjectReadError`
    (an error of the caller's own work on an item is not wrapped).

    Raises:
        ObjectReadError: the object cannot be read or decoded.
    """
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except OBJECT_READ_ERRORS as exc:
            raise ObjectReadError(obj, exc) from exc
        yield item


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point (``forwarder.push.handler``).

    Returns:
        ``{"batchItemFailures": [...]}`` for Kinesis and SQS; the ledger summary otherwise.

    Raises:
        BacksplashError: events could be neither delivered nor stored (AWS retries).
        LedgerUnbalancedError: after the flush, events are unaccounted for (AWS retries).
        ValueError: the event has no shape this handler knows.
    """
    container = _get_container()
    request_id = getattr(context, "aws_request_id", None)
    structlog.contextvars.bind_contextvars(aws_request_id=request_id)
    try:
        shape = shape_of(event)
        if shape is None:
            _log.error(
                "event_unrecognized", keys=sorted(event)[:10] if isinstance(event, dict) else None
            )
            raise ValueError("not a CloudWatch Logs, Kinesis or SQS event")
        invocation = _Invocation(container, context)
        try:
            failures = _run(invocation, shape, event)
            for deliverer in invocation.deliverers():
                deliverer.flush(invocation.deadline)
            _check_settled(invocation.deliverers())
        except BacksplashError:
            # The deliverers' bookkeeping is in doubt: the next invocation builds new ones.
            container.forget_deliverers()
            invocation.deliverer.ledger.log_summary(_log, shape=shape, failed=True)
            raise
        except Exception as exc:
            # AWS retries the invocation: nothing of it may stay in the container's deliverers.
            for deliverer in invocation.deliverers():
                _discard(container, deliverer, exc)
            invocation.deliverer.ledger.log_summary(_log, shape=shape, failed=True)
            raise
        finally:
            for deliverer in invocation.deliverers():
                deliverer.set_deadline(None)  # the container outlives the invocation
        summary = invocation.deliverer.ledger.summary()
        method = _log.info if summary["balanced"] and not failures else _log.warning
        method(
            "push_invocation_summarized",
            shape=shape,
            items=len(event.get("Records", ())) or 1,
            item_failures=len(failures),
            objects_skipped=invocation.objects_skipped,
            objects_failed=invocation.objects_failed,
            objects_redelivered=invocation.objects_redelivered,
            records_corrupt=invocation.intake.records_corrupt,
            messages_ignored=invocation.messages_ignored,
            **summary,
        )
        if shape == "awslogs":
            return {"ledger": summary}
        return {"batchItemFailures": [{"itemIdentifier": item} for item in failures]}
    finally:
        structlog.contextvars.unbind_contextvars("aws_request_id")


def _check_settled(deliverers: list[Delivery]) -> None:
    """After the flush: nothing pending and the (shared) ledger balanced, or
    ``LedgerUnbalancedError``."""
    pending = sum(deliverer.pending_acks for deliverer in deliverers)
    summary = deliverers[0].ledger.summary()
    if pending or not summary["balanced"]:
        _log.critical(
            "push_ledger_unbalanced",
            pending_acks=pending,
            in_flight=summary["in_flight"],
            action="failing the invocation so that AWS retries it",
        )
        raise LedgerUnbalancedError(
            f"after the flush {summary['in_flight']} events are in flight and "
            f"{pending} requests await their ack"
        )


def _discard(container: _Container, deliverer: Delivery, exc: Exception) -> None:
    """Abort ``deliverer`` (backsplash what it holds) and drop it from the container."""
    if container.deliverer is deliverer:
        container.deliverer = None
    container.redeliverers.remove(deliverer)
    deliverer.abort("Splunk.Shutdown", f"invocation failed: {type(exc).__name__}: {exc}")
    try:
        deliverer.close(summarize=False)
    except Exception as error:  # noqa: BLE001 - the original exception is the one to raise
        # The invocation fails anyway and AWS retries it: its events come again.
        _log.critical("push_discard_failed", reason=f"{type(error).__name__}: {error}")
    finally:
        deliverer.release()  # after close, a no-op; its I/O thread is stopped either way


def _run(invocation: _Invocation, shape: Shape, event: dict[str, Any]) -> list[str]:
    """Submit every item; returns the identifiers of items not handled."""
    if shape == "awslogs":
        deliver_encoded(invocation.intake, event["awslogs"]["data"])
        return []
    failures: list[str] = []
    records: list[dict[str, Any]] = event["Records"]
    for index, record in enumerate(records):
        if shape == "kinesis":
            identifier = str(record["kinesis"].get("sequenceNumber", index))
        else:
            identifier = str(record.get("messageId", index))
        if invocation.time_short():
            # Not started: Lambda hands these to a later invocation (Kinesis retries from the
            # lowest failed sequence number, so everything after it goes too).
            failures.extend(
                str(r["kinesis"].get("sequenceNumber", i))
                if shape == "kinesis"
                else str(r.get("messageId", i))
                for i, r in enumerate(records[index:], start=index)
            )
            _log.warning("items_deferred", items=len(records) - index, reason="time short")
            break
        if shape == "kinesis":
            deliver_encoded(invocation.intake, record["kinesis"].get("data"))
            continue
        if not _sqs_item(invocation, record):
            failures.append(identifier)
    return failures


def _sqs_item(invocation: _Invocation, record: dict[str, Any]) -> bool:
    """One SQS message; False when it must come back (unreadable object, not S3)."""
    message_id = record.get("messageId")
    objects = parse_s3_notification(str(record.get("body", "")))
    if objects is None:
        _log.error("message_unrecognized", message_id=message_id)
        return False
    if not objects:
        invocation.messages_ignored += 1
        _log.info("message_ignored", message_id=message_id)
        return True
    for obj in objects:
        try:
            invocation.s3_object(obj)
        except ObjectReadError as exc:
            invocation.objects_failed += 1
            # Unreadable or undecodable (corrupt gzip, bad header): this message only. Events
            # already submitted from the object are delivered; the message comes back and is
            # read again (at least once), then goes to the dead-letter queue.
            _log.error(
                "object_failed",
                bucket=obj.bucket,
                key=obj.key,
                message_id=message_id,
                reason=str(exc),
            )
            return False
    return True
