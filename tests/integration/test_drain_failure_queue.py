"""The drain and the push Lambda's on-failure queue (``[drain] failure_queue``): behind the
same health gate as the bucket, against SQS and S3 on the moto server and the HEC emulator."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.drain import DEFAULT_MAX_ATTEMPTS, DrainSettings
from forwarder.cli import main
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.drain.drainer import Drainer
from forwarder.status import ExitStatus
from tests.conftest import boto_client
from tests.integration import test_drain
from tests.integration.conftest import delivery_settings
from tests.integration.test_drain import cli_environ
from tests.integration.test_failure_queue import (  # the fixtures and helpers
    fill,
    fixture_queue,  # noqa: F401 - the fixture
    fixture_sqs,  # noqa: F401 - the fixture
    indexed_messages,
    messages_left,
)


def drain_settings(queue: str) -> DrainSettings:
    return test_drain.drain_settings(failure_queue=queue, max_attempts=DEFAULT_MAX_ATTEMPTS)


def test_drainer_drains_the_failure_queue_once_the_gate_opens(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str, tmp_path: Path
) -> None:
    """GIVEN destination records in the failure queue WHEN HEC is down THEN the gate is shut
    and the queue is not read; WHEN HEC is back THEN one cycle delivers every event and
    deletes every message."""
    expected = fill(sqs, queue)
    settings = delivery_settings(emulator.url)
    drainer = Drainer(
        settings, drain_settings(queue), s3_client=s3, state=tmp_path / "state", sqs_client=sqs
    )
    emulator.set_faults(FaultPlan(down_for_s=3600))
    closed = drainer.cycle()
    assert closed.outcome == "closed"
    assert drainer.failure_queue_report is None and messages_left(sqs, queue) == 3

    emulator.set_faults(FaultPlan())
    result = drainer.cycle()
    assert result.outcome == "empty", result.reason  # the bucket held nothing
    report = drainer.failure_queue_report
    assert report is not None and report.messages_deleted == 3
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert messages_left(sqs, queue) == 0


@pytest.fixture(name="drain_lambda")
def fixture_drain_lambda(aws_endpoint: str) -> Iterator[Any]:
    from forwarder import drain

    yield drain
    drain.reset()


class FakeContext:
    """A Lambda context with a minute left."""

    def __init__(self) -> None:
        self._end = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._end - time.monotonic()) * 1000), 0)


def test_drain_lambda_reads_drain_failure_queue(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str, *, tmp_path: Path, drain_lambda: Any
) -> None:
    """GIVEN ``DRAIN_FAILURE_QUEUE`` (the template's setting) WHEN the drain Lambda runs THEN
    the queue's events are delivered, its messages deleted, and its depth reported."""
    expected = fill(sqs, queue, records=2)
    drain_lambda.configure(
        delivery_settings(emulator.url),
        environ={
            "DRAIN_STATE": str(tmp_path / "state"),
            "DRAIN_FAILURE_QUEUE": queue,
            "DRAIN_SETTLE_S": "2",
        },
        client_factory=lambda service: boto_client(service, str(s3.meta.endpoint_url)),
    )
    answer = drain_lambda.handler({}, FakeContext())
    assert answer["outcome"] == "empty", answer
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert messages_left(sqs, queue) == 0
    # The same setting feeds the EMF line's depth, measured after the drain: empty.
    assert answer["backlog"]["failure_queue_depth"] == 0


def test_the_failure_queue_flag_drains_the_queue_from_the_command_line(
    emulator: HecEmulator, s3: Any, sqs: Any, queue: str, tmp_path: Path
) -> None:
    """``forwarder drain --once --failure-queue QUEUE_URL`` (no ``[drain]`` table): the cycle
    finds the bucket empty, then replays the queue; every event is delivered and every
    message deleted, exit 0. A value that is not a queue URL is a configuration error."""
    expected = fill(sqs, queue)
    environ = cli_environ(emulator.url)
    words = ["drain", "--once", "--json", "--state", str(tmp_path / "state")]
    out = io.StringIO()
    status = main([*words, "--failure-queue", f"sqs://{queue}"], environ=environ, out=out)
    assert status == ExitStatus.OK, out.getvalue()
    assert json.loads(out.getvalue())["outcome"] == "empty"
    assert Counter(indexed_messages(emulator)) == Counter(expected)
    assert messages_left(sqs, queue) == 0

    bad = main([*words, "--failure-queue", "push-failures"], environ=environ, out=io.StringIO())
    assert bad == ExitStatus.USAGE
