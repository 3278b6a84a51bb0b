"""Backsplash objects named by S3 notifications: recognise them, decode them as a stream, and
store what fails again under ``replay-failed/`` (never where a notification would re-trigger).

Used by the push Lambda (:mod:`forwarder.push`) and the daemon's ``sqs-s3`` source
(:class:`forwarder.sources.streams.SqsS3Source`, delivered by :mod:`forwarder.daemon`) when an
SQS message names a backsplash object (DESIGN.md §6) instead of a flow-log file:

- **Recognition.** By key first (:func:`kind_from_key`: ``replay-failed/``, ``processing-failed/``
  or ``splunk-failed/`` anywhere in the key; ``replay-failed/`` wins, for safety), else by
  content (:func:`sniff`: the object, gunzipped, starts with a JSON object holding a
  ``rawData`` string). Flow-log files never start with ``{``.
- **Decoding.** Records are streamed with replay's decoder
  (:func:`forwarder.replay.engine.iter_records`
  and :func:`forwarder.replay.engine.decode_record`, both public and unit-tested), so this and
  ``forwarder replay`` read the same objects the same way: ``splunk-failed`` and
  ``replay-failed`` records carry the HEC payload (event JSON, or raw lines with our
  ``source``/``sourcetype``/``index``/``host``), ``processing-failed`` records carry the
  original CloudWatch Logs payload, which goes through the transform. Memory: one read chunk
  plus the longest record.
- **No loops.** What fails again is written by :class:`ReplayFailedBacksplash` under
  ``<prefix>replay-failed/`` with ``replayAttempts: 1``. Objects under ``replay-failed/`` are
  not re-delivered automatically (a notification on the backsplash bucket would otherwise send
  a failing event round and round): the caller skips them and tells the user to run
  ``forwarder replay``, which counts ``replayAttempts`` and stops at its ``--max-attempts``.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from forwarder.backsplash.writers import (
    BacksplashWriter,
    Endpoint,
    encode_records,
    put_under,
)
from forwarder.replay.engine import (
    PROCESSING_FAILED,
    READ_CHUNK_BYTES,
    REPLAY_FAILED,
    SPLUNK_FAILED,
    BadLine,
    CorruptRecordError,
    DecodedRecord,
    Kind,
    decode_record,
    iter_records,
    record_kind,
)
from transforms.options import TransformOptions
from transforms.records import EncodedEvent, RawTarget

__all__ = [
    "CORRUPT_RECORD",
    "PROCESSING_FAILED",
    "REPLAY_FAILED",
    "SNIFF_BYTES",
    "SPLUNK_FAILED",
    "CorruptLine",
    "DecodedRecord",
    "Kind",
    "PeekedBody",
    "ReplayFailedBacksplash",
    "body_chunks",
    "decode_object",
    "kind_from_key",
    "sniff",
]

#: Key parts naming each kind, the loop-guarded one first: a key holding ``replay-failed/`` is
#: replay-failed whatever else it holds.
KEY_MARKERS: Final[tuple[tuple[str, Kind], ...]] = (
    (f"{REPLAY_FAILED}/", REPLAY_FAILED),
    (f"{PROCESSING_FAILED}/", PROCESSING_FAILED),
    (f"{SPLUNK_FAILED}/", SPLUNK_FAILED),
)
#: The ledger's drop reason for backsplash records that cannot be re-delivered (the push
#: Lambda's ``CORRUPT_RECORD`` and the daemon's).
CORRUPT_RECORD: Final = "backsplash_record_corrupt"
#: Compressed bytes read up front to recognise a backsplash object by its content.
SNIFF_BYTES: Final = 64 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_DECODER: Final = json.JSONDecoder()


def kind_from_key(key: str) -> Kind | None:
    """The backsplash kind a key names (a marker anywhere in it), or None."""
    for marker, kind in KEY_MARKERS:
        if marker in key:
            return kind
    return None


class PeekedBody:
    """A body with ``read(n)`` and ``close()`` whose first bytes were already read (``head``)."""

    def __init__(self, body: Any, head: bytes) -> None:
        self._body = body
        self._head = head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data = self._head + bytes(self._body.read())
                self._head = b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return bytes(self._body.read() if size < 0 else self._body.read(size))

    def close(self) -> None:
        self._body.close()


def _content_kind(head: bytes) -> tuple[bool, Kind | None]:
    """Whether decompressed leading bytes look like backsplash records, and their kind when
    the first record is whole (``replayAttempts``: replay-failed; ``lambdaArn`` without our
    ``endpoint``: processing-failed; else splunk-failed)."""
    text = head.decode("utf-8", errors="replace").lstrip()
    if not text.startswith("{") or '"rawData"' not in text:
        return False, None
    try:
        first, _ = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        # Longer than the sniffed bytes, or not usable JSON (nested too deeply, numbers
        # Python refuses): the kind is told per record, and the reader reports a bad one.
        return True, None
    if not isinstance(first, dict) or not isinstance(first.get("rawData"), str):
        return False, None
    if "replayAttempts" in first:
        return True, REPLAY_FAILED
    if "lambdaArn" in first and "endpoint" not in first:
        return True, PROCESSING_FAILED
    return True, SPLUNK_FAILED


def sniff(body: Any, size: int = SNIFF_BYTES) -> tuple[PeekedBody, bool, Kind | None]:
    """Read an object's first ``size`` bytes and tell whether it holds backsplash records.

    Returns:
        ``(body, is_backsplash, kind)``: a body that yields the whole object again, whether
        the content looks like backsplash records, and their kind when the first record says
        (None: decide per record).

    Raises:
        whatever ``body.read`` raises (S3 broke off the read).
    """
    head = bytes(body.read(size))
    peeked = PeekedBody(body, head)
    sample = head
    if head[:2] == _GZIP_MAGIC:
        try:
            sample = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, size)
        except zlib.error:
            return peeked, False, None  # the ordinary path reports the broken gzip
    is_backsplash, kind = _content_kind(sample)
    return peeked, is_backsplash, kind


def body_chunks(body: Any, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """A body's bytes in chunks of at most ``size``."""
    while True:
        data = body.read(size)
        if not data:
            return
        yield bytes(data)


