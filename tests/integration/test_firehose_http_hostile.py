"""The firehose-http receiver under hostile clients, and its answer before Firehose's timeout
(issue 9, item 3 and the answer-timeout item)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.sources.firehose_http import FirehoseHttpSource
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import FAST, backsplashed
from tests.integration.test_firehose_http import (
    ACCESS_KEY,
    ROOT,
    RUN_DAEMON,
    backsplashed_messages,
    cwl_payloads,
    daemon_settings,
    fixture_pool,
    indexed_messages,
    make_daemon,
    post,
    receiver_url,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

__all__ = ["fixture_pool"]  # the pool fixture, shared with test_firehose_http

#: Hostile connections held open at once (the issue saw ~570 starve the old receiver).
SLOW_CONNECTIONS = 600


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def slow_clients(url: str, count: int, head: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections that send the start of a request head and then nothing."""
    address = host_port(url)
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=10)
            with contextlib.suppress(OSError):  # the receiver may already have shed it
                sock.sendall(head)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_hundreds_of_slow_connections_do_not_starve_firehose(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN 600 unauthenticated connections that never finish their request head WHEN
    Firehose posts THEN its request is answered 200 and delivered, and the receiver holds no
    thread per connection (the old one had 600 threads and starved)."""
    payloads, messages = cwl_payloads(2, 2)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    with running(daemon) as (url, _):
        assert isinstance(daemon.source, FirehoseHttpSource)
        receiver = daemon.source.receiver
        threads_before = threading.active_count()
        with slow_clients(url, SLOW_CONNECTIONS, b"POST / HTTP/1.1\r\nHost: x\r\n") as opened:
            wait_for(lambda: receiver.connections() >= SLOW_CONNECTIONS, what="all held open")
            response = post(url, payloads)
            threads_during = threading.active_count()
            assert len(opened) == SLOW_CONNECTIONS
    assert response.status_code == 200
    assert sorted(indexed_messages(emulator)) == sorted(messages)
    # A few threads come and go (HEC sends, ack polls); none per connection.
    assert threads_during - threads_before < 20


def test_connection_cap_evicts_slow_clients_first(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN max_connections 20 and 200 slow clients WHEN Firehose posts THEN the oldest slow
    connections are shed to make room and Firehose's request is answered 200."""
    payloads, messages = cwl_payloads(1, 3)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path, max_connections=20))
    with running(daemon) as (url, _):
        assert isinstance(daemon.source, FirehoseHttpSource)
        receiver = daemon.source.receiver
        with slow_clients(url, 200, b"POST / HTTP/1.1\r\n"):
            wait_for(lambda: receiver.evicted >= 150, what="slow connections shed")
            assert receiver.connections() <= 20
            response = post(url, payloads)
    assert response.status_code == 200
    assert sorted(indexed_messages(emulator)) == sorted(messages)


