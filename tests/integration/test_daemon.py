"""The daemon end to end: moto's Kinesis/S3 (server mode), the HEC emulator, real signals."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from botocore.exceptions import EndpointConnectionError
from prometheus_client.parser import text_string_to_metric_families

from config.daemon import DaemonSettings, SourceSettings
from forwarder.backsplash import Backsplash, FallbackBacksplash, LocalSpool
from forwarder.checkpoints import FileCheckpointStore
from forwarder.daemon import Daemon
from forwarder.emulator import FaultPlan, HecEmulator
from forwarder.synthetic import cloudwatch_payload
from tests.conftest import TEST_TOKEN, boto_client
from tests.integration.conftest import BUCKET, FAST, PREFIX, backsplashed, delivery_settings

pytestmark = pytest.mark.integration

STREAM = "daemon-stream"
ROOT = Path(__file__).resolve().parents[2]
RUN_DAEMON = "import sys; from forwarder.daemon import main; sys.exit(main(sys.argv[1:]))"


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def put_events(kinesis: Any, batches: int, per_batch: int, *, start: int = 0) -> set[str]:
    """Put CloudWatch payloads with unique messages; returns the messages."""
    messages: set[str] = set()
    for b in range(batches):
        lines = [f"evt-{start + b * per_batch + i:06d}" for i in range(per_batch)]
        messages.update(lines)
        payload = cloudwatch_payload(lines, log_group="/app/daemon", first_id=start + b * per_batch)
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey=str(b))
    return messages


def indexed_messages(emulator: HecEmulator) -> list[str]:
    return [str(event["event"]) for event in emulator.indexed_events()]


def backsplashed_messages(s3: Any) -> list[str]:
    return [
        str(json.loads(base64.b64decode(record["rawData"]))["event"]) for record in backsplashed(s3)
    ]


@pytest.fixture(name="kinesis")
def fixture_kinesis(aws_endpoint: str, s3: Any) -> Any:
    """A one-shard stream on the moto server (the backsplash bucket exists too)."""
    client = boto_client("kinesis", aws_endpoint)
    client.create_stream(StreamName=STREAM, ShardCount=1)
    return client


def daemon_settings(tmp_path: Path, **overrides: Any) -> DaemonSettings:
    source = SourceSettings(
        type="kinesis", stream_name=STREAM, poll_interval_s=0.05, shard_refresh_interval_s=1.0
    )
    values: dict[str, Any] = {
        "source": source,
        "checkpoint_store": "file",
        "checkpoint_path": str(tmp_path / "checkpoints.json"),
        "checkpoint_interval_s": 0.2,
        "checkpoint_max_records": 3,
        "shutdown_grace_s": 2.0,
        "metrics_port": 0,
        "spool_drain_interval_s": 0.2,
        "health_check_interval_s": 0.1,
    }
    values.update(overrides)
    return DaemonSettings(**values)


@contextmanager
def running(daemon: Daemon) -> Iterator[list[int]]:
    """Run the daemon in a thread; on exit stop it gracefully; yields [exit status]."""
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(daemon.run()), daemon=True)
    thread.start()
    try:
        yield status
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


# --------------------------------------------------------------------------- in-process


def test_checkpoint_only_after_ack(
    emulator: HecEmulator, kinesis: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    emulator.set_faults(FaultPlan(ack_delay_s=1.5))
    put_events(kinesis, 2, 5)
    settings = delivery_settings(emulator.url)
    config = daemon_settings(tmp_path, checkpoint_max_records=100, checkpoint_interval_s=0.1)
    daemon = Daemon(settings, config, client_factory=lambda s: boto_client(s, aws_endpoint))
    store = FileCheckpointStore(config.checkpoint_path)
    with running(daemon) as status:
        wait_for(lambda: len(emulator.indexed_events()) == 10, what="events received")
        assert daemon.deliverer.ledger.acknowledged == 0
        assert store.load(STREAM) == {}  # received, not acknowledged: no checkpoint yet
        wait_for(lambda: daemon.deliverer.ledger.acknowledged == 10, what="acks")
        wait_for(lambda: bool(store.load(STREAM)), what="checkpoint")
    assert status == [0]


class FlakyS3:
    """An S3 client that fails every PutObject while ``down``."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.down = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def put_object(self, **kwargs: Any) -> Any:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return self._real.put_object(**kwargs)