@dataclass(frozen=True, slots=True)
class CorruptLine:
    """A record that cannot be re-delivered: its 1-based line and why; ``fatal``: the rest of
    the object cannot be read (broken or truncated gzip)."""

    line: int
    reason: str
    fatal: bool = False


def decode_object(
    chunks: Iterator[bytes], kind: Kind | None, options: TransformOptions
) -> Iterator[tuple[int, DecodedRecord] | CorruptLine]:
    """Decode a backsplash object as it streams: ``(line, record)`` or :class:`CorruptLine`.

    Args:
        chunks: the object's bytes (gzip or plain).
        kind: from the key or the content; None: per record (``lambdaArn``).
        options: transform options (processing-failed payloads go through the transform).
    """
    for item in iter_records(chunks):
        if isinstance(item, BadLine):
            yield CorruptLine(item.line, item.reason, item.fatal)
            if item.fatal:
                return
            continue
        try:
            decoded = decode_record(item.data, record_kind(item.data, kind), options)
        except CorruptRecordError as exc:
            yield CorruptLine(item.line, str(exc))
            continue
        yield item.line, decoded


class ReplayFailedBacksplash:
    """A deliverer's backsplash for re-delivered backsplash records: the wrapped writer's
    bucket and prefix, under ``replay-failed/`` (not ``splunk-failed/``), each record with
    ``replayAttempts: 1`` so ``forwarder replay --max-attempts`` counts it.

    Args:
        writer: the ordinary backsplash (S3, spool, or S3 with the spool behind it).
        clock: wall clock (epoch seconds).
    """

    def __init__(self, writer: BacksplashWriter, *, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self._clock = clock

    def __repr__(self) -> str:
        return f"ReplayFailedBacksplash({self.writer!r})"

    def write(
        self,
        events: Sequence[EncodedEvent],
        *,
        error_code: str,
        error_message: str,
        attempts: int,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        arrival_ms: int | None = None,
    ) -> str:
        """Store the events under ``replay-failed/`` (the ``BacksplashWriter`` protocol).

        Raises:
            BacksplashError: the object could not be stored.
        """
        ending_ms = int(self._clock() * 1000)
        body = encode_records(
            events,
            error_code=error_code,
            error_message=error_message,
            attempts=attempts,
            endpoint=endpoint,
            raw_target=raw_target,
            arrival_ms=ending_ms if arrival_ms is None else arrival_ms,
            ending_ms=ending_ms,
            per_record=[{"replayAttempts": 1}] * len(events),
        )
        return put_under(self.writer, REPLAY_FAILED, body)
