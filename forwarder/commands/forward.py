"""``forwarder forward``: one-shot delivery of a file or stdin, with acknowledgment.

``forward`` reads a payload file or stdin, recognises what it holds, transforms it and delivers
it through the same engine as the daemon: a Firehose transformation event (JSON with
``records``), a push-Lambda event (``{"awslogs": {"data": ...}}``), a Kinesis event, a gzip
CloudWatch Logs payload, a flow-log file (plain or gzip, with or without its header line), or
plain text lines. The input is read by :func:`forwarder.intake.inputs.read_units`, which
``forwarder transform`` prints, so both see the same events. Text is read as a stream in
chunks, so memory stays bounded whatever the input size: a line longer than
``forwarder.intake.lines.MAX_LINE_BYTES`` is skipped as it streams and counted dropped
(``line_too_long``, logged ``line_dropped``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

import structlog

from config.loader import require_hec
from config.settings import Settings
from forwarder.backsplash.writers import backsplash_from_settings
from forwarder.commands.context import CommandContext, add_common_arguments, add_input_arguments
from forwarder.delivery.destinations import Delivery, build_delivery, member
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.intake.inputs import INPUT_ERRORS, Failure, input_names, read_units
from forwarder.signals import two_stage_stop
from forwarder.status import ExitStatus, RunOutcome, incomplete, status_for


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
    deliverer: Delivery | None = None,
    grace_s: float = 30.0,
) -> ForwardReport:
    """Transform and deliver everything in ``stream``; the ledger balances on return.

    Args:
        stream: the input.
        settings: validated settings with a HEC URL and token.
        log_group: routing name for text inputs.
        log_stream: routing name for text inputs.
        stop: set on shutdown: stop reading, flush within ``grace_s``, backsplash the rest.
        deliverer: an engine to use (tests, benchmarks); built from settings when None (one
            deliverer per ``[destinations.NAME]``, each batch to its route's).
        grace_s: how long acknowledgments may take after a stop request.
    """
    stop = stop or threading.Event()
    log = structlog.get_logger("forwarder.commands.forward")
    if deliverer is None:
        deliverer = build_delivery(
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
                stream, settings.transform, log_group=log_group, log_stream=log_stream, stop=stop
            ):
                if isinstance(unit, Failure):
                    log.error(unit.event, reason=unit.reason, detail=unit.detail)
                    ledger.drop(unit.reason, unit.count)
                    continue
                if unit.is_control:
                    ledger.drop("control_message", 1)
                    continue
                unparsed += unit.unparsed
                target = member(deliverer, unit.destination)
                target.ledger.shaped(unit.filtered, unit.sampled, unit.time_unparsed)  # its row
                target.submit(unit.events, unit.raw_target)
                if stop.is_set():
                    break
        except INPUT_ERRORS as exc:
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
    add_input_arguments(parser)
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
    log_group, log_stream = input_names(args.file, args.log_group, args.log_stream)
    with two_stage_stop() as request, contextlib.ExitStack() as files:
        stream: IO[bytes] = (
            sys.stdin.buffer if args.file == "-" else files.enter_context(open(args.file, "rb"))
        )
        report = forward_stream(
            stream,
            settings,
            log_group=log_group,
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
    for name, row in summary.get("destinations", {}).items():
        rows.append((f"destination {name}", f"{row['events_in']} in, {row['acknowledged']} "
                     f"acknowledged, {row['backsplashed']} backsplashed"))  # fmt: skip
    if report.fatal:
        rows.append(("HEC refused the token or channel", "see the hec_fatal log line"))
    if report.backsplash_error:
        rows.append(("backsplash failed", report.backsplash_error))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.write(f"{label:<{width}}  {value}\n")
