"""The backsplash record format: one writer (:func:`encode_records`), one streaming reader
(:func:`iter_records`), and the decoding of one record into HEC events (:func:`decode_record`).

Records (DESIGN.md §6) are JSON objects, newline-separated or concatenated (Firehose), gzip
(multi-member too) or plain, told by the magic bytes: ``attemptsMade``, ``arrivalTimestamp``,
``errorCode``, ``errorMessage``, ``attemptEndingTimestamp``, ``rawData`` (base64) and
``EventId`` (``lambdaArn`` instead in Firehose's ``processing-failed`` records). We add
``endpoint`` and, for the raw endpoint, ``source``, ``sourcetype``, ``index`` and ``host``, so
each event goes back exactly as it was meant to go; ``destination`` names the
``[destinations.NAME]`` the events were meant for (absent: ``default``, the top-level HEC
settings), so replay sends them back there; replay adds ``replayAttempts`` and
``replaySource``.

Reading streams: memory is one read chunk plus the longest record
(:data:`MAX_RECORD_CHARS`), whatever the object's size or compression ratio. A line that
cannot be read is a :class:`CorruptLine` and reading goes on at the next line; a broken,
truncated or over-inflating gzip stream ends the object with a fatal one.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import gzip
import hashlib
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from forwarder.backsplash.layout import (
    ORIGINAL_PAYLOAD_KINDS,
    PROCESSING_FAILED,
    SPLUNK_FAILED,
    Kind,
)
from transforms.cloudwatch import GZIP_MAGIC
from transforms.errors import TransformError
from transforms.firehose_passthrough import unwrap
from transforms.options import DEFAULT_DESTINATION, Endpoint, TransformOptions
from transforms.pipeline import transform_payload
from transforms.records import EncodedEvent, RawTarget

#: Bytes asked of a stored object per read (and the most a gzip piece inflates to at once).
READ_CHUNK_BYTES: Final = 1024 * 1024
#: A single record longer than this (in characters) is reported corrupt (``line_too_long``)
#: and skipped to the next newline as it streams, instead of being buffered further. Firehose
#: records hold at most 1,000 KiB (about 1.4 MB once base64-encoded), and ours one HEC event,
#: so 8 Mi characters leaves room while bounding memory (at most 4 bytes a character).
MAX_RECORD_CHARS: Final = 8 * 1024 * 1024
#: The decompression ceiling for one S3 object (gzip): what inflates past it fails the object
#: (like a broken gzip stream) after the records before that point. Far above any real object
#: (Firehose buffers at most 128 MiB, flow-log files 75 MB), it bounds the time a gzip bomb
#: costs; memory is bounded by streaming whatever the size.
MAX_OBJECT_INFLATED_BYTES: Final = 4 * 1024 * 1024 * 1024

_WHITESPACE: Final = re.compile(r"[ \t\r\n]*")
_DECODER: Final = json.JSONDecoder()


# ---------------------------------------------------------------------- writing


def payload_event_id(payload: bytes) -> str:
    """A stable id for an event without a CloudWatch id: a hash of its HEC payload."""
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Failure:
    """Why events are backsplashed: what every record of one written object shares.

    Attributes:
        error_code: Firehose-style code, e.g. ``Splunk.AckTimeout`` (``errorCode``).
        error_message: what happened, in words (HEC's text and code when there was one).
        attempts: requests made for these events (``attemptsMade``).
        endpoint: ``event`` or ``raw``, stored with each record.
        raw_target: raw-endpoint metadata, stored with each record.
        arrival_ms: when the events arrived (epoch ms, ``arrivalTimestamp``); the time of
            the write when None.
        destination: the ``[destinations.NAME]`` the events were for (``destination``);
            None or ``default``: not written, as before destinations existed.
    """

    error_code: str
    error_message: str
    attempts: int
    endpoint: Endpoint
    raw_target: RawTarget | None = None
    arrival_ms: int | None = None
    destination: str | None = None


def encode_records(
    events: Sequence[EncodedEvent],
    failure: Failure,
    *,
    ending_ms: int,
    per_record: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """The gzip JSON-lines body of a backsplash object, one line per event.

    ``ending_ms`` is ``attemptEndingTimestamp`` (and ``arrivalTimestamp`` when the failure
    names none). ``per_record`` (one mapping per event, optional) adds or overrides keys of
    each line; replay uses it to keep each event's ``arrivalTimestamp`` and count
    ``replayAttempts``.
    """
    common: dict[str, Any] = {
        "attemptsMade": failure.attempts,
        "arrivalTimestamp": ending_ms if failure.arrival_ms is None else failure.arrival_ms,
        "errorCode": failure.error_code,
        "errorMessage": failure.error_message,
        "attemptEndingTimestamp": ending_ms,
    }
    extra: dict[str, Any] = {"endpoint": failure.endpoint}
    if failure.endpoint == "raw" and failure.raw_target is not None:
        extra.update({k: v for k, v in failure.raw_target._asdict().items() if v is not None})
    if failure.destination not in (None, DEFAULT_DESTINATION):
        extra["destination"] = failure.destination
    if per_record is not None and len(per_record) != len(events):
        raise ValueError(f"{len(events)} events but {len(per_record)} per_record mappings")
    lines = [
        json.dumps(
            {
                **common,
                "rawData": base64.b64encode(event.payload).decode("ascii"),
                "EventId": event.event_id or payload_event_id(event.payload),
                **extra,
                **(per_record[position] if per_record is not None else {}),
            },
            separators=(",", ":"),
        )
        for position, event in enumerate(events)
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)


# ---------------------------------------------------------------------- streaming read


@dataclass(slots=True)
class RawRecord:
    """One JSON record of an object: its position (0-based) and 1-based line number."""

    record_no: int
    line: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CorruptLine:
    """A record that cannot be re-delivered: its 1-based line and why.

    ``fatal``: the rest of the object cannot be read (broken, truncated or over-inflating
    gzip); ``key``: the object's key, where a report collects lines of many objects.
    """

    line: int
    reason: str
    fatal: bool = False
    key: str = ""


def decompressed(
    chunks: Iterable[bytes], *, max_bytes: int | None = MAX_OBJECT_INFLATED_BYTES
) -> Iterator[bytes]:
    """The object's bytes, gunzipped (multi-member too) when they start with gzip's magic.

    Each piece holds at most :data:`READ_CHUNK_BYTES` inflated bytes, so memory does not
    follow the compression ratio.

    Args:
        chunks: the stored bytes.
        max_bytes: the decompression ceiling (None: none); plain bytes are not counted.

    Raises:
        ValueError: broken or truncated gzip, or gzip inflating past ``max_bytes`` (the bytes
            that decoded before are yielded first).
    """
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= 2:
            break
    if not head:
        return
    if head[:2] != GZIP_MAGIC:
        yield head
        yield from iterator
        return
    member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    fed = False  # the current member has input
    inflated = 0

    def feed(data: bytes) -> Iterator[bytes]:
        nonlocal member, fed, inflated
        while data:
            fed = True
            try:
                out = member.decompress(data, READ_CHUNK_BYTES)
            except zlib.error as exc:
                raise ValueError(f"broken gzip: {exc}") from None
            if out:
                inflated += len(out)
                if max_bytes is not None and inflated > max_bytes:
                    raise ValueError(f"gzip inflates past the {max_bytes}-byte ceiling")
                yield out
            if member.eof:
                data = member.unused_data
                member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                fed = False
                if data and data[:2] != GZIP_MAGIC:
                    if data.strip(b"\0"):
                        raise ValueError("bytes after the gzip data that are not gzip")
                    return
            else:
                data = member.unconsumed_tail

    yield from feed(head)
    for chunk in iterator:
        yield from feed(chunk)
    if fed and not member.eof:
        raise ValueError("gzip data ends early (truncated object)")


def iter_records(
    chunks: Iterable[bytes], *, max_inflated: int | None = MAX_OBJECT_INFLATED_BYTES
) -> Iterator[RawRecord | CorruptLine]:
    """Records of a backsplash object, streamed: JSON objects, newline-separated or not.

    A line that is not JSON (invalid UTF-8 included), JSON that is not an object, JSON nested
    too deeply to decode (``RecursionError``), a number Python refuses to convert, or a record
    longer than :data:`MAX_RECORD_CHARS` (``line_too_long``, skipped as it streams) yields a
    :class:`CorruptLine` and reading goes on at the next line: one bad line never stops the good
    ones before or after it. Memory: one read chunk plus at most :data:`MAX_RECORD_CHARS`.

    Args:
        chunks: the stored bytes (gzip or plain).
        max_inflated: the decompression ceiling (:func:`decompressed`); past it, a fatal
            :class:`CorruptLine`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    raw_decode = _DECODER.raw_decode
    skip_ws = _WHITESPACE.match
    buffer = ""
    line = 1
    record_no = 0
    skipping = False  # inside a corrupt line: drop text up to the next newline

    def consume(final: bool) -> Iterator[RawRecord | CorruptLine]:
        nonlocal buffer, line, record_no, skipping
        pos = 0
        end = len(buffer)
        while True:
            if skipping:
                newline = buffer.find("\n", pos)
                if newline < 0:
                    pos = end
                    break
                skipping = False
                pos = newline
            ws = skip_ws(buffer, pos)
            stop = ws.end() if ws is not None else pos
            line += buffer.count("\n", pos, stop)
            pos = stop
            if pos >= end:
                break
            reason: str | None = None
            try:
                obj, after = raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                newline = buffer.find("\n", pos)
                if newline < 0 and not final:
                    if end - pos <= MAX_RECORD_CHARS:
                        break  # probably a record cut by the chunk boundary: wait for more
                    reason = f"line_too_long: a record longer than {MAX_RECORD_CHARS} characters"
                else:
                    reason = f"not JSON: {exc.msg}"
            except RecursionError:
                reason = "not usable JSON: nested too deeply to decode"
            except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
                reason = f"not usable JSON: {str(exc)[:80]}"
            if reason is not None:
                yield CorruptLine(line, reason)
                newline = buffer.find("\n", pos)
                if newline < 0:
                    pos = end
                    skipping = not final
                    break
                pos = newline
                continue
            if after >= end and not final and not isinstance(obj, dict):
                break  # a number or literal could continue in the next chunk; objects cannot
            if not isinstance(obj, dict):
                yield CorruptLine(line, f"a JSON {type(obj).__name__}, not an object")
            else:
                yield RawRecord(record_no, line, obj)
                record_no += 1
            line += buffer.count("\n", pos, after)
            pos = after
        buffer = buffer[pos:]

    try:
        for chunk in decompressed(chunks, max_bytes=max_inflated):
            buffer += decoder.decode(chunk)
            yield from consume(final=False)
    except ValueError as exc:
        buffer += decoder.decode(b"", final=True)
        yield from consume(final=True)
        yield CorruptLine(line, str(exc), fatal=True)
        return
    buffer += decoder.decode(b"", final=True)
    yield from consume(final=True)


def decode_records(data: bytes) -> Iterator[dict[str, Any]]:
    """The records of an object this process wrote (the spool, tests), strictly: the
    :func:`iter_records` reader, raising at the first line it cannot read.

    Raises:
        ValueError: a line that is not a JSON object (the reason says why), or gzip that
            breaks off.
    """
    for item in iter_records([data]):
        if isinstance(item, RawRecord):
            yield item.data
        else:
            raise ValueError(f"line {item.line}: {item.reason}")  # noqa: TRY004 - bad data


# ---------------------------------------------------------------------- record decoding


class CorruptRecordError(ValueError):
    """A record that is JSON but cannot be replayed (bad rawData, bad CloudWatch payload)."""


@dataclass(slots=True)
class DecodedRecord:
    """A record ready to send: its events for one endpoint, and what it was."""

    kind: str
    error_code: str
    arrival_ms: int | None
    replay_attempts: int
    endpoint: Endpoint
    events: Sequence[EncodedEvent]
    raw_target: RawTarget | None
    payload_bytes: int
    event_id: str | None
    control: bool = False
    #: Events of a re-transformed payload a route's ``drop`` / ``sample`` rules removed.
    filtered: int = 0
    sampled: int = 0
    #: The destination the events go back to: the record's ``destination`` (a re-transformed
    #: payload: its route's), ``default`` when it names none.
    destination: str = DEFAULT_DESTINATION

    def unrouted(self, message: str) -> Failure:
        """The failure that parks this record's events under ``replay-failed/``: its
        destination is not in the settings (``Splunk.UnknownDestination``)."""
        return Failure(
            "Splunk.UnknownDestination",
            message,
            0,
            self.endpoint,
            self.raw_target,
            self.arrival_ms,
            self.destination,
        )


#: ``rawData`` that starts with this is base64 of gzip (``1f 8b 08``): an original CloudWatch
#: Logs payload, never something sent to HEC.
_GZIP_BASE64: Final = "H4sI"


def record_kind(record: Mapping[str, Any], key_kind_: Kind | None) -> Kind:
    """The kind of a record: from its key, else by content. Without our ``endpoint``, a
    ``lambdaArn`` or a gzip ``rawData`` (an original payload, as in ``decompression-failed``
    or ``format-conversion-failed`` objects found under any prefix) means processing-failed,
    its payload re-transformed; anything else is splunk-failed."""
    if key_kind_ is not None:
        return key_kind_
    if "endpoint" not in record:
        raw_data = record.get("rawData")
        if "lambdaArn" in record or (
            isinstance(raw_data, str) and raw_data.startswith(_GZIP_BASE64)
        ):
            return PROCESSING_FAILED
    return SPLUNK_FAILED


_INT_LIMIT: Final = 2**63  # a timestamp or count past a signed 64-bit integer is not one


def _int_or_none(value: object) -> int | None:
    """An integer field read tolerantly: None for anything else (NaN, infinities, booleans,
    digits Python refuses, values past 64 bits)."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and len(value) <= 40 and value.strip().isdecimal():
        try:
            number = int(value.strip())
        except ValueError:  # decimal digits int() refuses
            return None
    if number is None or not -_INT_LIMIT < number < _INT_LIMIT:
        return None
    return number


def record_meta(record: Mapping[str, Any]) -> tuple[str, int | None, int]:
    """``(errorCode, arrivalTimestamp ms, replayAttempts)`` of a record, tolerantly
    (``ErrorCode``, as Firehose's format-conversion-failed records spell it, too)."""
    code = record.get("errorCode", record.get("ErrorCode"))
    attempts = _int_or_none(record.get("replayAttempts")) or 0
    return (
        code if isinstance(code, str) and code else "Unknown",
        _int_or_none(record.get("arrivalTimestamp")),
        attempts,
    )


def split_hec_payload(payload: bytes, endpoint: str | None = None) -> tuple[Endpoint, list[bytes]]:
    """The events in a payload that was sent to HEC, and the endpoint it was meant for.

    With ``endpoint`` given (our records say it) it is trusted: an event payload is one
    object, a raw payload is split into lines. Without it: one or more concatenated JSON
    objects, each with an ``event`` key, are event-endpoint events; anything else is raw
    lines (non-empty lines, line breaks removed).
    """
    if endpoint == "event":
        return "event", [payload.strip()] if payload.strip() else []
    if endpoint != "raw":
        stripped = payload.strip()
        if stripped[:1] == b"{":
            events = _event_objects(stripped)
            if events is not None:
                return "event", events
    lines = [line.rstrip(b"\r") for line in payload.split(b"\n")]
    return "raw", [line for line in lines if line.strip()]


def _event_objects(payload: bytes) -> list[bytes] | None:
    """The concatenated event objects of a payload; None when it is not only those (invalid
    UTF-8, JSON nested too deeply or with numbers Python refuses: raw lines, then)."""
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            return None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    else:
        return [payload] if isinstance(obj, dict) and "event" in obj else None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    events: list[bytes] = []
    pos = 0
    end = len(text)
    while pos < end:
        try:
            obj, after = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or "event" not in obj:
            return None
        events.append(text[pos:after].encode("utf-8"))
        ws = _WHITESPACE.match(text, after)
        pos = ws.end() if ws is not None else after
    return events


def decode_record(record: Mapping[str, Any], kind: str, options: TransformOptions) -> DecodedRecord:
    """Turn one backsplash record into events for HEC.

    Whatever the record holds, this raises nothing but :class:`CorruptRecordError`: a
    hostile record is that record's problem only.

    Args:
        record: the JSON record.
        kind: from :func:`record_kind`.
        options: transform options, for processing-failed payloads.

    Raises:
        CorruptRecordError: no usable ``rawData``, or a payload the transform refuses.
    """
    try:
        return _decode_record(record, kind, options)
    except CorruptRecordError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # The decoders below catch what they expect; this keeps anything else (deep nesting,
        # numbers out of range) one record's problem instead of the whole object's.
        raise CorruptRecordError(f"undecodable record: {type(exc).__name__}") from None


def raw_payload(record: Mapping[str, Any]) -> bytes:
    """A record's ``rawData``, base64-decoded.

    Raises:
        CorruptRecordError: no ``rawData`` string, or not base64.
    """
    raw_data = record.get("rawData")
    if not isinstance(raw_data, str):
        raise CorruptRecordError("no rawData string")
    try:
        return base64.b64decode(raw_data, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptRecordError("rawData is not base64") from None


def is_original_payload(payload: bytes, kind: str, stated: object) -> bool:
    """Whether a record's payload is original input for the transform: its kind says so (and
    no ``endpoint`` of ours says otherwise), or it is gzip (HEC never gets gzip as an event,
    so a CloudWatch Logs payload is never sent as a raw line)."""
    return payload[:2] == GZIP_MAGIC or (
        kind in ORIGINAL_PAYLOAD_KINDS and stated not in ("event", "raw")
    )


def _decode_record(
    record: Mapping[str, Any], kind: str, options: TransformOptions
) -> DecodedRecord:
    error_code, arrival_ms, attempts = record_meta(record)
    payload = raw_payload(record)
    record_id = record.get("EventId")
    event_id = record_id if isinstance(record_id, str) and record_id else None
    stated = record.get("endpoint")
    passthrough = unwrap(payload)
    if passthrough is not None:  # a HEC event that was on its way back through Firehose
        payload, stated = passthrough
    elif is_original_payload(payload, kind, stated):
        try:
            batch = transform_payload(payload, options)
        except TransformError as exc:
            raise CorruptRecordError(f"processing-failed payload: {exc}") from None
        events = [
            event
            if event.event_id
            else EncodedEvent(event.payload, payload_event_id(event.payload))
            for event in batch.events
        ]
        return DecodedRecord(
            kind=kind,
            error_code=error_code,
            arrival_ms=arrival_ms,
            replay_attempts=attempts,
            endpoint=batch.endpoint,
            events=events,
            raw_target=batch.raw_target,
            payload_bytes=sum(len(event.payload) for event in events),
            event_id=event_id,
            control=batch.is_control,
            filtered=batch.filtered,
            sampled=batch.sampled,
            destination=batch.destination,
        )
    endpoint, payloads = split_hec_payload(payload, stated if isinstance(stated, str) else None)
    raw_target = None
    if endpoint == "raw":
        values = [record.get(name) for name in ("source", "sourcetype", "index", "host")]
        if any(isinstance(value, str) for value in values):
            raw_target = RawTarget(*(v if isinstance(v, str) else None for v in values))
    if len(payloads) == 1:
        ids: list[str] = [event_id or payload_event_id(payloads[0])]
    else:
        ids = [
            f"{event_id}:{position}" if event_id else payload_event_id(item)
            for position, item in enumerate(payloads)
        ]
    return DecodedRecord(
        kind=kind,
        error_code=error_code,
        arrival_ms=arrival_ms,
        replay_attempts=attempts,
        endpoint=endpoint,
        events=[EncodedEvent(item, ids[i]) for i, item in enumerate(payloads)],
        raw_target=raw_target,
        payload_bytes=sum(map(len, payloads)),
        event_id=event_id,
        destination=_destination(record),
    )


def _destination(record: Mapping[str, Any]) -> str:
    """A record's ``destination``: a non-empty string of at most 64 characters, else
    ``default`` (what the record names is checked against the settings by the caller)."""
    stated = record.get("destination")
    if isinstance(stated, str) and 0 < len(stated) <= 64:
        return stated
    return DEFAULT_DESTINATION