def test_spool_while_s3_down_drains_after_restart(
    kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN HEC refusing the index and S3 down WHEN delivering THEN events are spooled; a
    restart with S3 back drains the spool into the bucket under the same keys."""
    spool_dir = tmp_path / "spool"
    with HecEmulator(token=TEST_TOKEN, allowed_indexes=["main"]) as emulator:
        settings = delivery_settings(
            emulator.url, SPLUNK_INDEX="forbidden", BACKSPLASH_SPOOL_DIR=str(spool_dir)
        )
        put_events(kinesis, 3, 4)
        flaky = FlakyS3(s3)
        spool = LocalSpool(spool_dir, PREFIX)

        def fallback() -> FallbackBacksplash:
            primary = Backsplash(cast(Any, flaky), BUCKET, PREFIX, attempts=1, sleep=lambda s: None)
            return FallbackBacksplash(primary, spool)

        config = daemon_settings(tmp_path)
        factory = lambda service: boto_client(service, aws_endpoint)  # noqa: E731
        first = Daemon(settings, config, client_factory=factory, backsplash=fallback())
        with running(first) as status:
            wait_for(lambda: first.deliverer.ledger.backsplashed == 12, what="spooled")
        assert status == [0]
        assert spool.list_keys() and backsplashed(s3) == []

        flaky.down = False
        second = Daemon(settings, config, client_factory=factory, backsplash=fallback())
        with running(second):
            wait_for(lambda: not spool.list_keys(), what="spool drained")
        assert sorted(backsplashed_messages(s3)) == sorted(f"evt-{i:06d}" for i in range(12))
        assert second.deliverer.ledger.events_in == 0  # resumed from the checkpoint


def test_metrics_reflect_the_ledger(
    emulator: HecEmulator, kinesis: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    put_events(kinesis, 4, 5)
    kinesis.put_record(StreamName=STREAM, Data=b"\x1f\x8bbroken", PartitionKey="x")
    settings = delivery_settings(emulator.url)
    daemon = Daemon(
        settings, daemon_settings(tmp_path), client_factory=lambda s: boto_client(s, aws_endpoint)
    )
    with running(daemon):
        wait_for(lambda: daemon.deliverer.ledger.acknowledged == 20, what="acks")
        wait_for(lambda: daemon.state.checkpoints >= 1 and daemon.deliverer.pending_acks == 0)
        assert daemon.metrics is not None
        base = daemon.metrics.url
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200)
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        text = requests.get(f"{base}/metrics", timeout=5).text
        summary = daemon.deliverer.ledger.summary()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["forwarder_events_in_total"] == summary["events_in"] == 21
    assert samples["forwarder_events_acknowledged_total"] == summary["acknowledged"] == 20
    assert samples["forwarder_events_backsplashed_total"] == summary["backsplashed"] == 1
    assert samples["forwarder_events_in_flight"] == 0
    assert samples["forwarder_pending_acks"] == 0
    assert samples["forwarder_source_lag_seconds"] >= 0
    assert samples["forwarder_spool_objects"] == 0
    assert samples["forwarder_ready"] == 1


def run_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(daemon.run()), daemon=True)
    thread.start()
    return thread, status


def test_grace_deadline_cuts_a_long_retry_backoff(
    emulator: HecEmulator, kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN HEC busy with Retry-After 30 and long retries WHEN stopped with a 1 s grace THEN
    the run ends within the grace (the deadline, set from this thread, wakes the backoff):
    Splunk.Deadline, exit 0."""
    emulator.set_faults(FaultPlan(busy_requests=1_000_000, retry_after_s=30))
    messages = put_events(kinesis, 2, 5)
    settings = delivery_settings(
        emulator.url,
        SPLUNK_HEC_RETRY_DURATION="600",
        SPLUNK_HEC_RETRY_AFTER_MAX="30",
    )
    config = daemon_settings(tmp_path, shutdown_grace_s=1.0)
    daemon = Daemon(settings, config, client_factory=lambda s: boto_client(s, aws_endpoint))
    thread, status = run_in_thread(daemon)
    wait_for(lambda: emulator.stats().faults_injected.get("busy", 0) >= 1, what="busy")
    started = time.monotonic()
    daemon.request_stop()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3.0
    assert status == [0]
    assert {r["errorCode"] for r in backsplashed(s3)} == {"Splunk.Deadline"}
    assert sorted(backsplashed_messages(s3)) == sorted(messages)
    assert daemon.deliverer.ledger.balanced()
    assert FileCheckpointStore(config.checkpoint_path).load(STREAM)


def test_second_stop_aborts_at_once_in_process(
    emulator: HecEmulator, kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN acks that never come and a 120 s grace WHEN stopped twice THEN everything is
    backsplashed at once as Splunk.Shutdown, committed, exit 130."""
    emulator.set_faults(FaultPlan(lost_acks=1000))
    messages = put_events(kinesis, 2, 5)
    settings = delivery_settings(emulator.url, SPLUNK_HEC_ACK_TIMEOUT="60")
    config = daemon_settings(tmp_path, shutdown_grace_s=120.0, checkpoint_interval_s=60.0)
    daemon = Daemon(settings, config, client_factory=lambda s: boto_client(s, aws_endpoint))
    thread, status = run_in_thread(daemon)
    wait_for(lambda: len(emulator.indexed_events()) >= 10, what="sent")
    daemon.request_stop()
    time.sleep(0.3)
    started = time.monotonic()
    daemon.request_stop()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3.0
    assert status == [130]
    assert daemon.deliverer.aborted
    assert {r["errorCode"] for r in backsplashed(s3)} == {"Splunk.Shutdown"}
    assert sorted(backsplashed_messages(s3)) == sorted(messages)
    assert daemon.deliverer.ledger.balanced()
    assert FileCheckpointStore(config.checkpoint_path).load(STREAM)


# --------------------------------------------------------------------------- subprocess


def write_config(tmp_path: Path, emulator: HecEmulator, **daemon: Any) -> Path:
    values: dict[str, Any] = {
        "checkpoint_store": "file",
        "checkpoint_path": str(tmp_path / "checkpoints.json"),
        "checkpoint_interval_s": 0.2,
        "checkpoint_max_records": 3,
        "shutdown_grace_s": 2.0,
        "metrics_port": 0,
    }
    values.update(daemon)
    lines = [
        f'splunk_hec_url = "{emulator.url}"',
        "[source]",
        'type = "kinesis"',
        f'stream_name = "{STREAM}"',
        "poll_interval_s = 0.05",
        "[daemon]",
        *(f"{key} = {json.dumps(value)}" for key, value in values.items()),
    ]
    path = tmp_path / "daemon.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_daemon(config: Path, aws_endpoint: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        **{k: v for k, v in FAST.items() if k != "SPLUNK_HEC_URL"},
        "AWS_ENDPOINT_URL": aws_endpoint,
        "LOG_FORMAT": "json",
        **env,
    }
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", RUN_DAEMON, "--config", str(config)],
            cwd=ROOT,
            env=environ,
            stdout=handle,
            stderr=handle,
        )


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("event") == name:
            found.append(item)
    return found


def test_sigterm_drains_and_exits_zero(
    emulator: HecEmulator, kinesis: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    messages = put_events(kinesis, 6, 5)
    log = tmp_path / "daemon.log"
    proc = start_daemon(write_config(tmp_path, emulator), aws_endpoint, log)
    try:
        wait_for(lambda: len(emulator.indexed_events()) >= 30, what="delivery")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        proc.kill()
    assert sorted(set(indexed_messages(emulator))) == sorted(messages)
    (summary,) = log_events(log, "delivery_summarized")
    assert summary["balanced"] and summary["events_in"] == 30
    assert FileCheckpointStore(tmp_path / "checkpoints.json").load(STREAM)


def test_sigterm_backsplashes_what_is_unacknowledged_after_the_grace(
    emulator: HecEmulator, kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    emulator.set_faults(FaultPlan(lost_acks=1000))
    messages = put_events(kinesis, 2, 5)
    log = tmp_path / "daemon.log"
    config = write_config(tmp_path, emulator, shutdown_grace_s=0.5, checkpoint_interval_s=60.0)
    proc = start_daemon(config, aws_endpoint, log, SPLUNK_HEC_ACK_TIMEOUT="60")
    try:
        wait_for(lambda: len(emulator.indexed_events()) >= 10, what="sent")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        proc.kill()
    records = backsplashed(s3)
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert sorted(backsplashed_messages(s3)) == sorted(messages)
    assert FileCheckpointStore(tmp_path / "checkpoints.json").load(STREAM)


def test_second_signal_exits_130_after_backsplashing(
    emulator: HecEmulator, kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    emulator.set_faults(FaultPlan(lost_acks=1000))
    messages = put_events(kinesis, 2, 5)
    log = tmp_path / "daemon.log"
    config = write_config(tmp_path, emulator, shutdown_grace_s=120.0, checkpoint_interval_s=60.0)
    proc = start_daemon(config, aws_endpoint, log, SPLUNK_HEC_ACK_TIMEOUT="60")
    try:
        wait_for(lambda: len(emulator.indexed_events()) >= 10, what="sent")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130, log.read_text()
    finally:
        proc.kill()
    assert sorted(backsplashed_messages(s3)) == sorted(messages)


def test_kill_9_then_restart_loses_nothing(
    kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN a daemon killed with SIGKILL at a random moment WHEN restarted THEN every event is
    indexed or backsplashed; duplicates are only those of the unacknowledged window."""
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(ack_delay_s=0.1)) as emulator:
        messages = put_events(kinesis, 30, 5)
        log = tmp_path / "daemon.log"
        config = write_config(tmp_path, emulator)
        proc = start_daemon(config, aws_endpoint, log)
        try:
            wait_for(lambda: len(emulator.indexed_events()) >= 5, what="first delivery")
            time.sleep(random.uniform(0.0, 0.6))
            proc.kill()
            proc.wait(timeout=10)
        finally:
            proc.kill()
        before_restart = len(emulator.indexed_events())
        proc = start_daemon(config, aws_endpoint, log)
        try:

            def settled() -> bool:
                seen = set(indexed_messages(emulator)) | set(backsplashed_messages(s3))
                return seen >= messages

            wait_for(settled, timeout=40, what="everything delivered after the restart")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            proc.kill()
    indexed = indexed_messages(emulator)
    duplicates = len(indexed) - len(set(indexed))
    # Duplicates come only from records read but not checkpointed before the kill: at most
    # what had been sent by then, and never more than one extra copy of an event.
    assert duplicates <= before_restart
    assert max(indexed.count(m) for m in set(indexed)) <= 2
    print(f"kill -9 after {before_restart} events indexed; duplicates after restart: {duplicates}")


def test_bad_daemon_config_exits_2(tmp_path: Path, emulator: HecEmulator) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[source]\ntype = "kinesis"\n')
    result = subprocess.run(
        [sys.executable, "-c", RUN_DAEMON, "--config", str(path)],
        cwd=ROOT,
        env={**os.environ, "SPLUNK_HEC_URL": emulator.url, "SPLUNK_HEC_TOKEN": TEST_TOKEN},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"source.stream_name" in result.stderr


def test_sigterm_while_hec_is_down_ends_within_the_grace(
    emulator: HecEmulator, kinesis: Any, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN HEC down (sends retried) WHEN SIGTERM THEN the grace bounds the wait, the events
    are backsplashed and the exit status is 0."""
    emulator.set_faults(FaultPlan(down_for_s=120))
    messages = put_events(kinesis, 2, 5)
    log = tmp_path / "daemon.log"
    config = write_config(tmp_path, emulator, shutdown_grace_s=1.0)
    proc = start_daemon(config, aws_endpoint, log, SPLUNK_HEC_RETRY_DURATION="600")
    try:
        wait_for(lambda: "retry_scheduled" in log.read_text(), what="retries")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
    assert sorted(backsplashed_messages(s3)) == sorted(messages)
    assert FileCheckpointStore(tmp_path / "checkpoints.json").load(STREAM)


def test_files_source_runs_to_the_end(emulator: HecEmulator, tmp_path: Path) -> None:
    import gzip

    header = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"  # noqa: E501
    line = (
        "2 123456789012 eni-1 10.0.0.{n} 10.0.1.1 443 49152 6 1 40 1764000000 1764000060 ACCEPT OK"
    )
    first = tmp_path / "a.log.gz"
    first.write_bytes(
        gzip.compress("\n".join([header, *(line.format(n=i) for i in range(7))]).encode())
    )
    second = tmp_path / "b.log"
    second.write_text("plain one\nplain two\n")
    config = daemon_settings(
        tmp_path,
        source=SourceSettings(type="files", paths=(str(first), str(second)), chunk_lines=3),
        checkpoint_store="none",
    )
    daemon = Daemon(delivery_settings(emulator.url), config)
    assert daemon.run() == 0
    assert daemon.deliverer.ledger.acknowledged == 9
    assert len(emulator.indexed_events()) == 9


def test_run_daemon_demo_returns_metrics(
    emulator: HecEmulator, kinesis: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    from forwarder.daemon import run_daemon_demo

    put_events(kinesis, 3, 4)
    status, metrics = run_daemon_demo(
        delivery_settings(emulator.url),
        daemon_settings(tmp_path),
        until=lambda ledger: ledger.acknowledged >= 12,
        timeout_s=20,
        client_factory=lambda service: boto_client(service, aws_endpoint),
    )
    assert status == 0
    assert "forwarder_events_acknowledged_total 12.0" in metrics
