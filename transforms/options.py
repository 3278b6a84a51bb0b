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
