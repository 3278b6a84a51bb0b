"""S3 event notifications: the objects an SQS message body names (push Lambda and daemon)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

#: Why an object recognised as replay-failed by its content (no marker in its key) is skipped.
REPLAY_FAILED_CONTENT_HINT: Final = (
    "replay-failed records (replayAttempts): not re-delivered automatically (a notification "
    "on the backsplash bucket would loop); run forwarder replay on this object's folder"
)


@dataclass(frozen=True, slots=True)
class S3Object:
    """An object named by an S3 event notification."""

    bucket: str
    key: str
    size: int | None = None


def replay_failed_hint(obj: S3Object) -> str:
    """Why a ``replay-failed/`` object is skipped, and the command that replays its folder."""
    root = obj.key[: obj.key.rfind("replay-failed/")]
    return (
        "replay-failed object: not re-delivered automatically (a notification on the "
        "backsplash bucket would loop); run: forwarder replay "
        f"s3://{obj.bucket}/{root}replay-failed/"
    )


def parse_s3_notification(body: str) -> list[S3Object] | None:
    """The objects an SQS message body names (S3 event notification, plain or SNS-wrapped).

    Returns:
        The created objects (empty for ``s3:TestEvent`` and non-create events), or None when
        the body is not an S3 notification at all.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode
        return None
    if not isinstance(document, dict):
        return None
    if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
        try:
            document = json.loads(document["Message"])
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        return None
    objects: list[S3Object] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        name = str(record.get("eventName", ""))
        s3 = record.get("s3")
        if not name.startswith("ObjectCreated") or not isinstance(s3, dict):
            continue
        bucket_part, obj = s3.get("bucket"), s3.get("object")
        if not isinstance(bucket_part, dict) or not isinstance(obj, dict):
            continue
        bucket = bucket_part.get("name")
        key = obj.get("key")
        if isinstance(bucket, str) and isinstance(key, str):
            size = obj.get("size")
            objects.append(
                S3Object(bucket, unquote_plus(key), size if isinstance(size, int) else None)
            )
    return objects
