"""Opening an S3 object an S3 notification names: skip it, read it as text, or decode it as
backsplash records (the one path for the push Lambda and the daemon's ``sqs-s3`` source).

Backsplash objects (DESIGN.md §6) are recognised by key first (``splunk-failed/``,
``processing-failed/``, ``decompression-failed/``, ``replay-failed/`` anywhere in it), else
by content (any prefix: Firehose's ``format-conversion-failed/``, a custom error prefix)
(:func:`forwarder.backsplash.objects.sniff`). Objects under ``replay-failed/`` (by key, or by
their ``replayAttempts`` records) are never re-delivered automatically (loop guard: a
notification on the backsplash bucket would otherwise send a failing event round forever):
:func:`open_object` says why to skip them, with the ``forwarder replay`` command to run.
Anything else is a text object (flow-log file, gzip or plain), read by
:func:`object_chunks` as a stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from forwarder.backsplash.codec import CorruptLine, DecodedRecord
from forwarder.backsplash.layout import REPLAY_FAILED, Kind, kind_from_key
from forwarder.backsplash.objects import PeekedBody, body_chunks, decode_object, sniff
from forwarder.intake.lines import MAX_CHUNK_CHARS, LongLine, line_chunks, text_line_blocks
from forwarder.intake.notifications import (
    REPLAY_FAILED_CONTENT_HINT,
    S3Object,
    replay_failed_hint,
)
from transforms.options import TransformOptions

#: What reading and decoding an S3 object can raise: S3 refused or broke off the read, the
#: gzip stream is corrupt (``zlib.error``) or truncated (``EOFError``), the flow-log header is
#: bad (``FlowLogFormatError``, a ``ValueError``).
OBJECT_READ_ERRORS: Final = (ClientError, BotoCoreError, OSError, EOFError, zlib.error, ValueError)


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


@dataclass(frozen=True, slots=True)
class SkippedObject:
    """A ``replay-failed`` object, not re-delivered automatically; ``reason`` says why and
    names the ``forwarder replay`` command to run (nothing is left open)."""

    reason: str


def open_object(s3: Any, obj: S3Object) -> OpenedObject | SkippedObject:
    """Open an object and tell, by key then by content (:func:`sniff`), whether it holds
    backsplash records; a replay-failed one (by key: not even read) is skipped.

    Raises:
        ClientError, BotoCoreError, OSError: S3 refused or broke off the read (any of
            :data:`OBJECT_READ_ERRORS`).
    """
    kind = kind_from_key(obj.key)
    if kind == REPLAY_FAILED:
        return SkippedObject(replay_failed_hint(obj))
    body = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    try:
        peeked, looks_backsplash, content_kind = sniff(body)
    except BaseException:
        body.close()
        raise
    if kind is None and looks_backsplash:
        kind = content_kind
        if kind == REPLAY_FAILED:
            peeked.close()
            return SkippedObject(REPLAY_FAILED_CONTENT_HINT)
    return OpenedObject(peeked, kind is not None or looks_backsplash, kind)


def object_chunks(
    body: Any,
    chunk_lines: int,
    max_chars: int = MAX_CHUNK_CHARS,
    *,
    on_long_line: Callable[[LongLine], None] | None = None,
) -> Iterator[tuple[list[str], tuple[str, ...] | None]]:
    """Stream a text object's lines in chunks (see :func:`~forwarder.intake.lines.line_chunks`)
    of at most ``chunk_lines`` lines and ``max_chars`` characters; the body is closed at the end.

    Args:
        body: the object's bytes (an :class:`OpenedObject`'s body, or S3's ``Body``).
        chunk_lines: lines per chunk.
        max_chars: characters per chunk (about).
        on_long_line: told of each line longer than ``MAX_LINE_BYTES`` (skipped).

    Raises:
        ValueError: broken, truncated or over-inflating gzip; a bad flow-log header.
        ClientError, BotoCoreError, OSError: S3 broke off the read.
    """
    try:
        blocks = text_line_blocks(body)
        yield from line_chunks(blocks, chunk_lines, max_chars, on_long_line=on_long_line)
    finally:
        body.close()


def backsplash_items(
    opened: OpenedObject, options: TransformOptions
) -> Iterator[tuple[int, DecodedRecord] | CorruptLine]:
    """A backsplash object's records, streamed and decoded with replay's decoder:
    ``(line, record)``, or a :class:`CorruptLine` for a record that cannot be re-delivered.
    The body is closed at the end.

    Raises:
        ValueError: the rest of the object cannot be read (broken or truncated gzip);
            records before that point were yielded.
        ClientError, BotoCoreError, OSError: S3 broke off the read.
    """
    try:
        for item in decode_object(body_chunks(opened.body), opened.kind, options):
            if isinstance(item, CorruptLine) and item.fatal:
                raise ValueError(f"line {item.line}: {item.reason}")
            yield item
    finally:
        opened.body.close()
