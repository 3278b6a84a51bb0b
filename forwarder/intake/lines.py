"""Reading text as a stream with bounded memory: lines of an object, a file or a pipe's bytes.

Shared by the push Lambda (S3 objects), the daemon's ``sqs-s3`` and ``files`` sources and
``forwarder forward``. Memory never follows an object's size, its compression ratio or its
longest line: a line longer than :data:`MAX_LINE_BYTES` is skipped as it streams
(:class:`LongLine`; the callers count it dropped, :data:`LINE_TOO_LONG`), and gzip inflating
past ``MAX_OBJECT_INFLATED_BYTES`` fails the read like a broken stream.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

import structlog

from forwarder.backsplash.codec import MAX_OBJECT_INFLATED_BYTES, decompressed
from transforms.vpc_flow import fields_from_header, is_header_line

_log = structlog.get_logger("forwarder.intake.lines")

#: The longest text line read from an S3 object, a file or stdin, in bytes: a longer one is
#: skipped as it streams and counted dropped (``line_too_long``). CloudWatch Logs events are
#: at most 1 MB and flow-log lines far shorter; 8 MiB leaves room for any log line while
#: bounding memory.
MAX_LINE_BYTES: Final = 8 * 1024 * 1024
#: The ledger's drop reason (and ``line_dropped``'s) for a line longer than the cap.
LINE_TOO_LONG: Final = "line_too_long"
#: Bytes asked of a body per read.
READ_SIZE: Final = 1 << 16
#: A chunk of lines (an S3 object's, a file poll's) holds at most about this many characters,
#: so long lines cannot make a chunk of many lines exhaust memory.
MAX_CHUNK_CHARS: Final = 4 << 20


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than the cap, skipped while it streamed (never held whole).

    Attributes:
        line: its 1-based line number in the (decompressed) object.
        size: its length in bytes (at least the cap + 1).
    """

    line: int
    size: int


def read_chunks(body: Any, size: int = READ_SIZE) -> Iterator[bytes]:
    """A body's bytes as they come (``read1`` when it has one, so a pipe is not waited on
    for a full buffer)."""
    read = getattr(body, "read1", None) or body.read
    while True:
        data = read(size)
        if not data:
            return
        yield bytes(data)


def bounded_blocks(
    chunks: Iterable[bytes], max_line_bytes: int
) -> Iterator[list[bytes] | LongLine]:
    """Split bytes into lines (``\n``; a ``\r`` before it stays), never holding more than
    ``max_line_bytes`` of one line: a longer line is skipped as it streams and reported as a
    :class:`LongLine`. Memory: one chunk plus ``max_line_bytes``.

    The lines come a list at a time (those that end in one piece read), each ``LongLine``
    alone between them, in input order: a caller's work is per list, not per line.
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
            block: list[bytes] = []
            if skipped:
                yield LongLine(line, skipped + first)
                skipped = 0
            elif pending_bytes + first > max_line_bytes:
                yield LongLine(line, pending_bytes + first)
                pending, pending_bytes = [], 0
            elif pending:
                pending.append(piece[:first])
                block.append(b"".join(pending))
                pending, pending_bytes = [], 0
            else:
                block.append(piece[:first])
            last = piece.rfind(b"\n")
            if last > first:
                middle = piece[first + 1 : last].split(b"\n")
                line += len(middle)
                block += middle
            if block:
                yield block
            tail = piece[last + 1 :]
            if tail:
                pending, pending_bytes = [tail], len(tail)
    if skipped:
        yield LongLine(line + 1, skipped)
    elif pending:
        yield [b"".join(pending)]


def bounded_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes | LongLine]:
    """:func:`bounded_blocks`, a line at a time."""
    for item in bounded_blocks(chunks, max_line_bytes):
        if isinstance(item, LongLine):
            yield item
        else:
            yield from item


def text_line_blocks(
    body: Any,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_inflated: int | None = MAX_OBJECT_INFLATED_BYTES,
) -> Iterator[list[str] | LongLine]:
    """:func:`text_lines`, a list of lines at a time (see :func:`bounded_blocks`).

    A list is decoded in one pass: the lines joined by ``\n``, decoded, split again. That is
    each line decoded alone, joined: a ``\n`` byte is never part of a UTF-8 sequence, so an
    invalid sequence before it is replaced the same way at a line's end and at the end of
    the input (``tests/unit/test_intake_blocks.py`` compares both on generated bytes).
    """
    for item in bounded_blocks(
        decompressed(read_chunks(body), max_bytes=max_inflated), max_line_bytes
    ):
        if isinstance(item, LongLine):
            yield item
            continue
        text = b"\n".join(item).decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [line.removesuffix("\r") for line in lines]
        yield lines


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
    for item in text_line_blocks(body, max_line_bytes=max_line_bytes, max_inflated=max_inflated):
        if isinstance(item, LongLine):
            yield item
        else:
            yield from item


def _dropped_long_line(item: LongLine) -> None:
    _log.warning("line_dropped", reason=LINE_TOO_LONG, line=item.line, bytes=item.size)


def fill_chunks(
    chunk: list[str], chars: int, lines: list[str], chunk_lines: int, max_chars: int | None
) -> tuple[list[list[str]], list[str], int]:
    """Add ``lines`` to the open ``chunk`` (of ``chars`` characters): the chunks that fill
    up, each ending at the line that brings it to ``chunk_lines`` lines or ``max_chars``
    characters, then the chunk left open and its characters. Cut with ``accumulate`` and
    ``bisect`` over the line lengths, not a step per line."""
    full: list[list[str]] = []
    running = list(accumulate(map(len, lines)))
    count = len(lines)
    start = 0
    while start < count:
        before = running[start - 1] if start else 0
        end = start + chunk_lines - len(chunk)
        if max_chars is not None:
            end = min(end, bisect_left(running, max_chars - chars + before, start) + 1)
        if end > count:
            return full, chunk + lines[start:], chars + running[-1] - before
        full.append(chunk + lines[start:end])
        chunk, chars = [], 0
        start = end
    return full, chunk, chars


def line_chunks(
    lines: Iterable[str | list[str] | LongLine],
    chunk_lines: int,
    max_chars: int | None = None,
    *,
    on_long_line: Callable[[LongLine], None] | None = None,
) -> Iterator[tuple[list[str], tuple[str, ...] | None]]:
    """Cut lines into chunks; a flow-log header (first non-blank line) is removed and returned
    with every chunk as the fields of the whole object.

    Args:
        lines: the text lines (:func:`text_lines`), or lists of them
            (:func:`text_line_blocks`: a list of plain lines is cut in one pass).
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
    for item in lines:
        if isinstance(item, LongLine):
            first = False  # a header is short: an over-long first line is data
            (on_long_line or _dropped_long_line)(item)
            continue
        block = [item] if isinstance(item, str) else item
        # A list whose lines are all kept as they are (none blank, no \r) is cut in one pass.
        if (
            not first
            and len(block) > 1
            and all(map(str.strip, block))
            and "\r" not in "".join(block)
        ):
            full, chunk, chars = fill_chunks(chunk, chars, block, chunk_lines, max_chars)
            for done in full:
                yield done, fields
            continue
        for line in block:
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
