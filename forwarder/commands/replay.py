"""``forwarder replay``: the command line of the replay engine (:mod:`forwarder.replay.engine`).

The first SIGINT/SIGTERM finishes the chunk in flight and stops (the state stays
consistent; run again to resume); the second interrupts (exit 130).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.drain import DEFAULT_MAX_ATTEMPTS
from config.errors import ConfigError
from config.loader import require_hec
from config.settings import Settings
from forwarder import aws
from forwarder.backsplash.layout import KINDS
from forwarder.backsplash.writers import ReplayFailedBacksplash, backsplash_from_settings
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.drain.backlog import format_backlog, measure_backlog
from forwarder.replay.engine import replay
from forwarder.replay.failure_queue import (
    format_failure_queue_summary,
    is_queue_uri,
    parse_queue_uri,
    replay_failure_queue,
)
from forwarder.replay.firehose import FirehoseSink
from forwarder.replay.options import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_LEASE_S,
    AfterSuccess,
    ReplayOptions,
    SqliteStateSpec,
    parse_s3_uri,
    parse_state_spec,
    parse_time,
)
from forwarder.replay.report import (
    LogProgress,
    Progress,
    ReplayReport,
    TtyProgress,
    format_summary,
)
from forwarder.replay.worker import DelivererFactory, Sink, default_deliverer_factory
from forwarder.signals import two_stage_stop
from forwarder.status import ExitStatus
from transforms.reingest import FirehoseReingester

_log = structlog.get_logger("forwarder.commands.replay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``forwarder replay`` flags, the shared ones (settings file, logging, HEC) included."""
    parser.add_argument(
        "uri",
        metavar="s3://BUCKET/PREFIX|sqs://QUEUE_URL",
        help="backsplash objects to replay, or the push Lambda's on-failure queue (its "
        "destination records' requestPayload, through the push path)",
    )
    add_common_arguments(parser)
    select = parser.add_argument_group("selection")
    select.add_argument(
        "--since",
        metavar="TIME",
        help="records that arrived at/after TIME: ISO 8601 (no zone: UTC), epoch seconds, or "
        "a duration ago (90m, 2h, 1d) (default: no lower bound)",
    )
    select.add_argument(
        "--until",
        metavar="TIME",
        help="records that arrived before TIME, written as for --since (default: no upper bound)",
    )
    select.add_argument(
        "--error-code",
        action="append",
        default=[],
        metavar="CODE",
        help="only this errorCode (glob allowed, e.g. 'Splunk.*'); repeatable (default: all)",
    )
    select.add_argument(
        "--include",
        action="append",
        choices=KINDS,
        help="only these kinds; repeatable (default: all kinds)",
    )
    select.add_argument(
        "--exclude",
        action="append",
        choices=KINDS,
        default=[],
        help="skip these kinds; repeatable (default: none)",
    )
    select.add_argument(
        "--limit", type=int, metavar="N", help="send at most N events (default: no limit)"
    )
    behave = parser.add_argument_group("behaviour")
    behave.add_argument(
        "--dry-run", action="store_true", help="count what would be sent; send nothing"
    )
    behave.add_argument(
        "--state",
        metavar="PATH|dynamodb://TABLE",
        help="the replay state: a SQLite file, or a DynamoDB table shared by every replay and "
        "drainer, with a lease per object (default: $XDG_STATE_HOME/firehose-splunk-forwarder/"
        "replay.sqlite)",
    )
    behave.add_argument(
        "--lease-s",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="SECONDS",
        help="with --state dynamodb://TABLE: how long an object's lease lasts unless renewed "
        "(renewed every third of it; a crashed replay's objects are taken over after it) "
        "(default: %(default)g)",
    )
    behave.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"skip records already replayed N times (default {DEFAULT_MAX_ATTEMPTS})",
    )
    behave.add_argument(
        "--failed-to",
        metavar="s3://BUCKET/PREFIX",
        help="root for replay-failed/ objects (default: the replayed prefix's root)",
    )
    behave.add_argument(
        "--via-firehose",
        metavar="STREAM",
        help="put the records into this Firehose delivery stream (PutRecordBatch) instead of "
        "sending them to HEC; HEC events are marked so the stream's transform passes them "
        "through unchanged (default: send to HEC)",
    )
    after = behave.add_mutually_exclusive_group()
    after.add_argument(
        "--archive", action="store_true", help="move fully replayed objects under replayed/"
    )
    after.add_argument("--delete", action="store_true", help="delete fully replayed objects")
    behave.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="objects replayed at once (default: %(default)s)",
    )
    behave.add_argument(
        "--rate-limit",
        type=float,
        metavar="EPS",
        help="at most EPS events per second (default: no limit)",
    )
    behave.add_argument(
        "--chunk-mb",
        type=float,
        default=DEFAULT_CHUNK_BYTES / 1024 / 1024,
        metavar="MB",
        help="payload MB per flush-and-commit step (memory and re-send bound) "
        "(default: %(default)g)",
    )
    behave.add_argument("--json", action="store_true", help="print the report as JSON")
    behave.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ReplayOptions:
    """Build :class:`ReplayOptions` from parsed flags.

    Raises:
        ValueError: an invalid value (the message says which).
        ConfigError: an invalid ``--state`` or ``--lease-s``.
    """
    include = frozenset(args.include) if args.include else frozenset(KINDS)
    after: AfterSuccess = "archive" if args.archive else "delete" if args.delete else "keep"
    return ReplayOptions(
        since=_time_flag("--since", args.since),
        until=_time_flag("--until", args.until),
        error_codes=tuple(args.error_code),
        include=include,
        exclude=frozenset(args.exclude),
        limit=args.limit,
        dry_run=args.dry_run,
        max_attempts=args.max_attempts,
        after_success=after,
        state=parse_state_spec(args.state, environ, lease_s=args.lease_s),
        concurrency=args.concurrency,
        rate_limit=args.rate_limit,
        chunk_bytes=max(int(args.chunk_mb * 1024 * 1024), 1),
        failed_to=args.failed_to,
        via_firehose=args.via_firehose,
    )


