"""HEC event shaping: one JSON object per event for ``/services/collector/event``.

``{"time", "host", "source", "sourcetype", "index", "fields", "event"}`` in that order, absent
keys omitted (DESIGN.md §3). ``time`` is epoch seconds with a millisecond fraction: CloudWatch
timestamps are milliseconds, divided by 1000. Flow-log lines take their ``time`` from ``start``
(the Splunk Add-on for AWS does the same), falling back to the CloudWatch timestamp.

``to_hec_event`` and ``encode`` are the readable reference; the pipeline produces the same bytes
without building a dict per event, from ``envelope`` (the constant middle of every object of a
batch, serialized once) and the helpers here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache

from transforms.errors import FlowLogParseError
from transforms.records import WIRE_ERRORS, HecEvent, LogEvent
from transforms.routing import Destination
from transforms.vpc_flow import epoch_seconds, is_flow_int, parse_flow_log, to_splunk_fields

_SEPARATORS = (",", ":")


def dumps(value: object) -> str:
    """Compact JSON, non-ASCII kept as is: the one serialization every HEC body uses."""
    return json.dumps(value, separators=_SEPARATORS, ensure_ascii=False)


@lru_cache(maxsize=1024)
def envelope(dest: Destination) -> str:
    """The part of every event object between ``time`` and the event's value.

    ``"host":..,"source":..,"sourcetype":..,"index":..,"fields":{..},"event":`` with absent
    (None or empty) values left out; an object is ``{"time":T,`` + this + event + ``}``, or
    ``{`` + this + event + ``}`` without a time.
    """
    parts = [
        f"{dumps(key)}:{dumps(value)}"
        for key, value in (
            ("host", dest.host),
            ("source", dest.source),
            ("sourcetype", dest.sourcetype),
            ("index", dest.index),
        )
        if value
    ]
    if dest.fields:
        parts.append(f'"fields":{dumps(dict(dest.fields))}')
    parts.append('"event":')
    return ",".join(parts)


def hec_time(timestamp_ms: int) -> float:
    """HEC ``time`` (seconds, millisecond fraction) from a CloudWatch timestamp."""
    return timestamp_ms / 1000


def flow_line_fits(line: str, fields: tuple[str, ...]) -> tuple[bool, int | float | None]:
    """Whether a line fits its format for ``event_format=raw``, and its ``start`` in seconds.

    A line fits when it has one value per field and its ``start`` (if the format has one) is
    an integer; in raw mode nothing else is checked, the line is sent untouched.
    """
    values = line.split()
    if len(values) != len(fields):
        return False, None
    if "start" not in fields:
        return True, None
    start = values[fields.index("start")]
    if not is_flow_int(start):
        return False, None
    return True, epoch_seconds(start)


def to_hec_event(event: LogEvent, dest: Destination) -> HecEvent:
    """One log event as an event-endpoint object.

    Args:
        event: the log event.
        dest: its destination (``routing.resolve``).

    Returns:
        The object: a flow-log line whose format fits is sent untouched
        (``event_format=raw``, ``time`` from ``start``) or as the add-on-named record
        (``json``); a line that does not fit, and any other message, is sent as its string
        with the CloudWatch time.
    """
    time: int | float | None = (
        hec_time(event.timestamp_ms) if event.timestamp_ms is not None else None
    )
    body: str | dict[str, object] = event.message
    if dest.flow_fields is not None:
        if dest.event_format == "json":
            try:
                record = parse_flow_log(event.message, dest.flow_fields)
            except FlowLogParseError:
                pass
            else:
                body = to_splunk_fields(record)
                start = dict(zip(record.fields, record.values, strict=True)).get("start")
                if start is not None:
                    time = epoch_seconds(start)
        else:
            fits, start_seconds = flow_line_fits(event.message, dest.flow_fields)
            if fits and start_seconds is not None:
                time = start_seconds
    out: HecEvent = {}
    if time is not None:
        out["time"] = time
    if dest.host:
        out["host"] = dest.host
    if dest.source:
        out["source"] = dest.source
    if dest.sourcetype:
        out["sourcetype"] = dest.sourcetype
    if dest.index:
        out["index"] = dest.index
    if dest.fields:
        out["fields"] = dict(dest.fields)
    out["event"] = body
    return out


def encode(events: Iterable[HecEvent]) -> bytes:
    """Objects concatenated, as the event endpoint takes them (UTF-8, compact)."""
    return "".join(map(dumps, events)).encode("utf-8", WIRE_ERRORS)
