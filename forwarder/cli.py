"""The ``forwarder`` command: a table of subcommands, each module imported only when it runs.

``forwarder --help`` is built from the table's strings alone, so it imports no command module
(and so neither requests, boto3 nor structlog). A command's module, and the context it runs
in, are imported once its name is known, to add its flags to its own subparser and to run it.
Every command module has ``add_arguments(parser)`` and ``run(args, ctx) -> ExitStatus``;
exceptions that escape it map to an exit status through :func:`forwarder.status.status_for`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TextIO, cast

from forwarder import __version__
from forwarder.status import ExitStatus, describe, status_for

if TYPE_CHECKING:
    from forwarder.commands.context import CommandContext


class CommandModule(Protocol):
    """What every module named in :data:`COMMANDS` provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> ExitStatus: ...


#: name -> (module, one-line help for ``forwarder --help``, description for ``forwarder NAME -h``).
COMMANDS: Mapping[str, tuple[str, str, str]] = {
    "forward": (
        "forwarder.commands.forward",
        "transform and deliver a payload file or stdin once, with acknowledgment",
        "Send a Firehose event, push-Lambda event, gzip CloudWatch Logs payload, "
        "flow-log file or text file through the transform and delivery engine once. "
        "Exit status 0 means every event was acknowledged.",
    ),
    "check": (
        "forwarder.commands.check",
        "validate settings and probe each HEC URL's health and token",
        "Validate the settings, then ask every HEC URL for its health, whether it "
        "accepts the token and whether the token has indexer acknowledgment on, and say "
        "what is wrong in plain words.",
    ),
    "daemon": (
        "forwarder.commands.daemon",
        "run until SIGTERM: read Kinesis, SQS/S3, Firehose HTTP, files or stdin; deliver with acks",
        "A long-running forwarder with checkpoints, graceful shutdown, a local "
        "spool, health and Prometheus metrics. Sources and checkpoints are configured in the "
        "[source] and [daemon] tables of the TOML file.",
    ),
    "replay": (
        "forwarder.commands.replay",
        "re-deliver backsplash objects (Firehose's and ours) from S3, once",
        "Stream splunk-failed/, processing-failed/ and replay-failed/ objects "
        "from S3 and deliver them with acknowledgment; a local state file makes a second "
        "run send nothing. Failures go to replay-failed/, never back into the source.",
    ),
    "drain": (
        "forwarder.commands.drain",
        "empty the backsplash by itself while HEC is healthy, until SIGTERM",
        "Replay the backsplash bucket in cycles while HEC's health, token and ack probes "
        "pass, at a bounded rate; stop at the first busy answer, server error or ack "
        "timeout and pause; delete what was delivered. Events that fail again go back with "
        "replayAttempts + 1; after --max-attempts they go to replay-failed/, counted. "
        "Settings: the [drain] table and DRAIN_* variables.",
    ),
    "transform": (
        "forwarder.commands.transform",
        "show the HEC events the transform makes of a payload file",
        "Run the transform locally on a Firehose event JSON, a gzip CloudWatch "
        "Logs payload or a flow-log text file, and print one HEC event per line.",
    ),
    "routes": (
        "forwarder.commands.routes",
        "check a settings file's routes offline and say what each does",
        "routes check: validate the [[routes]] and settings of a TOML file without sending "
        "anything, as the commands that run would at start-up (an error names the rule and "
        "key, exit status 2), and print the routes in the order they are tried, in plain words.",
    ),
    "hec-emulator": (
        "forwarder.devtools.emulator",
        "run a local Splunk HEC for trials and tests",
        "A local HEC with acknowledgments, channels and injectable faults.",
    ),
    "demo": (
        "forwarder.devtools.demo",
        "run the whole job locally: emulator, local S3, generated flow logs",
        "End to end on this machine: a local HEC emulator with faults, a local "
        "S3 server and generated VPC flow log batches; prints what was delivered, "
        "acknowledged and backsplashed.",
    ),
    "package": (
        "forwarder.devtools.packaging",
        "build the Lambda deployment zip (and optionally upload it)",
        "Build a reproducible Lambda zip of forwarder, transforms, config and "
        "their runtime dependencies (boto3 excluded: the Lambda runtime provides it).",
    ),
}


#: What every command's ``run`` gets; loaded with the command (it loads settings and logging,
#: which ``forwarder --help`` does not need).
CONTEXT_MODULE = "forwarder.commands.context"


def load_command(name: str) -> CommandModule:
    """Import the module that implements command ``name`` (a key of :data:`COMMANDS`)."""
    module_path = COMMANDS[name][0]
    return cast(CommandModule, importlib.import_module(module_path))


def selected_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (the top level has
    only ``--help`` and ``--version``, which take no value); None when there is none."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command's subparser, with flags only for ``command``.

    Each subparser is made from the table's strings; only ``command``'s module is imported,
    to add its flags. None builds the top level alone (``forwarder --help``).
    """
    parser = argparse.ArgumentParser(
        prog="forwarder",
        description="Move CloudWatch Logs and VPC flow logs into Splunk HEC, losing nothing.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text, description) in COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text, description=description)
        if name == command:
            load_command(name).add_arguments(subparser)
    return parser


def _debugging(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """Whether ``--log-level debug`` (or ``LOG_LEVEL=debug``) asks for tracebacks."""
    level = getattr(args, "log_level", None) or environ.get("LOG_LEVEL") or ""
    return str(level).strip().upper() == "DEBUG"


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit status instead of exiting.

    An exception that escapes a command and that :func:`forwarder.status.describe` knows (a
    configuration error, an unusable path, an AWS error, an interruption) becomes one line on
    stderr and its status from :func:`forwarder.status.status_for`; its traceback only with
    ``--log-level debug``. Any other exception is a bug, and its traceback reaches the user.
    """
    env = os.environ if environ is None else environ
    stream = out if out is not None else sys.stdout
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(selected_command(words)).parse_args(words)
    command = load_command(args.command)
    try:
        ctx: CommandContext = importlib.import_module(CONTEXT_MODULE).CommandContext(
            args, env, stream
        )
        return int(command.run(args, ctx))
    except (Exception, KeyboardInterrupt) as exc:
        message = describe(exc)
        if message is None and not isinstance(exc, KeyboardInterrupt):
            raise
        if _debugging(args, env):
            traceback.print_exc(file=sys.stderr)
        if message is not None:
            print(f"forwarder {args.command}: {message}", file=sys.stderr)
        return int(status_for(exc))
