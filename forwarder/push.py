"""The push Lambda (``forwarder.push.handler``): events from AWS, delivered to HEC with acks.

The event is recognised by its shape:

- a CloudWatch Logs subscription: ``{"awslogs": {"data": base64(gzip JSON)}}``;
- a Kinesis event source batch: ``{"Records": [{"eventSource": "aws:kinesis", "kinesis":
  {"data", "sequenceNumber"}}]}``, each record a gzip CloudWatch Logs payload;
- an SQS batch of S3 event notifications (plain, or wrapped in an SNS notification):
  ``{"Records": [{"eventSource": "aws:sqs", "messageId", "body"}]}``. The ``s3:TestEvent`` is
  ignored. Named objects are flow-log files (gzip or plain text, a header line naming the
  fields) read line by line. Backsplash objects (``splunk-failed/``, ``processing-failed/``)
  are not re-sent here: they are counted, logged (``object_skipped``) and left for
  ``forwarder replay``.

Delivery is bounded by the invocation's remaining time minus a safety margin, read once when
the invocation starts and given to the deliverer as its deadline (:meth:`Deliverer.set_deadline`):
sends, retries of a busy HEC (however long ``SPLUNK_HEC_RETRY_DURATION``) and ack waits stop
there, and what is not acknowledged by then goes to the backsplash bucket (``Splunk.Deadline``),
so the invocation answers, with its ledger, before Lambda's timeout. Records
the transform refuses go to the backsplash under ``processing-failed/``. Kinesis and SQS batches
answer ``{"batchItemFailures": [{"itemIdentifier": ...}]}`` for items not handled (an S3
object that cannot be read, a body that is no S3 notification, items not started before the
time ran short) so Lambda retries only those. If the backsplash write itself fails, the handler
raises: AWS retries the whole invocation, nothing is lost. The ledger is logged per invocation
(``push_invocation_summarized``).

Settings, the deliverer and boto3 clients are built once per container, on first use.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.loader import load_settings, require_hec, warnings_for, with_token
from config.logs import configure_logging, register_secret
from config.settings import Settings
from forwarder.backsplash import BacksplashWriter, backsplash_from_settings
from forwarder.delivery import Deliverer
from forwarder.errors import BacksplashError
from forwarder.ledger import Ledger
from forwarder.sources import (
    S3Object,
    object_chunks,
    parse_s3_notification,
    store_unprocessable,
)
from transforms.errors import TransformError
from transforms.pipeline import EncodedBatch, transform_lines, transform_payload

Shape = Literal["awslogs", "kinesis", "sqs"]

#: Kept free at the end of the invocation for backsplash writes and the answer: a fifth of the
#: remaining time, at least SAFETY_MARGIN_MIN_S and at most SAFETY_MARGIN_MAX_S seconds. An item
#: is started only while more than twice the margin remains.
SAFETY_MARGIN_MAX_S: Final = 10.0
SAFETY_MARGIN_FRACTION: Final = 0.2
SAFETY_MARGIN_MIN_S: Final = 0.25
#: Flow-log lines per HEC submit when reading an S3 object.
CHUNK_LINES: Final = 5000

_log = structlog.get_logger("forwarder.push")


@dataclass
class _Container:
    """What one Lambda container builds once and keeps."""

    settings: Settings
    backsplash: BacksplashWriter
    client_factory: Callable[[str], Any]
    deliverer: Deliverer | None = None
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.client_factory(service)
        return self.clients[service]

    def get_deliverer(self) -> Deliverer:
        if self.deliverer is None:
            self.deliverer = Deliverer(self.settings, backsplash=self.backsplash, log=_log)
        return self.deliverer


_container: _Container | None = None
_container_lock = threading.Lock()


def _boto_client(service: str) -> Any:
    import boto3  # noqa: PLC0415 - built on first use, never at import
    from botocore.config import Config  # noqa: PLC0415

    return boto3.client(service, config=Config(retries={"mode": "standard"}))  # type: ignore[call-overload]


def configure(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    client_factory: Callable[[str], Any] = _boto_client,
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
    if settings is None:
        settings = load_settings(os.environ if environ is None else environ)
    if not settings.hec.token and settings.hec.token_secret_arn:
        from forwarder.secrets import get_hec_token  # noqa: PLC0415

        token = get_hec_token(settings.hec.token_secret_arn, client_factory("secretsmanager"))
        settings = with_token(settings, token)
    settings = require_hec(settings)
    register_secret(settings.hec.token)
    configure_logging(settings.log)
    for warning in warnings_for(settings):
        _log.warning("settings_warning", problem=warning)
    if backsplash is None:
        s3 = client_factory("s3") if settings.backsplash.bucket else None
        backsplash = backsplash_from_settings(settings.backsplash, s3_client=s3)
    _container = _Container(settings, backsplash, client_factory)


def reset() -> None:
    """Forget the container's state (tests)."""
    global _container  # noqa: PLW0603
    _container = None


def _get_container() -> _Container:
    with _container_lock:
        if _container is None:
            configure()
        assert _container is not None
        return _container


