"""Push events into the intake: the one place an ``awslogs`` or Kinesis event's base64 payloads
are decoded and handed to :class:`~forwarder.intake.dispatch.Intake`.

The push Lambda (:mod:`forwarder.push`) feeds its invocations through here, and so does the
failure-queue replay (:mod:`forwarder.replay.failure_queue`), which re-delivers the
``requestPayload`` of the push Lambda's on-failure destination records: one path, one ledger.
A payload that is not base64 is stored under ``processing-failed/`` as it came (counted
backsplashed, logged ``record_unprocessable``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

from forwarder.intake.dispatch import Intake
from transforms.sniff import event_payloads, event_shape

#: The event shapes whose payloads are delivered here (an SQS batch names S3 objects instead).
PAYLOAD_SHAPES: Final = ("awslogs", "kinesis")


def deliver_encoded(intake: Intake, data: object) -> None:
    """One record's base64 ``data`` (a gzip CloudWatch Logs payload) to ``intake``.

    Raises:
        BacksplashError: refused (not base64, or by the transform) and nowhere to store it.
    """
    if not isinstance(data, str):
        intake.unprocessable(
            ("" if data is None else str(data)).encode(), ValueError("no base64 data string")
        )
        return
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        intake.unprocessable(data.encode(), exc)
        return
    intake.payload(payload)


def deliver_event(intake: Intake, event: Mapping[str, Any]) -> int:
    """Every payload of an ``awslogs`` event or a Kinesis batch to ``intake``.

    Returns:
        The number of payloads handed over.

    Raises:
        ValueError: ``event`` has neither shape (:data:`PAYLOAD_SHAPES`).
        BacksplashError: a payload was refused and there is nowhere to store it.
    """
    shape = event_shape(event)
    if shape not in PAYLOAD_SHAPES:
        raise ValueError(f"not an awslogs or Kinesis event (shape {shape})")
    payloads = event_payloads(event, shape)
    for data in payloads:
        deliver_encoded(intake, data)
    return len(payloads)
