"""The firehose-http source: Firehose-shaped POSTs to the daemon, the HEC emulator behind."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from config.daemon import DaemonSettings, SourceSettings
from forwarder.backsplash.writers import Backsplash
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.sources.firehose_http import FirehoseHttpSource
from tests.conftest import boto_client
from tests.integration.conftest import FAST, PREFIX, backsplashed, delivery_settings

pytestmark = pytest.mark.integration

ACCESS_KEY = "firehose-test-access-key"
ROOT = Path(__file__).resolve().parents[2]
RUN_DAEMON = "import sys; from forwarder.cli import main; sys.exit(main(['daemon', *sys.argv[1:]]))"


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def firehose_body(payloads: list[bytes], request_id: str) -> bytes:
    """A Firehose HTTP endpoint request body."""
    return json.dumps(
        {
            "requestId": request_id,
            "timestamp": int(time.time() * 1000),
            "records": [{"data": base64.b64encode(p).decode()} for p in payloads],
        }
    ).encode()


def cwl_payloads(count: int, per_payload: int, *, tag: str = "fh") -> tuple[list[bytes], set[str]]:
    """Gzip CloudWatch Logs payloads with unique messages; returns (payloads, messages)."""
    payloads: list[bytes] = []
    messages: set[str] = set()
    for p in range(count):
        lines = [f"{tag}-{p * per_payload + i:05d}" for i in range(per_payload)]
        messages.update(lines)
        payloads.append(cloudwatch_payload(lines, log_group="/app/fh", first_id=p * per_payload))
    return payloads, messages


def post(
    url: str,
    payloads: list[bytes],
    *,
    key: str | None = ACCESS_KEY,
    request_id: str | None = None,
    compress: bool = False,
    body: bytes | None = None,
    verify: bool | str = True,
) -> requests.Response:
    """POST like Firehose does (headers of the HTTP endpoint delivery specification)."""
    request_id = request_id or str(uuid.uuid4())
    data = body if body is not None else firehose_body(payloads, request_id)
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Firehose-Protocol-Version": "1.0",
        "X-Amz-Firehose-Request-Id": request_id,
        "X-Amz-Firehose-Source-Arn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/t",
    }
    if key is not None:
        headers["X-Amz-Firehose-Access-Key"] = key
    if compress:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    return requests.post(url, data=data, headers=headers, timeout=30, verify=verify)


def indexed_messages(emulator: HecEmulator) -> list[str]:
    return [str(event["event"]) for event in emulator.indexed_events()]


def backsplashed_messages(s3: Any) -> list[str]:
    return [
        str(json.loads(base64.b64decode(record["rawData"]))["event"]) for record in backsplashed(s3)
    ]


def source_settings(**overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {
        "type": "firehose-http",
        "host": "127.0.0.1",
        "port": 0,
        "access_key": ACCESS_KEY,
        "poll_interval_s": 0.05,
    }
    values.update(overrides)
    return SourceSettings(**values)


def daemon_settings(tmp_path: Path, **source: Any) -> DaemonSettings:
    return DaemonSettings(
        source=source_settings(**source),
        checkpoint_store="none",
        checkpoint_path=str(tmp_path / "checkpoints.json"),
        checkpoint_interval_s=0.1,
        checkpoint_max_records=100,
        shutdown_grace_s=1.0,
        metrics_enabled=False,
        health_check_interval_s=0.1,
    )


@contextmanager
def running(daemon: Daemon) -> Iterator[tuple[str, list[int]]]:
    """Run the daemon in a thread; yields (receiver URL, [exit status]); stops it on exit."""
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(daemon.run()), daemon=True)
    thread.start()
    wait_for(lambda: daemon.source.attached, what="receiver listening")
    assert isinstance(daemon.source, FirehoseHttpSource)
    try:
        yield daemon.source.url, status
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.fixture(name="pool")
def fixture_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def make_daemon(
    emulator: HecEmulator, aws_endpoint: str, config: DaemonSettings, **env: str
) -> Daemon:
    return Daemon(
        delivery_settings(emulator.url, **env),
        config,
        client_factory=lambda service: boto_client(service, aws_endpoint),
    )


# --------------------------------------------------------------------------- in-process


def test_answers_200_only_after_hec_acknowledged(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """GIVEN acks that take a second WHEN Firehose posts THEN the events are indexed first and
    the 200 (same requestId, a timestamp) comes only once they are acknowledged."""
    emulator.set_faults(FaultPlan(ack_delay_s=1.0))
    payloads, messages = cwl_payloads(3, 4)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    with running(daemon) as (url, _):
        answer: Future[requests.Response] = pool.submit(post, url, payloads, request_id="req-1")
        wait_for(lambda: len(emulator.indexed_events()) == 12, what="events indexed")
        assert not answer.done()  # indexed, not yet acknowledged: no answer
        assert daemon.deliverer.ledger.acknowledged == 0
        response = answer.result(timeout=20)
        assert daemon.deliverer.ledger.acknowledged == 12
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["requestId"] == "req-1"
    assert isinstance(document["timestamp"], int)
    assert "errorMessage" not in document
    assert sorted(indexed_messages(emulator)) == sorted(messages)


def test_wrong_or_missing_access_key_is_401_and_nothing_indexed(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    payloads, _ = cwl_payloads(1, 3)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    with running(daemon) as (url, _), capture() as logs:
        wrong = post(url, payloads, key="not-the-key", request_id="req-bad")
        missing = post(url, payloads, key=None)
        time.sleep(0.3)
    for response in (wrong, missing):
        assert response.status_code == 401
        assert response.json()["errorMessage"]
    assert wrong.json()["requestId"] == "req-bad"
    assert emulator.indexed_events() == []
    assert daemon.deliverer.ledger.events_in == 0
    assert ACCESS_KEY not in logs.text and "not-the-key" not in logs.text


def test_gzip_body_and_text_records(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN Content-Encoding gzip, a CloudWatch payload and a plain-text record THEN both
    are delivered and the answer is 200."""
    payloads, messages = cwl_payloads(1, 3)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    with running(daemon) as (url, _):
        response = post(url, [*payloads, b"plain line one\nplain line two\n"], compress=True)
    assert response.status_code == 200, response.text
    assert sorted(indexed_messages(emulator)) == sorted(
        [*messages, "plain line one", "plain line two"]
    )


