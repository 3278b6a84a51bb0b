"""``forwarder transform FILE`` prints exactly the events ``forwarder forward FILE`` sends.

For every kind of input the README lists (and the ones it routes as "anything else"), the
same bytes and flags go to both commands: ``transform``'s output is compared with what the HEC
emulator indexed from ``forward``, event for event, and the sources are checked against the
README's rule (never a scheme without a host).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import (
    FlowLogGenerator,
    cloudwatch_payload,
    control_payload,
    firehose_event,
    flow_log_payloads,
)
from forwarder.status import ExitStatus
from tests.integration.conftest import FAST

pytestmark = pytest.mark.integration

HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
    "bytes start end action log-status"
)
FLOW_GROUP = "/aws/vpc/flowlogs"
LINES = list(FlowLogGenerator(seed=5).lines(40))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _garbage() -> bytes:
    data = random.Random(15).randbytes(8192)
    return b"x" + data  # neither gzip nor JSON at the start


#: name -> (file name, bytes): every input kind.
INPUTS: dict[str, Callable[[], tuple[str, bytes]]] = {
    "cloudwatch-gzip-payload": lambda: ("batch.gz", cloudwatch_payload(LINES)),
    "firehose-event": lambda: (
        "firehose.json",
        json.dumps(
            firehose_event([*flow_log_payloads(2, 10), control_payload(), b"plain record"])
        ).encode(),
    ),
    "kinesis-event": lambda: (
        "kinesis.json",
        json.dumps(
            {
                "Records": [
                    {"eventSource": "aws:kinesis", "kinesis": {"data": _b64(p)}}
                    for p in flow_log_payloads(2, 10)
                ]
            }
        ).encode(),
    ),
    "awslogs-event": lambda: (
        "awslogs.json",
        json.dumps(
            {"awslogs": {"data": _b64(cloudwatch_payload(["hello"], log_group="/aws/lambda/app"))}}
        ).encode(),
    ),
    "flow-log-header-plain": lambda: ("flows_hdr.log", "\n".join([HEADER, *LINES]).encode()),
    "flow-log-header-gzip": lambda: (
        "flows_hdr.log.gz",
        gzip.compress(("\n".join([HEADER, *LINES]) + "\n").encode()),
    ),
    "flow-log-plain": lambda: ("flows.log", ("\n".join(LINES) + "\n").encode()),
    "flow-log-gzip": lambda: ("flows.log.gz", gzip.compress(("\n".join(LINES) + "\n").encode())),
    "direct-records": lambda: (
        "direct.json",
        "\n".join(json.dumps({"message": line}) for line in LINES).encode(),
    ),
    "plain-text": lambda: ("app.log", b"starting\nready on :8080\r\n\nstopping\n"),
    "json-lines": lambda: ("app.jsonl", b'{"level": "info", "msg": "a"}\n{"msg": "b"}\n'),
    "json-document": lambda: ("doc.json", json.dumps({"hello": "world"}, indent=2).encode()),
    "binary-garbage": lambda: ("garbage.bin", _garbage()),
}


def _environ(url: str, aws_endpoint: str, **extra: str) -> dict[str, str]:
    return {
        **FAST,
        "SPLUNK_HEC_URL": url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "ERROR",
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **extra,
    }


def _canonical(events: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(event, sort_keys=True) for event in events)


def _run(
    argv: list[str], environ: dict[str, str], stdin: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(stdin))))
    out = io.StringIO()
    status = main(argv, environ=environ, out=out)
    return status, out.getvalue()


def _both(
    hec: HecEmulator,
    environ: dict[str, str],
    args: list[str],
    *,
    monkeypatch: pytest.MonkeyPatch,
    stdin: bytes | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(transform's output lines, the events HEC indexed from forward) for the same input
    and flags (``args``: the file, or ``-`` with ``stdin``, then the flags)."""
    status, printed = _run(["transform", *args], environ, stdin, monkeypatch)
    assert status == ExitStatus.OK, printed
    status, out = _run(["forward", *args, "--json"], environ, stdin, monkeypatch)
    assert status == ExitStatus.OK, out
    return printed.splitlines(), hec.indexed_events()


@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("log_group", [None, FLOW_GROUP])
def test_transform_prints_exactly_the_events_forward_sends(
    kind: str,
    log_group: str | None,
    *,
    emulator: HecEmulator,
    s3: Any,
    aws_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, data = INPUTS[kind]()
    path = tmp_path / name
    path.write_bytes(data)
    flags = ["--log-group", log_group] if log_group else []
    environ = _environ(emulator.url, aws_endpoint)
    printed, indexed = _both(emulator, environ, [str(path), *flags], monkeypatch=monkeypatch)
    assert indexed, "forward sent nothing"
    assert _canonical([json.loads(line) for line in printed]) == _canonical(indexed)
    for event in indexed:
        assert ":///" not in event["source"]
        assert not event["source"].startswith("firehose:s3")


@pytest.mark.parametrize(
    ("flags", "source"),
    [([], "stdin"), (["--log-group", FLOW_GROUP], FLOW_GROUP)],
)
def test_stdin_gives_the_same_events_with_an_honest_source(
    flags: list[str],
    source: str,
    *,
    emulator: HecEmulator,
    s3: Any,
    aws_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``zcat ... | forwarder forward - --log-group /aws/vpc/flowlogs`` (the README's
    example): source is the log group, not ``s3:///aws/vpc/flowlogs/``; without a log group
    it is ``stdin``, not ``firehose:s3``."""
    data = gzip.compress(("\n".join([HEADER, *LINES]) + "\n").encode())
    environ = _environ(emulator.url, aws_endpoint)
    printed, indexed = _both(emulator, environ, ["-", *flags], monkeypatch=monkeypatch, stdin=data)
    assert _canonical([json.loads(line) for line in printed]) == _canonical(indexed)
    assert {event["source"] for event in indexed} == {source}
    assert {event["sourcetype"] for event in indexed} == {"aws:cloudwatchlogs:vpcflow"}
    assert [event["event"] for event in indexed] == LINES


def test_a_header_file_with_a_log_group_is_named_group_and_path(
    emulator: HecEmulator,
    s3: Any,
    aws_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "flows_hdr.log"
    path.write_text("\n".join([HEADER, *LINES]) + "\n")
    environ = _environ(emulator.url, aws_endpoint)
    args = [str(path), "--log-group", FLOW_GROUP]
    printed, indexed = _both(emulator, environ, args, monkeypatch=monkeypatch)
    assert _canonical([json.loads(line) for line in printed]) == _canonical(indexed)
    assert {event["source"] for event in indexed} == {f"{FLOW_GROUP}:{path}"}


def test_raw_endpoint_lines_are_the_same_too(
    emulator: HecEmulator,
    s3: Any,
    aws_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "flows.log.gz"
    path.write_bytes(gzip.compress(("\n".join([HEADER, *LINES]) + "\n").encode()))
    environ = _environ(emulator.url, aws_endpoint, SPLUNK_HEC_ENDPOINT="raw")
    args = [str(path), "--log-stream", "eni-1"]
    printed, indexed = _both(emulator, environ, args, monkeypatch=monkeypatch)
    assert sorted(printed) == sorted(event["event"] for event in indexed)
    assert {event["source"] for event in indexed} == {"eni-1"}
