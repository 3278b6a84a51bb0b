"""forwarder.intake.events: the push path's one decoder of awslogs and Kinesis payloads, which
the push Lambda and the failure-queue replay share."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.intake.events import deliver_encoded, deliver_event


class RecordingIntake:
    """Stands in for Intake: records what it is handed."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.refused: list[tuple[bytes, str]] = []

    def payload(self, data: bytes) -> None:
        self.payloads.append(data)

    def unprocessable(self, data: bytes, exc: Exception) -> None:
        self.refused.append((data, str(exc)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_awslogs_event_hands_its_payload_decoded() -> None:
    payload = cloudwatch_payload(["a", "b"])
    intake = RecordingIntake()
    assert deliver_event(intake, {"awslogs": {"data": _b64(payload)}}) == 1  # type: ignore[arg-type]
    assert intake.payloads == [payload] and not intake.refused


def test_kinesis_batch_hands_every_record_and_stores_the_bad_one() -> None:
    payloads = [cloudwatch_payload([f"e{i}"], first_id=i) for i in range(2)]
    event: dict[str, Any] = {
        "Records": [
            {"eventSource": "aws:kinesis", "kinesis": {"data": _b64(payloads[0])}},
            {"eventSource": "aws:kinesis", "kinesis": {"data": "not base64!"}},
            {"eventSource": "aws:kinesis", "kinesis": {}},
            {"eventSource": "aws:kinesis", "kinesis": {"data": _b64(payloads[1])}},
        ]
    }
    intake = RecordingIntake()
    assert deliver_event(intake, event) == 4  # type: ignore[arg-type]
    assert intake.payloads == payloads
    assert [data for data, _ in intake.refused] == [b"not base64!", b""]


@pytest.mark.parametrize(
    "event",
    [
        {"records": []},
        {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]},
        {"something": "else"},
    ],
)
def test_other_shapes_are_refused(event: dict[str, Any]) -> None:
    intake = RecordingIntake()
    with pytest.raises(ValueError, match="not an awslogs or Kinesis event"):
        deliver_event(intake, event)  # type: ignore[arg-type]
    assert not intake.payloads and not intake.refused


def test_non_string_data_is_stored_as_text() -> None:
    intake = RecordingIntake()
    deliver_encoded(intake, 12)  # type: ignore[arg-type]
    assert intake.refused == [(b"12", "no base64 data string")]
