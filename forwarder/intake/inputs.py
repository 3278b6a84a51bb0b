"""Reading a local input (a file or stdin) into transformed batches: what ``forwarder
forward`` delivers and ``forwarder transform`` prints, the same units for the same bytes.

:func:`read_units` asks the one sniffer (:mod:`transforms.sniff`) what the input is, then:

- a gzip CloudWatch Logs payload is decoded whole (bounded by ``MAX_DECOMPRESSED_BYTES``)
  and shaped in slices of :data:`~transforms.pipeline.PAYLOAD_SLICE_EVENTS` events, one
  unit each, so ``forward`` sends the first while the rest is shaped (the same events, in
  order, as one unit would hold);
- a push-Lambda, Firehose or Kinesis event (one JSON document) gives one batch per record;
- JSON lines that are all ``{"message": "<line>"}`` are flow logs sent straight to Firehose
  (origin ``direct``);
- any other JSON document is one text event;
- everything else (plain or gzip) is text, read as a stream in chunks so memory stays bounded
  whatever the input size; a first line naming flow-log fields is a header (the file is a
  flow log in that format; the header is not an event). A line longer than
  :data:`~forwarder.intake.lines.MAX_LINE_BYTES` is skipped as it streams and counted
  dropped (``line_too_long``, logged ``line_dropped``).

Text, direct records and JSON documents are routed by the names the user gives
(``--log-group``, ``--log-stream``; :func:`input_names`), with origin ``text`` (``direct``
for direct records); payloads and event records carry their own log group and stream.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import IO, Any, Final, cast

from forwarder.intake.lines import (
    LINE_TOO_LONG,
    MAX_CHUNK_CHARS,
    LongLine,
    fill_chunks,
    text_line_blocks,
)
from transforms.errors import TransformError
from transforms.options import TransformOptions
from transforms.pipeline import (
    PAYLOAD_SLICE_EVENTS,
    transform_batch,
    transform_lines,
    transform_payload,
    transform_payload_slices,
)
from transforms.records import EncodedBatch, LogBatch, LogEvent
from transforms.sniff import (
    SNIFF_BYTES,
    direct_messages,
    event_payloads,
    event_shape,
    read_document,
    sniff,
)
from transforms.vpc_flow import fields_from_header, is_header_line

#: Lines handed to the transform at once: big enough to amortise per-call work, small enough
#: that a million-line file never sits in memory.
CHUNK_LINES: Final = 20_000
#: Bytes looked at before telling what an input is (a pipe's first read may hold fewer).
SNIFF_MIN_BYTES: Final = 4096
#: The log stream of stdin when the user names neither a log group nor a log stream.
STDIN_NAME: Final = "stdin"
#: What reading a broken input raises while units stream (corrupt or truncated gzip, a bad
#: flow-log header): the units before that point were yielded.
INPUT_ERRORS: Final = (OSError, EOFError, zlib.error, ValueError)


@dataclass(frozen=True)
class Failure:
    """A piece of input that could not be transformed (counted as dropped, with its reason)."""

    reason: str
    detail: str
    count: int = 1
    event: str = "record_failed"


Unit = EncodedBatch | Failure


def input_names(
    file: str, log_group: str | None, log_stream: str | None
) -> tuple[str | None, str | None]:
    """The (log group, log stream) a local input is routed and named by.

    The log stream defaults to the file's path; stdin (``-``) has none, unless no log group
    is given either: then it is ``stdin``. So the default ``source`` is
    ``<logGroup>:<logStream>``, the log group alone (stdin with ``--log-group``), the file's
    path, or ``stdin`` (``transforms.routing.default_source``).
    """
    if log_stream is None and file != "-":
        log_stream = file
    if log_stream is None and log_group is None:
        log_stream = STDIN_NAME
    return log_group, log_stream


def _text_units(
    blocks: Iterator[list[str] | LongLine],
    options: TransformOptions,
    *,
    log_group: str | None,
    log_stream: str | None,
    stop: threading.Event,
) -> Iterator[Unit]:
    """Lines in chunks of ``CHUNK_LINES`` lines or ``MAX_CHUNK_CHARS`` characters (the line
    that reaches either ends its chunk), transformed; the first line that is not blank is
    taken as the flow-log header when it is one. A block of lines is cut with ``accumulate``
    and ``bisect`` over its line lengths (``fill_chunks``), not a step per line."""
    flow_fields: tuple[str, ...] | None = None
    chunk: list[str] = []
    chars = 0
    first = True

    def encode(lines: list[str]) -> EncodedBatch:
        return transform_lines(
            lines,
            log_group=log_group,
            log_stream=log_stream,
            origin="text",
            options=options,
            flow_fields=flow_fields,
        )

    try:
        for block in blocks:
            if isinstance(block, LongLine):
                first = False  # a header is short: an over-long first line is data
                yield Failure(
                    LINE_TOO_LONG,
                    f"line {block.line}: {block.size} bytes, skipped",
                    event="line_dropped",
                )
                continue
            lines = block
            if first:  # a line at a time up to the first that is not blank
                rest: list[str] | None = None
                for index, line in enumerate(lines):
                    if line.strip():
                        first = False
                        header = is_header_line(line.strip())
                        if header:
                            flow_fields = fields_from_header(line.strip())
                        rest = lines[index + 1 :] if header else lines[index:]
                        break
                    chunk.append(line)
                    chars += len(line)
                    if len(chunk) >= CHUNK_LINES or chars >= MAX_CHUNK_CHARS:
                        yield encode(chunk)
                        chunk, chars = [], 0
                        if stop.is_set():
                            return
                if rest is None:
                    continue
                lines = rest
            full, chunk, chars = fill_chunks(chunk, chars, lines, CHUNK_LINES, MAX_CHUNK_CHARS)
            for filled in full:
                yield encode(filled)
                if stop.is_set():
                    return
    except INPUT_ERRORS:
        if chunk:  # deliver the lines read before the input broke, then say it broke
            yield encode(chunk)
        raise
    if chunk:
        yield encode(chunk)


def _record_units(payloads: list[str | None], options: TransformOptions) -> Iterator[Unit]:
    """One batch per base64 record of an event (or a failure naming the record)."""
    for index, encoded in enumerate(payloads):
        if encoded is None:
            yield Failure("undecodable_record", f"record {index} has no base64 data")
            continue
        try:
            data = base64.b64decode(encoded, validate=True)
            yield transform_payload(data, options)
        except (binascii.Error, ValueError, TransformError) as exc:
            yield Failure("undecodable_record", f"record {index}: {exc}")


def _direct_batch(
    messages: list[str], options: TransformOptions, log_group: str | None, log_stream: str | None
) -> EncodedBatch:
    """Flow logs sent straight to Firehose, as ``decode_record`` reads them (no id, no
    timestamp), named like any local input."""
    events = tuple(map(LogEvent, repeat(None), repeat(None), messages))
    return transform_batch(
        LogBatch(origin="direct", events=events, log_group=log_group, log_stream=log_stream),
        options,
    )


def read_units(
    stream: IO[bytes],
    options: TransformOptions,
    *,
    log_group: str | None = None,
    log_stream: str | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Unit]:
    """Tell what ``stream`` holds (:func:`transforms.sniff.sniff`) and yield its transformed
    batches, or failures, in input order.

    Args:
        stream: the input, read once from the start.
        options: routing, formats, endpoint and the decompression ceiling.
        log_group: the name to route text, direct records and other JSON by (DESIGN.md
            section 3); see :func:`input_names`.
        log_stream: likewise; the default ``source`` is ``<log_group>:<log_stream>``.
        stop: when set, stop reading at the next chunk boundary.

    Raises:
        OSError, EOFError, zlib.error, ValueError: the input broke off or is corrupt
            (:data:`INPUT_ERRORS`); the units read before that point were yielded.
    """
    stop = stop or threading.Event()
    limit = options.max_decompressed_bytes
    head, buffered = _head(stream)
    sniffed = sniff(head)
    if sniffed.kind == "payload":
        data = buffered.read(limit + 1)
        try:
            slices = transform_payload_slices(data, options, max_events=PAYLOAD_SLICE_EVENTS)
        except TransformError as exc:
            yield Failure("undecodable_record", str(exc))
            return
        del data  # decoded: the slices hold what is left to shape
        yield from slices
        return
    if sniffed.kind == "json":
        data = buffered.read(limit + 1)
        if len(data) <= limit:
            document = read_document(data)
            shape = event_shape(document)
            if document is not None and shape is not None and shape != "sqs":
                yield from _record_units(event_payloads(document, shape), options)
                return
            text = data.decode("utf-8", "replace")
            messages = direct_messages(text)
            if messages is not None:
                yield _direct_batch(messages, options, log_group, log_stream)
                return
            if document is not None:  # one JSON document of another shape: one text event
                yield transform_lines(
                    [text], log_group=log_group, log_stream=log_stream, origin="text",
                    options=options,
                )  # fmt: skip
                return
        # Lines of text after all: put the bytes already read back in front of the rest.
        buffered = io.BufferedReader(_Prefixed(data, buffered))
    yield from _text_units(
        text_line_blocks(buffered, max_inflated=None),
        options,
        log_group=log_group,
        log_stream=log_stream,
        stop=stop,
    )


def _head(stream: IO[bytes]) -> tuple[bytes, Any]:
    """The first bytes of ``stream`` (at least :data:`SNIFF_MIN_BYTES` unless it is shorter)
    and a buffered stream that still yields them.

    A file's buffer holds that much at once; a pipe hands out what has arrived so far, so a
    short peek is topped up by reading, and what was read is put back in front of the rest.
    """
    # Sniffing needs peek(); files opened "rb" and stdin's buffer have it already.
    buffered: Any = (
        stream
        if hasattr(stream, "peek")
        else io.BufferedReader(cast(io.RawIOBase, stream), buffer_size=SNIFF_BYTES)
    )
    head = bytes(buffered.peek(SNIFF_BYTES)[:SNIFF_BYTES])
    if len(head) >= SNIFF_MIN_BYTES:
        return head, buffered
    read = getattr(buffered, "read1", None) or buffered.read
    pieces: list[bytes] = []
    size = 0
    while size < SNIFF_MIN_BYTES:
        piece = read(SNIFF_MIN_BYTES - size)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    head = b"".join(pieces)
    return head, io.BufferedReader(_Prefixed(head, buffered))


class _Prefixed(io.RawIOBase):
    """A stream that yields ``head`` and then whatever ``rest`` still holds."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
