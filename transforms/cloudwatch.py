"""CloudWatch Logs subscription payloads and the other records Firehose and Kinesis carry.

A subscription payload is gzip of JSON ``{messageType, owner, logGroup, logStream,
subscriptionFilters, logEvents: [{id, timestamp, message}]}`` ("Using CloudWatch Logs
subscription filters", Amazon CloudWatch Logs User Guide). Unknown keys (``policyLevel``...)
are tolerated. Decompression is bounded: a payload that would inflate past
``max_decompressed_bytes`` fails with ``PayloadTooLargeError`` after allocating at most that
much, so a gzip bomb costs one record, never the process.

Text that is not valid UTF-8 is decoded with ``errors="replace"``: each bad byte becomes
U+FFFD, so the record still arrives (with its valid text intact) instead of failing whole.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Final, Literal, overload

from transforms.errors import DecodeError, PayloadTooLargeError
from transforms.records import WIRE_ERRORS, LogBatch, LogEvent, Origin

GZIP_MAGIC = b"\x1f\x8b"
DATA_MESSAGE: Final = "DATA_MESSAGE"
CONTROL_MESSAGE: Final = "CONTROL_MESSAGE"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, nothing else
_get_timestamp = itemgetter("timestamp")
_get_message = itemgetter("message")


class EventIds(Sequence[str | None]):
    """The ``id`` of each raw event, read on first access (the Firehose path never reads them).

    The first access reads them all and lets go of the raw events, so a batch that waits for
    acknowledgment does not keep the parsed payload alive. A missing or non-string id reads
    as None; ``decode_subscription_batch`` is the strict reader that rejects such a payload.
    """

    __slots__ = ("_events", "_ids")

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._events: list[dict[str, Any]] | None = events
        self._ids: list[str | None] | None = None

    def _read(self) -> list[str | None]:
        if self._ids is None:
            events = self._events or ()
            ids: list[Any] = list(map(dict.get, events, repeat("id")))
            if ids and set(map(type, ids)) != {str}:  # (rare) a missing or odd id: None
                ids = [_id_of(event) for event in events]
            self._ids = ids
            self._events = None
        return self._ids

    def __iter__(self) -> Iterator[str | None]:
        # Not Sequence's: one Python call per item (the deliverer reads every id).
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._events) if self._events is not None else len(self._read())

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | list[str | None] | None:
        return self._read()[index]


def _id_of(event: dict[str, Any]) -> str | None:
    value = event.get("id")
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class SubscriptionPayload:
    """A decoded subscription payload: envelope validated, events as columns.

    The pipeline's hot path reads this instead of a ``LogBatch``: lists built at C speed, no
    object per event. ``timestamps`` and ``messages`` are validated (integers, strings);
    ``ids`` are read lazily; ``to_batch`` validates everything.
    """

    message_type: Literal["DATA_MESSAGE", "CONTROL_MESSAGE"]
    owner: str | None
    log_group: str | None
    log_stream: str | None
    subscription_filters: tuple[str, ...]
    events: list[dict[str, Any]]
    timestamps: list[int]
    messages: list[str]

    @property
    def is_control(self) -> bool:
        """A CloudWatch Logs reachability check, never forwarded."""
        return self.message_type == CONTROL_MESSAGE

    @property
    def origin(self) -> Origin:
        """Always ``cloudwatch`` (as a ``LogBatch`` of it would say)."""
        return "cloudwatch"

    @property
    def ids(self) -> EventIds:
        """Each event's id (None where missing)."""
        return EventIds(self.events)

    def to_batch(self) -> LogBatch:
        """The same payload as a ``LogBatch``, every event checked.

        Raises:
            DecodeError: an event without a string ``id`` or an integer ``timestamp``.
        """
        if self.is_control:
            events: tuple[LogEvent, ...] = ()
        else:
            ids = [event.get("id") for event in self.events]
            if self.events and (
                set(map(type, ids)) != {str} or set(map(type, self.timestamps)) != {int}
            ):
                raise _event_error(self.events)
            events = tuple(map(LogEvent, ids, self.timestamps, self.messages))
        return LogBatch(
            origin=self.origin,
            events=events,
            log_group=self.log_group,
            log_stream=self.log_stream,
            owner=self.owner,
            subscription_filters=self.subscription_filters,
            is_control=self.is_control,
        )


