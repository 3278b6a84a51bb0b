"""What the transforms need to know: routing rules, flow-log formats, output shape.

Built once by ``config.loader`` from settings; pure values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Endpoint = Literal["event", "raw"]
EventFormat = Literal["auto", "raw", "json"]

#: CloudWatch Logs caps a subscription batch at 1 MB of events; 64 MiB leaves ample room
#: for any honest payload while keeping a gzip bomb from exhausting a Lambda's memory.
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


#: Scalar values a ``drop`` rule's ``equals`` compares a JSON field with.
FieldValue = str | int | float | bool

#: The destination of routes that name none: the top-level HEC settings.
DEFAULT_DESTINATION = "default"

#: ``time_format`` names; anything else is an ``strptime`` pattern.
TIME_FORMATS = ("iso8601", "epoch", "epoch_ms", "epoch_us")


@dataclass(frozen=True, slots=True)
class DropRule:
    """One ``drop`` rule: the event is dropped when every condition given holds.

    ``message`` is a glob, or a regular expression searched anywhere when prefixed with
    ``re:``; ``field`` is a dotted path into a JSON message whose value must equal ``equals``.
    """

    message: str | None = None
    field: str | None = None
    equals: FieldValue | None = None


@dataclass(frozen=True, slots=True)
class RedactRule:
    """One ``redact`` rule: ``pattern`` (literal text, or a regular expression prefixed with
    ``re:``) is replaced by ``replace`` everywhere in the message."""

    pattern: str
    replace: str = "****"


@dataclass(frozen=True, slots=True)
class Shaping:
    """Per-route event shaping (README "Shaping events"): time, filters and redaction.

    In a route, these are the values the route sets; in a ``Destination``, the merge of its
    matching routes (scalars: the first rule that sets them; lists: all rules' in order).
    """

    time_field: str | None = None
    time_regex: str | None = None
    time_format: str | None = None
    drop: tuple[DropRule, ...] = ()
    sample: float | None = None
    sample_key: str | None = None
    redact: tuple[RedactRule, ...] = ()
    redact_fields: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether no shaping is asked for."""
        return self == _NO_SHAPING


_NO_SHAPING = Shaping()
#: The empty shaping, for dataclass defaults.
NO_SHAPING = _NO_SHAPING


@dataclass(frozen=True, slots=True)
class Route:
    """One routing rule: match conditions (all given ones must hold) and values to set.

    Rules are evaluated in order; for each value (sourcetype, index, ...) the first matching
    rule that sets it wins, so a rule may set only ``index`` and keep the default sourcetype.
    Patterns are shell globs, or regular expressions when prefixed with ``re:``.
    """

    log_group: str | None = None
    log_stream: str | None = None
    account: str | None = None
    origin: str | None = None
    sourcetype: str | None = None
    index: str | None = None
    source: str | None = None
    host: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    flow_log_format: tuple[str, ...] | None = None
    event_format: EventFormat | None = None
    shaping: Shaping = field(default=_NO_SHAPING)
    #: a ``[destinations.NAME]`` table's name; None: the next matching rule's, or ``default``.
    destination: str | None = None


@dataclass(frozen=True, slots=True)
class TransformOptions:
    """Everything the pure pipeline needs; user routes come before the built-in defaults."""

    routes: tuple[Route, ...] = ()
    endpoint: Endpoint = "event"
    event_format: EventFormat = "auto"
    flow_log_format: tuple[str, ...] | None = None  # None: VPC flow logs version 2
    default_sourcetype: str = "aws:cloudwatchlogs"
    default_index: str | None = None
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    extra_fields: tuple[tuple[str, str], ...] = field(default=())
    #: SPLUNK_DEDUP_FIELD: the indexed field that carries each event's dedup key (None: off).
    dedup_field: str | None = None
    #: The HEC endpoint of each named destination whose endpoint is not ``endpoint`` (its
    #: events are shaped for it); destinations not listed use ``endpoint``.
    destination_endpoints: tuple[tuple[str, Endpoint], ...] = ()

    def endpoint_of(self, destination: str) -> Endpoint:
        """The HEC endpoint events for ``destination`` are shaped for."""
        for name, endpoint in self.destination_endpoints:
            if name == destination:
                return endpoint
        return self.endpoint
