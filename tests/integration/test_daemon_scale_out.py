"""Scale-out on SQS, shown: three daemons share one `sqs-s3` queue (moto server) with no
coordination of their own, and 60 notified flow-log files are all delivered. A file is
delivered twice only if its notification was received again after its visibility timeout
expired (the daemons extend it while they work), and duplicates are counted."""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from config.daemon import SourceSettings
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import HecEmulator
from tests.conftest import boto_client
from tests.integration.conftest import delivery_settings
from tests.integration.test_daemon import daemon_settings, queue_counts, running, wait_for
from tests.integration.test_push import s3_body

pytestmark = pytest.mark.integration

FILES = 60
LINES_PER_FILE = 25
DAEMONS = 3
FILE_BUCKET = "flow-log-files"
HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
    "start end action log-status"
)


def flow_file(index: int) -> bytes:
    """A flow-log file as VPC Flow Logs writes it to S3: gzip, a header, then v2 lines whose
    source port and interface name the file and line (so each line is told apart)."""
    lines = [HEADER] + [
        f"2 123456789012 eni-{index:04d} 10.0.0.{line} 10.0.1.1 {10000 + line} 443 6 1 60 "
        f"1764150000 1764150060 ACCEPT OK"
        for line in range(LINES_PER_FILE)
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode())


class ReceiveCounter:
    """Wraps an SQS client: counts how often each message id was handed to a daemon."""

    def __init__(self, client: Any, received: Counter[str], lock: threading.Lock) -> None:
        self._client = client
        self._received = received
        self._lock = lock

    def receive_message(self, **kwargs: Any) -> Any:
        answer = self._client.receive_message(**kwargs)
        with self._lock:
            self._received.update(m["MessageId"] for m in answer.get("Messages", []))
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_three_daemons_share_one_queue(
    emulator: HecEmulator, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN 60 flow-log files notified on one queue WHEN three daemons read it at once THEN
    every line of every file is indexed, a line indexed twice belongs only to a file whose
    notification was received again (an expired visibility timeout), each daemon's ledger
    balances, and the queue ends empty."""
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket=FILE_BUCKET)
    sqs = boto_client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName="flow-log-notifications")["QueueUrl"]
    message_of_file: dict[int, str] = {}
    for index in range(FILES):
        key = f"AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/12/03/file-{index:04d}.log.gz"
        s3.put_object(Bucket=FILE_BUCKET, Key=key, Body=flow_file(index))
        sent = sqs.send_message(QueueUrl=url, MessageBody=s3_body(FILE_BUCKET, key))
        message_of_file[index] = sent["MessageId"]

    received: Counter[str] = Counter()
    lock = threading.Lock()

    def clients(service: str) -> Any:
        client = boto_client(service, aws_endpoint)
        return ReceiveCounter(client, received, lock) if service == "sqs" else client

    source = SourceSettings(
        # Two messages per receive, so the three daemons interleave on the 60 files.
        type="sqs-s3", queue_url=url, visibility_timeout_s=30, wait_time_s=0, max_messages=2,
        chunk_lines=100,
    )  # fmt: skip
    daemons = [
        Daemon(
            delivery_settings(emulator.url),
            daemon_settings(
                tmp_path / f"d{n}",
                source=source,
                checkpoint_store="none",
                checkpoint_max_records=1000,
            ),
            client_factory=clients,
        )
        for n in range(DAEMONS)
    ]
    expected = FILES * LINES_PER_FILE
    with running(daemons[0]) as s0, running(daemons[1]) as s1, running(daemons[2]) as s2:
        wait_for(
            lambda: sum(d.deliverer.ledger.acknowledged for d in daemons) >= expected,
            timeout=180,
            what="every line acknowledged",
        )
        wait_for(lambda: queue_counts(sqs, url) == (0, 0), timeout=60, what="queue drained")
        summaries = [d.deliverer.ledger.summary() for d in daemons]
    assert s0 == s1 == s2 == [0]

    lines = Counter(str(event["event"]) for event in emulator.indexed_events())
    assert len(lines) == expected  # every line of every file, told apart by interface and port
    duplicated_files = {
        int(line.split()[2].removeprefix("eni-")) for line, times in lines.items() if times > 1
    }
    redelivered = {index for index, mid in message_of_file.items() if received[mid] > 1}
    assert duplicated_files <= redelivered, "a duplicate without an expired visibility timeout"
    duplicates = sum(lines.values()) - expected
    assert duplicates == sum(times - 1 for times in lines.values())
    assert duplicates <= len(redelivered) * LINES_PER_FILE
    assert set(received) == set(message_of_file.values())  # every notification was taken

    for summary in summaries:
        assert summary["balanced"] and summary["in_flight"] == 0
        assert summary["dropped"] == {}
    assert sum(s["acknowledged"] for s in summaries) == expected + duplicates
    assert sum(s["events_in"] for s in summaries) == expected + duplicates
