"""``forwarder daemon``: run the daemon (:mod:`forwarder.daemon`) until SIGTERM or the end of
a finite input; the first SIGTERM/SIGINT stops gracefully, a second one aborts (exit 130)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from config.loader import require_hec
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.daemon import Daemon
from forwarder.secrets import resolve_token
from forwarder.signals import two_stage_stop
from forwarder.status import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``forwarder daemon`` flags (the common ones and ``--metrics-port``)."""
    add_common_arguments(parser)
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="port of /metrics and /health (default: [daemon] metrics_port, else 9108)",
    )
    parser.epilog = (
        "Source types ([source] type in the settings file): kinesis, sqs-s3, firehose-http "
        "(Firehose's HTTP endpoint delivery), files, stdin."
    )


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """Build the daemon from the settings and run it under the two-stage stop.

    Raises:
        ConfigError: a setting is invalid (the cli maps it to exit status 2).
    """
    daemon_settings = ctx.daemon_settings()
    port = getattr(args, "metrics_port", None)
    if port is not None:
        daemon_settings = replace(daemon_settings, metrics_port=port)
    daemon = Daemon(require_hec(resolve_token(ctx.settings())), daemon_settings)
    with two_stage_stop(
        on_first=lambda _signum: daemon.request_stop(),
        on_second=lambda _signum: daemon.request_abort(),
    ):
        return daemon.run()
