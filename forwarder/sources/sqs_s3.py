"""The ``sqs-s3`` source: S3 objects announced on an SQS queue (several daemons may share it).

Each message names S3 objects (S3 event notifications, plain or wrapped in SNS; the
``s3:TestEvent`` is deleted, nothing to do). Objects are opened by :mod:`forwarder.intake.objects`
(the push Lambda's path): text objects are read as streams, line by line (gzip or plain), in
chunks of ``chunk_lines`` (and ``MAX_CHUNK_CHARS``); a flow-log header names the fields for the
whole object. Memory does not follow an object's size or its longest line: a line longer than
``MAX_LINE_BYTES`` is skipped as it streams and handed to the daemon as a ``dropped`` record
(counted ``line_too_long``), and gzip inflating past ``MAX_OBJECT_INFLATED_BYTES`` fails the
object like a broken stream. A message is deleted only once every chunk of every object it
names is delivered; a heartbeat thread extends the visibility of every message in flight
meanwhile.

Backsplash objects (as the push Lambda does, DESIGN.md §6) are decoded as a stream with
replay's decoder: one :class:`SourceRecord` per backsplash record, carrying the decoded HEC
events (``decoded``) or, for a record that cannot be re-delivered, why (``corrupt``). The
daemon sends those through deliverers of their own whose failures go under
``replay-failed/``. Objects under ``replay-failed/`` (by key, or by their ``replayAttempts``
records) are never re-delivered automatically (loop guard): they are counted, logged
(``object_skipped``, with the ``forwarder replay`` command to run) and left in place; their
message is deleted. A broken or truncated gzip stream fails the object's message (records
before the break are delivered, the message comes back).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.daemon import SourceSettings
from forwarder.backsplash.codec import CorruptLine
from forwarder.intake.lines import LINE_TOO_LONG, LongLine
from forwarder.intake.notifications import S3Object, parse_s3_notification
from forwarder.intake.objects import (
    OBJECT_READ_ERRORS,
    OpenedObject,
    SkippedObject,
    backsplash_items,
    object_chunks,
    open_object,
)
from forwarder.sources.base import EndlessSource, SourceRecord, poll_wait
from transforms.options import TransformOptions

_log = structlog.get_logger("forwarder.sources.sqs_s3")


@dataclass(slots=True, eq=False)
class _Message:
    message_id: str
    receipt: str
    objects: list[S3Object]
    read_all: bool = False
    failed: bool = False
    sent_ms: int | None = None


@dataclass(slots=True, eq=False)
class _Cursor:
    message: _Message
    remaining: list[S3Object]
    chunks: Iterator[SourceRecord] | None = None
    current: S3Object | None = None
    counts: dict[str, int] = field(default_factory=dict)


class SqsS3Source(EndlessSource):
    """S3 objects announced on an SQS queue; several daemons may share one queue.

    Args:
        sqs: a boto3 SQS client.
        s3: a boto3 S3 client.
        settings: the ``[source]`` settings.
        stop_event: set on shutdown.
        wall_clock: epoch seconds (message age).
        transform: transform options, for the processing-failed records of backsplash
            objects (their CloudWatch payloads go through the transform when decoded).
    """

    def __init__(
        self,
        sqs: Any,
        s3: Any,
        settings: SourceSettings,
        *,
        stop_event: threading.Event | None = None,
        wall_clock: Callable[[], float] = time.time,
        transform: TransformOptions | None = None,
    ) -> None:
        assert settings.queue_url is not None
        super().__init__("sqs-s3", settings, stop_event=stop_event, wall_clock=wall_clock)
        self.queue_url = settings.queue_url
        self._sqs = sqs
        self._s3 = s3
        self._receive_wait_s: float = settings.wait_time_s
        self._transform = transform if transform is not None else TransformOptions()
        self._lock = threading.Lock()
        self._in_flight: dict[str, _Message] = {}  # by receipt handle
        self._cursor: _Cursor | None = None
        self._backlog: list[_Message] = []
        self._lag: float | None = None
        self._heartbeat: threading.Thread | None = None
        self._closing = threading.Event()
        self.visibility_extensions = 0
        self.messages_deleted = 0
        self.objects_skipped = 0
        self.objects_failed = 0
        #: Backsplash objects opened for re-delivery (their records handed to the daemon).
        self.objects_redelivered = 0

    def lag_seconds(self) -> float | None:
        """Age of the newest message received (from its ``SentTimestamp``)."""
        return self._lag

    def attach(self) -> None:
        """Check the queue and start the visibility heartbeat.

        Raises:
            ClientError, BotoCoreError: the queue cannot be read.
        """
        self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        self._heartbeat = threading.Thread(
            target=self._extend_loop, name="sqs-visibility", daemon=True
        )
        self._heartbeat.start()
        self._attached = True
        _log.info("source_attached", source="sqs-s3", queue=self.queue_url)

    # heartbeat ------------------------------------------------------------------------------

    def _extend_loop(self) -> None:
        interval = max(self._settings.visibility_timeout_s / 3.0, 0.5)
        while not self._closing.wait(interval):
            self.extend_visibility()

    def extend_visibility(self) -> int:
        """Give every message in flight another ``visibility_timeout_s``; returns how many."""
        with self._lock:
            receipts = [r for r, m in self._in_flight.items() if not m.failed]
        extended = 0
        for receipt in receipts:
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self._settings.visibility_timeout_s,
                )
                extended += 1
            except (ClientError, BotoCoreError) as exc:
                _log.warning("visibility_extension_failed", reason=str(exc))
        if extended:
            self.visibility_extensions += extended
            _log.debug("visibility_extended", messages=extended)
        return extended

    # reading --------------------------------------------------------------------------------

    def _receive(self) -> None:
        settings = self._settings
        answer = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=settings.max_messages,
            WaitTimeSeconds=math.ceil(self._receive_wait_s),
            VisibilityTimeout=settings.visibility_timeout_s,
            AttributeNames=["SentTimestamp"],
        )
        now_ms = int(self._wall_clock() * 1000)
        for raw in answer.get("Messages", []):
            objects = parse_s3_notification(raw.get("Body", ""))
            sent = raw.get("Attributes", {}).get("SentTimestamp")
            message = _Message(
                raw["MessageId"],
                raw["ReceiptHandle"],
                objects or [],
                sent_ms=int(sent) if sent else None,
            )
            if message.sent_ms is not None:
                self._lag = max(now_ms - message.sent_ms, 0) / 1000.0
            if objects is None:
                # Not an S3 notification: leave it; the queue's redrive policy moves it.
                _log.error("message_unrecognized", message_id=message.message_id)
                continue
            with self._lock:
                self._in_flight[message.receipt] = message
            if not objects:
                message.read_all = True  # s3:TestEvent or nothing created: delete on commit
                _log.info("message_ignored", message_id=message.message_id)
                continue
            self._backlog.append(message)

    def _next_cursor(self) -> _Cursor | None:
        if not self._backlog:
            self._receive()
        if not self._backlog:
            return None
        message = self._backlog.pop(0)
        return _Cursor(message, list(message.objects))

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Up to ``max_records`` chunks of lines from the objects of received messages; a
        receive long-polls ``wait_time_s``, or ``wait_s`` (rounded up to whole seconds) when
        shorter."""
        self._receive_wait_s = poll_wait(self._settings.wait_time_s, wait_s)
        out: list[SourceRecord] = []
        while len(out) < max_records and not self._stop.is_set():
            if self._cursor is None:
                self._cursor = self._next_cursor()
                if self._cursor is None:
                    break
            cursor = self._cursor
            record = self._next_chunk(cursor)
            if record is None:
                self._cursor = None
                if out:
                    break  # hand over what we have before long-polling again
                continue
            out.append(record)
        return out

    def _next_chunk(self, cursor: _Cursor) -> SourceRecord | None:
        """The next record of this message's objects (a chunk of lines, or one record of a
        backsplash object), or None when the message is read (or failed)."""
        while True:
            if cursor.chunks is None:
                if not cursor.remaining:
                    cursor.message.read_all = True
                    return None
                obj = cursor.remaining.pop(0)
                cursor.current = obj
                try:
                    opened = open_object(self._s3, obj)
                except OBJECT_READ_ERRORS as exc:
                    self._fail(cursor, exc)
                    return None
                if isinstance(opened, SkippedObject):
                    self._skip(obj, opened.reason)
                    continue
                if opened.backsplash:
                    self.objects_redelivered += 1
                    _log.info(
                        "backsplash_object_redelivering",
                        bucket=obj.bucket,
                        key=obj.key,
                        kind=opened.kind,
                    )
                    cursor.chunks = self._backsplash_records(obj, opened, cursor.message)
                else:
                    cursor.chunks = self._text_records(obj, opened, cursor.message)
            try:
                record = next(cursor.chunks)
            except StopIteration:
                cursor.chunks = None
                continue
            except OBJECT_READ_ERRORS as exc:
                cursor.chunks = None
                self._fail(cursor, exc)
                return None
            return record

    def _text_records(
        self, obj: S3Object, opened: OpenedObject, message: _Message
    ) -> Iterator[SourceRecord]:
        """Chunks of lines; a line too long to read becomes a ``dropped`` record (counted by
        the daemon as ``line_too_long``) after the chunk it was met in."""
        long_lines: list[LongLine] = []

        def dropped() -> Iterator[SourceRecord]:
            for item in long_lines:
                yield SourceRecord(
                    log_group=obj.bucket,
                    log_stream=obj.key,
                    dropped=LINE_TOO_LONG,
                    line=item.line,
                    size=item.size,
                    position=message,
                )
            long_lines.clear()

        chunks = object_chunks(
            opened.body, self._settings.chunk_lines, on_long_line=long_lines.append
        )
        for lines, fields in chunks:
            yield SourceRecord(
                lines=lines,
                log_group=obj.bucket,
                log_stream=obj.key,
                flow_fields=fields,
                origin="s3",
                position=message,
            )
            yield from dropped()
        yield from dropped()

    def _backsplash_records(
        self, obj: S3Object, opened: OpenedObject, message: _Message
    ) -> Iterator[SourceRecord]:
        """A backsplash object's records: one :class:`SourceRecord` each, ``decoded`` or
        ``corrupt``.

        Raises:
            ValueError: the rest of the object cannot be read (broken or truncated gzip).
            ClientError, BotoCoreError, OSError: S3 broke off the read.
        """
        for item in backsplash_items(opened, self._transform):
            if isinstance(item, CorruptLine):
                yield SourceRecord(
                    log_group=obj.bucket,
                    log_stream=obj.key,
                    corrupt=item.reason,
                    line=item.line,
                    position=message,
                )
                continue
            line, decoded = item
            yield SourceRecord(
                log_group=obj.bucket,
                log_stream=obj.key,
                decoded=decoded,
                line=line,
                position=message,
            )

    def _skip(self, obj: S3Object, reason: str) -> None:
        """A replay-failed object: counted, logged with the command to run, left in place."""
        self.objects_skipped += 1
        _log.warning("object_skipped", bucket=obj.bucket, key=obj.key, reason=reason)

    def _fail(self, cursor: _Cursor, exc: BaseException) -> None:
        """An object cannot be read: its message is left for SQS to hand out again."""
        message = cursor.message
        message.failed = True
        self.objects_failed += 1
        obj = cursor.current
        _log.error(
            "object_failed",
            bucket=obj.bucket if obj else None,
            key=obj.key if obj else None,
            message_id=message.message_id,
            reason=f"{type(exc).__name__}: {exc}",
        )
        with self._lock:
            self._in_flight.pop(message.receipt, None)

    def commit(self) -> int:
        """Delete every message whose objects are entirely delivered."""
        with self._lock:
            done = [m for m in self._in_flight.values() if m.read_all and not m.failed]
        for message in done:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt)
            with self._lock:
                self._in_flight.pop(message.receipt, None)
            self.messages_deleted += 1
            _log.debug("message_deleted", message_id=message.message_id)
        return len(done)

    def release(self, records: Sequence[SourceRecord]) -> None:
        """The messages of ``records`` (not delivered) are not deleted: they are handed back
        to the queue at once (visibility 0), to be read again, whole, by this or another
        daemon (what of them was delivered comes again: at least once)."""
        messages: dict[str, _Message] = {}
        for record in records:
            if isinstance(record.position, _Message):
                messages[record.position.receipt] = record.position
        for message in messages.values():
            message.failed = True
            if self._cursor is not None and self._cursor.message is message:
                self._cursor = None
            with self._lock:
                self._in_flight.pop(message.receipt, None)
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message.receipt, VisibilityTimeout=0
                )
            except (ClientError, BotoCoreError) as exc:  # it comes back after its visibility
                _log.warning("message_release_failed", reason=str(exc))
        if messages:
            _log.info("source_released", source="sqs-s3", messages=len(messages))

    def in_flight(self) -> int:
        """Messages received and not yet deleted."""
        with self._lock:
            return len(self._in_flight)

    def close(self) -> None:
        """Stop the heartbeat (messages not deleted come back after their visibility)."""
        self._closing.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
