"""Backsplash objects named by S3 notifications: recognise them by content, and decode them
as a stream.

Used by the push Lambda and the daemon's ``sqs-s3`` source when an SQS message names a
backsplash object (DESIGN.md §6) instead of a flow-log file:

- **Recognition.** By key first (:func:`forwarder.backsplash.layout.kind_from_key`;
  ``replay-failed`` wins, for safety), else by content (:func:`sniff`: the object, gunzipped,
  starts with a JSON object holding a ``rawData`` string). Flow-log files never start with
  ``{``.
- **Decoding.** :func:`decode_object` streams records with the one reader
  (:func:`forwarder.backsplash.codec.iter_records`) and decodes each
  (:func:`~forwarder.backsplash.codec.decode_record`), so this and ``forwarder replay`` read
  the same objects the same way: ``splunk-failed`` and ``replay-failed`` records carry the
  HEC payload, ``processing-failed`` and ``decompression-failed`` records (and any whose
  ``rawData`` is gzip, whatever the key) the original CloudWatch Logs payload, which goes
  through the transform. Memory: one read chunk plus the longest record.
- **No loops.** What fails again is written by
  :class:`~forwarder.backsplash.writers.ReplayFailedBacksplash` under ``replay-failed/``;
  the caller skips objects under ``replay-failed/`` and tells the user to run
  ``forwarder replay``, which counts ``replayAttempts`` and stops at its ``--max-attempts``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any, Final

from forwarder.backsplash.codec import (
    READ_CHUNK_BYTES,
    CorruptLine,
    CorruptRecordError,
    DecodedRecord,
    decode_record,
    iter_records,
    record_kind,
)
from forwarder.backsplash.layout import REPLAY_FAILED, Kind
from transforms.cloudwatch import GZIP_MAGIC
from transforms.options import TransformOptions

#: The ledger's drop reason for backsplash records that cannot be re-delivered (the push
#: Lambda's ``CORRUPT_RECORD`` and the daemon's).
CORRUPT_RECORD: Final = "backsplash_record_corrupt"
#: Compressed bytes read up front to recognise a backsplash object by its content.
SNIFF_BYTES: Final = 64 * 1024
_DECODER: Final = json.JSONDecoder()


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
    the first record is whole (``replayAttempts``: replay-failed; ``lambdaArn`` or a gzip
    ``rawData`` without our ``endpoint``: processing-failed; else splunk-failed)."""
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
    return True, record_kind(first, None)


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
    if head[:2] == GZIP_MAGIC:
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
        if isinstance(item, CorruptLine):
            yield item
            if item.fatal:
                return
            continue
        try:
            decoded = decode_record(item.data, record_kind(item.data, kind), options)
        except CorruptRecordError as exc:
            yield CorruptLine(item.line, str(exc))
            continue
        yield item.line, decoded
