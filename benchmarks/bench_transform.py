"""Firehose transform speed: our handler versus the bare decompress-and-parse floor.

The floor does the least any transform must: base64-decode each record, gunzip it,
``json.loads`` it, join the messages and base64-encode the result. Ours does the same plus
routing, flow-log handling, HEC envelopes and the response-size bookkeeping. Both run on the
same event in the same process, interleaved; the ratio is what we track.

Run: ``.venv/bin/python benchmarks/bench_transform.py`` (or ``make bench``).
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds
from config.loader import load_settings
from config.logs import configure_logging
from config.settings import FirehoseSettings, LogSettings, Settings
from forwarder.devtools.synthetic import firehose_event, flow_log_payloads
from transforms.firehose import transform_event
from transforms.reingest import ReingestReport

TARGETS = {"event+raw lines": 1.5, "raw endpoint": 1.2, "event+json": 2.5}
MODES = {
    "event+raw lines": {"SPLUNK_HEC_ENDPOINT": "event", "EVENT_FORMAT": "raw"},
    "raw endpoint": {"SPLUNK_HEC_ENDPOINT": "raw"},
    "event+json": {"SPLUNK_HEC_ENDPOINT": "event", "EVENT_FORMAT": "json"},
}
SHAPES = {"300 records x 100 lines": (300, 100), "10 records x 5,000 lines": (10, 5000)}


class _Accepting:
    """A reingester that takes everything (the benchmark measures the transform, not AWS)."""

    def __init__(self) -> None:
        self.records = 0

    def put(self, records: Sequence[tuple[bytes, str | None]]) -> ReingestReport:
        self.records += len(records)
        return ReingestReport()


def floor(event: dict[str, Any]) -> list[bytes]:
    """The bare minimum: decode, gunzip, parse, join messages, encode."""
    out = []
    for record in event["records"]:
        document = json.loads(gzip.decompress(base64.b64decode(record["data"])))
        joined = "\n".join(e["message"] for e in document["logEvents"]).encode()
        out.append(base64.b64encode(joined))
    return out


def import_time_ms() -> tuple[float, bool]:
    """Cumulative import time of transforms.firehose in a fresh interpreter, and boto3's absence."""
    probe = "import sys, transforms.firehose; print('boto3' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative_us = 0
    for line in result.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == "transforms.firehose":
            cumulative_us = int(parts[1])
    return cumulative_us / 1000, result.stdout.strip() == "True"


def unbounded(environ: dict[str, str]) -> Settings:
    """Settings whose response limit cannot bind.

    The example events expand to more than Lambda's 6 MB answer, so with the real limit the
    handler would re-ingest part of them and transform less than the floor decodes. Lifting
    the limit (past what the loader accepts, hence ``replace``) makes both do the same work.
    """
    settings = load_settings(environ=environ)
    return replace(settings, firehose=FirehoseSettings(response_limit_bytes=1 << 40))


def main(repeats: int = 7) -> dict[str, Any]:
    """Measure every mode on every shape; print a table; return the numbers."""
    configure_logging(LogSettings(level="WARNING", format="json"))
    results: dict[str, Any] = {"transform": []}
    print("Firehose transform: median time of our handler / the decode-parse-join floor")
    print(f"{'event':<26}{'mode':<18}{'floor ms':>10}{'ours ms':>10}{'ratio':>8}{'target':>8}")
    for shape, (records, lines) in SHAPES.items():
        event = firehose_event(flow_log_payloads(records, lines))
        for mode, environ in MODES.items():
            settings = unbounded(environ)
            sink = _Accepting()
            times = median_seconds(
                {
                    "floor": lambda event=event: floor(event),
                    "ours": lambda event=event, settings=settings, sink=sink: transform_event(
                        event, settings, reingester=sink
                    ),
                },
                repeats=repeats,
            )
            ratio = times["ours"] / times["floor"]
            target = TARGETS[mode]
            print(
                f"{shape:<26}{mode:<18}{times['floor'] * 1000:>10.1f}"
                f"{times['ours'] * 1000:>10.1f}{ratio:>8.2f}{target:>7.1f}x"
                + ("" if ratio <= target else "  (over target)")
            )
            results["transform"].append(
                {
                    "shape": shape,
                    "mode": mode,
                    "floor_s": times["floor"],
                    "ours_s": times["ours"],
                    "ratio": ratio,
                    "target": target,
                    "events": records * lines,
                    "reingested_per_run": sink.records // (repeats + 1),
                }
            )
    import_ms, boto3_loaded = import_time_ms()
    print(
        f"import transforms.firehose: {import_ms:.1f} ms cumulative (target < 100 ms); "
        f"boto3 imported: {'YES (bad)' if boto3_loaded else 'no'}"
    )
    results["import_ms"] = import_ms
    results["boto3_imported"] = boto3_loaded
    return results


if __name__ == "__main__":
    main()
