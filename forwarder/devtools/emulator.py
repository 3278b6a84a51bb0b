"""A local Splunk HTTP Event Collector (HEC): acks, channels, error codes and injectable faults.

The emulator speaks the HEC wire protocol described in DESIGN.md §4 closely enough for the
forwarder's tests, demo and benchmarks: the event endpoint (concatenated JSON objects), the raw
endpoint (one event per non-empty line, metadata in the query string), indexer acknowledgment
with per-channel ``ackId`` s, the health endpoint and Splunk's ``{"text", "code"}`` bodies.
Response texts and codes follow Splunk's "Troubleshoot HTTP Event Collector" status-code table.

It is stdlib-only (``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, one daemon thread
per connection) and built not to be the bottleneck: bodies are decoded once with the C JSON
scanner, nothing is re-serialised on the way to the output file unless it must be, and the
output file is buffered.

Fault semantics (see :class:`FaultPlan`) apply to data requests (event and raw endpoints) unless
noted. The order in which a data request meets them is: down window, connection resets, black
holes and HTML 200 pages (transport faults, before anything is checked: a proxy in front of HEC
answers before HEC sees the token), then authentication and channel checks, then busy and 500
answers, then the body size limit, then body validation, then indexing (where lost and delayed
acks apply), then the answer itself, byte by byte when it drips. A request that fails a check
does not consume the budget of a later fault.

Each fault comes both as a budget (the next N requests) and as a probability per request
(``p_busy``, ``p_500``, ...). Probabilities are drawn from one ``random.Random(seed)``, so a run
with the same seed and the same order of requests meets the same faults. With no probability
set, no random number is drawn: the hot path stays as fast as without faults.

Black-holed and dripping requests hold their connection thread until the client gives up (the
client's own timeout closes the socket), the emulator stops, or ``_HOLD_MAX_S`` passes; such a
client can never block other connections or :meth:`HecEmulator.stop`.

Besides HEC, three unauthenticated endpoints serve tests and the demo: ``GET /emulator/stats``,
``GET|POST /emulator/faults`` (POST replaces the fault plan with the JSON body, whose keys
are the ``forwarder hec-emulator`` flags' names or the plan's field names: :data:`FLAG_KEYS`)
and ``POST /emulator/reset``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import repeat
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TextIO, cast, overload
from urllib.parse import parse_qs, urlsplit

import structlog

from config.loader import hec_token_from_environ
from forwarder.status import ExitStatus

if TYPE_CHECKING:
    from forwarder.commands.context import CommandContext

__all__ = [
    "EmulatorStats",
    "FaultPlan",
    "HecEmulator",
    "add_arguments",
    "run",
    "serve",
]

log = structlog.get_logger(__name__)

# HEC status codes: code -> (HTTP status, text). From Splunk's HEC status-code table.
HEC_CODES: Final[Mapping[int, tuple[int, str]]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
    19: (503, "HEC is unhealthy, ack service unavailable"),
    20: (503, "HEC is unhealthy, queues are full, ack service unavailable"),
}
# Splunk has no HEC code for an oversized body (splunkd answers 413 before HEC sees it); the
# emulator mirrors the HTTP status in "code" so clients that only read the body still see it.
CODE_TOO_LARGE: Final = 413
CODE_NOT_FOUND: Final = 404
CODE_METHOD_NOT_ALLOWED: Final = 405

EVENT_PATHS: Final = frozenset(
    {"/services/collector", "/services/collector/event", "/services/collector/event/1.0"}
)
RAW_PATHS: Final = frozenset({"/services/collector/raw", "/services/collector/raw/1.0"})
ACK_PATHS: Final = frozenset({"/services/collector/ack", "/services/collector/ack/1.0"})
HEALTH_PATHS: Final = frozenset({"/services/collector/health", "/services/collector/health/1.0"})

_ROUTES: Final[Mapping[str, str]] = {
    **dict.fromkeys(EVENT_PATHS, "event"),
    **dict.fromkeys(RAW_PATHS, "raw"),
    **dict.fromkeys(ACK_PATHS, "ack"),
    **dict.fromkeys(HEALTH_PATHS, "health"),
}

RAW_METADATA_KEYS: Final = ("source", "sourcetype", "index", "host")

_CHANNEL_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_WHITESPACE_RE: Final = re.compile(r"[ \t\n\r]*")
_DECODER: Final = json.JSONDecoder()
# Two objects side by side within one line: "}", ",", "{", spaces or tabs between.
_OBJECT_SEPARATOR_RE: Final = re.compile(r"\}[ \t]*,[ \t]*\{")
# The C string encoder behind json.dumps, called directly: the raw endpoint encodes every line.
_encode_str: Final[Callable[[str], str]] = json.encoder.encode_basestring
_MAX_LINE: Final = 65_537
_OUTPUT_BUFFER_BYTES: Final = 1 << 20
_OUTPUT_FLUSH_INTERVAL_S: Final = 1.0
_STOP_GRACE_S: Final = 2.0
# A black-holed or dripping connection is released after this long even if the client waits on.
_HOLD_MAX_S: Final = 600.0
# How often a held connection checks whether the client left or the emulator stopped.
_HOLD_POLL_S: Final = 0.2
# What a proxy or load balancer in front of HEC shows during maintenance: a 200 with HTML.
HTML_MAINTENANCE_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Scheduled maintenance</title></head>\n"
    b"<body><h1>We'll be back soon</h1><p>This service is undergoing maintenance.</p>"
    b"</body></html>\n"
)
#: The random faults: FaultPlan probability field -> fault kind counted in faults_injected.
RANDOM_FAULTS: Final[Mapping[str, str]] = {
    "p_busy": "busy",
    "p_500": "error_500",
    "p_reset": "reset",
    "p_html_200": "html_200",
    "p_blackhole": "blackhole",
    "p_drip": "drip",
    "p_lost_ack": "lost_ack",
    "p_delayed_ack": "delayed_ack",
}


@dataclass(frozen=True)
class FaultPlan:
    """Faults to inject; counts are budgets consumed by the next matching data requests.

    Attributes:
        busy_requests: the next N data requests answer 503 ``{"text":"Server is busy","code":9}``.
        retry_after_s: if set, busy answers carry ``Retry-After: <seconds>``.
        error_500_requests: the next N data requests answer 500 code 8.
        reset_requests: the next N data requests are read, then the TCP connection is reset
            (SO_LINGER 0 and close: the client sees ECONNRESET, no HTTP answer).
        lost_acks: the next N accepted data requests get an ``ackId`` that never turns true.
            Their events ARE indexed (written and counted), as when Splunk indexes a batch but
            loses its ack: a client resend then produces duplicates, exactly as in production.
            Set ``lost_ack_drops_data`` to simulate an indexer that died before indexing instead.
        lost_ack_drops_data: with ``lost_acks``, do not index the events of a lost-ack request.
        ack_delay_s: while set, every new ``ackId`` turns true only this long after its request
            was accepted (events are indexed immediately).
        down_for_s: for this many seconds from when the plan is set, the server is "down":
            data and ack requests get their connection reset and health answers 503 code 18
            (code 20 when the health probe asks ``?ack=true``).
        down_at_s: the down window starts this many seconds after the plan is set (0: at once).
        down_every_s: if > 0, the down window repeats with this period (an outage of
            ``down_for_s`` every ``down_every_s`` seconds, the first at ``down_at_s``).
        html_200_requests: the next N data requests answer ``200`` with a proxy's
            ``text/html`` maintenance page; nothing is indexed (a proxy, not HEC, answered).
        blackhole_requests: the next N data requests are read and never answered; the
            connection is held until the client closes it. Nothing is indexed.
        drip_requests: the next N data requests are processed as usual (indexed when valid),
            then answered one byte every ``drip_interval_s``.
        drip_interval_s: seconds between two bytes of a dripping answer.
        seed: seed of the random number generator behind the ``p_*`` probabilities (None: a
            random seed, drawn once when the plan is set).
        p_busy, p_500, p_reset, p_html_200, p_blackhole, p_drip: probability, per data
            request, of the fault of the same name as the budgets above (busy: 503 code 9).
        p_lost_ack: probability, per accepted data request, that its ``ackId`` is lost
            (as ``lost_acks``: the events are indexed unless ``lost_ack_drops_data``).
        p_delayed_ack: probability, per accepted data request, that its ``ackId`` turns true
            only ``delayed_ack_s`` after the request (on top of ``ack_delay_s``).
        delayed_ack_s: the delay of a randomly delayed ack.
        max_body_bytes: bodies larger than this, measured after gzip decompression (Splunk's
            ``max_content_length`` applies to the decoded content), answer 413. None: no limit.
        ack_disabled: behave like a token without indexer acknowledgment: no channel required,
            no ``ackId`` in answers, ``/ack`` answers 400 code 14. Same as ``acks=False``.
        unhealthy_code: if set (18, 19 or 20), health answers 503 with that code; data requests
            are unaffected.
    """

    busy_requests: int = 0
    retry_after_s: int | None = None
    error_500_requests: int = 0
    reset_requests: int = 0
    lost_acks: int = 0
    lost_ack_drops_data: bool = False
    ack_delay_s: float = 0.0
    down_for_s: float = 0.0
    max_body_bytes: int | None = None
    ack_disabled: bool = False
    unhealthy_code: int | None = None
    down_at_s: float = 0.0
    down_every_s: float = 0.0
    html_200_requests: int = 0
    blackhole_requests: int = 0
    drip_requests: int = 0
    drip_interval_s: float = 1.0
    seed: int | None = None
    p_busy: float = 0.0
    p_500: float = 0.0
    p_reset: float = 0.0
    p_html_200: float = 0.0
    p_blackhole: float = 0.0
    p_drip: float = 0.0
    p_lost_ack: float = 0.0
    p_delayed_ack: float = 0.0
    delayed_ack_s: float = 0.0

    def __post_init__(self) -> None:
        """Reject negative budgets and unknown health codes.

        Raises:
            ValueError: a field is out of range.
        """
        for name in _BUDGETS:
            if getattr(self, name) < 0:
                raise ValueError(f"FaultPlan.{name} must be >= 0")
        for name in _DURATIONS:
            if getattr(self, name) < 0:
                raise ValueError(f"FaultPlan.{name} must be >= 0 (durations)")
        if self.drip_interval_s <= 0:
            raise ValueError("FaultPlan.drip_interval_s must be > 0")
        for name in RANDOM_FAULTS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultPlan.{name} must be a probability in [0, 1]")
        if self.down_every_s and self.down_every_s < self.down_for_s:
            raise ValueError("FaultPlan.down_every_s must be >= down_for_s (or 0: once)")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError("FaultPlan.retry_after_s must be >= 0")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError("FaultPlan.max_body_bytes must be >= 1")
        if self.unhealthy_code is not None and self.unhealthy_code not in (18, 19, 20):
            raise ValueError("FaultPlan.unhealthy_code must be 18, 19 or 20")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultPlan:
        """Build a plan from JSON-like data (the body of ``POST /emulator/faults``).

        Args:
            data: fault names to values; a name is a field of this class or the name of
                its ``forwarder hec-emulator`` flag (:data:`FLAG_KEYS`: ``busy``,
                ``errors-500``...); missing faults take their defaults.

        Returns:
            The plan.

        Raises:
            ValueError: an unknown key, a value of the wrong type or out of range.
        """
        unknown = sorted(key for key in data if fault_field(key) is None)
        if unknown:
            raise ValueError(
                f"unknown fault keys: {', '.join(unknown)} (known: the hec-emulator flags "
                f"{', '.join(sorted(flag.replace('_', '-') for flag in FLAG_KEYS))}, "
                "or GET /emulator/faults's keys)"
            )
        kwargs: dict[str, Any] = {}
        given: dict[str, str] = {}
        for key, value in data.items():
            name = cast(str, fault_field(key))
            if name in given:
                raise ValueError(f"fault keys {given[name]!r} and {key!r} set the same fault")
            given[name] = key
            kind = _FAULT_FIELD_KINDS[name]
            if not _fits(kind, value):
                raise ValueError(f"fault {key!r} must be {kind}")
            kwargs[name] = float(value) if kind == "float" else value
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return asdict(self)

    @property
    def randomised(self) -> bool:
        """True when some fault is drawn at random (a ``p_*`` field above 0)."""
        return any(getattr(self, name) > 0 for name in RANDOM_FAULTS)


_BUDGETS: Final = (
    "busy_requests",
    "error_500_requests",
    "reset_requests",
    "lost_acks",
    "html_200_requests",
    "blackhole_requests",
    "drip_requests",
)
_DURATIONS: Final = ("ack_delay_s", "down_for_s", "down_at_s", "down_every_s", "delayed_ack_s")

_FAULT_FIELD_KINDS: Final[Mapping[str, str]] = {
    "busy_requests": "int",
    "retry_after_s": "int or null",
    "error_500_requests": "int",
    "reset_requests": "int",
    "lost_acks": "int",
    "lost_ack_drops_data": "bool",
    "ack_delay_s": "float",
    "down_for_s": "float",
    "max_body_bytes": "int or null",
    "ack_disabled": "bool",
    "unhealthy_code": "int or null",
    "down_at_s": "float",
    "down_every_s": "float",
    "html_200_requests": "int",
    "blackhole_requests": "int",
    "drip_requests": "int",
    "drip_interval_s": "float",
    "seed": "int or null",
    **dict.fromkeys(RANDOM_FAULTS, "float"),
    "delayed_ack_s": "float",
}


#: Each fault's ``forwarder hec-emulator`` flag (without ``--``; ``-`` or ``_`` alike) -> its
#: :class:`FaultPlan` field. ``POST /emulator/faults`` takes either name; ``GET`` shows fields.
FLAG_KEYS: Final[Mapping[str, str]] = {
    "busy": "busy_requests",
    "retry_after": "retry_after_s",
    "errors_500": "error_500_requests",
    "resets": "reset_requests",
    "lost_acks": "lost_acks",
    "lost_ack_drops_data": "lost_ack_drops_data",
    "ack_delay": "ack_delay_s",
    "down_for": "down_for_s",
    "down_at": "down_at_s",
    "down_every": "down_every_s",
    "max_body_bytes": "max_body_bytes",
    "html_200": "html_200_requests",
    "blackholes": "blackhole_requests",
    "drips": "drip_requests",
    "drip_interval": "drip_interval_s",
    "delayed_ack": "delayed_ack_s",
    "seed": "seed",
    "no_acks": "ack_disabled",
    "unhealthy_code": "unhealthy_code",
    **{name: name for name in RANDOM_FAULTS},
}


def fault_field(key: str) -> str | None:
    """The :class:`FaultPlan` field a fault key names: a field name, or a CLI flag's name
    (``errors-500``, ``errors_500`` or ``--errors-500``); None when it names neither."""
    name = key.lstrip("-").replace("-", "_")
    if name in FLAG_KEYS:
        return FLAG_KEYS[name]
    return name if name in _FAULT_FIELD_KINDS else None


def _fits(kind: str, value: object) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if value is None:
        return kind.endswith("or null")
    if isinstance(value, bool):
        return False
    if kind == "float":
        return isinstance(value, int | float)
    return isinstance(value, int)


@dataclass(frozen=True)
class EmulatorStats:
    """A consistent snapshot of the emulator's counters.

    Attributes:
        requests: HEC requests (data, ack and health; not ``/emulator/*``).
        data_requests: requests to the event and raw endpoints.
        ack_requests: requests to the ack endpoint.
        health_requests: requests to the health endpoint.
        events_indexed: events accepted and indexed.
        bytes_received: data request bodies as received (compressed size).
        bytes_decompressed: data request bodies after decompression.
        acks_issued: ``ackId`` s handed out (including lost ones).
        acks_confirmed: ``true`` s reported by the ack endpoint.
        acks_pending: issued, not lost, not yet reported true.
        acks_lost: ``ackId`` s that will never turn true.
        rejected: error answers by code in the body (HEC code; 404/405/413 mirror HTTP).
        faults_injected: injected faults by kind: ``busy``, ``error_500``, ``reset``, ``down``,
            ``lost_ack``, ``delayed_ack``, ``too_large``, ``html_200``, ``blackhole``, ``drip``.
        channels: distinct channels seen on data requests.
        connections: TCP connections accepted (keep-alive reuses one for many requests).
    """

    requests: int = 0
    data_requests: int = 0
    ack_requests: int = 0
    health_requests: int = 0
    events_indexed: int = 0
    bytes_received: int = 0
    bytes_decompressed: int = 0
    acks_issued: int = 0
    acks_confirmed: int = 0
    acks_pending: int = 0
    acks_lost: int = 0
    rejected: Mapping[int, int] = field(default_factory=dict)
    faults_injected: Mapping[str, int] = field(default_factory=dict)
    channels: int = 0
    connections: int = 0

    def to_mapping(self) -> dict[str, Any]:
        """Return the snapshot as JSON-ready data (``rejected`` keys become strings)."""
        data = asdict(self)
        data["rejected"] = {str(code): n for code, n in sorted(self.rejected.items())}
        data["faults_injected"] = dict(sorted(self.faults_injected.items()))
        return data


class _Admitted(NamedTuple):
    """What a data request that passed auth, channel and the busy and 500 faults carries on:
    its channel (None without acks), whether acks are on, and the body size limit."""

    channel: str | None
    acks_on: bool
    limit: int | None


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False
    close: bool = False
    # Held open, never answered (a black hole); or answered one byte per interval (a drip).
    hold: bool = False
    drip_interval_s: float = 0.0
    content_type: str = "application/json; charset=UTF-8"


_RESET: Final = _Response(status=0, reset=True)
_BLACKHOLE: Final = _Response(status=0, hold=True)
_HTML_200: Final = _Response(
    status=200, body=HTML_MAINTENANCE_PAGE, content_type="text/html; charset=UTF-8"
)
_BAD_FRAMING: Final = _Response(
    status=400, body=b'{"text":"Invalid data format","code":6}', close=True
)


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _hec(
    code: int,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    event_number: int | None = None,
    ack_id: int | None = None,
) -> _Response:
    status, text = HEC_CODES[code]
    data: dict[str, object] = {"text": text, "code": code}
    if event_number is not None:
        data["invalid-event-number"] = event_number
    if ack_id is not None:
        data["ackId"] = ack_id
    return _Response(status, _json_bytes(data), headers)


def _plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, _json_bytes({"text": text, "code": status}), headers)


@dataclass(frozen=True, slots=True)
class _Rejection:
    code: int
    event_number: int


@dataclass(slots=True)
class _Channel:
    next_ack_id: int = 0
    # ackId -> clock time from which it reads true. Lost ackIds are never stored: unknown ids
    # read false, as on a real indexer.
    pending: dict[int, float] = field(default_factory=dict)


def _scan_events(
    text: str, allowed_indexes: Collection[str] | None
) -> tuple[list[dict[str, Any]], list[str]] | _Rejection:
    """Split an event-endpoint body into objects, validating each like HEC does.

    Returns the parsed objects and, for each, its JSON text as one output line (the client's own
    bytes when they hold no line break, else a compact re-encoding).
    """
    fast = _scan_lines(text, allowed_indexes)
    return fast if fast is not None else _scan_stream(text, allowed_indexes)


def _scan_lines(
    text: str, allowed_indexes: Collection[str] | None
) -> tuple[list[dict[str, Any]], list[str]] | None:
    """:func:`_scan_stream`'s answer for the common body, one valid event per line, parsed by
    one C call; None when the body may be anything else (the caller then scans it).

    Exact. The lines (split at ``\n``; no ``\r`` anywhere) each start with ``{`` and end with
    ``}``; they are parsed as one array with ``,\n`` between them. A JSON string cannot hold a
    raw line break, so every one of those commas separates tokens. When the array has as many
    elements as lines, all objects, either each comma sits between two elements (each line is
    one value, the stream scan meets the same ones) or some comma inside a line separates two
    elements, and then that line holds ``}``, ``,`` and ``{`` with at most spaces and tabs
    between them, which :data:`_OBJECT_SEPARATOR_RE` finds, so nothing is decided here.
    """
    if "\r" in text or _OBJECT_SEPARATOR_RE.search(text):
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if (
        not lines
        or not all(map(str.startswith, lines, repeat("{")))
        or not all(map(str.endswith, lines, repeat("}")))
    ):
        return None
    try:
        objects = json.loads("[" + ",\n".join(lines) + "]")
    except ValueError:  # json.JSONDecodeError: the stream scan finds where, and answers
        return None
    if len(objects) != len(lines):
        return None
    for obj in objects:
        if type(obj) is not dict or "event" not in obj:
            return None
        event = obj["event"]
        if event is None or event == "":
            return None
        if "fields" in obj or (allowed_indexes is not None and "index" in obj):
            return None  # not in the hot path: the stream scan checks them
    return objects, lines


def _scan_stream(
    text: str, allowed_indexes: Collection[str] | None
) -> tuple[list[dict[str, Any]], list[str]] | _Rejection:
    """:func:`_scan_events` for any body: concatenated JSON objects, any whitespace between."""
    objects: list[dict[str, Any]] = []
    lines: list[str] = []
    raw_decode = _DECODER.raw_decode
    skip_ws = _WHITESPACE_RE.match
    end_of_text = len(text)
    pos = skip_ws(text, 0).end()  # type: ignore[union-attr]  # the pattern matches everywhere
    number = 0
    while pos < end_of_text:
        try:
            obj, end = raw_decode(text, pos)
        except json.JSONDecodeError:
            return _Rejection(6, number)
        if type(obj) is not dict:
            return _Rejection(6, number)
        if "event" not in obj:
            return _Rejection(12, number)
        event = obj["event"]
        if event is None or event == "":
            return _Rejection(13, number)
        indexed_fields = obj.get("fields")
        if indexed_fields is not None and (
            type(indexed_fields) is not dict
            or any(type(v) is dict for v in indexed_fields.values())
        ):
            return _Rejection(15, number)
        if allowed_indexes is not None and obj.get("index", None) not in (None, *allowed_indexes):
            return _Rejection(7, number)
        line = text[pos:end]
        if "\n" in line or "\r" in line:
            line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        objects.append(obj)
        lines.append(line)
        pos = skip_ws(text, end).end()  # type: ignore[union-attr]
        number += 1
    return objects, lines


def _split_raw(text: str) -> list[str]:
    """Split a raw-endpoint body into events: one per non-blank line (CRLF tolerated)."""
    return [
        line[:-1] if line.endswith("\r") else line
        for line in text.split("\n")
        if line and not line.isspace()
    ]


def _decode_body(body: bytes, encoding: str | None, limit: int | None) -> bytes | int:
    """Undo ``Content-Encoding`` (gzip, possibly multi-member) within ``limit`` bytes.

    Returns the decoded body, or the rejection code: 6 (bad encoding) or 413 (too large).
    """
    if encoding is None or encoding in ("", "identity"):
        return CODE_TOO_LARGE if limit is not None and len(body) > limit else body
    if encoding not in ("gzip", "x-gzip"):
        return 6
    parts: list[bytes] = []
    size = 0
    data = body
    while data:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            # Never inflate more than one byte past the limit: a gzip bomb costs nothing.
            chunk = decompressor.decompress(data, 0 if limit is None else limit - size + 1)
        except zlib.error:
            return 6
        size += len(chunk)
        parts.append(chunk)
        if limit is not None and size > limit:
            return CODE_TOO_LARGE
        if not decompressor.eof:
            return 6  # truncated gzip stream
        data = decompressor.unused_data
    return b"".join(parts)


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


class HecEmulator:
    """A local HEC on loopback, served from daemon threads.

    Example:
        >>> with HecEmulator(token="t") as hec:  # doctest: +SKIP
        ...     requests.post(f"{hec.url}/services/collector/event", ...)

    Args:
        token: the only accepted token (``Authorization: Splunk <token>``). Never logged.
        host: address to bind.
        port: port to bind; 0 picks a free one (see :attr:`url`).
        acks: indexer acknowledgment on the token (channels required, ``ackId`` answered).
        faults: initial fault plan.
        output_path: append every indexed event to this file as one JSON line. Event endpoint:
            the event object exactly as sent; raw endpoint: ``{"event": line, ...}`` with the
            query's source/sourcetype/index/host when given. Flushed at most once a second while
            traffic flows, before an ack query reports a ``true`` and on :meth:`flush`/stop.
        tls_certfile: serve HTTPS with this certificate chain (PEM)...
        tls_keyfile: ...and this private key (PEM; defaults to the certificate file).
        keep_events: also keep indexed events in memory for :meth:`indexed_events`.
        allowed_indexes: if given, events naming another index are rejected (400 code 7).
        clock: monotonic clock for ack delays and the down window; tests pass a fake one.
    """

    def __init__(
        self,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        acks: bool = True,
        faults: FaultPlan | None = None,
        output_path: Path | None = None,
        tls_certfile: Path | None = None,
        tls_keyfile: Path | None = None,
        keep_events: bool = True,
        allowed_indexes: Collection[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self._token = token.encode()
        self._host = host
        self._port = port
        self._acks = acks
        self._output_path = output_path
        self._tls_certfile = tls_certfile
        self._tls_keyfile = tls_keyfile
        self._keep_events = keep_events
        self._allowed_indexes = None if allowed_indexes is None else frozenset(allowed_indexes)
        self._clock = clock

        self._lock = threading.Lock()
        self._conns_cond = threading.Condition(self._lock)
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._output: TextIO | None = None
        self._last_flush = 0.0

        self._plan = FaultPlan()
        self._left: dict[str, int] = {}
        self._plan_t0 = 0.0
        self._rng = random.Random(0)
        self._stopping = threading.Event()
        self._apply_plan(faults or FaultPlan())

        self._channels: dict[str, _Channel] = {}
        self._events: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self._rejected: dict[int, int] = {}
        self._faults_injected: dict[str, int] = {}

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (https with TLS).

        Raises:
            RuntimeError: the emulator is not started.
        """
        if self._server is None:
            raise RuntimeError("HecEmulator is not started")
        host, port = self._server.server_address[:2]
        scheme = "https" if self._tls_certfile is not None else "http"
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"{scheme}://{host_text}:{port}"

    def start(self) -> HecEmulator:
        """Bind and serve in a daemon thread.

        Returns:
            self, so ``hec = HecEmulator(...).start()`` reads well.

        Raises:
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("HecEmulator is already started")
        self._stopping.clear()
        context: ssl.SSLContext | None = None
        if self._tls_certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self._tls_certfile, self._tls_keyfile)
        if self._output_path is not None:
            self._output = self._output_path.open(
                "a", encoding="utf-8", buffering=_OUTPUT_BUFFER_BYTES
            )
        try:
            server = _Server((self._host, self._port), self, context)
        except OSError as exc:  # the address is the thing to name (a port taken, a bad host)
            raise OSError(exc.errno, exc.strerror, f"{self._host}:{self._port}") from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},  # stop() waits up to one interval
            name="hec-emulator",
            daemon=True,
        )
        self._thread.start()
        # Nothing is logged here: serve()'s first stdout line must be its URL whatever the
        # logging set-up; serve() logs hec_emulator_started right after printing it.
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and flush the output file. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # held (black-holed, dripping) connections let go
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        deadline = time.monotonic() + _STOP_GRACE_S
        with self._conns_cond:
            for conn in self._connections:
                with contextlib.suppress(OSError):  # already gone
                    conn.shutdown(socket.SHUT_RDWR)
            while self._connections and (left := deadline - time.monotonic()) > 0:
                self._conns_cond.wait(left)
            if self._output is not None:
                self._output.close()
                self._output = None
        self._server = None
        self._thread = None
        log.debug("hec_emulator_stopped")

    def __enter__(self) -> HecEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- test API

    def set_faults(self, faults: FaultPlan) -> None:
        """Replace the fault plan; budgets restart from the new plan's counts."""
        with self._lock:
            self._apply_plan(faults)
        log.info("hec_emulator_faults_set", **faults.to_mapping())

    def current_faults(self) -> FaultPlan:
        """Return the plan as it stands: remaining budgets and remaining down window."""
        with self._lock:
            return self._current_plan()

    def stats(self) -> EmulatorStats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            c = self._counts
            return EmulatorStats(
                requests=c.get("requests", 0),
                data_requests=c.get("data_requests", 0),
                ack_requests=c.get("ack_requests", 0),
                health_requests=c.get("health_requests", 0),
                events_indexed=c.get("events_indexed", 0),
                bytes_received=c.get("bytes_received", 0),
                bytes_decompressed=c.get("bytes_decompressed", 0),
                acks_issued=c.get("acks_issued", 0),
                acks_confirmed=c.get("acks_confirmed", 0),
                acks_pending=sum(len(ch.pending) for ch in self._channels.values()),
                acks_lost=c.get("acks_lost", 0),
                rejected=dict(self._rejected),
                faults_injected=dict(self._faults_injected),
                channels=len(self._channels),
                connections=c.get("connections", 0),
            )

    def indexed_events(self) -> list[dict[str, Any]]:
        """Return what was indexed, in order (empty when ``keep_events`` is off)."""
        with self._lock:
            return list(self._events)

    def flush(self) -> None:
        """Flush the output file to the OS."""
        with self._lock:
            self._flush_locked()

    def reset(self) -> None:
        """Forget counters, indexed events, channels and acks; keep the fault plan and file."""
        with self._lock:
            self._channels.clear()
            self._events.clear()
            self._counts.clear()
            self._rejected.clear()
            self._faults_injected.clear()
            self._flush_locked()

    # ---------------------------------------------------------------- internals

    def _apply_plan(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._left = {name: getattr(plan, name) for name in _BUDGETS}
        self._plan_t0 = self._clock()
        seed = plan.seed if plan.seed is not None else random.SystemRandom().randrange(2**32)
        self._rng = random.Random(seed)

    def _current_plan(self) -> FaultPlan:
        """The plan as it stands: budgets left, and the down schedule seen from now."""
        plan = self._plan
        down_at, down_for = plan.down_at_s, plan.down_for_s
        if down_for > 0:
            since_start = self._clock() - self._plan_t0 - plan.down_at_s
            if since_start >= 0 and plan.down_every_s > 0:
                phase = since_start % plan.down_every_s
                down_at = 0.0 if phase < down_for else plan.down_every_s - phase
                down_for = down_for - phase if phase < down_for else down_for
            elif since_start >= 0:
                down_at, down_for = 0.0, max(0.0, down_for - since_start)
            else:
                down_at = -since_start
        budgets: dict[str, Any] = dict(self._left)
        return replace(plan, down_at_s=down_at, down_for_s=down_for, **budgets)

    def _take(self, budget: str, probability: float) -> bool:
        """Whether this request meets the fault (lock held): its budget first, then its odds.

        No random number is drawn unless the fault has a probability.
        """
        left = self._left[budget]
        if left > 0:
            self._left[budget] = left - 1
            return True
        return probability > 0.0 and self._rng.random() < probability

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def _fault(self, kind: str) -> None:
        self._faults_injected[kind] = self._faults_injected.get(kind, 0) + 1

    def _flush_locked(self) -> None:
        if self._output is not None:
            self._output.flush()
            self._last_flush = time.monotonic()

    def _is_down(self) -> bool:
        plan = self._plan
        if plan.down_for_s <= 0:
            return False
        since_start = self._clock() - self._plan_t0 - plan.down_at_s
        if since_start < 0:
            return False
        if plan.down_every_s > 0:
            since_start %= plan.down_every_s
        return since_start < plan.down_for_s

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_cond:
            if add:
                self._connections.add(conn)
                self._count("connections")
            else:
                self._connections.discard(conn)
                self._conns_cond.notify_all()

    def _rejected_answer(self, response: _Response, code: int) -> _Response:
        """Count a rejection (lock held) and return it."""
        self._rejected[code] = self._rejected.get(code, 0) + 1
        return response

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> _Response:
        """Answer one request (called from the connection threads)."""
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        if path.startswith("/emulator/"):
            return self._handle_control(method, path, body)
        kind = _ROUTES.get(path)
        query = parse_qs(split.query) if split.query else {}
        with self._lock:
            if kind is None:
                return self._rejected_answer(
                    _plain(CODE_NOT_FOUND, "The requested URL was not found on this server."),
                    CODE_NOT_FOUND,
                )
            self._count("requests")
            self._count(f"{kind}_requests" if kind in ("ack", "health") else "data_requests")
            expected = "GET" if kind == "health" else "POST"
            if method != expected:
                return self._rejected_answer(
                    _plain(CODE_METHOD_NOT_ALLOWED, "Method Not Allowed", (("Allow", expected),)),
                    CODE_METHOD_NOT_ALLOWED,
                )
            if kind == "health":
                return self._health(query)
            if kind != "ack":
                self._count("bytes_received", len(body))
            if self._is_down():
                self._fault("down")
                return _RESET
            if kind == "ack":
                return self._ack(headers, query, body)
            transport = self._transport_fault()
            if transport is not None:
                return transport
            admitted = self._check_data_request(headers, query)
            if isinstance(admitted, _Response):
                return admitted
            plan = self._plan
            drip = self._take("drip_requests", plan.p_drip)
            if drip:
                self._fault("drip")
        response = self._data(kind, query, headers, body, admitted)
        return replace(response, drip_interval_s=plan.drip_interval_s) if drip else response

    def _transport_fault(self) -> _Response | None:
        """Faults met before HEC sees the request: reset, black hole, a proxy's HTML 200."""
        plan = self._plan
        if self._take("reset_requests", plan.p_reset):
            self._fault("reset")
            return _RESET
        if self._take("blackhole_requests", plan.p_blackhole):
            self._fault("blackhole")
            return _BLACKHOLE
        if self._take("html_200_requests", plan.p_html_200):
            self._fault("html_200")
            return _HTML_200
        return None

    def _auth(self, headers: Message, query: Mapping[str, list[str]]) -> _Response | None:
        """Check the token (lock held); return the rejection or None."""
        value = headers.get("Authorization")
        if not value:
            if "token" in query:
                return self._rejected_answer(_hec(16), 16)
            return self._rejected_answer(_hec(2), 2)
        scheme, _, credential = value.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "basic":
            # Splunk also takes the token as the password of Basic authentication.
            try:
                credential = base64.b64decode(credential, validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return self._rejected_answer(_hec(3), 3)
        elif scheme.lower() != "splunk":
            return self._rejected_answer(_hec(3), 3)
        if not credential:
            return self._rejected_answer(_hec(2), 2)
        if not hmac.compare_digest(credential.encode(), self._token):
            return self._rejected_answer(_hec(4), 4)
        return None

    @overload
    def _channel(
        self, headers: Message, query: Mapping[str, list[str]], acks_on: Literal[True]
    ) -> str | _Response: ...

    @overload
    def _channel(
        self, headers: Message, query: Mapping[str, list[str]], acks_on: bool
    ) -> str | _Response | None: ...

    def _channel(
        self, headers: Message, query: Mapping[str, list[str]], acks_on: bool
    ) -> str | _Response | None:
        """Return the request's channel, its rejection, or None (no channel, acks off)."""
        channel = headers.get("X-Splunk-Request-Channel") or _first(query, "channel")
        if channel is None:
            return self._rejected_answer(_hec(10), 10) if acks_on else None
        channel = channel.strip()
        if not _CHANNEL_RE.fullmatch(channel):
            return self._rejected_answer(_hec(11), 11)
        return channel.lower()

    def _check_data_request(
        self, headers: Message, query: Mapping[str, list[str]]
    ) -> _Admitted | _Response:
        """Auth, channel, busy and 500 faults (lock held); what an admitted request carries."""
        rejection = self._auth(headers, query)
        if rejection is not None:
            return rejection
        acks_on = self._acks and not self._plan.ack_disabled
        channel = self._channel(headers, query, acks_on)
        if isinstance(channel, _Response):
            return channel
        if channel is not None and channel not in self._channels:
            self._channels[channel] = _Channel()
        plan = self._plan
        if self._take("busy_requests", plan.p_busy):
            self._fault("busy")
            retry_after = plan.retry_after_s
            extra = () if retry_after is None else (("Retry-After", str(retry_after)),)
            return self._rejected_answer(_hec(9, extra), 9)
        if self._take("error_500_requests", plan.p_500):
            self._fault("error_500")
            return self._rejected_answer(_hec(8), 8)
        return _Admitted(channel, acks_on, self._plan.max_body_bytes)

    def _reject(self, response: _Response, code: int, fault: str | None = None) -> _Response:
        with self._lock:
            if fault is not None:
                self._fault(fault)
            return self._rejected_answer(response, code)

    def _data(
        self,
        kind: str,
        query: Mapping[str, list[str]],
        headers: Message,
        body: bytes,
        admitted: _Admitted,
    ) -> _Response:
        """Decode, validate and index an event or raw request (lock NOT held while parsing)."""
        encoding = headers.get("Content-Encoding")
        decoded = _decode_body(
            body, None if encoding is None else encoding.strip().lower(), admitted.limit
        )
        if decoded == CODE_TOO_LARGE:
            return self._reject(_plain(CODE_TOO_LARGE, "Content too large"), 413, "too_large")
        if isinstance(decoded, int):
            return self._reject(_hec(decoded), decoded)
        objects: list[dict[str, Any]]
        if kind == "event":
            try:
                text = decoded.decode()
            except UnicodeDecodeError:
                return self._reject(_hec(6, event_number=0), 6)
            scanned = _scan_events(text, self._allowed_indexes)
            if isinstance(scanned, _Rejection):
                return self._reject(
                    _hec(scanned.code, event_number=scanned.event_number),
                    scanned.code,
                )
            objects, lines = scanned
        else:
            raw_lines = _split_raw(decoded.decode(errors="replace"))
            metadata = {k: v for k in RAW_METADATA_KEYS if (v := _first(query, k)) is not None}
            index = metadata.get("index")
            allowed = self._allowed_indexes
            if raw_lines and allowed is not None and index is not None and index not in allowed:
                return self._reject(_hec(7, event_number=0), 7)
            suffix = "".join(f",{_encode_str(k)}:{_encode_str(v)}" for k, v in metadata.items())
            lines = [f'{{"event":{_encode_str(line)}{suffix}}}' for line in raw_lines]
            objects = (
                [{"event": line, **metadata} for line in raw_lines] if self._keep_events else []
            )
        if not lines:
            return self._reject(_hec(5), 5)
        return self._index(objects, lines, len(decoded), admitted)

    def _index(
        self,
        objects: list[dict[str, Any]],
        lines: list[str],
        decoded_size: int,
        admitted: _Admitted,
    ) -> _Response:
        with self._lock:
            self._count("bytes_decompressed", decoded_size)
            plan = self._plan
            lost = admitted.acks_on and self._take("lost_acks", plan.p_lost_ack)
            if lost:
                self._fault("lost_ack")
                self._count("acks_lost")
            if not (lost and self._plan.lost_ack_drops_data):
                if self._output is not None:
                    self._output.write("\n".join(lines))
                    self._output.write("\n")
                    if time.monotonic() - self._last_flush >= _OUTPUT_FLUSH_INTERVAL_S:
                        self._flush_locked()
                if self._keep_events:
                    self._events.extend(objects)
                self._count("events_indexed", len(lines))
            if not admitted.acks_on or admitted.channel is None:
                return _hec(0)
            state = self._channels[admitted.channel]
            ack_id = state.next_ack_id
            state.next_ack_id += 1
            self._count("acks_issued")
            if not lost:
                delay = plan.ack_delay_s
                if plan.p_delayed_ack > 0 and self._rng.random() < plan.p_delayed_ack:
                    delay += plan.delayed_ack_s
                if delay > 0:
                    self._fault("delayed_ack")
                state.pending[ack_id] = self._clock() + delay
            return _hec(0, ack_id=ack_id)

    def _ack(self, headers: Message, query: Mapping[str, list[str]], body: bytes) -> _Response:
        """Answer an ack query (lock held)."""
        rejection = self._auth(headers, query)
        if rejection is not None:
            return rejection
        if not self._acks or self._plan.ack_disabled:
            return self._rejected_answer(_hec(14), 14)
        channel = self._channel(headers, query, acks_on=True)
        if isinstance(channel, _Response):
            return channel
        if not body.strip():
            return self._rejected_answer(_hec(5), 5)
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._rejected_answer(_hec(6), 6)
        ids = request.get("acks") if isinstance(request, dict) else None
        if not isinstance(ids, list) or not all(
            type(i) is int
            for i in ids  # bools are not ackIds
        ):
            return self._rejected_answer(_hec(6), 6)
        state = self._channels.get(channel)
        now = self._clock()
        answer: dict[str, bool] = {}
        confirmed = 0
        for ack_id in ids:
            ready_at = None if state is None else state.pending.get(ack_id)
            done = ready_at is not None and now >= ready_at
            if done and state is not None:
                del state.pending[ack_id]  # a true is reported once, then forgotten
                confirmed += 1
            answer[str(ack_id)] = done
        if confirmed:
            self._count("acks_confirmed", confirmed)
            self._flush_locked()  # an acknowledged event is in the output file
        return _Response(200, _json_bytes({"acks": answer}))

    def _health(self, query: Mapping[str, list[str]]) -> _Response:
        """Answer a health probe (lock held); no token needed."""
        if self._plan.unhealthy_code is not None:
            return _hec(self._plan.unhealthy_code)
        if self._is_down():
            wants_ack = (_first(query, "ack") or "").lower() in ("1", "true")
            return _hec(20 if wants_ack else 18)
        return _hec(17)

    def _handle_control(self, method: str, path: str, body: bytes) -> _Response:
        if path == "/emulator/stats" and method == "GET":
            return _Response(200, _json_bytes(self.stats().to_mapping()))
        if path == "/emulator/faults" and method == "GET":
            return _Response(200, _json_bytes(self.current_faults().to_mapping()))
        if path == "/emulator/faults" and method == "POST":
            try:
                data = json.loads(body) if body.strip() else {}
                if not isinstance(data, dict):
                    return _plain(400, "fault plan must be a JSON object")
                plan = FaultPlan.from_mapping(data)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                return _plain(400, str(exc))
            self.set_faults(plan)
            return _Response(200, _json_bytes(plan.to_mapping()))
        if path == "/emulator/reset" and method == "POST":
            self.reset()
            return _Response(200, _json_bytes({"text": "Reset", "code": 0}))
        return _plain(CODE_NOT_FOUND, "The requested URL was not found on this server.")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections can idle forever; stop() closes them instead of joining.
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        emulator: HecEmulator,
        context: ssl.SSLContext | None,
    ) -> None:
        self.emulator = emulator
        self.ssl_context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the connection's thread (_Handler.setup), not the acceptor.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request or fail the TLS handshake are normal here.
        log.debug("hec_emulator_connection_failed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HecEmulator/1.0"
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        self._emulator = cast(_Server, self.server).emulator
        self._emulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._emulator._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's per-request stderr line (it would dominate the hot path)."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        body = self._read_body()
        response = (
            _BAD_FRAMING
            if body is None
            else self._emulator._handle(method, self.path, self.headers, body)
        )
        if response.reset:
            self._reset_connection()
            return
        if response.hold:
            self._hold()
            return
        if response.close:
            self.close_connection = True
        head = [
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        head.extend(f"{name}: {value}" for name, value in response.headers)
        if self.close_connection:
            head.append("Connection: close")
        head.append("\r\n")
        data = "\r\n".join(head).encode("latin-1") + response.body
        if response.drip_interval_s > 0:
            self._drip(data, response.drip_interval_s)
        else:
            self.wfile.write(data)

    def _hold(self) -> None:
        """A black hole: answer nothing until the client closes (or the emulator stops)."""
        self.close_connection = True
        stopping = self._emulator._stopping
        deadline = time.monotonic() + _HOLD_MAX_S
        with contextlib.suppress(OSError, ValueError):  # the socket went away under us
            while not stopping.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], _HOLD_POLL_S)
                # Readable means the client sent more (ignored) or closed (EOF): stop at EOF.
                if readable and not self.connection.recv(65536):
                    return

    def _drip(self, data: bytes, interval: float) -> None:
        """Write ``data`` one byte per ``interval`` until done, the client leaves or we stop."""
        self.close_connection = True  # never reuse a connection a client may have given up on
        stopping = self._emulator._stopping
        deadline = time.monotonic() + _HOLD_MAX_S
        with contextlib.suppress(OSError, ValueError):  # the client closed: it gave up
            for i in range(len(data)):
                if i and (stopping.wait(interval) or time.monotonic() >= deadline):
                    return
                self.wfile.write(data[i : i + 1])

    def _read_body(self) -> bytes | None:
        """Read the request body (Content-Length or chunked); None on a framing error."""
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            return self._read_chunked() if transfer_encoding.strip().lower() == "chunked" else None
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length < 0:
            return None
        body = self.rfile.read(length)
        return body if len(body) == length else None

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline(_MAX_LINE)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are ignored
                return b"".join(chunks)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                return None
            chunks.append(chunk)
            self.rfile.readline(_MAX_LINE)  # the CRLF after the chunk

    def _reset_connection(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send RST instead of FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # already gone
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()


def _default_token() -> str:
    token = hec_token_from_environ(os.environ)
    return "emulator-token" if token is None else token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``forwarder hec-emulator`` flags to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=8088, help="port to bind; 0 picks one (%(default)s)"
    )
    parser.add_argument(
        "--token",
        default=_default_token(),
        help="accepted HEC token (default: $SPLUNK_HEC_TOKEN, else emulator-token)",
    )
    parser.add_argument(
        "--no-acks",
        action="store_true",
        help="behave like a token without indexer acknowledgment (default: acks on)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="append indexed events to this JSON-lines file (default: none)",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="answer the next N data requests 503 code 9 (%(default)s)",
    )
    parser.add_argument(
        "--retry-after",
        type=int,
        default=None,
        metavar="S",
        help="Retry-After seconds on busy answers (default: no header)",
    )
    parser.add_argument(
        "--errors-500",
        type=int,
        default=0,
        metavar="N",
        help="answer the next N data requests 500 (%(default)s)",
    )
    parser.add_argument(
        "--resets",
        type=int,
        default=0,
        metavar="N",
        help="reset the next N data connections (%(default)s)",
    )
    parser.add_argument(
        "--lost-acks",
        type=int,
        default=0,
        metavar="N",
        help="the next N ackIds never turn true (%(default)s)",
    )
    parser.add_argument(
        "--lost-ack-drops-data",
        action="store_true",
        help="with --lost-acks: do not index a lost-ack request's events either "
        "(default: they are indexed)",
    )
    parser.add_argument(
        "--ack-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="acks turn true after S seconds (%(default)s)",
    )
    parser.add_argument(
        "--down-for",
        type=float,
        default=0.0,
        metavar="S",
        help="be down for the first S seconds (%(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        metavar="N",
        help="answer 413 to bodies above N bytes, after decompression (default: no limit)",
    )
    parser.add_argument(
        "--down-at",
        type=float,
        default=0.0,
        metavar="S",
        help="the down window starts S seconds after start (%(default)s)",
    )
    parser.add_argument(
        "--down-every",
        type=float,
        default=0.0,
        metavar="S",
        help="repeat the down window every S seconds (default %(default)s: once)",
    )
    parser.add_argument(
        "--html-200",
        type=int,
        default=0,
        metavar="N",
        help="answer the next N data requests 200 with a proxy's HTML page, nothing indexed "
        "(%(default)s)",
    )
    parser.add_argument(
        "--blackholes",
        type=int,
        default=0,
        metavar="N",
        help="never answer the next N data requests, held until the client closes (%(default)s)",
    )
    parser.add_argument(
        "--drips",
        type=int,
        default=0,
        metavar="N",
        help="answer the next N data requests one byte per --drip-interval (%(default)s)",
    )
    parser.add_argument(
        "--drip-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between two bytes of a dripping answer (%(default)s)",
    )
    parser.add_argument(
        "--delayed-ack",
        type=float,
        default=0.0,
        metavar="S",
        help="delay of a randomly delayed ack, --p-delayed-ack (%(default)s)",
    )
    parser.add_argument(
        "--unhealthy-code",
        type=int,
        choices=(18, 19, 20),
        default=None,
        help="health answers 503 with this HEC code; data requests are unaffected "
        "(default: healthy, 17)",
    )
    parser.add_argument(
        "--allowed-index",
        action="append",
        default=None,
        metavar="NAME",
        help="the token may write only these indexes (repeatable): events naming another are "
        "refused 400 code 7, incorrect index (default: any index)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the random faults (--p-*); random if unset"
    )
    for name, kind in RANDOM_FAULTS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=0.0,
            metavar="P",
            help=f"probability per data request of a {kind.replace('_', ' ')} fault (%(default)s)",
        )


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder hec-emulator``: serve until SIGINT or SIGTERM (see :func:`serve`)."""
    return ExitStatus(serve(args))


def serve(args: argparse.Namespace) -> int:
    """Run the emulator until SIGINT or SIGTERM (``forwarder hec-emulator``, ``python -m``).

    Prints ``HEC emulator listening on URL`` to stdout first. Events are not kept in memory.

    Args:
        args: the flags of :func:`add_arguments`.

    Returns:
        0.
    """
    # Every fault flag by its FaultPlan field; --no-acks is the emulator's acks=False instead.
    faults = FaultPlan(
        **{
            name: getattr(args, flag)
            for flag, name in FLAG_KEYS.items()
            if flag != "no_acks" and hasattr(args, flag)
        }
    )
    emulator = HecEmulator(
        token=args.token,
        host=args.host,
        port=args.port,
        acks=not args.no_acks,
        faults=faults,
        output_path=args.output,
        keep_events=False,
        allowed_indexes=getattr(args, "allowed_index", None),
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        emulator.start()
        print(f"HEC emulator listening on {emulator.url}", flush=True)
        log.info("hec_emulator_started", url=emulator.url, acks=not args.no_acks)
        while not stop.wait(_OUTPUT_FLUSH_INTERVAL_S):
            emulator.flush()
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    # Standalone runs keep stdout for the URL line; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    _parser = argparse.ArgumentParser(
        prog="python -m forwarder.devtools.emulator", description=__doc__
    )
    add_arguments(_parser)
    raise SystemExit(serve(_parser.parse_args()))
