"""``forwarder forward`` and ``forwarder check`` end to end: the CLI against the emulator and S3."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import (
    FlowLogGenerator,
    cloudwatch_payload,
    control_payload,
    firehose_event,
    flow_log_payloads,
)
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import FAST, backsplashed
from tests.unit.test_hostile_objects import LONG_LINE_BYTES, bomb

pytestmark = pytest.mark.integration


def run_cli(argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    status = main(argv, environ=environ, out=out)
    return status, out.getvalue()


@pytest.fixture(name="hec")
def fixture_hec() -> Any:
    with HecEmulator(token=TEST_TOKEN) as emulator:
        yield emulator


def environ_for(url: str, aws_endpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {**FAST, "SPLUNK_HEC_URL": url, "LOG_FORMAT": "json", **extra}
    if aws_endpoint:
        env.update(
            AWS_ENDPOINT_URL=aws_endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
    return env


def test_forward_gzip_payload_is_acknowledged(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """A gzip CloudWatch Logs payload of flow logs is delivered, acknowledged, exit 0."""
    lines = list(FlowLogGenerator().lines(300))
    path = tmp_path / "batch.gz"
    path.write_bytes(cloudwatch_payload(lines))
    status, out = run_cli(["forward", str(path), "--json"], environ_for(hec.url, aws_endpoint))
    summary = json.loads(out)
    assert status == ExitStatus.OK
    assert summary["events_in"] == 300
    assert summary["acknowledged"] == 300
    assert summary["balanced"] is True
    indexed = hec.indexed_events()
    assert [event["event"] for event in indexed] == lines
    assert {event["sourcetype"] for event in indexed} == {"aws:cloudwatchlogs:vpcflow"}
    assert backsplashed(s3) == []


def test_forward_firehose_event_counts_control_and_bad_records(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """Control messages are dropped quietly, plain text is delivered as text, and a truncated
    gzip record is dropped with its reason and makes the exit status 5."""
    truncated = flow_log_payloads(1, 50)[0][:40]
    event = firehose_event(
        [*flow_log_payloads(2, 50), control_payload(), b"plain text record", truncated]
    )
    path = tmp_path / "firehose.json"
    path.write_text(json.dumps(event))
    status, out = run_cli(["forward", str(path), "--json"], environ_for(hec.url, aws_endpoint))
    summary = json.loads(out)
    assert status == ExitStatus.INCOMPLETE
    assert summary["acknowledged"] == 101
    assert summary["dropped"] == {"control_message": 1, "undecodable_record": 1}
    assert summary["balanced"] is True
    assert hec.indexed_events()[-1]["event"] == "plain text record"


def test_forward_flow_log_file_with_header_from_stdin_like_file(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """An S3-style flow-log file (gzip, header line) parses itself; the header is not sent."""
    header = (
        "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
        "bytes start end action log-status"
    )
    lines = list(FlowLogGenerator(seed=3).lines(50))
    path = tmp_path / "flow.log.gz"
    path.write_bytes(gzip.compress(("\n".join([header, *lines]) + "\n").encode()))
    status, out = run_cli(
        ["forward", str(path), "--json"],
        environ_for(hec.url, aws_endpoint, SPLUNK_HEC_ENDPOINT="raw"),
    )
    assert status == ExitStatus.OK, out
    indexed = hec.indexed_events()
    assert [event["event"] for event in indexed] == lines
    assert {event["sourcetype"] for event in indexed} == {"aws:cloudwatchlogs:vpcflow"}


def test_forward_with_invalid_token_backsplashes_and_exits_4(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """HEC refuses the token: every event lands in the backsplash, readable back; exit 4."""
    path = tmp_path / "batch.gz"
    path.write_bytes(cloudwatch_payload(list(FlowLogGenerator().lines(40))))
    environ = environ_for(hec.url, aws_endpoint, SPLUNK_HEC_TOKEN="wrong-token-0000")
    status, out = run_cli(["forward", str(path), "--json"], environ)
    assert status == ExitStatus.HEC_FATAL
    summary = json.loads(out)
    assert summary["backsplashed"] == 40
    records = backsplashed(s3)
    assert len(records) == 40
    assert {record["errorCode"] for record in records} == {"Splunk.InvalidToken"}
    assert hec.stats().events_indexed == 0


def test_forward_without_backsplash_when_hec_is_down_exits_6(
    hec: HecEmulator, tmp_path: Path
) -> None:
    """Nowhere to put undeliverable events: the run says so loudly and exits 6."""
    hec.set_faults(FaultPlan(error_500_requests=10_000))
    path = tmp_path / "batch.gz"
    path.write_bytes(cloudwatch_payload(list(FlowLogGenerator().lines(10))))
    environ = environ_for(hec.url, SPLUNK_HEC_RETRY_DURATION="0.2")
    del environ["BACKSPLASH_BUCKET"]
    status, out = run_cli(["forward", str(path), "--json"], environ)
    assert status == ExitStatus.BACKSPLASH_FAILED
    summary = json.loads(out)
    assert summary["in_flight"] == 10
    assert "backsplash" in summary["backsplash_error"]


def test_forward_kinesis_and_awslogs_shapes(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """Push-Lambda shaped files (awslogs, Kinesis Records) are understood too."""
    payload = cloudwatch_payload(
        ["hello from lambda"], log_group="/aws/lambda/app", log_stream="2026/11/26/[$LATEST]0a1b"
    )
    path = tmp_path / "awslogs.json"
    path.write_text(json.dumps({"awslogs": {"data": base64.b64encode(payload).decode()}}))
    status, _ = run_cli(["forward", str(path)], environ_for(hec.url, aws_endpoint))
    assert status == ExitStatus.OK
    kinesis = {"Records": [{"kinesis": {"data": base64.b64encode(payload).decode()}}]}
    path.write_text(json.dumps(kinesis))
    status, _ = run_cli(["forward", str(path)], environ_for(hec.url, aws_endpoint))
    assert status == ExitStatus.OK
    indexed = hec.indexed_events()
    assert [event["event"] for event in indexed] == ["hello from lambda"] * 2
    assert indexed[0]["sourcetype"] == "aws:cloudwatchlogs:lambda"


def test_forward_configuration_error_exits_2(tmp_path: Path) -> None:
    """A bad setting is a usage error named by its key, before any I/O."""
    path = tmp_path / "x.log"
    path.write_text("hello\n")
    status, _ = run_cli(
        ["forward", str(path)], {"SPLUNK_HEC_URL": "not a url", "SPLUNK_HEC_TOKEN": TEST_TOKEN}
    )
    assert status == ExitStatus.USAGE
    status, _ = run_cli(["forward", str(path)], {"SPLUNK_HEC_URL": "http://127.0.0.1:9"})
    assert status == ExitStatus.USAGE


def test_check_reports_health_and_token(hec: HecEmulator) -> None:
    """check: 0 when healthy and accepted, 4 for a refused token, 1 for an unreachable URL."""
    status, out = run_cli(["check"], environ_for(hec.url))
    assert status == ExitStatus.OK
    assert "token accepted" in out
    status, out = run_cli(["check"], environ_for(hec.url, SPLUNK_HEC_TOKEN="bad-token-value"))
    assert status == ExitStatus.HEC_FATAL
    assert "token refused" in out
    assert "bad-token-value" not in out
    status, out = run_cli(["check"], environ_for("http://127.0.0.1:9"))
    assert status == ExitStatus.FAILURE
    assert "NOT OK" in out


def test_forward_json_lines_larger_than_the_ceiling_are_all_delivered(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """JSON lines past MAX_DECOMPRESSED_BYTES are streamed, not cut at the ceiling."""
    lines = [json.dumps({"n": n, "msg": "x" * 90}) for n in range(15_000)]  # about 1.5 MB
    path = tmp_path / "app.jsonl"
    path.write_text("\n".join(lines) + "\n")
    environ = environ_for(hec.url, aws_endpoint, MAX_DECOMPRESSED_BYTES="1048576")
    status, out = run_cli(["forward", str(path), "--json"], environ)
    summary = json.loads(out)
    assert status == ExitStatus.OK, out
    assert summary["acknowledged"] == 15_000
    assert [event["event"] for event in hec.indexed_events()] == lines


def test_forward_corrupt_gzip_delivers_what_was_read_and_exits_5(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    """A gzip file cut off midway: the lines before the cut are delivered, the loss counted."""
    lines = list(FlowLogGenerator(seed=5).lines(30_000))
    packed = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "flows.log.gz"
    path.write_bytes(packed[: len(packed) // 2])
    environ = environ_for(hec.url, aws_endpoint)
    status, out = run_cli(
        ["forward", str(path), "--json", "--log-group", "/aws/vpc/flowlogs"], environ
    )
    summary = json.loads(out)
    assert status == ExitStatus.INCOMPLETE
    assert summary["dropped"] == {"input_unreadable": 1}
    assert summary["balanced"] is True
    indexed = [event["event"] for event in hec.indexed_events()]
    assert 0 < len(indexed) < len(lines)
    assert indexed == lines[: len(indexed)]


# --------------------------------------------------------------------- a 400 MB line, measured

#: The forward process's peak resident memory must stay under this (an interpreter with its
#: imports is well under 100 MB; reading a 400 MB line whole costs several times 400 MB).
PEAK_RSS_LIMIT_BYTES = 200 * 1024 * 1024
GOOD_BEFORE = [f"good line before {n}" for n in range(3)]
GOOD_AFTER = [f"good line after {n}" for n in range(3)]
ROOT = Path(__file__).resolve().parents[2]

#: Writes the good lines, one LONG_LINE_BYTES line (no newline until its end), the good
#: lines after, to stdout, streaming (never holding the long line).
_GENERATE = r"""
import sys
before, after, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = sys.stdout.buffer
out.write(before.encode())
block = b"x" * (1 << 20)
for _ in range(size >> 20):
    out.write(block)
