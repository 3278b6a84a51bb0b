"""The transform: one record's bytes in, HEC-ready events out (``EncodedBatch``).

Per batch: decode (``transforms.cloudwatch``), resolve the route once (``transforms.routing``),
apply the route's shaping rules when it has any (``transforms.rules``: drop, sample, redact,
time from the message, JSON events), serialize the constant part of the event objects once
(``hec_event.envelope``) and hand the messages to the shaper the destination calls for
(``transforms.shaping``): raw lines, plain events, or flow-log lines sent untouched or as
JSON records. With ``SPLUNK_DEDUP_FIELD`` every event object gets its dedup key as an
indexed field (``rules.with_dedup_keys``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from json.encoder import encode_basestring
from typing import Final, NamedTuple, Protocol

from transforms.cloudwatch import (
    GZIP_MAGIC,
    SubscriptionPayload,
    decode_record,
    read_subscription,
)
from transforms.hec_event import envelope
from transforms.hec_event import envelope as envelope_of
from transforms.options import DEFAULT_DESTINATION, Endpoint, TransformOptions
from transforms.records import (
    EncodedBatch,
    EncodedEvents,
    LogBatch,
    Origin,
    RawTarget,
)
from transforms.routing import Destination, resolve
from transforms.rules import DEDUP_MARKER, compile_shaper, with_dedup_keys
from transforms.shaping import (
    cloudwatch_times,
    flow_json_events,
    flow_raw_events,
    plain_events,
    raw_lines,
    timed_events,
)
from transforms.vpc_flow import FlowFormat, compile_format, fields_from_header, is_header_line

__all__ = [
    "EncodedBatch",
    "firehose_payload",
    "transform_batch",
    "transform_lines",
    "transform_payload",
    "transform_payload_slices",
]

#: Events of a CloudWatch Logs payload shaped at once by :func:`transform_payload_slices`'s
#: callers (``forward``, the daemon, the push Lambda): a payload of 100,000 events is decoded
#: whole but shaped, and sent, a slice at a time, so requests go out while the rest is shaped.
PAYLOAD_SLICE_EVENTS: Final = 5_000


def transform_payload(data: bytes, options: TransformOptions) -> EncodedBatch:
    """Transform one Firehose or Kinesis record (see ``cloudwatch.decode_record``).

    Args:
        data: the record's bytes (base64 already decoded).
        options: routing, formats, endpoint and limits.

    Returns:
        The encoded batch; a control message gives ``is_control`` and no events.

    Raises:
        PayloadTooLargeError: inflates past ``options.max_decompressed_bytes``.
        DecodeError: gzip that is not a valid subscription payload.
    """
    if data.startswith(GZIP_MAGIC):
        payload = read_subscription(data, max_decompressed_bytes=options.max_decompressed_bytes)
        return _encode(
            options, payload, payload.messages, ids=payload.ids, timestamps=payload.timestamps
        )
    return transform_batch(
        decode_record(data, max_decompressed_bytes=options.max_decompressed_bytes), options
    )


def transform_payload_slices(
    data: bytes, options: TransformOptions, *, max_events: int
) -> Iterator[EncodedBatch]:
    """:func:`transform_payload` in slices of at most ``max_events`` events, in order.

    The payload is decoded here, whole (so its errors raise from this call, before any
    slice); each slice is shaped when asked for, so a caller that sends each slice before
    asking for the next overlaps the shaping with the sending. The slices together hold the
    events of :func:`transform_payload`, in its order, and their counts (``unparsed``,
    ``filtered``, ``sampled``, ``time_unparsed``) add up to its counts: every step of the
    shaping is per event. A control message, or a payload of at most ``max_events``, is one
    slice.

    Raises:
        PayloadTooLargeError: inflates past ``options.max_decompressed_bytes``.
        DecodeError: gzip that is not a valid subscription payload.
    """
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, not {max_events}")
    if not data.startswith(GZIP_MAGIC):
        return iter((transform_payload(data, options),))
    payload = read_subscription(data, max_decompressed_bytes=options.max_decompressed_bytes)
    if payload.is_control or len(payload.messages) <= max_events:
        return iter(
            (
                _encode(
                    options,
                    payload,
                    payload.messages,
                    ids=payload.ids,
                    timestamps=payload.timestamps,
                ),
            )
        )
    return _slices(options, payload, max_events)


def _slices(
    options: TransformOptions, payload: SubscriptionPayload, max_events: int
) -> Iterator[EncodedBatch]:
    """Shape ``payload`` ``max_events`` events at a time (see transform_payload_slices)."""
    events, timestamps, messages = payload.events, payload.timestamps, payload.messages
    for start in range(0, len(messages), max_events):
        stop = start + max_events
        part = replace(
            payload,
            events=events[start:stop],
            timestamps=timestamps[start:stop],
            messages=messages[start:stop],
        )
        yield _encode(options, part, part.messages, ids=part.ids, timestamps=part.timestamps)


def transform_batch(batch: LogBatch, options: TransformOptions) -> EncodedBatch:
    """Transform a decoded batch (a ``LogBatch`` from any source)."""
    events = batch.events
    return _encode(
        options,
        batch,
        [event.message for event in events],
        ids=[event.id for event in events],
        timestamps=[event.timestamp_ms for event in events],
    )


def transform_lines(
    lines: Iterable[str],
    *,
    log_group: str | None,
    log_stream: str | None,
    origin: Origin = "s3",
    options: TransformOptions,
    flow_fields: tuple[str, ...] | None = None,
    account: str | None = None,
) -> EncodedBatch:
    """Transform the lines of a file (an S3 flow-log file, a local file).

    Lines carry no timestamp: events without a usable ``start`` get no ``time`` (HEC then
    uses the arrival time). Blank lines are skipped, line endings removed.

    Args:
        lines: the file's lines.
        log_group: the bucket (S3) or a name for the source.
        log_stream: the object key (S3) or file name.
        origin: ``s3`` by default.
        options: routing, formats and endpoint.
        flow_fields: the fields the file's header names. When None and the first line is a
            header (nothing but flow-log field names), the fields come from it; a header
            line is never sent as an event.
        account: the account the file belongs to, for routing.

    Raises:
        FlowLogFormatError: the header names an unknown field.
    """
    messages = [line.rstrip("\r\n") for line in lines]
    messages = [line for line in messages if line.strip()]
    if messages and is_header_line(messages[0]):
        header = fields_from_header(messages.pop(0))
        flow_fields = flow_fields or header
    return _encode(
        options,
        _FileEnvelope(origin, log_group, log_stream, account),
        messages,
        flow_fields=flow_fields,
    )


def firehose_payload(batch: EncodedBatch, endpoint: Endpoint | None = None) -> bytes:
    """The bytes Firehose delivers for one record.

    Event endpoint: the JSON objects concatenated; raw endpoint: the lines joined with
    ``\\n`` plus a trailing ``\\n``. No events: empty bytes.

    Raises:
        ValueError: ``endpoint`` is not the one the batch was encoded for.
    """
    if endpoint is not None and endpoint != batch.endpoint:
        raise ValueError(f"batch was encoded for the {batch.endpoint} endpoint, not {endpoint}")
    separator, terminator = ("", "") if batch.endpoint == "event" else ("\n", "\n")
    events = batch.events
    if isinstance(events, EncodedEvents):
        return events.body(separator, terminator)
    payloads = [event.payload for event in events]
    if not payloads:
        return b""
    return separator.encode().join(payloads) + terminator.encode()


class _Envelope(Protocol):
    """Where a payload's events came from, whatever decoded it (a subscription payload, a
    ``LogBatch``, a file): what routing and the encoded batch need besides the events."""

    @property
    def origin(self) -> Origin: ...
    @property
    def log_group(self) -> str | None: ...
    @property
    def log_stream(self) -> str | None: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def is_control(self) -> bool: ...


class _FileEnvelope(NamedTuple):
    """The envelope of a file's lines: named by the caller, never a control message."""

    origin: Origin
    log_group: str | None
    log_stream: str | None
    owner: str | None
    is_control: bool = False


