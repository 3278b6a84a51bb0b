"""The daemon end to end: moto's Kinesis/S3 (server mode), the HEC emulator, real signals."""

from __future__ import annotations

import base64
import gzip
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
import structlog.testing
from botocore.exceptions import EndpointConnectionError
from prometheus_client.parser import text_string_to_metric_families

from config.daemon import DaemonSettings, SourceSettings
from forwarder.backsplash.writers import Backsplash, FallbackBacksplash, LocalSpool
from forwarder.daemon import Daemon
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.metrics import DaemonState, MetricsServer
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.sources.checkpoints import FileCheckpointStore
from forwarder.sources.files import FileSource
from tests.conftest import TEST_TOKEN, boto_client
from tests.integration.conftest import BUCKET, FAST, PREFIX, backsplashed, delivery_settings
from tests.integration.test_push import (
    FLOW_BUCKET,
    assert_backsplash_objects_redelivered,
    firehose_record,
    hec_event,
    put_backsplash_objects,
    s3_body,
)

pytestmark = pytest.mark.integration

STREAM = "daemon-stream"
ROOT = Path(__file__).resolve().parents[2]
RUN_DAEMON = "import sys; from forwarder.cli import main; sys.exit(main(['daemon', *sys.argv[1:]]))"


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


# --------------------------------------------------------------------------- files, HEC down

FLOW_HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
    "start end action log-status"
)