def _time_flag(flag: str, value: str | None) -> datetime | None:
    """``value`` of the time flag ``flag`` (None when not given); errors name the flag."""
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder replay``: replay once, print the summary (or ``--json``), exit with its
    status."""
    if is_queue_uri(args.uri):
        return run_failure_queue(args, ctx)
    try:
        options = options_from_args(args, ctx.environ)
        parse_s3_uri(args.uri)
    except (ValueError, ConfigError) as exc:
        print(f"forwarder replay: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    settings = ctx.settings()
    factory: DelivererFactory = default_deliverer_factory
    if options.via_firehose is not None:
        factory = firehose_sink_factory(options.via_firehose)
    elif not options.dry_run:
        require_hec(settings)
    s3 = aws.client("s3")
    progress: Progress | None
    if args.no_progress:
        progress = None
    elif sys.stderr.isatty():
        progress = TtyProgress(sys.stderr)
    else:
        progress = LogProgress()
    with two_stage_stop(on_first=_stopping) as request:
        report = replay(
            settings,
            args.uri,
            options,
            s3_client=s3,
            deliverer_factory=factory,
            stop_event=request.stop,
            progress=progress,
        )
    reason = why_nothing_sent(report, options)
    if args.json:
        document = report.to_dict()
        if reason is not None:
            document["nothing_sent_because"] = reason
        if options.dry_run:
            document["backlog"] = backlog_figures(s3, args.uri)
        ctx.out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        backlog = backlog_figures(s3, args.uri) if options.dry_run else None
        ctx.out.write(format_summary(report, format_backlog(backlog) if backlog else ""))
        if reason is not None:
            verb = "would be sent" if options.dry_run else "was sent"
            ctx.out.write(f"  nothing {verb}: {reason}\n")
    return report.exit_status


#: Flags that select or dispose of backsplash objects: meaningless for a queue.
_S3_ONLY_FLAGS: Final = (
    ("--since", "since"),
    ("--until", "until"),
    ("--error-code", "error_code"),
    ("--include", "include"),
    ("--exclude", "exclude"),
    ("--limit", "limit"),
    ("--state", "state"),
    ("--failed-to", "failed_to"),
    ("--via-firehose", "via_firehose"),
    ("--archive", "archive"),
    ("--delete", "delete"),
)


def run_failure_queue(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder replay sqs://QUEUE_URL``: the push Lambda's on-failure destination records,
    delivered through the push path (:mod:`forwarder.replay.failure_queue`)."""
    s3_only = [flag for flag, name in _S3_ONLY_FLAGS if getattr(args, name, None)]
    try:
        queue_url = parse_queue_uri(args.uri)
    except ValueError as exc:
        print(f"forwarder replay: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    if s3_only:
        print(f"forwarder replay: {s3_only[0]} applies to s3:// sources only", file=sys.stderr)
        return ExitStatus.USAGE
    settings = ctx.settings()
    if not args.dry_run:
        require_hec(settings)
    s3 = aws.client("s3") if settings.backsplash.bucket else None
    with two_stage_stop(on_first=_stopping) as request:
        report = replay_failure_queue(
            settings,
            queue_url,
            sqs=aws.client("sqs"),
            backsplash=backsplash_from_settings(settings.backsplash, s3_client=s3),
            dry_run=args.dry_run,
            stop=request.stop,
            log=_log,
        )
    if args.json:
        ctx.out.write(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        ctx.out.write(format_failure_queue_summary(report))
    return report.exit_status


def backlog_figures(s3: Any, uri: str) -> dict[str, Any] | None:
    """What waits under ``uri``, whatever the selection (objects, bytes, oldest age per kind:
    the figures of the drain Lambda's EMF line and the daemon's gauges); None, logged as
    ``backlog_unmeasured``, when S3 refuses the listing."""
    try:
        return measure_backlog(s3, uri).to_dict()
    except (BotoCoreError, ClientError) as exc:
        _log.warning("backlog_unmeasured", error=f"{type(exc).__name__}: {exc}")
        return None


def firehose_sink_factory(
    stream: str, client_factory: aws.ClientFactory = aws.client
) -> DelivererFactory:
    """Build, per worker thread, a :class:`FirehoseSink` putting into ``stream`` through
    its own client (the one AWS client factory: endpoint and region from the environment)."""

    def build(settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Sink:
        del settings  # nothing of HEC's is used
        client = client_factory("firehose")
        return FirehoseSink(
            FirehoseReingester(client, stream), stream, backsplash=backsplash, on_close=client.close
        )

    return build


def why_nothing_sent(report: ReplayReport, options: ReplayOptions) -> str | None:
    """Why a run that finished sent (or, dry, would send) no event; None when it sent some,
    or stopped early (the summary's notes say why)."""
    if report.events_sent or report.interrupted or report.limited or report.error:
        return None
    if report.fatal or report.backsplash_error:
        return None
    if report.objects_listed == 0:
        return f"no objects under {report.source}"
    reasons = []
    if report.objects_outside_window:
        reasons.append(
            f"{report.objects_outside_window} of {report.objects_listed} objects are outside "
            f"the time window{_window(options)} (by the hour in their keys)"
        )
    state = options.state_spec(os.environ)
    where = "state file" if isinstance(state, SqliteStateSpec) else "state table"
    if report.objects_already_done:
        reasons.append(
            f"{report.objects_already_done} objects were already replayed (the {where} "
            f"{state} records them; --state elsewhere to replay them again)"
        )
    if report.objects_leased_elsewhere:
        reasons.append(
            f"{report.objects_leased_elsewhere} objects are being replayed by another replay or "
            f"drainer (their leases in {state} are live)"
        )
    if report.records_not_selected:
        reasons.append(
            f"{report.records_not_selected} records are not selected by{_filters(options)}"
        )
    if report.records_already_handled:
        reasons.append(f"{report.records_already_handled} records were already replayed")
    if report.records_exhausted:
        reasons.append(
            f"{report.records_exhausted} records were replayed --max-attempts "
            f"({options.max_attempts}) times already"
        )
    if report.corrupt_total:
        reasons.append(f"{report.corrupt_total} lines are corrupt")
    if report.objects_failed:
        reasons.append(f"{report.objects_failed} objects could not be read (see the status line)")
    if not reasons and not report.records_read:
        reasons.append("the selected objects hold no records")
    return "; ".join(reasons) if reasons else None


def _window(options: ReplayOptions) -> str:
    bounds = []
    if options.since is not None:
        bounds.append(f"--since {options.since.isoformat()}")
    if options.until is not None:
        bounds.append(f"--until {options.until.isoformat()}")
    return f" ({' '.join(bounds)})" if bounds else ""


def _filters(options: ReplayOptions) -> str:
    filters = []
    if options.since is not None or options.until is not None:
        filters.append(f" the time window{_window(options)}")
    if options.error_codes:
        filters.append(f" --error-code {' '.join(options.error_codes)}")
    if options.exclude or set(options.include) != set(KINDS):
        kinds = sorted(set(options.include) - set(options.exclude))
        filters.append(f" the kinds ({', '.join(kinds) or 'none'})")
    return ",".join(filters) if filters else " the selection"


def _stopping(signum: int) -> None:
    _log.warning("replay_stopped", reason=f"signal {signum}; finishing the chunk in flight")
