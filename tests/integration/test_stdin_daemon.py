"""``forwarder daemon`` reading stdin from a pipe that stays open (a real process, real signals,
the HEC emulator, the backsplash on the moto server)."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.emulator import FaultPlan, HecEmulator
from tests.integration.conftest import FAST
from tests.integration.test_daemon import (
    ROOT,
    backsplashed_messages,
    indexed_messages,
    log_events,
    wait_for,
)

pytestmark = pytest.mark.integration


def numbered(start: int, count: int) -> list[str]:
    return [f"stdin-line-{n:06d}" for n in range(start, start + count)]


@pytest.fixture(name="stdin_daemon")
def fixture_stdin_daemon(
    request: pytest.FixtureRequest,
    emulator: HecEmulator,
    s3: Any,
    aws_endpoint: str,
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``forwarder daemon`` with a stdin source, its stdin a pipe this test holds open
    (``poll_interval_s`` 0.1, or the test's indirect parameter)."""
    poll_interval_s = getattr(request, "param", 0.1)
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'splunk_hec_url = "{emulator.url}"\n'
        "[source]\n"
        'type = "stdin"\n'
        f"poll_interval_s = {poll_interval_s}\n"
        "chunk_lines = 10\n"
        "[daemon]\n"
        'checkpoint_store = "none"\n'
        "checkpoint_interval_s = 0.5\n"
        "shutdown_grace_s = 2.0\n"
        "metrics_port = 0\n"
    )
    log = tmp_path / "daemon.log"
    environ = {
        **os.environ,
        **{k: v for k, v in FAST.items() if k != "SPLUNK_HEC_URL"},
        "SPLUNK_HEC_BATCH_LINGER": "0.05",
        "SPLUNK_HEC_ACK_TIMEOUT": "60",
        "SPLUNK_HEC_MAX_PENDING_ACKS": "2",
        "AWS_ENDPOINT_URL": aws_endpoint,
        "LOG_FORMAT": "json",
    }
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "daemon", "--config", str(config)],
            cwd=ROOT,
            env=environ,
            stdin=subprocess.PIPE,
            stdout=handle,
            stderr=handle,
        )
    try:
        yield proc, log
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()


def unread_in_pipe(proc: subprocess.Popen[bytes]) -> int:
    """Bytes written into the daemon's stdin pipe and not yet read by it (Linux FIONREAD)."""
    assert proc.stdin is not None
    count = array.array("i", [0])
    fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, count)
    return count[0]


def send(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
    proc.stdin.flush()


def test_stdin_streams_from_an_open_pipe_and_sigterm_loses_nothing(
    emulator: HecEmulator, s3: Any, stdin_daemon: tuple[subprocess.Popen[bytes], Path]
) -> None:
    """GIVEN a daemon whose stdin is a pipe kept open WHEN lines are written THEN they are
    indexed without the pipe being closed. GIVEN acks that never come (so delivery blocks
    on pending acks) and a burst the daemon read from the pipe but could not hand over yet
    WHEN SIGTERM THEN it exits 0 and every line it took from the pipe is indexed or
    backsplashed, and ``lines_taken`` counts them all."""
    proc, log = stdin_daemon
    written = numbered(0, 20)
    send(proc, written)
    wait_for(
        lambda: set(indexed_messages(emulator)) == set(written), timeout=60, what="streamed lines"
    )
    assert proc.poll() is None  # still running: nothing waited for the end of the input

    emulator.set_faults(FaultPlan(lost_acks=1000))
    unacked = numbered(20, 1)  # one request awaiting an ack that never comes
    send(proc, unacked)
    written += unacked
    wait_for(lambda: unacked[0] in indexed_messages(emulator), timeout=60, what="in flight")
    # Under PIPE_BUF, so one atomic write: one poll takes it all, then delivery blocks after
    # one more request (SPLUNK_HEC_MAX_PENDING_ACKS=2) with the rest of it not handed over.
    burst = numbered(21, 200)
    assert len("".join(f"{line}\n" for line in burst)) < select.PIPE_BUF
    send(proc, burst)
    written += burst
    wait_for(lambda: unread_in_pipe(proc) == 0, timeout=60, what="the daemon to read the burst")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()

    (unread,) = log_events(log, "input_not_finished")
    assert unread["lines_taken"] == len(written)
    indexed, stored = set(indexed_messages(emulator)), set(backsplashed_messages(s3))
    assert indexed | stored == set(written)
    assert set(unacked) <= stored  # acks never came: backsplashed at the grace
    (summary,) = log_events(log, "delivery_summarized")
    assert summary["balanced"] and summary["events_in"] == len(written)


@pytest.mark.parametrize("stdin_daemon", [300.0], indirect=True)
def test_sigterm_on_a_quiet_pipe_is_not_held_by_a_long_poll_interval(
    emulator: HecEmulator, stdin_daemon: tuple[subprocess.Popen[bytes], Path]
) -> None:
    """GIVEN poll_interval_s = 300 and a pipe kept open and quiet WHEN SIGTERM THEN the
    daemon exits 0 within its grace, not after the poll interval (select resumes after the
    signal handler, so each quiet wait is capped)."""
    proc, log = stdin_daemon
    line = numbered(0, 1)
    send(proc, line)
    wait_for(lambda: indexed_messages(emulator) == line, timeout=60, what="the first line")
    time.sleep(3)  # acks settled, nothing due: the daemon is in a quiet wait on the pipe
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()  # 60 s is far below the 300 s interval