def write_flow_log(path: Path, lines: int) -> None:
    row = "2 123456789012 eni-1 10.0.{a}.{b} 10.0.1.1 443 49152 6 1 40 1764000000 1764000060 ACCEPT OK\n"  # noqa: E501
    with path.open("w") as handle:
        handle.write(FLOW_HEADER + "\n")
        for start in range(0, lines, 10_000):
            handle.write(
                "".join(
                    row.format(a=i // 256 % 256, b=i % 256) for i in range(start, start + 10_000)
                )
            )


def vm_kb(pid: int, field: str) -> int:
    """``VmHWM``/``VmRSS`` of a live process in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_files_source_with_hec_down_is_bounded_and_sigterm_exits_zero(
    emulator: HecEmulator, tmp_path: Path
) -> None:
    """GIVEN HEC down (retried for 10 min) and a 300,000-line file WHEN the daemon runs THEN it
    reads only a poll's worth (backpressure, not buffering: the deliverer blocks in retries);
    on SIGTERM it stops taking records, backsplashes what it took into the spool at the grace
    deadline and exits 0 within the grace and a few seconds, logging where the input stopped."""
    emulator.set_faults(FaultPlan(down_for_s=300))
    total = 300_000
    data = tmp_path / "flow.log"
    write_flow_log(data, total)
    spool = tmp_path / "spool"
    grace = 2.0
    config = tmp_path / "files.toml"
    config.write_text(
        f'splunk_hec_url = "{emulator.url}"\n'
        "[source]\n"
        'type = "files"\n'
        f"paths = [{json.dumps(str(data))}]\n"
        "[daemon]\n"
        'checkpoint_store = "none"\n'
        f"shutdown_grace_s = {grace}\n"
        "metrics_port = 0\n"
    )
    log = tmp_path / "daemon.log"
    proc = start_daemon(
        config,
        "http://127.0.0.1:1",  # no AWS at all: the backsplash is the spool
        log,
        BACKSPLASH_BUCKET="",
        BACKSPLASH_SPOOL_DIR=str(spool),
        SPLUNK_HEC_RETRY_DURATION="600",
        SPLUNK_HEC_BATCH_MAX_BYTES="1000000",
    )
    hwm_kb = 0
    try:
        wait_for(lambda: "retry_scheduled" in log.read_text(), what="retries")
        end = time.monotonic() + 2.0  # HEC stays down: reading must not go on meanwhile
        while time.monotonic() < end:
            hwm_kb = max(hwm_kb, vm_kb(proc.pid, "VmHWM"))
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.monotonic() - started < grace + 20:
            hwm_kb = max(hwm_kb, vm_kb(proc.pid, "VmHWM"))
            time.sleep(0.02)
        status = proc.wait(timeout=5)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert status == 0, log.read_text()[-3000:]
    assert elapsed < grace + 5, elapsed
    (unread,) = log_events(log, "input_not_finished")
    taken = unread["lines_taken"]
    assert 0 < taken <= 20_000, unread  # a poll or two of a 300,000-line file
    (summary,) = log_events(log, "delivery_summarized")
    assert summary["balanced"] and summary["events_in"] == taken
    assert summary["backsplashed"] == taken and summary["acknowledged"] == 0
    assert list(spool.rglob("*.gz"))
    if hwm_kb:  # /proc is there (Linux): the peak stays far below the file's weight in memory
        assert hwm_kb < 200 * 1024, f"VmHWM {hwm_kb} KiB"


def test_stop_request_stops_taking_records_mid_poll(emulator: HecEmulator, tmp_path: Path) -> None:
    """GIVEN a stop requested while a poll's records are being delivered WHEN the loop goes on
    THEN no later record of that poll is handed to the deliverer (they are released), and the
    run exits 0 with everything taken in acknowledged."""
    data = tmp_path / "lines.log"
    data.write_text("".join(f"line {i}\n" for i in range(100)))
    config = daemon_settings(
        tmp_path,
        source=SourceSettings(type="files", paths=(str(data),), chunk_lines=10),
        checkpoint_store="none",
    )
    daemon = Daemon(delivery_settings(emulator.url), config)
    delivered: list[int] = []
    real = daemon._deliver

    def deliver(record: Any) -> None:
        real(record)
        delivered.append(len(record.lines))
        if len(delivered) == 3:
            daemon.request_stop()

    daemon._deliver = deliver  # type: ignore[method-assign]
    assert daemon.run() == 0
    assert delivered == [10, 10, 10]
    assert daemon.deliverer.ledger.acknowledged == 30
    assert daemon.deliverer.ledger.events_in == 30
    assert isinstance(daemon.source, FileSource) and not daemon.source.exhausted


def test_files_run_to_the_end_with_backsplash_exits_5(tmp_path: Path) -> None:
    """GIVEN a files run whose events HEC refuses (wrong index) WHEN it reads its input to the
    end THEN everything is backsplashed into the spool and the exit status is 5 (a finite run
    that did not index everything), not 0."""
    data = tmp_path / "lines.log"
    data.write_text("".join(f"line {i}\n" for i in range(20)))
    spool = tmp_path / "spool"
    with HecEmulator(token=TEST_TOKEN, allowed_indexes=["main"]) as emulator:
        settings = delivery_settings(
            emulator.url,
            SPLUNK_INDEX="forbidden",
            BACKSPLASH_BUCKET="",
            BACKSPLASH_SPOOL_DIR=str(spool),
        )
        config = daemon_settings(
            tmp_path,
            source=SourceSettings(type="files", paths=(str(data),)),
            checkpoint_store="none",
        )
        daemon = Daemon(settings, config)
        assert daemon.run() == 5
    assert daemon.deliverer.ledger.backsplashed == 20
    assert list(spool.rglob("*.gz"))


def test_metrics_server_stops_promptly(tmp_path: Path) -> None:
    """The server loop polls for shutdown every 0.05 s (not serve_forever's 0.5 s); a server
    never started stops at once too."""
    server = MetricsServer(DaemonState(ledger=Ledger())).start()
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.3
    never = MetricsServer(DaemonState(ledger=Ledger()))
    started = time.monotonic()
    never.stop()
    assert time.monotonic() - started < 0.3


def test_checkpoint_is_not_committed_unless_the_ledger_balances(
    emulator: HecEmulator, tmp_path: Path
) -> None:
    """GIVEN a deliverer whose ledger does not balance after the flush (events unaccounted
    for) WHEN the daemon checkpoints THEN it logs and skips the commit; once it balances, it
    commits."""
    data = tmp_path / "lines.log"
    data.write_text("line\n")
    config = daemon_settings(
        tmp_path,
        source=SourceSettings(type="files", paths=(str(data),)),
        checkpoint_store="none",
    )
    daemon = Daemon(delivery_settings(emulator.url), config)
    commits: list[int] = []

    def commit() -> int:
        commits.append(1)
        return 1

    daemon.source.commit = commit  # type: ignore[method-assign]
    daemon.deliverer.ledger.add(events_in=1)  # in flight, and no flush can settle it
    assert daemon._checkpoint(deadline=None) is False
    assert commits == [] and daemon.state.checkpoints == 0
    daemon.deliverer.ledger.add(acknowledged=1)
    assert daemon._checkpoint(deadline=None) is True
    assert commits == [1] and daemon.state.checkpoints == 1
    daemon.deliverer.close(summarize=False)


# --------------------------------------------------------------------------- sqs-s3: backsplash


def sqs_daemon(
    emulator: HecEmulator, tmp_path: Path, aws_endpoint: str, bodies: list[str], **environ: str
) -> tuple[Daemon, Any, str]:
    """A daemon on an sqs-s3 source whose queue holds ``bodies``; (daemon, sqs, queue url)."""
    sqs = boto_client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName="daemon-backsplash")["QueueUrl"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    source = SourceSettings(
        type="sqs-s3", queue_url=url, visibility_timeout_s=10, wait_time_s=0, chunk_lines=100
    )
    config = daemon_settings(
        tmp_path, source=source, checkpoint_store="none", checkpoint_max_records=1000
    )
    daemon = Daemon(
        delivery_settings(emulator.url, **environ),
        config,
        client_factory=lambda s: boto_client(s, aws_endpoint),
    )
    return daemon, sqs, url


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


def test_sqs_backsplash_objects_are_redelivered_by_the_daemon(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN a queue notifying Firehose's splunk-failed (two corrupt records) and
    processing-failed objects, ours (raw payloads with metadata), one recognised by content,
    and a replay-failed one WHEN the daemon runs THEN the first four are indexed once with
    their metadata, the messages are deleted only after the acks, the replay-failed object is
    skipped with the forwarder replay command, nothing is written back, the ledger balances
    and the metrics are the ledger."""
    s3.create_bucket(Bucket=FLOW_BUCKET)
    keys = put_backsplash_objects(s3)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    bodies = [
        s3_body(FLOW_BUCKET, keys["fh_failed"]),
        json.dumps(
            {"Type": "Notification", "Message": s3_body(FLOW_BUCKET, keys["fh_processing"])}
        ),
        s3_body(FLOW_BUCKET, keys["by_content"]),
        s3_body(BUCKET, keys["ours"]),
        s3_body(BUCKET, keys["refailed"]),
    ]
    emulator.set_faults(FaultPlan(ack_delay_s=1.5))
    daemon, sqs, url = sqs_daemon(emulator, tmp_path, aws_endpoint, bodies)
    ledger = daemon.deliverer.ledger
    with structlog.testing.capture_logs() as logs, running(daemon) as status:
        wait_for(lambda: len(emulator.indexed_events()) == 11, what="events received")
        assert ledger.acknowledged < 11
        assert sum(queue_counts(sqs, url)) >= 4  # received, not acknowledged: not deleted
        wait_for(lambda: ledger.acknowledged == 11, what="acks")
        wait_for(lambda: queue_counts(sqs, url) == (0, 0), what="messages deleted")
        assert daemon.metrics is not None
        text = requests.get(f"{daemon.metrics.url}/metrics", timeout=5).text
        summary = ledger.summary()
    assert status == [0]

    assert_backsplash_objects_redelivered(emulator, s3, before)

    assert summary["balanced"] and summary["in_flight"] == 0
    assert (summary["events_in"], summary["acknowledged"]) == (13, 11)
    assert summary["dropped"] == {"backsplash_record_corrupt": 2}
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("forwarder_events_in_total", ())] == summary["events_in"]
    assert samples[("forwarder_events_acknowledged_total", ())] == summary["acknowledged"]
    assert samples[("forwarder_events_backsplashed_total", ())] == summary["backsplashed"] == 0
    reason = (("reason", "backsplash_record_corrupt"),)
    assert samples[("forwarder_events_dropped_total", reason)] == 2
    assert samples[("forwarder_events_in_flight", ())] == 0
    assert samples[("forwarder_pending_acks", ())] == 0

    corrupt = [e for e in logs if e["event"] == "backsplash_record_corrupt"]
    assert {(c["key"], c["line"]) for c in corrupt} == {
        (keys["fh_failed"], 2),
        (keys["fh_failed"], 3),
    }
    skipped = [e for e in logs if e["event"] == "object_skipped"]
    assert [s["key"] for s in skipped] == [keys["refailed"]]
    assert f"forwarder replay s3://{BUCKET}/{PREFIX}replay-failed/" in skipped[0]["reason"]


def test_daemon_redelivery_failures_go_under_replay_failed(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN a backsplash object whose re-delivery is never acknowledged WHEN the daemon is
    stopped THEN at the grace deadline its events are stored under replay-failed/ (never
    splunk-failed/) with replayAttempts, the message is deleted and the ledger balances."""
    s3.create_bucket(Bucket=FLOW_BUCKET)
    key = "firehose/splunk-failed/2026/01/01/00/late.gz"
    body = "".join(firehose_record(hec_event(f"late {i}")) for i in range(4))
    s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=gzip.compress(body.encode()))
    emulator.set_faults(FaultPlan(lost_acks=100))
    daemon, sqs, url = sqs_daemon(
        emulator,
        tmp_path,
        aws_endpoint,
        [s3_body(FLOW_BUCKET, key)],
        SPLUNK_HEC_ACK_TIMEOUT="60",
    )
    with running(daemon) as status:
        wait_for(lambda: len(emulator.indexed_events()) == 4, what="events received")
    assert status == [0]
    summary = daemon.deliverer.ledger.summary()
    assert summary["balanced"] and summary["backsplashed"] == 4
    reader = Backsplash(s3, BUCKET, PREFIX)
    assert list(reader.list_keys("splunk-failed")) == []
    records = [r for k in reader.list_keys("replay-failed") for r in reader.read(k)]
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}
    assert {r["replayAttempts"] for r in records} == {1}
    assert sorted(json.loads(base64.b64decode(r["rawData"]))["event"] for r in records) == [
        f"late {i}" for i in range(4)
    ]
    assert queue_counts(sqs, url) == (0, 0)
