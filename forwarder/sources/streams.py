"""Daemon inputs: Kinesis shards, an SQS queue of S3 notifications, local files and stdin.

Every source has the same small contract, which the daemon's loop relies on:

- :meth:`attach` connects and checks (readiness reports it);
- :meth:`poll` returns the next records (:class:`SourceRecord`), waiting at most a short,
  bounded time when there is nothing, and never blocking a shutdown for long;
- :meth:`commit` is called only after everything :meth:`poll` returned so far is acknowledged
  or backsplashed: that is when a Kinesis checkpoint advances and an SQS message is deleted;
- :meth:`release` hands back records :meth:`poll` returned that the daemon did not deliver (a
  shutdown stops it mid-poll): the next :meth:`commit` does not pass them, so they are read
  again after a restart (Kinesis rewinds the shard, an SQS message is left on the queue);
- ``exhausted`` turns true when a finite source (files, stdin) has nothing more;
- ``lag_seconds`` is the source's delay (Kinesis ``MillisBehindLatest``, SQS message age).

Kinesis follows splits and merges: a child shard is read only once all its parents are read to
their end and that end is checkpointed (``SHARD_END``). Throttling (``ProvisionedThroughput
ExceededException``) backs the shard off exponentially. One daemon per stream (DESIGN.md §8).

SQS: each message names S3 objects (S3 event notifications, plain or wrapped in SNS; the
``s3:TestEvent`` is deleted, nothing to do). Objects are read as streams, line by line (gzip
or plain), in chunks of ``chunk_lines`` (and :data:`FILE_POLL_MAX_CHARS`); a flow-log header
names the fields for the whole object. Memory does not follow an object's size or its
longest line: a line longer than :data:`MAX_LINE_BYTES` is skipped as it streams and handed
to the daemon as a ``dropped`` record (counted ``line_too_long``), and gzip inflating past
``forwarder.replay.engine.MAX_OBJECT_INFLATED_BYTES`` fails the object like a broken stream. A
message is deleted only once every chunk of every object it names is delivered; a heartbeat
thread extends the visibility of every message in flight meanwhile.

Backsplash objects (as the push Lambda does, DESIGN.md §6), recognised by key
(``splunk-failed/``, ``processing-failed/``, ``replay-failed/`` anywhere in it) or else by
content (:func:`forwarder.backsplash.objects.sniff`), are decoded as a stream with replay's
decoder: one :class:`SourceRecord` per backsplash record, carrying the decoded HEC events
(``decoded``) or, for a record that cannot be re-delivered, why (``corrupt``). The daemon sends
those through deliverers of their own whose failures go under ``replay-failed/``. Objects
under ``replay-failed/`` (by key, or by their ``replayAttempts`` records) are never
re-delivered automatically (loop guard): they are counted, logged (``object_skipped``, with the
``forwarder replay`` command to run) and left in place; their message is deleted. A broken or
truncated gzip stream fails the object's message (records before the break are delivered, the
message comes back).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final, Protocol
from urllib.parse import unquote_plus

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.daemon import SourceSettings
from config.errors import ConfigError
from forwarder.backsplash.objects import (
    REPLAY_FAILED,
    CorruptLine,
    DecodedRecord,
    Kind,
    PeekedBody,
    body_chunks,
    decode_object,
    kind_from_key,
    sniff,
)
from forwarder.replay.engine import MAX_OBJECT_INFLATED_BYTES, decompressed
from forwarder.sources.checkpoints import SHARD_END, CheckpointStore, pin_position, pinned_at
from transforms.cloudwatch import GZIP_MAGIC
from transforms.options import TransformOptions
from transforms.records import Origin
from transforms.vpc_flow import fields_from_header, is_header_line

_log = structlog.get_logger("forwarder.sources.streams")

#: Key parts that mark backsplash objects (ours and Firehose's). ``replay-failed/`` objects
#: (what failed again during a replay or a push re-delivery) are never re-delivered
#: automatically: ``forwarder replay`` takes those (loop guard).
BACKSPLASH_MARKERS: Final = ("splunk-failed/", "processing-failed/", "replay-failed/")
#: Why an object recognised as replay-failed by its content (no marker in its key) is skipped.
REPLAY_FAILED_CONTENT_HINT: Final = (
    "replay-failed records (replayAttempts): not re-delivered automatically (a notification "
    "on the backsplash bucket would loop); run forwarder replay on this object's folder"
)
#: The longest text line read from an S3 object, a file or stdin, in bytes: a longer one is
#: skipped as it streams and counted dropped (``line_too_long``). CloudWatch Logs events are
#: at most 1 MB and flow-log lines far shorter; 8 MiB leaves room for any log line while
#: bounding memory.
MAX_LINE_BYTES: Final = 8 * 1024 * 1024
#: The ledger's drop reason (and ``line_dropped``'s) for a line longer than the cap.
LINE_TOO_LONG: Final = "line_too_long"
#: What reading and decoding an S3 object can raise: S3 refused or broke off the read, the
#: gzip stream is corrupt (``zlib.error``) or truncated (``EOFError``), the flow-log header is
#: bad (``FlowLogFormatError``, a ``ValueError``).
OBJECT_READ_ERRORS: Final = (ClientError, BotoCoreError, OSError, EOFError, zlib.error, ValueError)
_READ_SIZE: Final = 1 << 16
#: The files/stdin source reads at most this many lines per poll (and per chunk).
FILE_POLL_MAX_LINES: Final = 10_000
#: ... and at most about this many characters per poll (and per chunk).
FILE_POLL_MAX_CHARS: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One unit of input: a payload (Kinesis record), a chunk of text lines (a file), or one
    record of a backsplash object (already decoded, or corrupt).

    Attributes:
        payload: record bytes for ``transforms.pipeline.transform_payload``.
        lines: text lines for ``transforms.pipeline.transform_lines``.
        log_group: the bucket or a name for the file source (lines and backsplash records).
        log_stream: the object key or file name (lines and backsplash records).
        flow_fields: the fields a flow-log header named (lines only).
        origin: ``s3`` or ``text`` (lines only).
        decoded: a backsplash record's HEC events, for the endpoint it names (re-delivered
            as they are; failures go under ``replay-failed/``).
        corrupt: why a backsplash record cannot be re-delivered (it is dropped, with
            ``line``).
        dropped: a line that was not read, and why (``line_too_long``): the daemon counts
            one event dropped for that reason, with ``line`` and ``size``.
        line: the 1-based line of a backsplash record (or dropped line) in its object.
        size: the dropped line's length in bytes.
        position: where the source stands *before* this record, for :meth:`Source.release`
            (Kinesis: ``(shard id, previous sequence number)``; SQS: the message). Opaque.
    """

    payload: bytes | None = None
    lines: Sequence[str] | None = None
    log_group: str | None = None
    log_stream: str | None = None
    flow_fields: tuple[str, ...] | None = None
    origin: Origin = "s3"
    decoded: DecodedRecord | None = None
    corrupt: str | None = None
    dropped: str | None = None
    line: int | None = None
    size: int | None = None
    position: Any = field(default=None, compare=False, repr=False)


