"""``forwarder transform``: print the HEC events the transform makes of a payload file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.status import ExitStatus
from transforms.errors import TransformError
from transforms.firehose import transform_file_contents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder transform``."""
    parser.add_argument("file", metavar="FILE", help="payload file, or - for stdin")
    add_common_arguments(parser, hec=False)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """Transform ``args.file`` (or stdin) and write one HEC event per line to ``ctx.out``."""
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
