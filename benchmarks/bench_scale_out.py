"""Scale-out figures (issue 14): events per second of one `sqs-s3` daemon, and per push Lambda
invocation, on this machine. These are the per-unit rates the README's "Scaling" section
multiplies: N daemons on one queue, or N concurrent invocations, each add about this much.

* daemon: ``--files`` notified flow-log files of ``--lines`` lines each, in a moto server (in
  this process: it shares the GIL with the daemon, so the figure is a floor), one daemon with
  an ``sqs-s3`` source; timed from start to the last acknowledgment.
* push Lambda: ``forwarder.push.handler`` on one CloudWatch Logs subscription event of
  ``--events`` log events (about 1 MB of flow-log lines, what one subscription delivery
  carries at most), the container warm (its first invocation is not timed); median of
  ``--repeats``.

The HEC emulator runs in its own process with acks and gzip on.

Run: ``.venv/bin/python benchmarks/bench_scale_out.py [--files N] [--lines N] [--events N]``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_delivery import emulator_process, hec_settings, quiet
from benchmarks.common import machine
from config.daemon import DaemonSettings, SourceSettings
from forwarder import push
from forwarder.daemon import Daemon
from forwarder.devtools.synthetic import FlowLogGenerator

BUCKET = "flow-log-files"
HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
    "start end action log-status"
)


class Context:
    """A Lambda context with 15 minutes left."""

    aws_request_id = "bench"

    def __init__(self) -> None:
        self._end = time.monotonic() + 900

    def get_remaining_time_in_millis(self) -> int:
        return int((self._end - time.monotonic()) * 1000)


def _client(endpoint: str, service: str) -> Any:
    import boto3

    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def daemon_rate(endpoint: str, hec_url: str, files: int, lines: int) -> dict[str, Any]:
    s3, sqs = _client(endpoint, "s3"), _client(endpoint, "sqs")
    s3.create_bucket(Bucket=BUCKET)
    url = sqs.create_queue(QueueName="bench-notifications")["QueueUrl"]
    generator = FlowLogGenerator(seed=3)
    for index in range(files):
        body = "\n".join([HEADER, *generator.lines(lines, offset=index * lines)]) + "\n"
        key = f"AWSLogs/123456789012/vpcflowlogs/us-east-1/file-{index:05d}.log.gz"
        s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body.encode()))
        record = {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 1}},
        }
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [record]}))
    daemon = Daemon(
        hec_settings(hec_url),
        DaemonSettings(
            source=SourceSettings(type="sqs-s3", queue_url=url, wait_time_s=0),
            checkpoint_store="none",
            metrics_enabled=False,
        ),
        client_factory=lambda service: _client(endpoint, service),
    )
    total = files * lines
    start = time.perf_counter()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    while daemon.deliverer.ledger.acknowledged < total:
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"not delivered: {daemon.deliverer.ledger.summary()}")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    daemon.request_stop()
    thread.join(timeout=60)
    return {"files": files, "events": total, "seconds": round(elapsed, 2),
            "events_per_s": round(total / elapsed)}  # fmt: skip


def lambda_rate(endpoint: str, hec_url: str, events: int, repeats: int) -> dict[str, Any]:
    s3 = _client(endpoint, "s3")
    s3.create_bucket(Bucket="bench-backsplash")
    push.configure(
        hec_settings(hec_url, BACKSPLASH_BUCKET="bench-backsplash"),
        client_factory=lambda service: _client(endpoint, service),
    )
    generator = FlowLogGenerator(seed=5)

    def event(offset: int) -> dict[str, Any]:
        payload = {
            "messageType": "DATA_MESSAGE",
            "owner": "123456789012",
            "logGroup": "/aws/vpc/flow-logs",
            "logStream": "eni-bench-all",
            "subscriptionFilters": ["to-splunk"],
            "logEvents": [
                {"id": str(offset + i), "timestamp": 1764150000000 + i, "message": line}
                for i, line in enumerate(generator.lines(events, offset=offset))
            ],
        }
        data = gzip.compress(json.dumps(payload).encode())
        return {"awslogs": {"data": base64.b64encode(data).decode()}}

    push.handler(event(0), Context())  # warm the container, as Lambda reuses it
    times = []
    for run in range(repeats):
        payload = event((run + 1) * events)
        start = time.perf_counter()
        push.handler(payload, Context())
        times.append(time.perf_counter() - start)
    push.reset()
    median = statistics.median(times)
    return {"events": events, "median_s": round(median, 3), "events_per_s": round(events / median)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    quiet()
    os.environ.setdefault("AWS_REGION", "us-east-1")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with emulator_process() as emulator:
            result = {
                "machine": machine(),
                "daemon_sqs_s3": daemon_rate(endpoint, emulator.url, args.files, args.lines),
                "push_invocation": lambda_rate(endpoint, emulator.url, args.events, args.repeats),
            }
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
