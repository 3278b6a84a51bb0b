"""``forwarder forward``: one-shot delivery of a file or stdin, with acknowledgment.

``forward`` reads a payload file or stdin, recognises what it holds, transforms it and delivers
it through the same engine as the daemon: a Firehose transformation event (JSON with
``records``), a push-Lambda event (``{"awslogs": {"data": ...}}``), a gzip CloudWatch Logs
payload, a flow-log file (plain or gzip, with or without its header line), or plain text
lines. Text is read as a stream in chunks, so memory stays bounded whatever the input size:
a line longer than ``forwarder.intake.lines.MAX_LINE_BYTES`` is skipped as it streams and counted
dropped (``line_too_long``, logged ``line_dropped``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import structlog

from config.loader import require_hec
from config.settings import Settings
from forwarder.backsplash.writers import backsplash_from_settings
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.intake.lines import LINE_TOO_LONG, MAX_CHUNK_CHARS, LongLine, text_lines
from forwarder.signals import two_stage_stop
from forwarder.status import ExitStatus, RunOutcome, incomplete, status_for
from transforms.errors import TransformError
from transforms.pipeline import transform_lines, transform_payload
from transforms.records import EncodedBatch
from transforms.vpc_flow import fields_from_header, is_header_line

_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 64 * 1024
#: Lines handed to the transform at once: big enough to amortise per-call work, small enough
#: that a million-line file never sits in memory.
CHUNK_LINES = 20_000


@dataclass(frozen=True)
class Failure:
    """A piece of input that could not be transformed (counted as dropped, with its reason)."""

    reason: str
    detail: str
    count: int = 1
    event: str = "record_failed"


Unit = EncodedBatch | Failure


def _sniff_gzip_json(head: bytes) -> bool:
    """Whether a gzip stream starts with a JSON object (a CloudWatch Logs payload)."""
    try:
        start = zlib.decompressobj(31).decompress(head, 256)
    except zlib.error:
        return False
    return start.lstrip()[:1] == b"{"


def _lines(binary: IO[bytes]) -> Iterator[str | LongLine]:
    """Decoded lines of a plain or gzip binary stream, read as a stream (memory: one read
    plus ``MAX_LINE_BYTES``; a longer line comes as a :class:`LongLine`), leaving the stream
    open for its owner to close."""
    return text_lines(binary, max_inflated=None)


def _text_units(
    lines: Iterator[str | LongLine],
    settings: Settings,
    *,
    log_group: str | None,
    log_stream: str | None,
    stop: threading.Event,
) -> Iterator[Unit]:
    options = settings.transform
    flow_fields: tuple[str, ...] | None = None
    origin: Any = "text"
    chunk: list[str] = []
    first = True

    def encode(lines: list[str]) -> EncodedBatch:
        return transform_lines(
            lines,
            log_group=log_group,
            log_stream=log_stream,
            origin=origin,
            options=options,
            flow_fields=flow_fields,
        )

    chars = 0
    try:
        for line in lines:
            if isinstance(line, LongLine):
                first = False  # a header is short: an over-long first line is data
                yield Failure(
                    LINE_TOO_LONG,
                    f"line {line.line}: {line.size} bytes, skipped",
                    event="line_dropped",
                )
                continue
            if first:
                first = False
                if is_header_line(line.strip()):
                    flow_fields = fields_from_header(line.strip())
                    origin = "s3"
                    continue
            chunk.append(line)
            chars += len(line)
            if len(chunk) >= CHUNK_LINES or chars >= MAX_CHUNK_CHARS:
                yield encode(chunk)
                chunk = []
                chars = 0
                if stop.is_set():
                    return
    except (OSError, EOFError, zlib.error, ValueError):
        if chunk:  # deliver the lines read before the input broke, then say it broke
            yield encode(chunk)
        raise
    if chunk:
        yield encode(chunk)


def _json_document_units(document: Any, settings: Settings) -> Iterator[Unit] | None:
    """Units of a Firehose, push-Lambda or Kinesis event document; None for other JSON."""
    options = settings.transform
    if isinstance(document, dict) and isinstance(document.get("awslogs"), dict):
        payloads = [document["awslogs"].get("data")]
    elif isinstance(document, dict) and isinstance(document.get("records"), list):
        payloads = [r.get("data") if isinstance(r, dict) else None for r in document["records"]]
    elif isinstance(document, dict) and isinstance(document.get("Records"), list):
        payloads = [
            r.get("kinesis", {}).get("data") if isinstance(r, dict) else None
            for r in document["Records"]
        ]
    else:
        return None

    def units() -> Iterator[Unit]:
        for index, encoded in enumerate(payloads):
            if not isinstance(encoded, str):
                yield Failure("undecodable_record", f"record {index} has no base64 data")
                continue
            try:
                data = base64.b64decode(encoded, validate=True)
                yield transform_payload(data, options)
            except (binascii.Error, ValueError, TransformError) as exc:
                yield Failure("undecodable_record", f"record {index}: {exc}")

    return units()


def read_units(
    stream: IO[bytes],
    settings: Settings,
    *,
    log_group: str | None = None,
    log_stream: str | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Unit]:
    """Recognise what ``stream`` holds and yield transformed batches (or failures).

    Args:
        stream: the input, read once from the start.
        settings: transform options and the decompression ceiling.
        log_group: the name to route text and flow-log files by (DESIGN.md section 3).
        log_stream: likewise; default ``source`` is ``<log_group>:<log_stream>``.
        stop: when set, stop reading at the next chunk boundary.
    """
    stop = stop or threading.Event()
    limit = settings.transform.max_decompressed_bytes
    # Sniffing needs peek(); files opened "rb" and stdin's buffer have it already.
    buffered: Any = (
        stream
        if hasattr(stream, "peek")
        else io.BufferedReader(cast(io.RawIOBase, stream), buffer_size=_SNIFF_BYTES)
    )
    head = buffered.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    if head.startswith(_GZIP_MAGIC):
        if _sniff_gzip_json(head):
            data = buffered.read(limit + 1)
            try:
                yield transform_payload(data, settings.transform)
            except TransformError as exc:
                yield Failure("undecodable_record", str(exc))
            return
        yield from _text_units(
            _lines(buffered),
            settings,
            log_group=log_group,
            log_stream=log_stream,
            stop=stop,
        )
        return
    if head.lstrip()[:1] == b"{":
        data = buffered.read(limit + 1)
        document = None
        if len(data) <= limit:
            try:
                document = json.loads(data)
            except (ValueError, RecursionError):
                document = None  # JSON lines, not one document: text, below
        units = _json_document_units(document, settings) if document is not None else None
        if units is not None:
            yield from units
            return
        if document is not None:  # one JSON document of another shape: one text event
            yield from _text_units(
                iter([data.decode("utf-8", "replace")]),
                settings,
                log_group=log_group,
                log_stream=log_stream,
                stop=stop,
            )
            return
        # Lines of text after all: put the bytes already read back in front of the rest.
        buffered = io.BufferedReader(_Prefixed(data, buffered))
    yield from _text_units(
        _lines(buffered), settings, log_group=log_group, log_stream=log_stream, stop=stop
    )


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


@dataclass(frozen=True)
class ForwardReport:
    """What ``forward`` did: the ledger summary and whether delivery hit a fatal HEC error."""

    summary: dict[str, Any]
    fatal: bool
    unparsed: int
    backsplash_error: str | None = None


def forward_stream(
    stream: IO[bytes],
    settings: Settings,
    *,
    log_group: str | None = None,
    log_stream: str | None = None,
    stop: threading.Event | None = None,
    deliverer: Deliverer | None = None,
    grace_s: float = 30.0,
) -> ForwardReport:
    """Transform and deliver everything in ``stream``; the ledger balances on return.

    Args:
        stream: the input.
        settings: validated settings with a HEC URL and token.
        log_group: routing name for text inputs.
        log_stream: routing name for text inputs.
        stop: set on shutdown: stop reading, flush within ``grace_s``, backsplash the rest.
        deliverer: an engine to use (tests, benchmarks); built from settings when None.
        grace_s: how long acknowledgments may take after a stop request.
    """
    stop = stop or threading.Event()
    log = structlog.get_logger("forwarder.commands.forward")
    if deliverer is None:
        deliverer = Deliverer(
            settings,
            backsplash=backsplash_from_settings(settings.backsplash, use_spool=True),
            stop_event=stop,
        )
    ledger: Ledger = deliverer.ledger
    unparsed = 0
    backsplash_error: str | None = None
    try:
        try:
            for unit in read_units(
                stream, settings, log_group=log_group, log_stream=log_stream, stop=stop
            ):
                if isinstance(unit, Failure):
                    log.error(unit.event, reason=unit.reason, detail=unit.detail)
                    ledger.drop(unit.reason, unit.count)
                    continue
                if unit.is_control:
                    ledger.drop("control_message", 1)
                    continue
                unparsed += unit.unparsed
                ledger.shaped(unit.filtered, unit.sampled, unit.time_unparsed)
                deliverer.submit(unit.events, unit.raw_target)
                if stop.is_set():
                    break
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            # A corrupt or truncated input: deliver what was read, and say the rest is lost
            # to this run (counted, so the exit status is not 0).
            log.exception("input_unreadable", error=f"{type(exc).__name__}: {exc}")
            ledger.drop("input_unreadable", 1)
        deadline = time.monotonic() + grace_s if stop.is_set() else None
        deliverer.close(deadline)
    except BacksplashError as exc:
        backsplash_error = str(exc)
        log.critical("backsplash_failed", error=backsplash_error)
        ledger.log_summary(log, fatal=deliverer.fatal is not None)
    return ForwardReport(
        summary=ledger.summary(),
        fatal=deliverer.fatal is not None,
        unparsed=unparsed,
        backsplash_error=backsplash_error,
    )


def exit_status(report: ForwardReport, interrupted: bool) -> ExitStatus:
    """The documented exit status of a ``forward`` run, through :func:`status_for`."""
    return status_for(
        RunOutcome(
            backsplash_failed=bool(report.backsplash_error) or not report.summary["balanced"],
            hec_fatal=report.fatal,
            interrupted=interrupted,
            incomplete=incomplete(report.summary),
        )
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder forward``."""
    parser.add_argument("file", metavar="FILE", help="payload file, or - for stdin")
    parser.add_argument(
        "--log-group",
        help="route text and flow-log files as if from this log group (e.g. /aws/vpc/flowlogs)",
    )
    parser.add_argument("--log-stream", help="log stream name used for routing and source")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after Ctrl-C/SIGTERM, how long to wait for acks before backsplashing (30)",
    )
    parser.add_argument("--json", action="store_true", help="print the ledger as JSON")
    add_common_arguments(parser)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder forward``: deliver once, print the ledger, return the exit status."""
    settings = require_hec(ctx.settings())
    log_stream = args.log_stream or (None if args.file == "-" else args.file)
    with two_stage_stop() as request, contextlib.ExitStack() as files:
        stream: IO[bytes] = (
            sys.stdin.buffer if args.file == "-" else files.enter_context(open(args.file, "rb"))
        )
        report = forward_stream(
            stream,
            settings,
            log_group=args.log_group,
            log_stream=log_stream,
            stop=request.stop,
            grace_s=args.grace,
        )
    print_report(report, ctx.out, as_json=args.json)
    return exit_status(report, request.interrupted)


def print_report(report: ForwardReport, out: IO[str], *, as_json: bool) -> None:
    """The ledger for people (a short table) or machines (one JSON object)."""
    summary = dict(report.summary, unparsed_lines=report.unparsed)
    if report.backsplash_error:
        summary["backsplash_error"] = report.backsplash_error
    if as_json:
        out.write(json.dumps(summary, sort_keys=True) + "\n")
        return
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(summary["dropped"].items())) or "none"
    rows = [
        ("events in", summary["events_in"]),
        ("acknowledged", summary["acknowledged"]),
        ("backsplashed", summary["backsplashed"]),
        ("dropped", f"{sum(summary['dropped'].values())} ({dropped})"),
        ("in flight (lost!)", summary["in_flight"]),
        ("unparsed flow lines", report.unparsed),
        ("requests / retries / resends", f"{summary['requests']} / {summary['retries']} / "
         f"{summary['resends']}"),
        ("ack polls", summary["ack_polls"]),
        ("balanced", "yes" if summary["balanced"] else "NO"),
    ]  # fmt: skip
    if report.fatal:
        rows.append(("HEC refused the token or channel", "see the hec_fatal log line"))
    if report.backsplash_error:
        rows.append(("backsplash failed", report.backsplash_error))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.write(f"{label:<{width}}  {value}\n")
