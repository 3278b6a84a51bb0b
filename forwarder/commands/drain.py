"""``forwarder drain``: empty the backsplash by itself, while HEC is healthy
(:mod:`forwarder.drain.drainer`).

Runs drain cycles until SIGTERM/SIGINT (the first stops after the chunk in flight, within
``settle_s``; the second interrupts, exit 130), or one cycle with ``--once``. Settings: the
``[drain]`` table and ``DRAIN_*`` variables (:mod:`config.drain`); the flags win.

Exit status with ``--once``: the cycle's replay status (0 all delivered; 5 some events failed
again and went back to the pool or to ``replay-failed/``; 4 HEC refused the token; 6 the
bucket refused a write), 0 for an empty bucket, 1 when the gate was shut (HEC unhealthy:
nothing replayed), 5 when the cycle stopped at a sign of trouble (the rest waits for the
next). Without ``--once``: 0 after a graceful stop, 130 after a second signal.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import structlog

from config.drain import DEFAULT_MAX_ATTEMPTS, DrainSettings, state_option
from config.loader import require_hec
from forwarder import aws
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.drain.drainer import CycleResult, Drainer
from forwarder.replay.options import parse_s3_uri
from forwarder.secrets import resolve_token
from forwarder.signals import two_stage_stop
from forwarder.status import ExitStatus, RunOutcome, status_for

_log = structlog.get_logger("forwarder.commands.drain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``forwarder drain`` flags, the shared ones (settings file, logging, HEC) included."""
    defaults = DrainSettings()
    parser.add_argument(
        "uri",
        nargs="?",
        metavar="s3://BUCKET/PREFIX",
        help="backsplash to drain (default: [drain] source, else "
        "s3://$BACKSPLASH_BUCKET/$BACKSPLASH_PREFIX)",
    )
    add_common_arguments(parser)
    drain = parser.add_argument_group("drain")
    drain.add_argument(
        "--state",
        metavar="PATH",
        help="replay state, as forwarder replay --state takes it (default: [drain] state, "
        "else replay's $XDG_STATE_HOME/firehose-splunk-forwarder/replay.sqlite)",
    )
    drain.add_argument(
        "--max-events-per-s",
        type=float,
        metavar="EPS",
        help=f"at most EPS events per second (default: {defaults.max_events_per_s:g})",
    )
    drain.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="an event that failed N replays goes to replay-failed/, where the drain gives up "
        f"(default: {DEFAULT_MAX_ATTEMPTS})",
    )
    drain.add_argument(
        "--interval-s",
        type=float,
        metavar="S",
        help=f"wait between cycles once drained (default: {defaults.interval_s:g})",
    )
    drain.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help=f"objects replayed at once (default: {defaults.concurrency})",
    )
    drain.add_argument(
        "--failure-queue",
        metavar="QUEUE_URL",
        help="the push Lambda's on-failure SQS queue, replayed after each cycle that drained "
        "the bucket (default: [drain] failure_queue, else none)",
    )
    drain.add_argument(
        "--archive",
        action="store_true",
        help="move replayed objects under replayed/ instead of deleting them",
    )
    drain.add_argument(
        "--once",
        action="store_true",
        help="one cycle (gate, replay), then exit with its status",
    )
    drain.add_argument(
        "--json", action="store_true", help="with --once: print the cycle's result as JSON"
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[drain]`` keys the flags set (None: not given)."""
    return {
        "source": args.uri,
        "state": args.state,
        "max_events_per_s": args.max_events_per_s,
        "max_attempts": args.max_attempts,
        "interval_s": args.interval_s,
        "concurrency": args.concurrency,
        "after_success": "archive" if args.archive else None,
        "failure_queue": args.failure_queue,
    }


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder drain``: cycle until stopped (or once), print the last cycle with
    ``--once``."""
    if args.uri is not None:
        try:
            parse_s3_uri(args.uri)
        except ValueError as exc:
            print(f"forwarder drain: {exc}", file=sys.stderr)
            return ExitStatus.USAGE
    drain = ctx.drain_settings(overrides_from_args(args))
    settings = require_hec(resolve_token(ctx.settings()))
    with two_stage_stop(on_first=_stopping) as request:
        drainer = Drainer(
            settings,
            drain,
            s3_client=aws.client("s3"),
            state=state_option(drain.state, ctx.environ),
            stop=request.stop,
        )
        result = drainer.run(once=args.once)
    if args.once:
        document = _document(result, drainer)
        if args.json:
            ctx.out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
        else:
            ctx.out.write(
                f"drain {drainer.source}: {result.outcome} ({result.reason}); "
                f"delivered {document['counters']['events_delivered']}, "
                f"requeued {result.events_requeued}, abandoned {result.events_abandoned}, "
                f"objects deleted {document['counters']['objects_deleted']}\n"
            )
        return status_of(result)
    return status_for(RunOutcome(interrupted=request.signals > 1))


def status_of(result: CycleResult) -> ExitStatus:
    """The exit status of one cycle (``--once``; the module notes list them)."""
    if result.report is not None and result.outcome not in ("closed", "troubled"):
        return result.report.exit_status
    # The gate shut (HEC unhealthy) is a failed run; a cycle stopped by trouble left events
    # in the backsplash for the next one.
    return status_for(
        RunOutcome(error=result.outcome == "closed", incomplete=result.outcome == "troubled")
    )


def _document(result: CycleResult, drainer: Drainer) -> dict[str, Any]:
    report = result.report
    return {
        "source": drainer.source,
        "outcome": result.outcome,
        "reason": result.reason,
        "events_requeued": result.events_requeued,
        "events_abandoned": result.events_abandoned,
        "duplicates_possible": result.duplicates_possible,
        "counters": drainer.counters.snapshot(),
        "report": None if report is None else report.to_dict(),
        "exit_status": int(status_of(result)),
    }


def _stopping(signum: int) -> None:
    _log.warning("drain_stopped", reason=f"signal {signum}; finishing the chunk in flight")
