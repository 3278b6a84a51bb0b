"""``forwarder transform``: print the HEC events ``forwarder forward`` would send for an input.

The input is read by the same reader as ``forward`` (:func:`forwarder.intake.inputs.read_units`)
with the same names, so for the same bytes and flags the events printed are exactly the events
``forward`` sends. Nothing is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import IO

from forwarder.commands.context import CommandContext, add_common_arguments, add_input_arguments
from forwarder.intake.inputs import INPUT_ERRORS, Failure, input_names, read_units
from forwarder.status import ExitStatus, RunOutcome, status_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder transform`` (the input flags of ``forwarder forward``)."""
    add_input_arguments(parser)
    add_common_arguments(parser, hec=False)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """Transform ``args.file`` (or stdin) and write one HEC event per line to ``ctx.out``.

    What cannot be transformed (a record, a line too long, a broken input) is named on
    stderr; the events of the rest are still printed, and the status is then 1.
    """
    options = ctx.settings().transform
    log_group, log_stream = input_names(args.file, args.log_group, args.log_stream)
    failed = False
    with contextlib.ExitStack() as files:
        stream: IO[bytes] = (
            sys.stdin.buffer if args.file == "-" else files.enter_context(open(args.file, "rb"))
        )
        try:
            for unit in read_units(stream, options, log_group=log_group, log_stream=log_stream):
                if isinstance(unit, Failure):
                    failed = True
                    print(f"forwarder: {args.file}: {unit.reason}: {unit.detail}", file=sys.stderr)
                    continue
                for event in unit.events:
                    ctx.out.write(event.payload.decode("utf-8", "replace") + "\n")
        except INPUT_ERRORS as exc:
            failed = True
            print(f"forwarder: cannot transform {args.file}: {exc}", file=sys.stderr)
    return status_for(RunOutcome(partial_failure=failed))
