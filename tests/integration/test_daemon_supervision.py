"""The daemon survives AWS endpoints going away: supervised source operations, /readyz, exit 2
for a source's configuration problem (issue 9, items 4 and 12)."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from config.daemon import DaemonSettings, SourceSettings
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import HecEmulator
from tests.conftest import TEST_TOKEN, boto_client, create_checkpoint_table
from tests.integration.conftest import delivery_settings
from tests.integration.test_daemon import (
    RUN_DAEMON,
    STREAM,
    fixture_kinesis,
    indexed_messages,
    put_events,
    queue_counts,
    running,
    wait_for,
)
from tests.integration.test_push import s3_body

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["fixture_kinesis"]  # the kinesis fixture, shared with test_daemon
TABLE = "daemon-checkpoints"


class FlakyProxy:
    """A TCP proxy on loopback in front of an AWS endpoint, which can go away and come back.

    ``down()`` closes the listening socket and every open connection (clients then get
    connection refused or reset: botocore's ``EndpointConnectionError`` /
    ``ConnectionClosedError``); ``up()`` listens again on the same port.
    """

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            try:
                # Inside the try: down() may close the pair before this thread registers it.
                selector.register(client, selectors.EVENT_READ, upstream)
                selector.register(upstream, selectors.EVENT_READ, client)
                while True:
                    for key, _ in selector.select(timeout=1.0):
                        source = key.fileobj
                        assert isinstance(source, socket.socket)
                        data = source.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
            except (OSError, ValueError):
                return
            finally:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.close()


@pytest.fixture(name="proxy")
def fixture_proxy(aws_endpoint: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(aws_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(name="table")
def fixture_table(aws_endpoint: str) -> str:
    """The DynamoDB checkpoint table (as daemon.yaml creates it) on the moto server."""
    client = boto_client("dynamodb", aws_endpoint)
    create_checkpoint_table(client, TABLE)
    return TABLE


def supervised_settings(**overrides: Any) -> DaemonSettings:
    values: dict[str, Any] = {
        "source": SourceSettings(
            type="kinesis", stream_name=STREAM, poll_interval_s=0.05, shard_refresh_interval_s=1.0
        ),
        "checkpoint_store": "dynamodb",
        "checkpoint_table": TABLE,
        "checkpoint_interval_s": 0.1,
        "checkpoint_max_records": 3,
        "shutdown_grace_s": 2.0,
        "metrics_port": 0,
        "health_check_interval_s": 0.05,
        "source_retry_backoff_s": 0.05,
        "source_retry_backoff_max_s": 0.2,
    }
    values.update(overrides)
    return DaemonSettings(**values)


def ready(daemon: Daemon) -> tuple[int, str]:
    if daemon.metrics is None:  # not started yet
        return 0, "not started"
    answer = requests.get(f"{daemon.metrics.url}/readyz", timeout=10)
    return answer.status_code, answer.text


def source_errors(daemon: Daemon) -> dict[tuple[str, str], float]:
    if daemon.metrics is None:  # not started yet
        return {}
    text = daemon.metrics.exposition().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "forwarder_source_errors":
            for sample in family.samples:
                if sample.name == "forwarder_source_errors_total":
                    found[(sample.labels["operation"], sample.labels["kind"])] = sample.value
    return found


def committed_positions(aws_endpoint: str) -> dict[str, str]:
    client = boto_client("dynamodb", aws_endpoint)
    items = client.scan(TableName=TABLE)["Items"]
    return {item["shard_id"]["S"]: item["position"]["S"] for item in items}


def test_kinesis_and_dynamodb_endpoint_outage_is_ridden_out(
    emulator: HecEmulator,
    kinesis: Any,
    table: str,
    proxy: FlakyProxy,
    aws_endpoint: str,
) -> None:
    """GIVEN a daemon reading Kinesis and checkpointing in DynamoDB through an endpoint that
    goes away WHEN it is gone THEN the daemon keeps running, /readyz turns 503 and the failures
    are counted; WHEN it comes back THEN /readyz is 200 again and every record is delivered."""
    first = put_events(kinesis, 2, 3)

    def clients(service: str) -> Any:
        return boto_client(service, aws_endpoint if service == "s3" else proxy.url)

    daemon = Daemon(delivery_settings(emulator.url), supervised_settings(), client_factory=clients)
    with running(daemon) as status:
        wait_for(lambda: set(indexed_messages(emulator)) >= first, what="first records")
        wait_for(lambda: ready(daemon)[0] == 200, what="ready")
        proxy.down()
        wait_for(lambda: ready(daemon)[0] == 503, what="not ready while the endpoint is gone")
        assert "source failing" in ready(daemon)[1]
        second = put_events(kinesis, 2, 3, start=100)  # written while the daemon cannot read
        wait_for(lambda: sum(source_errors(daemon).values()) >= 3, what="failures counted")
        assert not status  # still running
        proxy.up()
        wait_for(lambda: set(indexed_messages(emulator)) >= first | second, what="all delivered")
        wait_for(lambda: ready(daemon)[0] == 200, what="ready again")
        wait_for(lambda: bool(committed_positions(aws_endpoint)), what="checkpoint written")
    assert status == [0]
    # Whichever operation the outage hit (a poll, or the checkpoint's DynamoDB write), it was
    # retried until the endpoint came back.
    assert {operation for operation, _ in source_errors(daemon)} <= {"poll", "commit", "attach"}
    assert daemon.deliverer.ledger.balanced()


def test_checkpoint_write_failure_is_retried_not_fatal(
    emulator: HecEmulator,
    kinesis: Any,
    table: str,
    proxy: FlakyProxy,
    aws_endpoint: str,
) -> None:
    """GIVEN DynamoDB unreachable WHEN a checkpoint is due THEN the commit is retried (counted,
    not ready) and the daemon stays up; WHEN DynamoDB is back THEN the checkpoint is written."""
    proxy.down()

    def clients(service: str) -> Any:
        return boto_client(service, proxy.url if service == "dynamodb" else aws_endpoint)

    daemon = Daemon(delivery_settings(emulator.url), supervised_settings(), client_factory=clients)
    messages = put_events(kinesis, 2, 3)
    with running(daemon) as status:
        # The checkpoints cannot even be loaded: attach is retried.
        wait_for(lambda: ("attach", "EndpointConnectionError") in source_errors(daemon))
        proxy.up()
        wait_for(lambda: set(indexed_messages(emulator)) >= messages, what="delivered")
        wait_for(lambda: bool(committed_positions(aws_endpoint)), what="first checkpoint")
        proxy.down()
        more = put_events(kinesis, 1, 3, start=50)
        wait_for(lambda: set(indexed_messages(emulator)) >= more, what="delivered while down")
        wait_for(lambda: any(op == "commit" for op, _ in source_errors(daemon)), what="commit")
        assert ready(daemon)[0] == 503
        before = committed_positions(aws_endpoint)
        proxy.up()
        wait_for(lambda: committed_positions(aws_endpoint) != before, what="checkpoint advanced")
        wait_for(lambda: ready(daemon)[0] == 200, what="ready again")
        assert not status
    assert status == [0]


def test_sqs_and_s3_endpoint_outage_is_ridden_out(
    emulator: HecEmulator, s3: Any, proxy: FlakyProxy, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN an sqs-s3 daemon whose SQS and S3 endpoint goes away WHEN it is gone THEN the
    daemon keeps running and is not ready; WHEN it is back THEN every object announced before
    and during the outage is delivered and every message deleted."""
    s3.create_bucket(Bucket="outage-objects")
    sqs = boto_client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName="outage-queue")["QueueUrl"]

    def announce(name: str, count: int) -> set[str]:
        lines = [f"{name}-line-{i:03d}" for i in range(count)]
        key = f"AWSLogs/{name}.log"
        s3.put_object(Bucket="outage-objects", Key=key, Body="\n".join(lines).encode() + b"\n")
        sqs.send_message(QueueUrl=url, MessageBody=s3_body("outage-objects", key))
        return set(lines)

    source = SourceSettings(
        type="sqs-s3", queue_url=url, visibility_timeout_s=10, wait_time_s=0, chunk_lines=100
    )
    config = supervised_settings(source=source, checkpoint_store="none")

    def clients(service: str) -> Any:
        return boto_client(service, proxy.url)

    daemon = Daemon(delivery_settings(emulator.url), config, client_factory=clients)
    first = announce("before", 5)
    with running(daemon) as status:
        wait_for(lambda: set(indexed_messages(emulator)) >= first, what="first object")
        proxy.down()
        wait_for(lambda: ready(daemon)[0] == 503, what="not ready while the endpoint is gone")
        second = announce("during", 5)
        wait_for(lambda: sum(source_errors(daemon).values()) >= 3, what="failures counted")
        assert not status
        proxy.up()
        wait_for(lambda: set(indexed_messages(emulator)) >= first | second, what="all delivered")
        wait_for(lambda: ready(daemon)[0] == 200, what="ready again")
        wait_for(lambda: queue_counts(sqs, url) == (0, 0), what="every message deleted")
    assert status == [0]


def test_files_source_with_a_missing_path_exits_2(tmp_path: Path, emulator: HecEmulator) -> None:
    """A files source naming a missing path stops at once with status 2 and the path named
    (not source_attach_failed every few seconds forever)."""
    missing = tmp_path / "no-such.log"
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[source]\ntype = "files"\npaths = ["{missing}"]\n'
        '[daemon]\ncheckpoint_store = "none"\nmetrics_enabled = false\n'
    )
    result = subprocess.run(
        [sys.executable, "-c", RUN_DAEMON, "--config", str(config)],
        cwd=ROOT,
        env={
            **os.environ,
            "SPLUNK_HEC_URL": emulator.url,
            "SPLUNK_HEC_TOKEN": TEST_TOKEN,
            "LOG_FORMAT": "json",
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 2, output
    assert str(missing) in output
    assert "source_attach_failed" not in output
    assert "source_operation_failed" not in output