def gunzip(data: bytes, *, max_decompressed_bytes: int) -> bytes:
    """Decompress gzip data (one or more concatenated members), bounded.

    Each member inflates into at most what is left of the ceiling plus one byte, so a bomb
    stops there; several members are then joined (briefly holding their total twice).

    Args:
        data: gzip bytes.
        max_decompressed_bytes: the ceiling on the decompressed size.

    Returns:
        The decompressed bytes.

    Raises:
        PayloadTooLargeError: the data inflates past the ceiling.
        DecodeError: not gzip, corrupt or truncated.
    """
    chunks: list[bytes] = []
    produced = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            chunk = inflater.decompress(rest, max_decompressed_bytes - produced + 1)
        except zlib.error as exc:
            raise DecodeError(f"not valid gzip data: {exc}") from None
        produced += len(chunk)
        if produced > max_decompressed_bytes:
            raise PayloadTooLargeError(
                f"payload inflates past the {max_decompressed_bytes}-byte ceiling "
                f"({len(data)} bytes compressed); a gzip bomb or a misrouted file"
            )
        chunks.append(chunk)
        if not inflater.eof:
            raise DecodeError(
                f"truncated gzip data: the stream ends before its trailer ({len(data)} bytes)"
            )
        rest = inflater.unused_data
        if not rest.strip(b"\0"):  # gzip(1) and gzip.decompress accept trailing zero padding
            break
        if not rest.startswith(GZIP_MAGIC):
            raise DecodeError(f"{len(rest)} bytes of trailing garbage after the gzip data")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _load_json(raw: bytes | str, what: str) -> Any:
    """Parse JSON; bytes that are not valid UTF-8 are decoded with ``errors="replace"``."""
    try:
        try:
            return json.loads(raw)  # bytes: json decodes them itself, without a copy here
        except UnicodeDecodeError:
            if isinstance(raw, str):
                raise
            return json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError as exc:
        raise DecodeError(f"{what} is not JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise DecodeError(f"{what} is not usable JSON: {str(exc)[:80]}") from None
    except RecursionError:
        raise DecodeError(f"{what} is JSON nested too deeply to decode") from None


def _optional_str(envelope: dict[str, Any], key: str) -> str | None:
    value = envelope.get(key)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError(f"subscription payload {key!r} is {type(value).__name__}, not a string")


def _event_error(events: list[Any]) -> DecodeError:
    """The precise complaint about the first malformed event (the slow path of columns)."""
    for index, event in enumerate(events):
        where = f"logEvents[{index}]"
        if not isinstance(event, dict):
            return DecodeError(f"{where} is {type(event).__name__}, not an object")
        for key, kind in (("id", str), ("timestamp", int), ("message", str)):
            if key not in event:
                return DecodeError(f"{where} has no {key!r}")
            value = event[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                return DecodeError(f"{where}.{key} is {type(value).__name__}, not {kind.__name__}")
    return DecodeError("logEvents is malformed")


def _columns(events: list[Any]) -> tuple[list[int], list[str]]:
    """Timestamps and messages, checked with C-speed passes (no Python loop per event).

    Ids are not read here (``EventIds`` reads them on access; the Firehose path never does).

    Raises:
        DecodeError: an event is not an object, lacks ``timestamp`` or ``message``, or has a
            non-integer timestamp or a non-string message (``_event_error`` finds the first
            culprit).
    """
    try:
        timestamps = list(map(_get_timestamp, events))
        messages = list(map(_get_message, events))
        "".join(messages)  # TypeError unless every message is a string
        total = sum(timestamps)  # TypeError unless every timestamp is a number
    except (KeyError, TypeError, IndexError):
        raise _event_error(events) from None
    if type(total) is not int:  # a float timestamp makes the total a float
        raise _event_error(events)
    return timestamps, messages


def read_subscription(data: bytes, *, max_decompressed_bytes: int) -> SubscriptionPayload:
    """Decode a subscription payload into columns (the pipeline's hot path).

    Same checks and errors as ``decode_subscription_batch``.
    """
    envelope = _load_json(
        gunzip(data, max_decompressed_bytes=max_decompressed_bytes), "subscription payload"
    )
    if not isinstance(envelope, dict):
        raise DecodeError(
            f"subscription payload is a JSON {type(envelope).__name__}, not an object"
        )
    message_type = envelope.get("messageType")
    if message_type not in (DATA_MESSAGE, CONTROL_MESSAGE):
        shown = repr(message_type)[:24] if "messageType" in envelope else "missing"
        raise DecodeError(
            f"subscription payload messageType is {shown}; expected DATA_MESSAGE or CONTROL_MESSAGE"
        )
    filters = envelope.get("subscriptionFilters") or []
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        raise DecodeError("subscription payload subscriptionFilters is not a list of strings")
    owner = _optional_str(envelope, "owner")
    log_group = _optional_str(envelope, "logGroup")
    log_stream = _optional_str(envelope, "logStream")
    if message_type == CONTROL_MESSAGE:
        return SubscriptionPayload(
            CONTROL_MESSAGE, owner, log_group, log_stream, tuple(filters), [], [], []
        )
    if "logEvents" not in envelope:
        raise DecodeError("subscription payload has no logEvents")
    events = envelope["logEvents"]
    if not isinstance(events, list):
        raise DecodeError(f"subscription payload logEvents is {type(events).__name__}, not a list")
    timestamps, messages = _columns(events)
    return SubscriptionPayload(
        DATA_MESSAGE, owner, log_group, log_stream, tuple(filters), events, timestamps, messages
    )


def decode_subscription_batch(data: bytes, *, max_decompressed_bytes: int) -> LogBatch:
    """Decode a gzip CloudWatch Logs subscription payload.

    Args:
        data: the gzip bytes (a Firehose or Kinesis record, or ``awslogs.data`` decoded).
        max_decompressed_bytes: decompression ceiling.

    Returns:
        The batch (origin ``cloudwatch``); a CONTROL_MESSAGE gives ``is_control`` and no events.

    Raises:
        PayloadTooLargeError: inflates past the ceiling.
        DecodeError: not gzip, truncated, not JSON, or not shaped like a subscription payload.
    """
    return read_subscription(data, max_decompressed_bytes=max_decompressed_bytes).to_batch()


def direct_messages(text: str) -> list[str] | None:
    """Messages of ``{"message": "<line>"}`` records (one object, or one per line), else None."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        documents = [json.loads(stripped)]
    except RecursionError:
        return None
    except ValueError:
        try:
            documents = [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except (ValueError, RecursionError):
            return None
    messages = []
    for document in documents:
        if not isinstance(document, dict) or not isinstance(document.get("message"), str):
            return None
        messages.append(document["message"])
    return messages


def decode_record(data: bytes, *, max_decompressed_bytes: int) -> LogBatch:
    """Decode any record Firehose or Kinesis may hand us, sniffing its kind.

    - gzip (``1f 8b``): a subscription payload, origin ``cloudwatch``;
    - JSON ``{"message": "<line>"}`` (a flow log sent straight to Firehose; also one such
      object per line): origin ``direct``, one event per object, no id or timestamp;
    - anything else: origin ``text``, one event per non-empty line (trailing ``\\r``
      removed), so plain-text and foreign JSON records are delivered rather than rejected.

    Raises:
        PayloadTooLargeError: gzip that inflates past the ceiling; plain data larger than it.
        DecodeError: gzip that is not a valid subscription payload.
    """
    if data.startswith(GZIP_MAGIC):
        return decode_subscription_batch(data, max_decompressed_bytes=max_decompressed_bytes)
    if len(data) > max_decompressed_bytes:
        raise PayloadTooLargeError(
            f"record of {len(data)} bytes is over the {max_decompressed_bytes}-byte ceiling"
        )
    text = data.decode("utf-8", "replace")
    messages = direct_messages(text)
    if messages is not None:
        return LogBatch(
            origin="direct", events=tuple(map(LogEvent, repeat(None), repeat(None), messages))
        )
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return LogBatch(
        origin="text",
        events=tuple(LogEvent(None, None, line) for line in lines if line.strip()),
    )


def encode_subscription_batch(batch: LogBatch) -> bytes:
    """Gzip a (sub)batch back into the subscription payload format.

    Used to split an oversized record into halves for re-ingestion: each half decodes to the
    same envelope with its share of the events.
    """
    envelope = {
        "messageType": CONTROL_MESSAGE if batch.is_control else DATA_MESSAGE,
        "owner": batch.owner,
        "logGroup": batch.log_group,
        "logStream": batch.log_stream,
        "subscriptionFilters": list(batch.subscription_filters),
        "logEvents": [
            {"id": event.id, "timestamp": event.timestamp_ms, "message": event.message}
            for event in batch.events
        ],
    }
    text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
    # A lone surrogate (from a \udXXX escape in the original) is written back as that escape.
    return gzip.compress(text.encode("utf-8", WIRE_ERRORS), compresslevel=6, mtime=0)
