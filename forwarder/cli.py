"""The ``forwarder`` command: argparse subcommands, exit statuses mapped in one place."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from config.loader import ConfigError
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.status import ExitStatus

Command = Callable[[argparse.Namespace, CommandContext], int]


def _cmd_transform(args: argparse.Namespace, ctx: CommandContext) -> int:
    from transforms.errors import TransformError  # noqa: PLC0415
    from transforms.firehose import transform_file_contents  # noqa: PLC0415

    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    name = None if args.file == "-" else Path(args.file).name
    try:
        lines = transform_file_contents(data, ctx.settings(), name=name)
    except TransformError as exc:
        print(f"forwarder: cannot transform {args.file}: {exc}", file=sys.stderr)
        return ExitStatus.FAILURE
    for line in lines:
        ctx.out.write(line + "\n")
    return ExitStatus.OK


def _cmd_hec_emulator(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.devtools.emulator import serve  # noqa: PLC0415

    return serve(args)


def _cmd_forward(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.commands.forward import run_forward  # noqa: PLC0415

    return run_forward(args, ctx.settings(), ctx.out)


def _cmd_check(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.commands.forward import run_check  # noqa: PLC0415

    return run_check(ctx.settings(), ctx.out)


def _cmd_daemon(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.daemon import run  # noqa: PLC0415

    return run(args, ctx.settings, ctx.environ)


def _cmd_replay(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.replay.engine import run  # noqa: PLC0415

    return run(args, ctx)


def _cmd_demo(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.devtools.demo import run_demo  # noqa: PLC0415

    return run_demo(args, ctx.out)


def _cmd_package(args: argparse.Namespace, ctx: CommandContext) -> int:
    from forwarder.devtools.packaging import run  # noqa: PLC0415

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand sets ``func``."""
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Move CloudWatch Logs and VPC flow logs into Splunk HEC, losing nothing.",
    )
    from forwarder import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    forward = commands.add_parser(
        "forward",
        help="transform and deliver a payload file or stdin once, with acknowledgment",
        description="Send a Firehose event, push-Lambda event, gzip CloudWatch Logs payload, "
        "flow-log file or text file through the transform and delivery engine once. "
        "Exit status 0 means every event was acknowledged.",
    )
    from forwarder.commands.forward import add_forward_arguments  # noqa: PLC0415

    add_forward_arguments(forward)
    add_common_arguments(forward)
    forward.set_defaults(func=_cmd_forward)

    check = commands.add_parser(
        "check",
        help="validate settings and probe each HEC URL's health and token",
        description="Validate the settings, then ask every HEC URL for its health and "
        "whether it accepts the token, and say what is wrong in plain words.",
    )
    add_common_arguments(check)
    check.set_defaults(func=_cmd_check)

    daemon = commands.add_parser(
        "daemon",
        help="run until SIGTERM: read Kinesis, SQS/S3, files or stdin and deliver with acks",
        description="A long-running forwarder with checkpoints, graceful shutdown, a local "
        "spool, health and Prometheus metrics. Sources and checkpoints are configured in the "
        "[source] and [daemon] tables of the TOML file.",
    )
    from forwarder.daemon import add_arguments as add_daemon_arguments  # noqa: PLC0415

    add_daemon_arguments(daemon)
    daemon.set_defaults(func=_cmd_daemon)

    replay = commands.add_parser(
        "replay",
        help="re-deliver backsplash objects (Firehose's and ours) from S3, once",
        description="Stream splunk-failed/, processing-failed/ and replay-failed/ objects "
        "from S3 and deliver them with acknowledgment; a local state file makes a second "
        "run send nothing. Failures go to replay-failed/, never back into the source.",
    )
    from forwarder.replay.engine import add_arguments as add_replay_arguments  # noqa: PLC0415

    add_replay_arguments(replay)
    add_common_arguments(replay, hec=False)
    replay.set_defaults(func=_cmd_replay)

    transform = commands.add_parser(
        "transform",
        help="show the HEC events the transform makes of a payload file",
        description="Run the transform locally on a Firehose event JSON, a gzip CloudWatch "
        "Logs payload or a flow-log text file, and print one HEC event per line.",
    )
    transform.add_argument("file", metavar="FILE", help="payload file, or - for stdin")
    add_common_arguments(transform, hec=False)
    transform.set_defaults(func=_cmd_transform)

    emulator = commands.add_parser(
        "hec-emulator",
        help="run a local Splunk HEC for trials and tests",
        description="A local HEC with acknowledgments, channels and injectable faults.",
    )
    from forwarder.devtools.emulator import add_arguments as add_emulator_arguments  # noqa: PLC0415

    add_emulator_arguments(emulator)
    emulator.set_defaults(func=_cmd_hec_emulator)

    demo = commands.add_parser(
        "demo",
        help="run the whole job locally: emulator, local S3, generated flow logs",
        description="End to end on this machine: a local HEC emulator with faults, a local "
        "S3 server and generated VPC flow log batches; prints what was delivered, "
        "acknowledged and backsplashed.",
    )
    from forwarder.devtools.demo import add_arguments as add_demo_arguments  # noqa: PLC0415

    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    package = commands.add_parser(
        "package",
        help="build the Lambda deployment zip (and optionally upload it)",
        description="Build a reproducible Lambda zip of forwarder, transforms, config and "
        "their runtime dependencies (boto3 excluded: the Lambda runtime provides it).",
    )
    from forwarder.devtools.packaging import add_arguments as add_package_arguments  # noqa: PLC0415

    add_package_arguments(package)
    package.set_defaults(func=_cmd_package)
    return parser


def exit_status_for(exc: BaseException) -> ExitStatus:
    """Map an exception that escaped a command to its exit status."""
    if isinstance(exc, ConfigError):
        return ExitStatus.USAGE
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    return ExitStatus.FAILURE


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit status instead of exiting."""
    env = os.environ if environ is None else environ
    stream = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = CommandContext(args, env, stream)
    func: Command = args.func
    try:
        return int(func(args, ctx))
    except ConfigError as exc:
        print(f"forwarder: configuration error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except OSError as exc:
        print(f"forwarder: {exc}", file=sys.stderr)
        return exit_status_for(exc)