def test_oversized_bodies_are_413(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """Over max_body_bytes on the wire, or once gunzipped: 413, nothing taken in."""
    config = daemon_settings(tmp_path, max_body_bytes=2048)
    daemon = make_daemon(emulator, aws_endpoint, config)
    big = [b"x" * 4000]
    with running(daemon) as (url, _):
        on_the_wire = post(url, big)
        inflated = post(url, [], body=firehose_body(big * 3, "bomb"), compress=True)
        small = post(url, [b"fits\n"])
    assert on_the_wire.status_code == 413
    assert inflated.status_code == 413
    assert "errorMessage" in inflated.json()
    assert small.status_code == 200
    assert indexed_messages(emulator) == ["fits"]


def test_malformed_body_is_400(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    with running(daemon) as (url, _):
        not_json = post(url, [], body=b"{nope")
        no_records = post(url, [], body=b'{"requestId": "r"}')
        bad_base64 = post(url, [], body=b'{"requestId": "r", "records": [{"data": "@@"}]}')
    assert [r.status_code for r in (not_json, no_records, bad_base64)] == [400, 400, 400]
    assert emulator.indexed_events() == []


def test_in_flight_bound_answers_503(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """GIVEN max_in_flight 1 and a request waiting for its ack WHEN another comes THEN 503
    (Firehose retries); the first still ends 200."""
    emulator.set_faults(FaultPlan(ack_delay_s=1.0))
    payloads, _ = cwl_payloads(1, 2)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path, max_in_flight=1))
    with running(daemon) as (url, _):
        first = pool.submit(post, url, payloads)
        wait_for(lambda: len(emulator.indexed_events()) == 2, what="first taken in")
        second = post(url, payloads)
        assert second.status_code == 503
        assert first.result(timeout=20).status_code == 200


def test_hec_down_then_sigterm_backsplashes_and_answers_200(
    s3: Any, aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """GIVEN HEC down WHEN the daemon is stopped THEN the events are backsplashed at the end of
    the grace period and, being durably stored, the request is answered 200."""
    payloads, messages = cwl_payloads(2, 3)
    with HecEmulator(token=FAST["SPLUNK_HEC_TOKEN"]) as emulator:
        emulator.set_faults(FaultPlan(down_for_s=600))
        daemon = make_daemon(
            emulator, aws_endpoint, daemon_settings(tmp_path), SPLUNK_HEC_RETRY_DURATION="600"
        )
        with running(daemon) as (url, status):
            answer = pool.submit(post, url, payloads)
            wait_for(lambda: daemon.deliverer.ledger.events_in == 6, what="taken in")
            assert not answer.done()
            daemon.request_stop()
            response = answer.result(timeout=20)
            # Leave only once it exited: running() stops it again, and a second stop aborts.
            wait_for(lambda: bool(status), what="daemon exited")
        assert status == [0]
    assert response.status_code == 200
    assert {r["errorCode"] for r in backsplashed(s3)} == {"Splunk.Deadline"}
    assert sorted(backsplashed_messages(s3)) == sorted(messages)


def test_backsplash_failure_answers_500(
    aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """GIVEN HEC down and no bucket to backsplash to WHEN stopped THEN the daemon stops without
    a checkpoint and the request is answered 500 (Firehose retries, then its own S3 backup)."""
    payloads, _ = cwl_payloads(1, 3)
    s3 = boto_client("s3", aws_endpoint)
    broken = Backsplash(s3, "no-such-bucket-fh", PREFIX, attempts=1, sleep=lambda s: None)
    with HecEmulator(token=FAST["SPLUNK_HEC_TOKEN"]) as emulator:
        emulator.set_faults(FaultPlan(down_for_s=600))
        daemon = Daemon(
            delivery_settings(emulator.url, SPLUNK_HEC_RETRY_DURATION="600"),
            daemon_settings(tmp_path),
            client_factory=lambda service: boto_client(service, aws_endpoint),
            backsplash=broken,
        )
        with running(daemon) as (url, status):
            answer = pool.submit(post, url, payloads, request_id="req-lost")
            wait_for(lambda: daemon.deliverer.ledger.events_in == 3, what="taken in")
            daemon.request_stop()
            response = answer.result(timeout=20)
            wait_for(lambda: bool(status), what="daemon exited")
        assert status == [6]
    assert response.status_code == 500
    assert response.json()["requestId"] == "req-lost"
    assert response.json()["errorMessage"]


def test_tls(emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    config = daemon_settings(tmp_path, tls_cert_path=str(cert), tls_key_path=str(key))
    daemon = make_daemon(emulator, aws_endpoint, config)
    with running(daemon) as (url, _):
        assert url.startswith("https://")
        response = post(url, [b"over tls\n"], verify=str(cert))
    assert response.status_code == 200
    assert indexed_messages(emulator) == ["over tls"]


# --------------------------------------------------------------------------- the source alone


@pytest.fixture(name="source")
def fixture_source() -> Iterator[FirehoseHttpSource]:
    source = FirehoseHttpSource(source_settings())
    source.attach()
    try:
        yield source
    finally:
        source.close()


def test_commit_answers_only_fully_polled_requests(
    source: FirehoseHttpSource, pool: ThreadPoolExecutor
) -> None:
    answer = pool.submit(post, source.url, [b"a\n", b"b\n", b"c\n"])
    wait_for(lambda: (source.lag_seconds() or 0) > 0, what="request waiting")
    first = source.poll(2)
    assert [r.payload for r in first] == [b"a\n", b"b\n"]
    assert source.commit() == 0  # one record still unread: no answer yet
    assert not answer.done()
    assert [r.payload for r in source.poll(10)] == [b"c\n"]
    assert source.commit() == 1
    assert answer.result(timeout=5).status_code == 200
    assert source.lag_seconds() == 0.0


def test_release_and_close_answer_500(source: FirehoseHttpSource, pool: ThreadPoolExecutor) -> None:
    released = pool.submit(post, source.url, [b"a\n", b"b\n"], request_id="released")
    wait_for(lambda: (source.lag_seconds() or 0) > 0, what="request waiting")
    records = source.poll(10)
    source.release(records[1:])
    assert source.commit() == 0
    response = released.result(timeout=5)
    assert (response.status_code, response.json()["requestId"]) == (500, "released")
    queued = pool.submit(post, source.url, [b"c\n"], request_id="queued")
    wait_for(lambda: (source.lag_seconds() or 0) > 0, what="second request waiting")
    source.close()
    assert queued.result(timeout=10).status_code == 500


# --------------------------------------------------------------------------- subprocess


def test_sigterm_with_hec_down_in_a_subprocess(
    s3: Any, aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """The real process: access key from the environment, SIGTERM while HEC is down: the
    events are backsplashed, the request answered 200, exit 0."""
    payloads, messages = cwl_payloads(2, 2)
    log = tmp_path / "daemon.log"
    with HecEmulator(token=FAST["SPLUNK_HEC_TOKEN"]) as emulator:
        emulator.set_faults(FaultPlan(down_for_s=600))
        config = tmp_path / "daemon.toml"
        config.write_text(
            f'splunk_hec_url = "{emulator.url}"\n'
            '[source]\ntype = "firehose-http"\nport = 0\npoll_interval_s = 0.05\n'
            '[daemon]\ncheckpoint_store = "none"\ncheckpoint_interval_s = 0.1\n'
            "shutdown_grace_s = 1.0\nmetrics_enabled = false\n"
        )
        environ = {
            **os.environ,
            **{k: v for k, v in FAST.items() if k != "SPLUNK_HEC_URL"},
            "SPLUNK_HEC_RETRY_DURATION": "600",
            "AWS_ENDPOINT_URL": aws_endpoint,
            "LOG_FORMAT": "json",
            "FORWARDER_SOURCE_ACCESS_KEY": ACCESS_KEY,
        }
        with log.open("ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-c", RUN_DAEMON, "--config", str(config)],
                cwd=ROOT,
                env=environ,
                stdout=handle,
                stderr=handle,
            )
        try:
            wait_for(lambda: receiver_url(log) is not None, what="receiver listening")
            url = receiver_url(log)
            assert url is not None
            answer = pool.submit(post, url, payloads)
            wait_for(lambda: emulator.stats().faults_injected.get("down", 0) >= 1, what="tried")
            proc.send_signal(signal.SIGTERM)
            response = answer.result(timeout=20)
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            proc.kill()
    assert response.status_code == 200
    assert sorted(backsplashed_messages(s3)) == sorted(messages)
    assert ACCESS_KEY not in log.read_text()


def receiver_url(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if item.get("event") == "source_attached" and item.get("source") == "firehose-http":
            return str(item["url"])
    return None


# --------------------------------------------------------------------------- helpers


class _Captured:
    def __init__(self) -> None:
        self.entries: list[MutableMapping[str, Any]] = []

    @property
    def text(self) -> str:
        return json.dumps(self.entries, default=str)


@contextmanager
def capture() -> Iterator[_Captured]:
    """structlog's capture_logs, with the entries as text for "never logged" checks."""
    captured = _Captured()
    with capture_logs() as entries:
        yield captured
        captured.entries = list(entries)