def _encode(
    options: TransformOptions,
    envelope: _Envelope,
    messages: list[str],
    *,
    ids: Sequence[str | None] | None = None,
    timestamps: Sequence[int | None] | None = None,
    flow_fields: tuple[str, ...] | None = None,
) -> EncodedBatch:
    """Shape the messages for the route of their envelope; a control message gives no events."""
    raw_target = None
    unparsed = 0
    counts: dict[str, int] = {}
    texts: Sequence[str] = []
    endpoint = options.endpoint
    destination = DEFAULT_DESTINATION
    if envelope.is_control:
        ids = None
    else:
        dest = resolve(
            options,
            log_group=envelope.log_group,
            log_stream=envelope.log_stream,
            account=envelope.owner,
            origin=envelope.origin,
            flow_fields=flow_fields,
        )
        _, env, fmt = _plan(dest)
        destination = dest.delivery
        if options.destination_endpoints:  # per batch, one lookup: events match their HEC
            endpoint = options.endpoint_of(destination)
        times: Sequence[str | None] | None = None
        bodies: list[str] | None = None
        if not dest.shaping.is_empty or dest.json_mode is not None:
            shaped = compile_shaper(dest.shaping, dest.json_mode).apply(
                messages, ids, timestamps, flow=fmt is not None, raw=endpoint == "raw"
            )
            messages, ids, timestamps = shaped.messages, shaped.ids, shaped.timestamps
            times, bodies = shaped.times, shaped.bodies
            counts = {
                "filtered": shaped.filtered,
                "sampled": shaped.sampled,
                "time_unparsed": shaped.time_unparsed,
            }
        dedup = options.dedup_field if endpoint == "event" else None
        if dedup is not None:
            env = envelope_of(_with_field(dest, dedup, DEDUP_MARKER))
        if endpoint == "raw":
            # Lines go untouched and the metadata rides in the query string: nothing is parsed,
            # so nothing is counted as unparsed (Splunk's sourcetype does the extraction).
            texts = raw_lines(messages)
            raw_target = RawTarget(dest.source, dest.sourcetype, dest.index, dest.host)
        elif fmt is None:
            if times is None and bodies is None:
                texts = plain_events(env, timestamps, messages)
            else:
                if bodies is None:
                    bodies = list(map(encode_basestring, messages))
                texts = timed_events(env, timestamps, times, bodies)
        elif dest.event_format == "json":
            texts, unparsed = flow_json_events(env, fmt, timestamps, messages)
        else:
            texts, unparsed = flow_raw_events(env, fmt, timestamps, messages)
        if dedup is not None:
            key_times = cloudwatch_times(timestamps, len(messages))
            if times is not None:
                key_times = [
                    t if t is not None else f for t, f in zip(times, key_times, strict=True)
                ]
            texts = with_dedup_keys(texts, ids, dest.source, key_times, messages)
    return EncodedBatch(
        origin=envelope.origin,
        endpoint=endpoint,
        events=EncodedEvents(texts, ids),
        raw_target=raw_target,
        is_control=envelope.is_control,
        unparsed=unparsed,
        log_group=envelope.log_group,
        log_stream=envelope.log_stream,
        owner=envelope.owner,
        destination=destination,
        **counts,
    )


def _with_field(dest: Destination, name: str, value: str) -> Destination:
    """``dest`` with one more indexed field (replacing one of the same name)."""
    fields = tuple((key, item) for key, item in dest.fields if key != name)
    return replace(dest, fields=(*fields, (name, value)))


_Plan = tuple[Destination, str, FlowFormat | None]
_plans: dict[int, _Plan] = {}
_PLAN_CACHE_SIZE = 4096


def _plan(dest: Destination) -> _Plan:
    """The envelope and compiled flow format of a destination, cached by identity.

    ``resolve`` returns the same object for the same route, so an ``id`` lookup replaces
    hashing the whole destination once per batch; the plan keeps its destination alive, so
    the id cannot be reused while cached.
    """
    plan = _plans.get(id(dest))
    if plan is None or plan[0] is not dest:
        fmt = compile_format(dest.flow_fields) if dest.flow_fields is not None else None
        plan = (dest, envelope(dest), fmt)
        if len(_plans) >= _PLAN_CACHE_SIZE:
            _plans.clear()
        _plans[id(dest)] = plan
    return plan