class Source(Protocol):
    """What the daemon needs from a source (see the module docstring)."""

    name: str

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give."""
        ...

    @property
    def attached(self) -> bool:
        """True once :meth:`attach` succeeded."""
        ...

    def lag_seconds(self) -> float | None:
        """The source's delay, when known."""
        ...

    def attach(self) -> None:
        """Connect and load positions."""
        ...

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """The next records; may wait briefly when there are none: at most ``wait_s`` when
        given (the daemon's deliverers have work due then), else ``poll_interval_s``."""
        ...

    def commit(self) -> int:
        """Everything polled so far is delivered: checkpoint / delete; returns items committed."""
        ...

    def release(self, records: Sequence[SourceRecord]) -> None:
        """``records`` (the tail of the last poll) were not delivered: do not commit them."""
        ...

    def close(self) -> None:
        """Release threads and handles."""
        ...


def _shorter(interval: float, wait_s: float | None) -> float:
    """How long a poll may wait: ``interval``, or ``wait_s`` when given and shorter."""
    return interval if wait_s is None else max(min(interval, wait_s), 0.0)


# --- reading objects and files line by line ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than the cap, skipped while it streamed (never held whole).

    Attributes:
        line: its 1-based line number in the (decompressed) object.
        size: its length in bytes (at least the cap + 1).
    """

    line: int
    size: int


def _read_chunks(body: Any, size: int = _READ_SIZE) -> Iterator[bytes]:
    """A body's bytes as they come (``read1`` when it has one, so a pipe is not waited on
    for a full buffer)."""
    read = getattr(body, "read1", None) or body.read
    while True:
        data = read(size)
        if not data:
            return
        yield bytes(data)


def bounded_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes | LongLine]:
    """Split bytes into lines (``\n``; a ``\r`` before it stays), never holding more than
    ``max_line_bytes`` of one line: a longer line is skipped as it streams and reported as a
    :class:`LongLine`. Memory: one chunk plus ``max_line_bytes``.
    """
    if max_line_bytes < 1:
        raise ValueError("max_line_bytes must be positive")
    pending: list[bytes] = []  # the start of the current line
    pending_bytes = 0
    skipped = 0  # > 0: inside an over-long line, this many bytes of it seen
    line = 0
    for data in chunks:
        # Pieces no longer than the cap, so only a line's head and tail can overrun it.
        for start in range(0, len(data), max_line_bytes):
            piece = data[start : start + max_line_bytes]
            first = piece.find(b"\n")
            if first < 0:
                if skipped:
                    skipped += len(piece)
                elif pending_bytes + len(piece) > max_line_bytes:
                    skipped = pending_bytes + len(piece)
                    pending, pending_bytes = [], 0
                else:
                    pending.append(piece)
                    pending_bytes += len(piece)
                continue
            line += 1
            if skipped:
                yield LongLine(line, skipped + first)
                skipped = 0
            elif pending_bytes + first > max_line_bytes:
                yield LongLine(line, pending_bytes + first)
                pending, pending_bytes = [], 0
            elif pending:
                pending.append(piece[:first])
                yield b"".join(pending)
                pending, pending_bytes = [], 0
            else:
                yield piece[:first]
            last = piece.rfind(b"\n")
            if last > first:
                middle = piece[first + 1 : last].split(b"\n")
                line += len(middle)
                yield from middle
            tail = piece[last + 1 :]
            if tail:
                pending, pending_bytes = [tail], len(tail)
    if skipped:
        yield LongLine(line + 1, skipped)
    elif pending:
        yield b"".join(pending)


def text_lines(
    body: Any,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_inflated: int | None = MAX_OBJECT_INFLATED_BYTES,
) -> Iterator[str | LongLine]:
    """The lines of a gzip or plain byte stream, decoded as UTF-8 (bad bytes replaced), read
    as a stream: memory is one read chunk plus ``max_line_bytes``, whatever the object, its
    compression ratio or its longest line.

    Lines come without their line break (``\n``, or ``\r\n``). A line longer than
    ``max_line_bytes`` comes as a :class:`LongLine` instead (its bytes were skipped).

    Raises:
        ValueError: broken or truncated gzip, or gzip inflating past ``max_inflated`` (the
            lines before that point come first).
    """
    for item in bounded_lines(
        decompressed(_read_chunks(body), max_bytes=max_inflated), max_line_bytes
    ):
        if isinstance(item, LongLine):
            yield item
        else:
            yield item.decode("utf-8", "replace").removesuffix("\r")


def _dropped_long_line(item: LongLine) -> None:
    _log.warning("line_dropped", reason=LINE_TOO_LONG, line=item.line, bytes=item.size)


def line_chunks(
    lines: Iterable[str | LongLine],
    chunk_lines: int,
    max_chars: int | None = None,
    *,
    on_long_line: Callable[[LongLine], None] | None = None,
) -> Iterator[tuple[list[str], tuple[str, ...] | None]]:
    """Cut lines into chunks; a flow-log header (first non-blank line) is removed and returned
    with every chunk as the fields of the whole object.

    Args:
        lines: the text lines (:func:`text_lines`).
        chunk_lines: at most this many lines per chunk.
        max_chars: when set, a chunk also ends once its lines hold this many characters (so
            long lines cannot make a chunk of ``chunk_lines`` lines arbitrarily large).
        on_long_line: told of each line too long to read (:class:`LongLine`), which is in
            no chunk; the callers count it dropped (``line_too_long``). By default it is
            only logged (``line_dropped``).

    Raises:
        FlowLogFormatError: the header names an unknown field.
    """
    fields: tuple[str, ...] | None = None
    chunk: list[str] = []
    chars = 0
    first = True
    for line in lines:
        if isinstance(line, LongLine):
            first = False  # a header is short: an over-long first line is data
            (on_long_line or _dropped_long_line)(line)
            continue
        stripped = line.rstrip("\r\n")
        if not stripped.strip():
            continue
        if first:
            first = False
            if is_header_line(stripped):
                fields = fields_from_header(stripped)
                continue
        chunk.append(stripped)
        if max_chars is not None:
            chars += len(stripped)
            if chars >= max_chars:
                yield chunk, fields
                chunk = []
                chars = 0
                continue
        if len(chunk) >= chunk_lines:
            yield chunk, fields
            chunk = []
            chars = 0
    if chunk:
        yield chunk, fields


# --- S3 notifications ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Object:
    """An object named by an S3 event notification."""

    bucket: str
    key: str
    size: int | None = None

    @property
    def is_backsplash(self) -> bool:
        """A backsplash object by its key (ours or Firehose's)."""
        return any(marker in self.key for marker in BACKSPLASH_MARKERS)


def replay_failed_hint(obj: S3Object) -> str:
    """Why a ``replay-failed/`` object is skipped, and the command that replays its folder."""
    root = obj.key[: obj.key.rfind("replay-failed/")]
    return (
        "replay-failed object: not re-delivered automatically (a notification on the "
        "backsplash bucket would loop); run: forwarder replay "
        f"s3://{obj.bucket}/{root}replay-failed/"
    )


def parse_s3_notification(body: str) -> list[S3Object] | None:
    """The objects an SQS message body names (S3 event notification, plain or SNS-wrapped).

    Returns:
        The created objects (empty for ``s3:TestEvent`` and non-create events), or None when
        the body is not an S3 notification at all.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode
        return None
    if not isinstance(document, dict):
        return None
    if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
        try:
            document = json.loads(document["Message"])
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        return None
    objects: list[S3Object] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        name = str(record.get("eventName", ""))
        s3 = record.get("s3")
        if not name.startswith("ObjectCreated") or not isinstance(s3, dict):
            continue
        bucket_part, obj = s3.get("bucket"), s3.get("object")
        if not isinstance(bucket_part, dict) or not isinstance(obj, dict):
            continue
        bucket = bucket_part.get("name")
        key = obj.get("key")
        if isinstance(bucket, str) and isinstance(key, str):
            size = obj.get("size")
            objects.append(
                S3Object(bucket, unquote_plus(key), size if isinstance(size, int) else None)
            )
    return objects


@dataclass(frozen=True, slots=True)
class OpenedObject:
    """An S3 object opened for reading, its first bytes sniffed.

    Attributes:
        body: the object's bytes, from the start.
        backsplash: it holds backsplash records (by key or by content).
        kind: their kind (key first, then the first record); None: per record.
    """

    body: PeekedBody
    backsplash: bool
    kind: Kind | None


def open_object(s3: Any, obj: S3Object) -> OpenedObject:
    """Open an object and tell, by key then by content (:func:`sniff`), whether it holds
    backsplash records.

    Raises:
        ClientError, BotoCoreError, OSError: S3 refused or broke off the read.
    """
    body = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    try:
        peeked, looks_backsplash, content_kind = sniff(body)
    except BaseException:
        body.close()
        raise
    kind = kind_from_key(obj.key)
    if kind is None and looks_backsplash:
        kind = content_kind
    return OpenedObject(peeked, kind is not None or looks_backsplash, kind)


def object_chunks(
    s3: Any,
    obj: S3Object,
    chunk_lines: int,
    opened: OpenedObject | None = None,
    *,
    on_long_line: Callable[[LongLine], None] | None = None,
) -> Iterator[tuple[list[str], tuple[str, ...] | None]]:
    """Stream a text object's lines in chunks (see :func:`line_chunks`) of at most
    ``chunk_lines`` lines and :data:`FILE_POLL_MAX_CHARS` characters.

    Args:
        s3: a boto3 S3 client.
        obj: the object.
        chunk_lines: lines per chunk.
        opened: the object already opened (:func:`open_object`); else it is read from S3.
        on_long_line: told of each line longer than :data:`MAX_LINE_BYTES` (skipped).

    Raises:
        ClientError, BotoCoreError: S3 refused the read.
        ValueError: broken, truncated or over-inflating gzip; a bad flow-log header.
    """
    body: Any = (
        opened.body if opened is not None else s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    )
    try:
        yield from line_chunks(
            text_lines(body), chunk_lines, FILE_POLL_MAX_CHARS, on_long_line=on_long_line
        )
    finally:
        body.close()


def backsplash_records(
    obj: S3Object, opened: OpenedObject, options: TransformOptions, position: Any = None
) -> Iterator[SourceRecord]:
    """A backsplash object's records, streamed and decoded with replay's decoder: one
    :class:`SourceRecord` each, ``decoded`` or ``corrupt``.

    Raises:
        ValueError: the rest of the object cannot be read (broken or truncated gzip);
            records before that point were yielded.
        ClientError, BotoCoreError, OSError: S3 broke off the read.
    """
    try:
        for item in decode_object(body_chunks(opened.body), opened.kind, options):
            if isinstance(item, CorruptLine):
                if item.fatal:
                    raise ValueError(f"line {item.line}: {item.reason}")
                yield SourceRecord(
                    log_group=obj.bucket,
                    log_stream=obj.key,
                    corrupt=item.reason,
                    line=item.line,
                    position=position,
                )
                continue
            line, decoded = item
            yield SourceRecord(
                log_group=obj.bucket,
                log_stream=obj.key,
                decoded=decoded,
                line=line,
                position=position,
            )
    finally:
        opened.body.close()


# --- files and stdin -------------------------------------------------------------------------

#: A stdin line longer than this many bytes is cut: its first bytes are handed over as the line
#: (counted in ``lines_cut``, logged ``line_truncated``) and the rest, up to its newline, is
#: skipped unread into memory. So one enormous line, with or without a newline, costs bounded
#: memory.
STREAM_MAX_LINE_BYTES: Final = 512 * 1024
#: The longest a quiet stdin poll waits, whatever ``poll_interval_s`` says: ``select`` resumes
#: after a signal handler runs (PEP 475), so a shutdown requested during a wait is noticed only
#: when the wait ends. An idle poll that returns nothing costs one loop turn.
STREAM_MAX_WAIT_S: Final = 1.0
#: One ``os.read`` (and one step of gunzip output) from stdin.
_STREAM_READ_SIZE: Final = 1 << 16
#: Reads (or gunzip steps) at most per poll: a poll returns after about this much input even
#: while a writer keeps the pipe full (or streams one huge line being skipped).
_STREAM_MAX_STEPS: Final = FILE_POLL_MAX_CHARS // _STREAM_READ_SIZE


#: The position of records read from stdin (:meth:`FileSource.release` keeps them).
_FROM_STREAM: Final = object()


def _fileno(stream: Any) -> int | None:
    """The stream's descriptor, or None when it has none (an in-memory stream)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if isinstance(fd, int) else None


class _LineStream:
    """The lines of a byte stream (stdin) as they arrive, never waiting for more than asked.

    Reads with ``os.read`` on the descriptor after ``select`` says it is readable, so lines
    written into a pipe that stays open are handed out at once (a buffered reader would wait
    for a full buffer or the end). A gzip stream (told by its first two bytes, members one
    after another) is inflated step by step with bounded output. Lines are decoded as UTF-8
    (bad bytes replaced); ``\\r\\n`` ends a line like ``\\n``; the last line needs no newline.
    Memory is bounded: complete lines are read only up to what a poll takes, and a partial
    line up to :data:`STREAM_MAX_LINE_BYTES` (then cut).
    """

    def __init__(self, stream: Any, name: str, max_line: int = STREAM_MAX_LINE_BYTES) -> None:
        self._stream = stream
        self._fd = _fileno(stream)
        self._name = name
        self._max_line = max_line
        self._head = b""  # the first bytes, until gzip or not is told
        self._sniffed = False
        self._gzip = False
        self._inflater: Any = None
        self._tail = b""  # input read and not yet inflated (at most one read's worth)
        self._partial = bytearray()
        self._skipping = False  # inside a cut line: drop bytes up to its newline
        self._lines: deque[str] = deque()
        self._chars = 0
        self.eof = False
        self.lines_cut = 0
        self.bytes_read = 0

    @property
    def drained(self) -> bool:
        """The end was reached and every line handed out."""
        return self.eof and not self._lines

    def next_lines(self, timeout: float, max_lines: int, max_chars: int) -> list[str] | None:
        """Complete lines read so far (at most ``max_lines``, about ``max_chars``).

        Waits up to ``timeout`` only when no line is ready; then takes whatever input is
        there at once. Returns [] when nothing came in time, None once the stream is drained.
        """
        steps = 0
        while (
            not self.eof
            and len(self._lines) < max_lines
            and self._chars < max_chars
            and steps < _STREAM_MAX_STEPS
        ):
            wait = timeout if steps == 0 and not self._lines else 0.0
            if not self._step(wait):
                break
            steps += 1
        if not self._lines:
            return None if self.eof else []
        return self._take(max_lines, max_chars)

    def rest(self) -> list[str]:
        """Everything read and not handed out, the unfinished last line included (shutdown:
        these bytes left the pipe and cannot be read again)."""
        while self._tail and self._inflate(b""):
            pass
        if self._partial and not self._skipping:
            self._emit()
        self._partial.clear()
        return self._take(len(self._lines), None)

    def _take(self, max_lines: int, max_chars: int | None) -> list[str]:
        out: list[str] = []
        chars = 0
        while self._lines and len(out) < max_lines:
            line = self._lines.popleft()
            out.append(line)
            chars += len(line)
            self._chars -= len(line)
            if max_chars is not None and chars >= max_chars:
                break
        return out

    def _readable(self, timeout: float) -> bool:
        if self._fd is None:
            return True
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        return bool(ready)

    def _read(self) -> bytes:
        if self._fd is not None:
            return os.read(self._fd, _STREAM_READ_SIZE)
        read1 = getattr(self._stream, "read1", None)
        data = (
            read1(_STREAM_READ_SIZE) if read1 is not None else self._stream.read(_STREAM_READ_SIZE)
        )
        return bytes(data)

    def _step(self, timeout: float) -> bool:
        """Take one piece of input; False when none is there now (or at the end)."""
        if self._tail:
            return self._inflate(b"")
        if not self._readable(timeout):
            return False
        data = self._read()
        if not data:
            self._end()
            return False
        self.bytes_read += len(data)
        if not self._sniffed:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return True
            data, self._head, self._sniffed = self._head, b"", True
            self._gzip = data.startswith(GZIP_MAGIC)
        if self._gzip:
            return self._inflate(data)
        self._split(data)
        return True

    def _inflate(self, data: bytes) -> bool:
        source = self._tail + data
        if self._inflater is None:
            self._inflater = zlib.decompressobj(wbits=31)
        try:
            out = self._inflater.decompress(source, _STREAM_READ_SIZE)
        except zlib.error as exc:
            self._broken(f"corrupt gzip: {exc}")
            return False
        if self._inflater.eof:  # a member ends; what follows starts the next one
            self._tail = self._inflater.unused_data
            self._inflater = None
        else:
            self._tail = self._inflater.unconsumed_tail
        self._split(out)
        return True

    def _broken(self, reason: str) -> None:
        _log.error("input_unreadable", source=self._name, reason=reason)
        self._tail = b""
        self._inflater = None
        self._end()

    def _end(self) -> None:
        if self.eof:
            return
        self.eof = True
        if self._head:  # fewer bytes than the gzip magic: plain text
            head, self._head = self._head, b""
            self._split(head)
        if self._gzip and self._inflater is not None:
            self._inflater = None
            _log.error("input_unreadable", source=self._name, reason="gzip data ends early")
        if self._partial and not self._skipping:
            self._emit()
        self._partial.clear()

    def _split(self, data: bytes) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if self._skipping:
                self._skipping = newline < 0
            elif len(self._partial) + len(piece) > self._max_line:
                self._partial += piece[: self._max_line - len(self._partial)]
                self._cut(complete=newline >= 0)
            else:
                self._partial += piece
                if newline >= 0:
                    self._emit()
            if newline < 0:
                return
            start = newline + 1

    def _cut(self, *, complete: bool) -> None:
        self.lines_cut += 1
        _log.warning(
            "line_truncated",
            source=self._name,
            kept_bytes=len(self._partial),
            reason=f"line longer than {self._max_line} bytes: the rest is skipped",
        )
        self._emit()
        self._skipping = not complete

    def _emit(self) -> None:
        raw = bytes(self._partial)
        self._partial.clear()
        line = raw.removesuffix(b"\r").decode("utf-8", errors="replace")
        self._lines.append(line)
        self._chars += len(line)


class FileSource:
    """Local files (or stdin with ``-``), read once, line by line, in chunks.

    No checkpoints: a file is read from its start on every run. Reading is bounded: a chunk
    holds at most ``chunk_lines`` lines (capped at :data:`FILE_POLL_MAX_LINES`) and
    :data:`FILE_POLL_MAX_CHARS` characters, and a poll returns chunks only until it holds that
    many lines or characters. So memory does not grow with the file: the daemon reads the next
    chunks only once the deliverer took the last ones, and the deliverer blocks (acks pending,
    retries while HEC is down) instead of buffering.

    stdin streams (:class:`_LineStream`): lines written into a pipe that stays open (``tail -f
    | forwarder daemon``) are handed out as they arrive; a poll with nothing to give waits at
    most ``poll_interval_s``. A stdin line over :data:`STREAM_MAX_LINE_BYTES` is cut
    (:attr:`lines_cut`).

    A shutdown before the end (:meth:`release`) leaves the rest of a file unread: nothing
    records how far it got, so a later run reads the files from the start. stdin cannot be
    read again, so what left the pipe is never dropped: records released are kept, and
    :meth:`unread` hands them back with every line read and not yet handed out (the
    unfinished last one included), for the daemon to deliver or backsplash before it exits.
    :attr:`lines_delivered` and :attr:`position` say where it stopped.
    """

    def __init__(self, settings: SourceSettings, *, stdin: BinaryIO | None = None) -> None:
        self.name = "stdin" if settings.type == "stdin" else "files"
        self._paths = list(settings.paths) if settings.type == "files" else ["-"]
        self._stdin = stdin
        self._chunk_lines = min(settings.chunk_lines, FILE_POLL_MAX_LINES)
        self._poll_interval_s = settings.poll_interval_s
        self._log_group = settings.log_group
        self._chunks: Iterator[SourceRecord | None] | None = None
        self._stream: _LineStream | None = None
        self._held: list[SourceRecord] = []
        self._wait_s = 0.0
        self._header_done = False
        self._fields: tuple[str, ...] | None = None
        self._exhausted = False
        self._released = False
        self._attached = False
        #: Lines handed to the daemon and not released.
        self.lines_delivered = 0
        #: The file being read (or last read) and the lines of it handed over so far.
        self.position: tuple[str, int] | None = None

    @property
    def exhausted(self) -> bool:
        """Every line was read and none released: the whole input was taken in."""
        return self._exhausted and not self._released

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def stopped_early(self) -> bool:
        """Records were released (a shutdown before the end of the input)."""
        return self._released

    @property
    def lines_cut(self) -> int:
        """stdin lines cut at :data:`STREAM_MAX_LINE_BYTES`."""
        return self._stream.lines_cut if self._stream is not None else 0

    def lag_seconds(self) -> float | None:
        return None

    def attach(self) -> None:
        """Check every file can be opened.

        Raises:
            ConfigError: a file is missing or cannot be opened (a setting to fix, not a
                failure to retry); the message names the path.
        """
        for path in self._paths:
            if path == "-":
                continue
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise ConfigError("source.paths", f"files source: no such file: {path}") from None
            except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
                raise ConfigError(
                    "source.paths", f"files source: cannot read {path}: {exc.strerror}"
                ) from None
        self._chunks = self._records()
        self._attached = True

    def _records(self) -> Iterator[SourceRecord | None]:
        """Records in order; None: stdin has nothing more for now (the poll ends there)."""
        for path in self._paths:
            if path == "-":
                stream = self._stdin if self._stdin is not None else sys.stdin.buffer
                yield from self._stream_records(stream)
            else:
                with open(path, "rb") as handle:
                    for lines, fields in line_chunks(
                        text_lines(handle), self._chunk_lines, FILE_POLL_MAX_CHARS
                    ):
                        yield self._record(lines, fields, path)

    def _stream_records(self, stream: Any) -> Iterator[SourceRecord | None]:
        reader = self._stream = _LineStream(stream, self.name)
        self._header_done = False
        self._fields = None
        while True:
            wait = min(self._wait_s, STREAM_MAX_WAIT_S)
            lines = reader.next_lines(wait, self._chunk_lines, FILE_POLL_MAX_CHARS)
            if lines is None:
                return
            lines = self._text(lines)
            yield self._record(lines, self._fields, "stdin") if lines else None

    def _text(self, lines: list[str]) -> list[str]:
        """Blank lines out; a flow-log header (first non-blank line) names the fields."""
        kept: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            if not self._header_done:
                self._header_done = True
                if is_header_line(line):
                    self._fields = fields_from_header(line)
                    continue
            kept.append(line)
        return kept

    def _record(self, lines: list[str], fields: tuple[str, ...] | None, name: str) -> SourceRecord:
        return SourceRecord(
            lines=lines,
            log_group=self._log_group or self.name,
            log_stream=name,
            flow_fields=fields,
            origin="text",
            position=_FROM_STREAM if name == "stdin" and self._stream is not None else None,
        )

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Up to ``max_records`` chunks, and no more than :data:`FILE_POLL_MAX_LINES` lines
        and :data:`FILE_POLL_MAX_CHARS` characters (always at least one chunk, except from
        stdin with nothing new within ``poll_interval_s``, or ``wait_s`` when shorter)."""
        assert self._chunks is not None, "attach() first"
        out: list[SourceRecord] = []
        lines = chars = 0
        self._wait_s = _shorter(self._poll_interval_s, wait_s)
        for record in self._chunks:
            if record is None:
                break  # stdin: nothing more for now
            out.append(record)
            self._wait_s = 0.0  # something to hand over: do not wait for more
            chunk = record.lines or ()
            lines += len(chunk)
            chars += sum(map(len, chunk))
            self._advance(record, len(chunk))
            if (
                len(out) >= max_records
                or lines >= FILE_POLL_MAX_LINES
                or chars >= FILE_POLL_MAX_CHARS
            ):
                break
        else:
            self._exhausted = True
        return out

    def _advance(self, record: SourceRecord, count: int) -> None:
        name = record.log_stream or self.name
        done = self.position[1] if self.position is not None and self.position[0] == name else 0
        self.position = (name, done + count)
        self.lines_delivered += count

    def release(self, records: Sequence[SourceRecord]) -> None:
        """Not delivered: the input is not read to its end (no checkpoint to hold back). stdin
        records are kept for :meth:`unread` (they cannot be read again)."""
        if not records:
            return
        self._released = True
        for record in records:
            count = len(record.lines or ())
            self.lines_delivered -= count
            if self.position is not None and self.position[0] == record.log_stream:
                self.position = (self.position[0], max(self.position[1] - count, 0))
            if record.position is _FROM_STREAM:
                self._held.append(record)

    def unread(self) -> Iterator[SourceRecord]:
        """stdin at shutdown: the records released and every line read and not handed out,
        in order, as records (counted as handed over). The daemon delivers them (or, past its
        grace, backsplashes them): bytes that left the pipe are never dropped."""
        held, self._held = self._held, []
        for record in held:
            self._advance(record, len(record.lines or ()))
            yield record
        if self._stream is None:
            return
        rest = self._text(self._stream.rest())
        for start in range(0, len(rest), self._chunk_lines):
            record = self._record(rest[start : start + self._chunk_lines], self._fields, "stdin")
            self._advance(record, len(record.lines or ()))
            yield record

    def commit(self) -> int:
        """Nothing to checkpoint."""
        return 0

    def close(self) -> None:
        """Nothing to release."""


# --- Kinesis ---------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool
    ending_seq: str | None = None
    iterator: str | None = None
    read_seq: str | None = None
    committed: str | None = None
    #: ``LATEST`` pinned: epoch seconds to re-read from (``AT_TIMESTAMP``) while no record
    #: of the shard is known (its first iterator expired, its first records were released,
    #: a restart); also in the checkpoint store until a sequence number replaces it.
    pin_s: float | None = None
    #: The first ``LATEST`` iterator was taken: from now on the pin stands for it.
    latest_taken: bool = False
    ended: bool = False
    finished: bool = False
    next_at: float = 0.0
    backoff_s: float = 0.0
    lag_ms: int | None = None
    #: Clock time of the last answered GetRecords (None: never read yet).
    read_at: float | None = None
    #: Clock time the shard became known (the lag of a shard not read yet runs from here).
    known_since: float = 0.0


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


#: A ``LATEST`` pin is set this long before the moment the shard is first seen, so a local
#: clock ahead of Kinesis' cannot make ``AT_TIMESTAMP`` skip records (a few older records may
#: come: duplicates-at-worst, never a gap).
LATEST_PIN_MARGIN_S: Final = 5.0


class KinesisSource:
    """All shards of a stream (or a list and their descendants), checkpointed per shard.

    What must survive a crash is in the checkpoint store, never only in memory:

    - a shard read to its end is committed as ``SHARD_END`` as soon as nothing read from it is
      still in doubt: by :meth:`commit` when its last records are delivered, or by
      :meth:`poll` itself when the end comes on a read with no records and everything
      before it is already committed (a caught-up daemon, or a restart on a closed shard),
      so the children are read without waiting for a cycle that took records;
    - a shard started at ``LATEST`` is pinned first (:func:`~forwarder.sources.checkpoints.
      pin_position`): an iterator that expires before the first record, records released
      by a shutdown, or a restart before the first checkpoint, resume from that moment
      (``AT_TIMESTAMP``) instead of a new ``LATEST``.

    Args:
        client: a boto3 Kinesis client.
        settings: the ``[source]`` settings.
        checkpoints: where positions live.
        stop_event: set on shutdown; waits end early.
        clock: monotonic clock.
        wall_clock: epoch seconds (``LATEST`` pins).
    """

    def __init__(
        self,
        client: Any,
        settings: SourceSettings,
        checkpoints: CheckpointStore,
        *,
        stop_event: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.stream_name is not None
        self.name = "kinesis"
        self.stream_name = settings.stream_name
        self._client = client
        self._settings = settings
        self._checkpoints = checkpoints
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._clock = clock
        self._wall_clock = wall_clock
        self._shards: dict[str, _Shard] = {}
        self._positions: dict[str, str] = {}
        self._next_refresh = 0.0
        self._turn = 0
        self._attached = False

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def attached(self) -> bool:
        return self._attached

    def lag_seconds(self) -> float | None:
        """How far behind the stream the daemon is, in seconds (the largest over shards).

        A shard being read: its last ``MillisBehindLatest``, plus the time since that read
        beyond one ``poll_interval_s`` (a reader that stopped reading, whatever the cause,
        falls behind by the time it stopped). A shard not read yet (a child waiting for its
        parents, for instance): the time since it became known. A shard read to its end adds
        nothing itself (its children carry the lag). So a stall shows as a growing lag,
        never as 0.
        """
        now = self._clock()
        idle = self._settings.poll_interval_s
        lags: list[float] = []
        for shard in self._shards.values():
            if shard.finished or shard.ended:
                continue
            if shard.read_at is None:
                lags.append(max(now - shard.known_since, 0.0))
            else:
                behind = (shard.lag_ms or 0) / 1000.0
                lags.append(behind + max(now - shard.read_at - idle, 0.0))
        return max(lags) if lags else None

    def shard_positions(self) -> dict[str, str | None]:
        """Each known shard's committed position (for tests and logs)."""
        return {shard_id: shard.committed for shard_id, shard in self._shards.items()}

    def attach(self) -> None:
        """Load checkpoints and list the shards.

        Raises:
            ClientError, BotoCoreError: the stream cannot be described.
        """
        self._positions = self._checkpoints.load(self.stream_name)
        self._refresh()
        self._attached = True
        _log.info(
            "source_attached",
            source="kinesis",
            stream=self.stream_name,
            shards=len(self._shards),
            checkpoints=len(self._positions),
        )

    def _list_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            if token is None:
                page = self._client.list_shards(StreamName=self.stream_name)
            else:
                page = self._client.list_shards(NextToken=token)
            shards.extend(page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                return shards

    def _wanted(self, shard_id: str, parents: dict[str, tuple[str, ...]]) -> bool:
        configured = self._settings.shard_ids
        if not configured:
            return True
        seen: set[str] = set()
        pending = [shard_id]
        while pending:
            current = pending.pop()
            if current in configured:
                return True
            if current in seen:
                continue
            seen.add(current)
            pending.extend(parents.get(current, ()))
        return False

    def _refresh(self) -> None:
        listed = self._list_shards()
        parents = {
            item["ShardId"]: tuple(
                p for p in (item.get("ParentShardId"), item.get("AdjacentParentShardId")) if p
            )
            for item in listed
        }
        added: dict[str, _Shard] = {}
        fresh: list[_Shard] = []
        for item in listed:
            shard_id = item["ShardId"]
            ending = item.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            known = self._shards.get(shard_id)
            if known is not None:
                known.closed = ending is not None
                known.ending_seq = ending
                continue
            if not self._wanted(shard_id, parents):
                continue
            shard = _Shard(
                shard_id,
                parents[shard_id],
                ending is not None,
                ending,
                known_since=self._clock(),
            )
            position = self._positions.get(shard_id)
            pinned = pinned_at(position)
            if position == SHARD_END:
                shard.ended = shard.finished = True
                shard.committed = SHARD_END
            elif pinned is not None:
                shard.pin_s = pinned
                shard.latest_taken = True  # a restart: resume from the pin, not a new LATEST
            elif position:
                shard.committed = shard.read_seq = position
            else:
                fresh.append(shard)
            added[shard_id] = shard
        pins: dict[str, str] = {}
        for shard in fresh:
            if self._starts_at_latest(shard, {**self._shards, **added}):
                shard.pin_s = self._wall_clock() - LATEST_PIN_MARGIN_S
                pins[shard.shard_id] = pin_position(shard.pin_s)
        if pins:
            # Durable before the shards are known (so before their first read): a later
            # LATEST would skip what arrives meanwhile. If this fails, they stay unknown and
            # the next refresh (or attach) pins them again.
            self._checkpoints.save(self.stream_name, pins)
            self._positions.update(pins)
            _log.info("shard_pinned", stream=self.stream_name, shards=sorted(pins))
        for shard_id, shard in added.items():
            self._shards[shard_id] = shard
            _log.info(
                "shard_discovered",
                stream=self.stream_name,
                shard=shard_id,
                parents=list(shard.parents),
                closed=shard.closed,
                position=self._positions.get(shard_id),
            )
        self._next_refresh = self._clock() + self._settings.shard_refresh_interval_s

    def _starts_at_latest(self, shard: _Shard, shards: dict[str, _Shard]) -> bool:
        """A shard without a checkpoint that :meth:`_iterator` starts at ``LATEST`` (not a
        child of a shard we read)."""
        if self._settings.start_position != "LATEST":
            return False
        return not any(parent in shards for parent in shard.parents)

    def _ready(self, shard: _Shard) -> bool:
        """Not finished, and every parent we know is finished (parents before children)."""
        if shard.finished or shard.ended:
            return False
        return all(
            self._shards[parent].finished for parent in shard.parents if parent in self._shards
        )

    def _iterator(self, shard: _Shard) -> str:
        arguments: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard.shard_id}
        if shard.read_seq:
            arguments.update(
                ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=shard.read_seq
            )
        elif any(parent in self._shards for parent in shard.parents):
            arguments["ShardIteratorType"] = "TRIM_HORIZON"  # a child: from its very start
        elif shard.pin_s is not None and shard.latest_taken:
            # LATEST again would skip whatever arrived since the first iterator.
            arguments.update(
                ShardIteratorType="AT_TIMESTAMP",
                Timestamp=datetime.fromtimestamp(shard.pin_s, tz=UTC),
            )
        else:
            arguments["ShardIteratorType"] = self._settings.start_position
            shard.latest_taken = shard.pin_s is not None
        _log.debug(
            "shard_iterator_fetched", shard=shard.shard_id, kind=arguments["ShardIteratorType"]
        )
        iterator: str = self._client.get_shard_iterator(**arguments)["ShardIterator"]
        return iterator

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Read the shards that are due, round-robin, up to ``max_records`` records.

        When no shard is due, wait (interruptibly) until one is, at most ``poll_interval_s``
        (or ``wait_s`` when shorter).
        Writes to the checkpoint store (``SHARD_END`` of shards read to their end, pins) happen
        before any read, so a failing store raises with nothing read; a read that fails after
        other shards gave records ends the poll with those records (the failed shard is read
        again next time), so records read are never lost to an exception.

        Raises:
            ClientError, BotoCoreError, OSError: Kinesis or the checkpoint store failed before
                anything was read.
        """
        now = self._clock()
        if now >= self._next_refresh:
            self._refresh()
        self._finish_ended()
        ready = [shard for shard in self._shards.values() if self._ready(shard)]
        out: list[SourceRecord] = []
        if ready:
            start = self._turn % len(ready)
            self._turn += 1
            for shard in ready[start:] + ready[:start]:
                if len(out) >= max_records:
                    break
                if shard.next_at > self._clock():
                    continue
                try:
                    out.extend(self._read(shard, max_records - len(out)))
                except (ClientError, BotoCoreError) as exc:
                    if not out:
                        raise
                    shard.iterator = None
                    _log.warning(
                        "source_read_failed",
                        shard=shard.shard_id,
                        reason=f"{type(exc).__name__}: {exc}",
                    )
                    break
        if not out:
            due = [s.next_at for s in self._shards.values() if self._ready(s)]
            wait = _shorter(self._settings.poll_interval_s, wait_s)
            if due:
                wait = min(wait, max(min(due) - self._clock(), 0.0))
            if wait > 0:
                self._stop.wait(wait)
        return out

    def _read(self, shard: _Shard, limit: int) -> list[SourceRecord]:
        settings = self._settings
        try:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
            answer = self._client.get_records(
                ShardIterator=shard.iterator, Limit=min(limit, settings.max_records)
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                shard.backoff_s = min(
                    max(shard.backoff_s * 2, settings.throttle_backoff_s),
                    settings.throttle_backoff_max_s,
                )
                shard.next_at = self._clock() + shard.backoff_s
                _log.warning(
                    "source_throttled", shard=shard.shard_id, code=code, backoff_s=shard.backoff_s
                )
                return []
            if code == "ExpiredIteratorException":
                shard.iterator = None  # fetched again from what was read (or the pin)
                _log.info("shard_iterator_expired", shard=shard.shard_id)
                return []
            if code == "ResourceNotFoundException":
                shard.iterator = None
                shard.next_at = self._clock() + settings.poll_interval_s
                self._next_refresh = 0.0
                _log.warning("source_read_failed", shard=shard.shard_id, code=code)
                return []
            raise
        shard.backoff_s = 0.0
        shard.read_at = self._clock()
        records = answer.get("Records", [])
        shard.lag_ms = answer.get("MillisBehindLatest")
        shard.iterator = answer.get("NextShardIterator")
        out: list[SourceRecord] = []
        previous = shard.read_seq
        for record in records:
            out.append(
                SourceRecord(payload=bytes(record["Data"]), position=(shard.shard_id, previous))
            )
            previous = record["SequenceNumber"]
        if records:
            shard.read_seq = records[-1]["SequenceNumber"]
            shard.next_at = 0.0
        else:
            shard.next_at = self._clock() + settings.poll_interval_s
        if shard.iterator is None or self._closed_and_drained(shard, bool(records)):
            shard.ended = True
            self._next_refresh = 0.0  # its children may be new to us
            _log.info("shard_ended", stream=self.stream_name, shard=shard.shard_id)
        return out

    def _finish_ended(self) -> None:
        """Commit ``SHARD_END`` for shards read to their end with nothing read from them in
        doubt (everything committed): the end came on a read with no records. No cycle with
        records has to do it (there may be none: the new records are in the children, which
        wait for this). Retried on every poll until the store takes it."""
        ended = [
            shard
            for shard in self._shards.values()
            if shard.ended and not shard.finished and shard.read_seq == shard.committed
        ]
        if not ended:
            return
        self._checkpoints.save(self.stream_name, {shard.shard_id: SHARD_END for shard in ended})
        for shard in ended:
            shard.committed = SHARD_END
            shard.finished = True
            _log.info("shard_end_committed", stream=self.stream_name, shard=shard.shard_id)

    def _closed_and_drained(self, shard: _Shard, got_records: bool) -> bool:
        """A closed shard read past its last sequence number (or empty and not behind).

        Kinesis says SHARD_END with a null NextShardIterator; this also covers servers
        (emulators) that keep handing out iterators for closed shards.
        """
        if not shard.closed:
            return False
        if shard.read_seq is not None and shard.ending_seq is not None:
            with contextlib.suppress(ValueError):
                if int(shard.read_seq) >= int(shard.ending_seq):
                    return True
        return not got_records and shard.lag_ms == 0

    def commit(self) -> int:
        """Checkpoint every shard past what it returned; ended shards become ``SHARD_END``."""
        positions: dict[str, str] = {}
        for shard in self._shards.values():
            if shard.finished:
                continue
            if shard.ended:
                positions[shard.shard_id] = SHARD_END
            elif shard.read_seq is not None and shard.read_seq != shard.committed:
                positions[shard.shard_id] = shard.read_seq
        if positions:
            self._checkpoints.save(self.stream_name, positions)
            for shard_id, position in positions.items():
                shard = self._shards[shard_id]
                shard.committed = position
                if position == SHARD_END:
                    shard.finished = True
        return len(positions)

    def release(self, records: Sequence[SourceRecord]) -> None:
        """Rewind each shard to just before its first record in ``records`` (not delivered):
        the next commit stops there and reading would resume there."""
        rewound: set[str] = set()
        for record in records:
            if record.position is None:
                continue
            shard_id, previous = record.position
            shard = self._shards.get(shard_id)
            if shard is None or shard_id in rewound:
                continue
            rewound.add(shard_id)
            shard.read_seq = previous
            shard.iterator = None
            shard.ended = False
        if rewound:
            _log.info("source_released", source="kinesis", shards=sorted(rewound))

    def close(self) -> None:
        """Nothing to release."""


# --- SQS queue of S3 notifications -----------------------------------------------------------


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


class SqsS3Source:
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
        self.name = "sqs-s3"
        self.queue_url = settings.queue_url
        self._sqs = sqs
        self._s3 = s3
        self._settings = settings
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._wall_clock = wall_clock
        self._receive_wait_s: float = settings.wait_time_s
        self._transform = transform if transform is not None else TransformOptions()
        self._lock = threading.Lock()
        self._in_flight: dict[str, _Message] = {}  # by receipt handle
        self._cursor: _Cursor | None = None
        self._backlog: list[_Message] = []
        self._lag: float | None = None
        self._attached = False
        self._heartbeat: threading.Thread | None = None
        self._closing = threading.Event()
        self.visibility_extensions = 0
        self.messages_deleted = 0
        self.objects_skipped = 0
        self.objects_failed = 0
        #: Backsplash objects opened for re-delivery (their records handed to the daemon).
        self.objects_redelivered = 0

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def attached(self) -> bool:
        return self._attached

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
        self._receive_wait_s = _shorter(self._settings.wait_time_s, wait_s)
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
                if kind_from_key(obj.key) == REPLAY_FAILED:
                    self._skip(obj, replay_failed_hint(obj))
                    continue
                try:
                    opened = open_object(self._s3, obj)
                except OBJECT_READ_ERRORS as exc:
                    self._fail(cursor, exc)
                    return None
                if opened.kind == REPLAY_FAILED:  # by content: replayAttempts records
                    opened.body.close()
                    self._skip(obj, REPLAY_FAILED_CONTENT_HINT)
                    continue
                if opened.backsplash:
                    self.objects_redelivered += 1
                    _log.info(
                        "backsplash_object_redelivering",
                        bucket=obj.bucket,
                        key=obj.key,
                        kind=opened.kind,
                    )
                    cursor.chunks = backsplash_records(
                        obj, opened, self._transform, position=cursor.message
                    )
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
            self._s3, obj, self._settings.chunk_lines, opened, on_long_line=long_lines.append
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


# --- input that cannot be transformed ----------------------------------------------------------


def store_unprocessable(
    writer: Any,
    data: bytes,
    *,
    error_code: str,
    message: str,
    endpoint: Any,
    clock: Callable[[], float] = time.time,
) -> str:
    """Store an input record the transform refused under ``processing-failed/`` (its bytes
    as they came, in Firehose's backup layout), so nothing is lost and replay can see it.

    Args:
        writer: a ``Backsplash``, ``LocalSpool`` or ``FallbackBacksplash``.
        data: the original record bytes.
        error_code: e.g. ``Transform.DecodeError``.
        message: what was wrong.
        endpoint: the HEC endpoint in use (stored with the record).
        clock: wall clock.

    Returns:
        The key written (``spool:<key>`` when it went to the spool).

    Raises:
        BacksplashError: nowhere to store it.
    """
    from forwarder.backsplash.writers import (  # noqa: PLC0415 - avoids a cycle at import time
        encode_records,
        put_under,
    )
    from transforms.records import EncodedEvent  # noqa: PLC0415

    now_ms = int(clock() * 1000)
    body = encode_records(
        [EncodedEvent(data, None)],
        error_code=error_code,
        error_message=message,
        attempts=0,
        endpoint=endpoint,
        raw_target=None,
        arrival_ms=now_ms,
        ending_ms=now_ms,
    )
    return put_under(writer, "processing-failed", body)