def shape_of(event: Any) -> Shape | None:
    """Which kind of event this is, or None."""
    if not isinstance(event, dict):
        return None
    awslogs = event.get("awslogs")
    if isinstance(awslogs, dict) and isinstance(awslogs.get("data"), str):
        return "awslogs"
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        source = records[0].get("eventSource") or records[0].get("EventSource")
        if source == "aws:kinesis" and isinstance(records[0].get("kinesis"), dict):
            return "kinesis"
        if source == "aws:sqs" and "body" in records[0]:
            return "sqs"
    return None


class _Invocation:
    """One invocation: its ledger, deadline and per-item outcome."""

    def __init__(self, container: _Container, context: Any) -> None:
        self.container = container
        self.deliverer = container.get_deliverer()
        self.deliverer.ledger = Ledger()  # one ledger per invocation (DESIGN.md §5)
        self.settings = container.settings
        self._context = context
        self._clock = time.monotonic
        self.objects_skipped = 0
        self.messages_ignored = 0
        self.deadline = self._deadline()
        self.deliverer.set_deadline(self.deadline)  # every submit and the flush stop there

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

    def deliver(self, batch: EncodedBatch) -> None:
        if batch.is_control:
            self.deliverer.ledger.drop("control_message")
        elif batch.events:
            self.deliverer.submit(batch.events, batch.raw_target)

    def payload(self, data: bytes) -> None:
        """A CloudWatch Logs payload (awslogs, Kinesis record)."""
        try:
            batch = transform_payload(data, self.settings.transform)
        except TransformError as exc:
            self.unprocessable(data, exc)
            return
        self.deliver(batch)

    def unprocessable(self, data: bytes, exc: Exception) -> None:
        key = store_unprocessable(
            self.container.backsplash,
            data,
            error_code="Transform.DecodeError",
            message=f"{type(exc).__name__}: {exc}",
            endpoint=self.settings.hec.endpoint,
        )
        self.deliverer.ledger.add(events_in=1, backsplashed=1, backsplash_objects=1)
        _log.error("record_unprocessable", key=key, reason=f"{type(exc).__name__}: {exc}")

    def s3_object(self, obj: S3Object) -> None:
        """Deliver one object's lines.

        Raises:
            ClientError, BotoCoreError, OSError: the object cannot be read.
        """
        if obj.is_backsplash:
            self.objects_skipped += 1
            _log.warning(
                "object_skipped",
                bucket=obj.bucket,
                key=obj.key,
                reason="backsplash object: replay it with forwarder replay",
            )
            return
        s3 = self.container.client("s3")
        for lines, fields in object_chunks(s3, obj, CHUNK_LINES):
            try:
                batch = transform_lines(
                    lines,
                    log_group=obj.bucket,
                    log_stream=obj.key,
                    origin="s3",
                    options=self.settings.transform,
                    flow_fields=fields,
                )
            except TransformError as exc:
                self.unprocessable("\n".join(lines).encode(), exc)
                continue
            self.deliver(batch)


def _decode_b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point (``forwarder.push.handler``).

    Returns:
        ``{"batchItemFailures": [...]}`` for Kinesis and SQS; the ledger summary otherwise.

    Raises:
        BacksplashError: events could be neither delivered nor stored (AWS retries).
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
            invocation.deliverer.flush(invocation.deadline)
        except BacksplashError:
            # The deliverer's bookkeeping is in doubt: the next invocation builds a new one.
            container.deliverer = None
            invocation.deliverer.ledger.log_summary(_log, shape=shape, failed=True)
            raise
        finally:
            invocation.deliverer.set_deadline(None)  # the container outlives the invocation
        summary = invocation.deliverer.ledger.summary()
        method = _log.info if summary["balanced"] and not failures else _log.warning
        method(
            "push_invocation_summarized",
            shape=shape,
            items=len(event.get("Records", ())) or 1,
            item_failures=len(failures),
            objects_skipped=invocation.objects_skipped,
            messages_ignored=invocation.messages_ignored,
            **summary,
        )
        if shape == "awslogs":
            return {"ledger": summary}
        return {"batchItemFailures": [{"itemIdentifier": item} for item in failures]}
    finally:
        structlog.contextvars.unbind_contextvars("aws_request_id")


def _run(invocation: _Invocation, shape: Shape, event: dict[str, Any]) -> list[str]:
    """Submit every item; returns the identifiers of items not handled."""
    if shape == "awslogs":
        try:
            data = _decode_b64(event["awslogs"]["data"])
        except (binascii.Error, ValueError) as exc:
            invocation.unprocessable(str(event["awslogs"]["data"]).encode(), exc)
            return []
        invocation.payload(data)
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
            try:
                data = _decode_b64(record["kinesis"]["data"])
            except (binascii.Error, ValueError, KeyError) as exc:
                invocation.unprocessable(str(record["kinesis"].get("data", "")).encode(), exc)
                continue
            invocation.payload(data)
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
        except (ClientError, BotoCoreError, OSError, EOFError) as exc:
            # Events already submitted from this object are delivered; the whole message
            # comes back and is read again (at least once).
            _log.error(
                "object_failed",
                bucket=obj.bucket,
                key=obj.key,
                message_id=message_id,
                reason=f"{type(exc).__name__}: {exc}",
            )
            return False
    return True