def test_total_deadline_applies_before_the_access_key_check(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN request_timeout_s 0.5 WHEN a client drips its request head a byte at a time
    (each byte well within any per-read timeout) THEN the connection is closed once the
    total deadline passes, before any answer (no 401: the key was never read)."""
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path, request_timeout_s=0.5))
    head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Firehose-Access-Key: wrong\r\n"
    received = b""
    closed = False
    with running(daemon) as (url, _):
        sock = socket.create_connection(host_port(url), timeout=10)
        sock.settimeout(0.02)
        end = time.monotonic() + 30  # generous: the deadline is 0.5 s
        try:
            for byte in itertools.cycle(head):  # never a complete head
                if time.monotonic() > end:
                    break
                try:
                    sock.sendall(bytes([byte]))
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
        finally:
            sock.close()
    assert closed
    assert b"401" not in received


def test_over_the_cap_with_nothing_to_shed_answers_503(
    s3: Any, aws_endpoint: str, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """GIVEN max_connections 2, both holding requests waiting for their acks WHEN a third
    connection comes THEN it is answered 503 at once (Firehose retries) and the two end 200."""
    first, _ = cwl_payloads(1, 2, tag="a")
    second, _ = cwl_payloads(1, 2, tag="b")
    with HecEmulator(token=TEST_TOKEN) as emulator:
        emulator.set_faults(FaultPlan(ack_delay_s=5.0))  # holds both while the third comes
        daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path, max_connections=2))
        with running(daemon) as (url, _):
            waiting = [pool.submit(post, url, first), pool.submit(post, url, second)]
            wait_for(lambda: len(emulator.indexed_events()) == 4, what="both taken in")
            refused = post(url, first)
            assert refused.status_code == 503
            assert refused.json()["errorMessage"]
            assert [w.result(timeout=30).status_code for w in waiting] == [200, 200]


def test_answer_comes_before_the_answer_timeout_when_acks_never_come(
    s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN acks that never come (lost) and an ack timeout far beyond Firehose's 3 minutes
    (scaled down: answer_timeout_s 1, ack timeout 600) WHEN Firehose posts THEN it is answered
    200 once the events are durably backsplashed at the answer deadline (Splunk.Deadline),
    instead of after the ack timeout (when Firehose would have given up and sent it again)."""
    payloads, messages = cwl_payloads(2, 3)
    with HecEmulator(token=TEST_TOKEN) as emulator:
        emulator.set_faults(FaultPlan(lost_acks=100))
        daemon = make_daemon(
            emulator,
            aws_endpoint,
            daemon_settings(tmp_path, answer_timeout_s=1.0),
            SPLUNK_HEC_ACK_TIMEOUT="600",
        )
        with running(daemon) as (url, _):
            response = post(url, payloads)  # requests' own timeout is 30 s
    assert response.status_code == 200
    assert {r["errorCode"] for r in backsplashed(s3)} == {"Splunk.Deadline"}
    assert sorted(backsplashed_messages(s3)) == sorted(messages)


def test_pipelined_floods_and_deep_nesting_fail_only_their_own_connection(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN one connection pipelining 3,000 bad requests, and a body nested 100,000 deep
    WHEN they arrive THEN each is refused on its own (401s, a 400) and the receiver goes on
    serving Firehose."""
    payloads, messages = cwl_payloads(1, 2)
    daemon = make_daemon(emulator, aws_endpoint, daemon_settings(tmp_path))
    flood = b"POST / HTTP/1.1\r\nX-Amz-Firehose-Access-Key: no\r\nContent-Length: 0\r\n\r\n" * 3000
    with running(daemon) as (url, _):
        with socket.create_connection(host_port(url), timeout=30) as sock:
            sock.sendall(flood)
            sock.shutdown(socket.SHUT_WR)
            answers = b""
            while chunk := sock.recv(1 << 16):
                answers += chunk
        nested = post(url, [], body=b'{"records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        response = post(url, payloads)
    assert answers.count(b"HTTP/1.1 401 ") == 3000
    assert nested.status_code == 400
    assert response.status_code == 200
    assert sorted(indexed_messages(emulator)) == sorted(messages)


def test_low_descriptor_limit_keeps_room_for_hec_and_s3(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """GIVEN the real daemon process under a 512-descriptor limit (where the issue saw it
    starve and die) WHEN 600 slow clients connect THEN the receiver sheds them within its
    budget, and Firehose's request is still delivered to HEC and answered 200."""
    payloads, messages = cwl_payloads(2, 2)
    log = tmp_path / "daemon.log"
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
        "AWS_ENDPOINT_URL": aws_endpoint,
        "LOG_FORMAT": "json",
        "FORWARDER_SOURCE_ACCESS_KEY": ACCESS_KEY,
    }

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN_DAEMON, "--config", str(config)],
            cwd=ROOT,
            env=environ,
            stdout=handle,
            stderr=handle,
            preexec_fn=limit_descriptors,  # noqa: PLW1509 - only setrlimit, no locks
        )
    try:
        wait_for(lambda: receiver_url(log) is not None, what="receiver listening")
        url = receiver_url(log)
        assert url is not None
        with slow_clients(url, SLOW_CONNECTIONS, b"POST / HTTP/1.1\r\nHost: x\r\n"):
            response = post(url, payloads)
            assert proc.poll() is None, log.read_text()
            threads = process_threads(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        proc.kill()
    assert response.status_code == 200
    assert sorted(indexed_messages(emulator)) == sorted(messages)
    (attached,) = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "source_attached"
    ]
    assert attached["max_connections"] == 512 - 256
    assert threads < 50  # no thread per connection (the old receiver ran one per client)


def process_threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Threads:", 1)[1].split()[0])
