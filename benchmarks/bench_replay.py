"""Replay benchmark: throughput against read+decode, and peak memory on one large object.

Starts its own moto S3 server and HEC emulator on loopback, writes Firehose-style
``splunk-failed/`` objects (gzip JSON lines, one HEC event per record), then measures:

* ``replay``: ``forwarder.replay.engine.replay`` into the emulator (acks on), events/s and MB/s;
* ``read_decode``: the same objects read and decoded without sending (a dry run);
* ``ratio`` = replay events/s / read_decode events/s (issue 5 target: at least 0.5);
* ``peak_rss_mb``: the peak RSS of a subprocess replaying one object of ``--big-mb`` MB
  (stored, gzip), measured with ``resource.getrusage`` (issue 5: 200 MB stays under 150 MB).

Run: ``.venv/bin/python benchmarks/bench_replay.py [--big-mb 200]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "00000000-bench-token-0000-000000000000"
BUCKET = "replay-bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _aws_env() -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _settings(hec_url: str) -> Any:
    from config.loader import load_settings

    return load_settings(
        environ={
            "SPLUNK_HEC_URL": hec_url,
            "SPLUNK_HEC_TOKEN": TOKEN,
            "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.05",
            "SPLUNK_HEC_ACK_TIMEOUT": "30",
            "LOG_LEVEL": "WARNING",
        }
    )


_FLOW = (
    "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 52.94.1.{n} 49152 443 6 10 8400 "
    "1764000000 1764000060 ACCEPT OK"
)


def make_object(events: int, *, start: int = 0, level: int = 1) -> tuple[bytes, int]:
    """A gzip splunk-failed object of ``events`` records; returns it and its raw size."""
    lines = []
    for i in range(start, start + events):
        payload = json.dumps(
            {
                "time": 1764000000 + i % 86400,
                "sourcetype": "aws:cloudwatchlogs:vpcflow",
                "source": "/aws/vpc/flowlogs:eni-0a1b2c3d4e5f60718",
                "event": _FLOW.format(n=i % 250) + " " + os.urandom(12).hex(),
                "fields": {"event_id": f"{i:056d}"},
            },
            separators=(",", ":"),
        ).encode()
        lines.append(
            json.dumps(
                {
                    "attemptsMade": 4,
                    "arrivalTimestamp": 1764000000000 + i,
                    "errorCode": "Splunk.ServerError",
                    "errorMessage": "The Splunk server failed",
                    "attemptEndingTimestamp": 1764000300000,
                    "rawData": base64.b64encode(payload).decode(),
                    "EventId": f"4954698668313554428650745793632162567570019247115678515{i}",
                },
                separators=(",", ":"),
            )
        )
    raw = ("\n".join(lines) + "\n").encode()
    return gzip.compress(raw, compresslevel=level, mtime=0), len(raw)


def _run_replay(
    settings: Any, s3: Any, uri: str, state: Path, *, dry_run: bool
) -> tuple[Any, float]:
    from forwarder.replay.engine import replay
    from forwarder.replay.options import ReplayOptions

    started = time.perf_counter()
    report = replay(settings, uri, ReplayOptions(state_path=state, dry_run=dry_run), s3_client=s3)
    return report, time.perf_counter() - started


def _quiet() -> None:
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def memory_child(config: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: replay one object, report peak RSS (run by ``main``)."""
    _quiet()
    _aws_env()
    s3 = _s3(config["s3"])
    settings = _settings(config["hec"])
    from forwarder.delivery import deliverer  # noqa: F401
    from forwarder.replay import engine  # noqa: F401 - count the imports in the baseline

    base_kb = _vm_hwm_kb()
    report, seconds = _run_replay(settings, s3, config["uri"], Path(config["state"]), dry_run=False)
    return {
        "events": report.events_delivered,
        "exit_status": int(report.exit_status),
        "seconds": round(seconds, 2),
        "rss_after_imports_mb": round(base_kb / 1024, 1),
        "peak_rss_mb": round(_vm_hwm_kb() / 1024, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _vm_hwm_kb() -> int:
    """This process's peak RSS in KiB.

    ``VmHWM`` where Linux has it: ``getrusage``'s ``ru_maxrss`` survives ``exec`` and so
    starts from the parent's size at spawn time (here: the parent holds the moto server and
    the object), which would measure the parent, not the replay.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints a table and returns the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--events-per-object", type=int, default=25_000)
    parser.add_argument("--big-mb", type=float, default=50.0, help="stored size of the big object")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        result = memory_child(json.loads(args.memory_child))
        print(json.dumps(result))
        return result

    _quiet()
    _aws_env()
    from moto.server import ThreadedMotoServer

    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    results: dict[str, Any] = {}
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = _s3(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        stored = raw_total = 0
        for o in range(args.objects):
            body, raw = make_object(args.events_per_object, start=o * args.events_per_object)
            stored += len(body)
            raw_total += raw
            s3.put_object(
                Bucket=BUCKET, Key=f"tp/splunk-failed/2025/11/24/16/obj-{o:03d}.gz", Body=body
            )
        events = args.objects * args.events_per_object
        with _emulator_process() as hec_url, tempfile.TemporaryDirectory() as tmp:
            settings = _settings(hec_url)
            uri = f"s3://{BUCKET}/tp/"
            # Warm up (imports, connections), then keep the best of --repeat runs of each.
            body, _ = make_object(100, start=10**9)
            s3.put_object(Bucket=BUCKET, Key="warm/splunk-failed/w.gz", Body=body)
            _run_replay(settings, s3, f"s3://{BUCKET}/warm/", Path(tmp) / "w.sqlite", dry_run=False)
            dry_s = real_s = float("inf")
            for attempt in range(args.repeat):
                indexed_before = _indexed(hec_url)
                dry, seconds = _run_replay(
                    settings, s3, uri, Path(tmp) / f"dry{attempt}.sqlite", dry_run=True
                )
                dry_s = min(dry_s, seconds)
                assert dry.events_sent == events and _indexed(hec_url) == indexed_before
                real, seconds = _run_replay(
                    settings, s3, uri, Path(tmp) / f"real{attempt}.sqlite", dry_run=False
                )
                real_s = min(real_s, seconds)
                assert real.events_delivered == events, real.to_dict()
                assert _indexed(hec_url) - indexed_before == events
            results["throughput"] = {
                "events": events,
                "stored_mb": round(stored / 1e6, 1),
                "decoded_mb": round(raw_total / 1e6, 1),
                "read_decode_events_s": round(events / dry_s),
                "read_decode_mb_s": round(raw_total / 1e6 / dry_s, 1),
                "replay_events_s": round(events / real_s),
                "replay_mb_s": round(raw_total / 1e6 / real_s, 1),
                "ratio": round(dry_s / real_s, 2),
                "target_ratio": 0.5,
            }
            if not args.skip_memory:
                results["memory"] = _memory(s3, endpoint, hec_url, args.big_mb, Path(tmp))
    finally:
        moto.stop()
    _print(results)
    return results


@contextlib.contextmanager
def _emulator_process() -> Iterator[str]:
    """``forwarder hec-emulator`` in its own process (so it does not share our GIL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "forwarder", "hec-emulator", "--port", "0", "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        yield first.strip().rsplit(" ", 1)[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _indexed(url: str) -> int:
    import requests

    stats = requests.get(f"{url}/emulator/stats", timeout=10).json()
    return int(stats["events_indexed"])


def _memory(s3: Any, endpoint: str, hec_url: str, big_mb: float, tmp: Path) -> dict[str, Any]:
    # Estimate events per stored MB from a sample, then build the object in parts.
    sample, _ = make_object(20_000)
    per_mb = 20_000 / (len(sample) / 1e6)
    total = int(per_mb * big_mb)
    parts = []
    raw_total = 0
    step = 100_000
    for start in range(0, total, step):
        body, raw = make_object(min(step, total - start), start=start)
        parts.append(body)
        raw_total += raw
    body = b"".join(parts)  # multi-member gzip, as valid as one member
    key = "mem/splunk-failed/2025/11/24/16/big.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    stored = len(body)
    del parts, body
    config = {
        "s3": endpoint,
        "hec": hec_url,
        "uri": f"s3://{BUCKET}/mem/",
        "state": str(tmp / "mem.sqlite"),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child", json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["events"] == total, child
    return {
        "object_stored_mb": round(stored / 1e6, 1),
        "object_decoded_mb": round(raw_total / 1e6, 1),
        **child,
        "limit_mb": 150,
    }


def _print(results: dict[str, Any]) -> None:
    for section, values in results.items():
        print(section)
        for name, value in values.items():
            print(f"  {name:<24}{value}")


if __name__ == "__main__":
    main()
