"""After an object is replayed: keep it, or archive or delete it as asked, removing only the
object that was read.

Only done objects (every record handled) get here. Removal takes exactly the object that
was read: in a versioned bucket its ``VersionId``, otherwise its ETag (a HEAD just before,
then ``If-Match`` on the copy and the delete). An object rewritten under the same key since
it was read is left in place for the next run, counted (``objects_changed``) and logged
(``replay_object_kept``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from forwarder.backsplash.layout import archive_key, key_kind
from forwarder.replay.state import ObjectId
from forwarder.replay.worker import ListedObject, Worker

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_log = structlog.get_logger("forwarder.replay.dispose")


class _ChangedError(Exception):
    """The object under the key is no longer the one replayed (rewritten since it was read)."""


_PRECONDITION_FAILED: Final = frozenset({"PreconditionFailed", "412"})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _verify_unchanged(s3: S3Client, bucket: str, obj: ListedObject, version_id: str | None) -> None:
    """Before removing an unversioned object: a HEAD must still show the ETag read.

    Raises:
        _ChangedError: the key holds another object now, or none.
        ClientError, BotoCoreError: S3 refused.
    """
    if version_id is not None:
        return  # the removal names the version read: nothing newer can be touched
    try:
        current = s3.head_object(Bucket=bucket, Key=obj.key)["ETag"].strip('"')
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise _ChangedError("deleted since it was read") from None
        raise
    if current != obj.etag:
        raise _ChangedError("rewritten since it was read (ETag differs)")


def _remove(s3: S3Client, bucket: str, obj: ListedObject, version_id: str | None) -> None:
    """Delete exactly the object that was replayed, never a newer one under the same key:
    in a versioned bucket that version (``VersionId`` from the read), otherwise only while
    its ETag matches (``If-Match``; after :func:`_verify_unchanged`, for S3 implementations
    without conditional deletes).

    Raises:
        _ChangedError: S3 refused the condition (rewritten since it was read).
        ClientError, BotoCoreError: S3 refused.
    """
    if version_id is not None:
        s3.delete_object(Bucket=bucket, Key=obj.key, VersionId=version_id)
        return
    try:
        s3.delete_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
    except ClientError as exc:
        if _error_code(exc) in _PRECONDITION_FAILED:
            raise _ChangedError("rewritten since it was read (If-Match failed)") from None
        if _error_code(exc) != "NotImplemented":
            raise
        s3.delete_object(Bucket=bucket, Key=obj.key)  # no conditional delete: the HEAD said


def dispose(worker: Worker, obj: ListedObject, object_id: ObjectId, version_id: str | None) -> None:
    """Archive or delete a done object, as asked: only the object that was replayed (by its
    version, else its ETag); one rewritten since it was read is left in place, counted
    (``objects_changed``) and logged (``replay_object_kept``)."""
    shared = worker.shared
    after = shared.options.after_success
    if after == "keep":
        worker.state.set_disposition(object_id, "kept")
        return
    kind, root = key_kind(obj.key)
    root = root if kind is not None else shared.root
    try:
        _verify_unchanged(shared.s3, shared.bucket, obj, version_id)
        if after == "archive":
            target = archive_key(obj.key, root)
            source: dict[str, str] = {"Bucket": shared.bucket, "Key": obj.key}
            if version_id is not None:
                source["VersionId"] = version_id
            try:
                shared.s3.copy_object(
                    Bucket=shared.bucket,
                    Key=target,
                    CopySource=source,  # type: ignore[arg-type]
                    CopySourceIfMatch=f'"{obj.etag}"',
                )
            except ClientError as exc:
                if _error_code(exc) in _PRECONDITION_FAILED:
                    raise _ChangedError(
                        "rewritten since it was read (copy If-Match failed)"
                    ) from None
                raise
            _remove(shared.s3, shared.bucket, obj, version_id)
            worker.state.set_disposition(object_id, "archived")
            with shared.lock:
                shared.report.objects_archived += 1
            _log.info("replay_object_archived", key=obj.key, to=target)
        else:
            _remove(shared.s3, shared.bucket, obj, version_id)
            worker.state.set_disposition(object_id, "deleted")
            with shared.lock:
                shared.report.objects_deleted += 1
            _log.info("replay_object_deleted", key=obj.key, version_id=version_id)
    except _ChangedError as exc:
        worker.state.set_disposition(object_id, "kept")
        with shared.lock:
            shared.report.objects_changed += 1
            shared.report.objects_kept += 1
        _log.warning(
            "replay_object_kept", key=obj.key, after_success=after, reason=str(exc), etag=obj.etag
        )
    except (BotoCoreError, ClientError) as exc:
        with shared.lock:
            shared.report.dispose_failures += 1
        _log.error("replay_object_failed", key=obj.key, action=after, error=str(exc))
