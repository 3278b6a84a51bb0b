"""The push Lambda against a HEC that never answers, and over many failed invocations.

Issue 9 item 7 (the handler ran past its own deadline while a request was on the wire) and
the deliverers dropped on ``BacksplashError`` that were never closed (their I/O threads piled
up in the container).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder import push
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.errors import BacksplashError
from tests.conftest import boto_client
from tests.integration.conftest import backsplashed, delivery_settings
from tests.integration.hostile_hec import HostileHec
from tests.integration.test_push import FakeContext

pytestmark = pytest.mark.integration


@pytest.fixture(name="configure")
def fixture_configure(s3: Any, aws_endpoint: str) -> Iterator[Any]:
    """Configure the push container for a HEC URL and moto's S3; reset afterwards."""

    def factory(service: str) -> Any:
        return boto_client(service, aws_endpoint)

    def configure(url: str, **environ: str) -> None:
        push.configure(delivery_settings(url, **environ), client_factory=factory)

    yield configure
    push.reset()


def awslogs_event(lines: list[str]) -> dict[str, Any]:
    payload = cloudwatch_payload(lines, log_group="/app/test")
    return {"awslogs": {"data": base64.b64encode(payload).decode()}}


def hec_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("hec-send")}


def test_handler_keeps_its_deadline_against_a_hec_that_never_answers(
    configure: Any, s3: Any
) -> None:
    """GIVEN a HEC that accepts and never answers (read timeout 60 s) and 8 s left WHEN the
    handler runs THEN it answers while the Lambda still has time, every event backsplashed
    (``Splunk.Deadline``) and the ledger balanced."""
    with HostileHec("blackhole") as hec:
        # One batch: after the deadline, a single backsplash write fits well in the margin.
        configure(hec.url, SPLUNK_HEC_READ_TIMEOUT="60", SPLUNK_HEC_BATCH_MAX_BYTES="1000000")
        lines = [f"line {i} " + "x" * 80 for i in range(100)]
        context = FakeContext(remaining_ms=8000)
        result = push.handler(awslogs_event(lines), context)
        assert context.get_remaining_time_in_millis() > 0  # answered before Lambda's timeout
        assert hec.requests["data"] >= 1
    ledger = result["ledger"]
    assert ledger["balanced"] and ledger["in_flight"] == 0
    assert ledger["backsplashed"] == ledger["events_in"] == 100
    records = backsplashed(s3)
    assert len(records) == 100
    assert {r["errorCode"] for r in records} == {"Splunk.Deadline"}


def test_dropped_deliverers_stop_their_threads(configure: Any) -> None:
    """GIVEN invocations that fail with BacksplashError (HEC refuses the token, the bucket is
    missing) WHEN many run in one container THEN each dropped deliverer's I/O thread is
    stopped: no HEC thread is left behind, however many invocations failed."""
    with HecEmulator(token="the-real-token") as emulator:
        configure(emulator.url, BACKSPLASH_BUCKET="no-such-bucket-here")
        before = hec_threads()
        for index in range(12):
            with pytest.raises(BacksplashError):
                push.handler(awslogs_event([f"event {index}"]), FakeContext(remaining_ms=5000))
            assert hec_threads() <= before, f"after failed invocation {index + 1}"
        assert emulator.stats().data_requests == 12
