"""Deterministic synthetic VPC flow logs and CloudWatch Logs payloads, for the demo and benchmarks.

Values look like the real thing (accounts, ENIs, private and public addresses, ACCEPT/REJECT,
the occasional NODATA line) so that parsing and routing do real work.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ACCOUNT = "123456789012"
_PROTOCOLS = (6, 6, 6, 17, 17, 1)
_PORTS = (443, 80, 22, 53, 3306, 5432, 8088, 123)


@dataclass(frozen=True)
class FlowLogGenerator:
    """Makes version-2 flow-log lines; the same seed gives the same lines."""

    seed: int = 7
    start_epoch: int = 1_764_000_000
    interfaces: int = 8

    def lines(self, count: int, *, offset: int = 0) -> Iterator[str]:
        """``count`` version-2 lines; ``offset`` shifts time so batches differ."""
        rng = random.Random(self.seed * 1_000_003 + offset)
        enis = [f"eni-{rng.getrandbits(68):017x}" for _ in range(self.interfaces)]
        for i in range(count):
            start = self.start_epoch + offset + i // 50
            eni = enis[i % len(enis)]
            if rng.random() < 0.01:
                yield f"2 {ACCOUNT} {eni} - - - - - - - {start} {start + 60} - NODATA"
                continue
            src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            dst = (
                ".".join(
                    str(octet)
                    for octet in (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256))
                )
                + f".{rng.randrange(1, 255)}"
            )
            action = "ACCEPT" if rng.random() < 0.9 else "REJECT"
            packets = rng.randrange(1, 5000)
            yield (
                f"2 {ACCOUNT} {eni} {src} {dst} {rng.randrange(1024, 65535)} "
                f"{rng.choice(_PORTS)} {rng.choice(_PROTOCOLS)} {packets} "
                f"{packets * rng.randrange(40, 1500)} {start} {start + 60} {action} OK"
            )


def cloudwatch_payload(
    messages: list[str],
    *,
    log_group: str = "/aws/vpc/flowlogs",
    log_stream: str = "eni-0a1b2c3d4e5f60718-all",
    first_id: int = 0,
    timestamp_ms: int = 1_764_000_000_000,
    message_type: str = "DATA_MESSAGE",
) -> bytes:
    """A gzip CloudWatch Logs subscription payload carrying ``messages``."""
    document = {
        "messageType": message_type,
        "owner": ACCOUNT,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": ["to-splunk"],
        "logEvents": [
            {
                # CloudWatch event ids are 56-digit decimal strings; keep them unique.
                "id": f"{first_id + i:056d}",
                "timestamp": timestamp_ms + i,
                "message": message,
            }
            for i, message in enumerate(messages)
        ],
    }
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=6)


def control_payload() -> bytes:
    """The CONTROL_MESSAGE CloudWatch Logs sends to check that a destination is reachable."""
    document = {
        "messageType": "CONTROL_MESSAGE",
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [
            {
                "id": "",
                "timestamp": 1_764_000_000_000,
                "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose.",
            }
        ],
    }
    return gzip.compress(json.dumps(document).encode())


def flow_log_payloads(
    batches: int, lines_per_batch: int, *, seed: int = 7, log_group: str = "/aws/vpc/flowlogs"
) -> list[bytes]:
    """``batches`` CloudWatch payloads of ``lines_per_batch`` flow-log lines each."""
    generator = FlowLogGenerator(seed=seed)
    return [
        cloudwatch_payload(
            list(generator.lines(lines_per_batch, offset=b * lines_per_batch)),
            log_group=log_group,
            first_id=b * lines_per_batch,
        )
        for b in range(batches)
    ]


def firehose_event(
    payloads: list[bytes], *, stream_arn: str | None = None, region: str = "us-east-1"
) -> dict[str, Any]:
    """A Firehose transformation event whose records carry ``payloads``."""
    arn = stream_arn or f"arn:aws:firehose:{region}:{ACCOUNT}:deliverystream/cwl-to-splunk"
    return {
        "invocationId": "00000000-0000-4000-8000-000000000000",
        "deliveryStreamArn": arn,
        "region": region,
        "records": [
            {
                "recordId": f"{i:056d}",
                "approximateArrivalTimestamp": 1_764_000_000_000 + i,
                "data": base64.b64encode(payload).decode("ascii"),
            }
            for i, payload in enumerate(payloads)
        ],
    }
