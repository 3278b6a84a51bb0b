"""``python -m tests.crash``: the long crash runs (``make crash``); exit 1 if any check fails.

Usage: ``python -m tests.crash [--source kinesis|sqs-s3|all] [--profile long|short]
[--seed N] [--workdir DIR]``. ``CRASH_SEED`` sets the seed too (``--seed`` wins).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from tests.crash.harness import (
    LONG_KINESIS,
    LONG_SQS,
    SHORT_KINESIS,
    SHORT_SQS,
    run_crash,
    seed_from_env,
)

PROFILES = {
    ("kinesis", "long"): LONG_KINESIS,
    ("kinesis", "short"): SHORT_KINESIS,
    ("sqs-s3", "long"): LONG_SQS,
    ("sqs-s3", "short"): SHORT_SQS,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash", description=__doc__)
    parser.add_argument("--source", choices=["kinesis", "sqs-s3", "all"], default="all")
    parser.add_argument("--profile", choices=["long", "short"], default="long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    args = parser.parse_args(argv)
    # `timeout` (make crash) sends SIGTERM: unwind, so every daemon subprocess is killed too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seed = args.seed if args.seed is not None else seed_from_env()
    sources = ["kinesis", "sqs-s3"] if args.source == "all" else [args.source]
    failed = []
    with tempfile.TemporaryDirectory(prefix="crash-") as scratch:
        base = args.workdir or Path(scratch)
        for source in sources:
            report = run_crash(
                source,
                PROFILES[(source, args.profile)],
                base / source,
                seed=seed,
                echo=lambda line: print(line, flush=True),
            )
            if not report.ok:
                failed.append(source)
                print(f"[crash] daemon logs: {base / source}/run-*.log", flush=True)
    if failed:
        print(f"[crash] FAILED: {', '.join(failed)}", flush=True)
        return 1
    print("[crash] all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