out.write(b"x" * (size & ((1 << 20) - 1)))
out.write(b"\n" + after.encode())
out.flush()
"""

#: Runs ``forwarder forward`` in this process, then writes its exit status, its ledger and
#: its peak RSS to the file named first (stdout carries the log).
_FORWARD = r"""
import io, json, sys
from forwarder.cli import main
out = io.StringIO()
status = main(["forward", *sys.argv[2:], "--json"], out=out)
# VmHWM: the peak RSS of this process's own memory (ru_maxrss would include the parent's,
# which Linux carries over the fork and exec that started it).
with open("/proc/self/status") as status_file:
    (hwm,) = [line for line in status_file if line.startswith("VmHWM:")]
peak = int(hwm.split()[1]) * 1024  # kB
result = {"status": status, "summary": json.loads(out.getvalue()), "peak": peak}
with open(sys.argv[1], "w") as handle:
    json.dump(result, handle)
"""


@pytest.mark.parametrize("how", ["stdin", "gzip-file"])
def test_forward_skips_a_400_mb_line_with_bounded_memory(
    hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path, how: str
) -> None:
    """GIVEN good lines, one 400 MB line without a newline, good lines: piped into
    ``forward -`` from a generator, or a ~0.4 MB gzip file
    WHEN forwarded to the HEC emulator
    THEN the good lines are indexed in order, the long line is counted dropped
    (``line_too_long``), the ledger balances, the exit status is 5 (something was dropped),
    and the forward process's peak RSS stays under 200 MB."""
    before = "".join(f"{line}\n" for line in GOOD_BEFORE)
    after = "".join(f"{line}\n" for line in GOOD_AFTER)
    env = {**os.environ, **environ_for(hec.url, aws_endpoint)}
    result_path = tmp_path / "result.json"
    if how == "gzip-file":
        path = tmp_path / "long.log.gz"
        path.write_bytes(
            bomb(LONG_LINE_BYTES, prefix=before.encode(), suffix=f"\n{after}".encode())
        )
        generator = None
        forward = subprocess.Popen(
            [sys.executable, "-c", _FORWARD, str(result_path), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    else:
        generator = subprocess.Popen(
            [sys.executable, "-c", _GENERATE, before, after, str(LONG_LINE_BYTES)],
            stdout=subprocess.PIPE,
        )
        forward = subprocess.Popen(
            [sys.executable, "-c", _FORWARD, str(result_path), "-"],
            stdin=generator.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        assert generator.stdout is not None
        generator.stdout.close()  # the forward process holds the pipe's read end
    try:
        log, _ = forward.communicate(timeout=600)
    finally:
        for process in (forward, generator):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert forward.returncode == 0, log.decode(errors="replace")[-4000:]
    result = json.loads(result_path.read_text())
    summary = result["summary"]
    assert summary["dropped"] == {"line_too_long": 1}, summary
    assert summary["acknowledged"] == len(GOOD_BEFORE) + len(GOOD_AFTER)
    assert summary["balanced"] is True
    assert result["status"] == ExitStatus.INCOMPLETE
    indexed = [event["event"] for event in hec.indexed_events()]
    assert indexed == GOOD_BEFORE + GOOD_AFTER, log.decode(errors="replace")[-4000:]
    assert result["peak"] < PEAK_RSS_LIMIT_BYTES, result


class _SignallingStdin(io.RawIOBase):
    """stdin that sends this process ``signals`` SIGINTs on its first read, then gives ``data``
    (the signals arrive while ``forward`` is reading, as a Ctrl-C would)."""

    def __init__(self, data: bytes, signals: int) -> None:
        self._data = data
        self._signals = signals

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        import signal

        for _ in range(self._signals):
            os.kill(os.getpid(), signal.SIGINT)
        self._signals = 0
        count = min(len(buffer), len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


@pytest.mark.parametrize("signals", [1, 2])
def test_forward_stops_in_two_stages_on_sigint(
    signals: int, hec: HecEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One SIGINT: what was read is still delivered and acknowledged, the ledger printed, exit
    130. A second one: stop at once (KeyboardInterrupt), exit 130, no ledger."""
    lines = [f"line {n}" for n in range(50)]
    stdin = _SignallingStdin("".join(f"{line}\n" for line in lines).encode(), signals)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(stdin)))
    status, out = run_cli(["forward", "-", "--json"], environ_for(hec.url))
    assert status == ExitStatus.INTERRUPTED
    if signals == 1:
        summary = json.loads(out)
        assert summary["acknowledged"] == 50 and summary["balanced"] is True
        assert [event["event"] for event in hec.indexed_events()] == lines
    else:
        assert out == ""
