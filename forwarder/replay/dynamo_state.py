"""Replay state in DynamoDB (``--state dynamodb://TABLE``): one table shared by every replay
and drainer, on any machine, with a lease per object.

The table has one string partition key ``pk`` and one string sort key ``sk`` (on-demand
billing is enough). Per object (bucket, key and ETag: a rewritten object is a new object)::

    pk = "s3://BUCKET/KEY#ETAG"
    sk = "object"       bucket, key, etag, size, kind, status 'partial'|'done',
                        records_handled, events_delivered, events_failed, disposition,
                        started_at, updated_at, finished_at (epoch seconds),
                        lease_owner, lease_expires (epoch seconds): the lease
    sk = "r#<first record number, 12 digits>"
                        ranges "0-99,120-180" (inclusive record numbers), records, events:
                        records handled in one chunk, at most MAX_RANGES_PER_ITEM ranges
                        per item (so an item stays far below DynamoDB's 400 KB)

**Leases.** :meth:`DynamoReplayState.claim` takes an object's lease with one conditional
write: no owner, or the lease expired, or the owner is us. Replaying renews it (every chunk
commit, and :class:`~forwarder.replay.state_store.LeaseKeeper` every third of ``lease_s``).
Each chunk's ranges are written in one transaction with the object item, on condition that
we still own the lease: an owner whose lease was taken over records nothing more. A crashed
owner's lease expires after ``lease_s``; whoever takes it over resends what that owner sent
but did not record (the only source of duplicates, counted as ``leases_taken_over``).
Expiry compares wall clocks of different machines: keep ``lease_s`` well above their skew.

**Done.** :meth:`~DynamoReplayState.finish_object` marks the object ``done`` and releases the
lease, then deletes its range items; later runs skip it after one read.

IAM: ``dynamodb:GetItem``, ``PutItem``, ``UpdateItem``, ``DeleteItem``, ``Query`` on the table
(a chunk commit is a ``TransactWriteItems`` of an update and puts, authorised as those).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import ClientError

from config.errors import ConfigError
from forwarder.replay.options import DEFAULT_LEASE_S
from forwarder.replay.state import Claim, HandledRecords, LeaseLostError, ObjectId, Row

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

OBJECT_SK: Final = "object"
RANGE_PREFIX: Final = "r#"
#: Ranges per range item: at most ~26 bytes each ("123456789012-123456789012,"), so an item
#: stays under ~210 KB whatever the object.
MAX_RANGES_PER_ITEM: Final = 8000
#: Range items per transaction, beside the object item: DynamoDB allows 100 items and 4 MB
#: in all, so 15 items of at most ~210 KB.
_PIECES_PER_TRANSACTION: Final = 15
_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_OWNED: Final = "lease_owner = :me"
_CLAIMABLE: Final = "attribute_not_exists(lease_owner) OR lease_expires < :now OR lease_owner = :me"


def default_owner() -> str:
    """A lease owner id unique to this store: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def object_pk(bucket: str, key: str, etag: str) -> str:
    """The partition key of an object's items."""
    return f"s3://{bucket}/{key}#{etag}"


def encode_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """``[(0, 99), (120, 120)]`` -> ``"0-99,120-120"``."""
    return ",".join(f"{start}-{end}" for start, end in ranges)


def decode_ranges(text: str) -> Iterator[tuple[int, int]]:
    """The inverse of :func:`encode_ranges`."""
    for part in text.split(","):
        if part:
            start, _, end = part.partition("-")
            yield int(start), int(end)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _condition_failed(exc: ClientError) -> bool:
    """A conditional write refused (alone, or the first item of a transaction)."""
    code = _error_code(exc)
    if code == _CONDITION_FAILED:
        return True
    if code == "TransactionCanceledException":
        reasons: list[dict[str, Any]] = exc.response.get("CancellationReasons", [])  # type: ignore[assignment]
        return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"
    return False


class DynamoReplayState:
    """One owner's view of the state table (a :class:`~forwarder.replay.state.StateStore`).

    Args:
        table: the table name.
        client: a boto3 DynamoDB client (thread-safe: the lease keeper shares it).
        lease_s: how long a lease lasts unless renewed.
        readonly: dry runs: read only.
        clock: wall clock, epoch seconds (lease expiry and time stamps).
        owner: this store's lease owner id (default: host, pid, random).
    """

    def __init__(
        self,
        table: str,
        *,
        client: DynamoDBClient,
        lease_s: float = DEFAULT_LEASE_S,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.table = table
        self.client = client
        self.lease_s: float | None = lease_s
        self.readonly = readonly
        self.owner = owner or default_owner()
        self._clock = clock

    def close(self) -> None:
        """Nothing to release (the client belongs to the caller)."""

    def __enter__(self) -> DynamoReplayState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _key(self, pk: str, sk: str = OBJECT_SK) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _expires(self, now: float) -> dict[str, str]:
        return {"N": repr(now + (self.lease_s or DEFAULT_LEASE_S))}

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One DynamoDB call on the table; a missing table becomes a :class:`ConfigError`."""
        try:
            return method(TableName=self.table, **kwargs)
        except ClientError as exc:
            self._raise_if_missing(exc)
            raise

    def _raise_if_missing(self, exc: ClientError) -> None:
        if _error_code(exc) == "ResourceNotFoundException":
            raise ConfigError(
                f"dynamodb://{self.table}",
                "the table does not exist (create it with a string partition key 'pk' "
                "and a string sort key 'sk', see the README)",
            ) from exc

    def _write_check(self) -> None:
        if self.readonly:
            raise RuntimeError("the replay state is open read-only")

    # ------------------------------------------------------------------ reads

    def is_done(self, bucket: str, key: str, etag: str) -> bool:
        """Whether this object (this ETag) was fully replayed (a strongly consistent read)."""
        item = self._call(
            self.client.get_item,
            Key=self._key(object_pk(bucket, key, etag)),
            ConsistentRead=True,
            ProjectionExpression="#status",
            ExpressionAttributeNames={"#status": "status"},
        ).get("Item")
        return item is not None and item.get("status", {}).get("S") == "done"

    def handled(self, bucket: str, key: str, etag: str) -> HandledRecords:
        """The record numbers of this object already handled (every range item)."""
        ranges: list[tuple[int, int]] = []
        for item in self._range_items(object_pk(bucket, key, etag), "ranges"):
            ranges.extend(decode_ranges(item.get("ranges", {}).get("S", "")))
        return HandledRecords.from_ranges(ranges)

    def object_item(self, bucket: str, key: str, etag: str) -> dict[str, Any] | None:
        """The object's item as plain values (reports and tests), or None."""
        item = self._call(
            self.client.get_item, Key=self._key(object_pk(bucket, key, etag)), ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        return {name: _plain(value) for name, value in item.items()}

    def _range_items(self, pk: str, projection: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :r)",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":r": {"S": RANGE_PREFIX}},
            "ConsistentRead": True,
            "ProjectionExpression": projection,
        }
        while True:
            page = self._call(self.client.query, **kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    # ------------------------------------------------------------------ leases

    def claim(self, bucket: str, key: str, etag: str, size: int, kind: str | None) -> Claim:
        """Take the object's lease (creating its item on first sight), in one conditional
        write: ``held-elsewhere`` when another owner's lease has not expired."""
        self._write_check()
        pk = object_pk(bucket, key, etag)
        now = self._clock()
        names = {
            "#bucket": "bucket",
            "#key": "key",
            "#etag": "etag",
            "#size": "size",
            "#status": "status",
        }
        values: dict[str, Any] = {
            ":me": {"S": self.owner},
            ":exp": self._expires(now),
            ":now": {"N": repr(now)},
            ":bucket": {"S": bucket},
            ":key": {"S": key},
            ":etag": {"S": etag},
            ":size": {"N": str(size)},
            ":partial": {"S": "partial"},
            ":zero": {"N": "0"},
        }
        update = (
            "SET lease_owner = :me, lease_expires = :exp, updated_at = :now, "
            "#bucket = :bucket, #key = :key, #etag = :etag, #size = :size, "
            "#status = if_not_exists(#status, :partial), "
            "started_at = if_not_exists(started_at, :now), "
            "records_handled = if_not_exists(records_handled, :zero), "
            "events_delivered = if_not_exists(events_delivered, :zero), "
            "events_failed = if_not_exists(events_failed, :zero)"
        )
        if kind is not None:
            names["#kind"] = "kind"
            values[":kind"] = {"S": kind}
            update += ", #kind = :kind"
        try:
            answer = self._call(
                self.client.update_item,
                Key=self._key(pk),
                UpdateExpression=update,
                ConditionExpression=_CLAIMABLE,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if _condition_failed(exc):
                return Claim(None, "held-elsewhere")
            raise
        old = answer.get("Attributes", {})
        if old.get("status", {}).get("S") == "done":
            self.release_lease(pk)
            return Claim(pk, done=True)
        previous = old.get("lease_owner", {}).get("S")
        if previous is not None and previous != self.owner:
            return Claim(pk, "taken-over", previous_owner=previous)
        return Claim(pk)

    def renew_lease(self, object_id: ObjectId) -> bool:
        """Extend our lease by ``lease_s`` from now; False when another owner holds it."""
        now = self._clock()
        try:
            self._call(
                self.client.update_item,
                Key=self._key(str(object_id)),
                UpdateExpression="SET lease_expires = :exp",
                ConditionExpression=_OWNED,
                ExpressionAttributeValues={":me": {"S": self.owner}, ":exp": self._expires(now)},
            )
        except ClientError as exc:
            if _condition_failed(exc):
                return False
            raise
        return True

    def release_lease(self, object_id: ObjectId) -> None:
        """Remove our lease (another owner's is left alone)."""
        try:
            self._call(
                self.client.update_item,
                Key=self._key(str(object_id)),
                UpdateExpression="REMOVE lease_owner, lease_expires",
                ConditionExpression=_OWNED,
                ExpressionAttributeValues={":me": {"S": self.owner}},
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise

    # ------------------------------------------------------------------ writes

    def record_chunk(
        self, object_id: ObjectId, rows: Sequence[Row], *, delivered: int, failed: int
    ) -> None:
        """Write the chunk's ranges and add its counts, in one transaction conditional on
        our lease (which it renews); a chunk of more than ``_PIECES_PER_TRANSACTION`` range
        items takes several, the counts going with the first.

        Raises:
            LeaseLostError: another owner holds the lease; nothing was written.
        """
        self._write_check()
        pk = str(object_id)
        numbers = sorted(row[0] for row in rows)
        ranges = HandledRecords(numbers).ranges
        pieces = [
            ranges[at : at + MAX_RANGES_PER_ITEM]
            for at in range(0, len(ranges), MAX_RANGES_PER_ITEM)
        ]
        events_by_record = {row[0]: row[2] for row in rows}
        first = True
        step = _PIECES_PER_TRANSACTION
        for at in range(0, max(len(pieces), 1), step):
            now = self._clock()
            counts = (len(rows), delivered, failed) if first else (0, 0, 0)
            items: list[dict[str, Any]] = [
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": self._key(pk),
                        "UpdateExpression": (
                            "ADD records_handled :n, events_delivered :d, events_failed :f "
                            "SET updated_at = :now, lease_expires = :exp"
                        ),
                        "ConditionExpression": _OWNED,
                        "ExpressionAttributeValues": {
                            ":me": {"S": self.owner},
                            ":n": {"N": str(counts[0])},
                            ":d": {"N": str(counts[1])},
                            ":f": {"N": str(counts[2])},
                            ":now": {"N": repr(now)},
                            ":exp": self._expires(now),
                        },
                    }
                }
            ]
            for piece in pieces[at : at + step]:
                events = sum(
                    events_by_record.get(n, 0)
                    for start, end in piece
                    for n in range(start, end + 1)
                )
                items.append(
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {
                                **self._key(pk, f"{RANGE_PREFIX}{piece[0][0]:012d}"),
                                "ranges": {"S": encode_ranges(piece)},
                                "records": {"N": str(sum(e - s + 1 for s, e in piece))},
                                "events": {"N": str(events)},
                                "owner": {"S": self.owner},
                                "written_at": {"N": repr(now)},
                            },
                        }
                    }
                )
            try:
                self.client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            except ClientError as exc:
                if _condition_failed(exc):
                    raise LeaseLostError(pk) from exc
                self._raise_if_missing(exc)
                raise
            first = False

    def finish_object(self, object_id: ObjectId) -> None:
        """Mark the object done and release the lease (conditional on owning it), then delete
        its range items.

        Raises:
            LeaseLostError: another owner holds the lease; nothing was written.
        """
        self._write_check()
        pk = str(object_id)
        now = self._clock()
        try:
            self._call(
                self.client.update_item,
                Key=self._key(pk),
                UpdateExpression=(
                    "SET #status = :done, finished_at = :now, updated_at = :now "
                    "REMOVE lease_owner, lease_expires"
                ),
                ConditionExpression=_OWNED,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":me": {"S": self.owner},
                    ":done": {"S": "done"},
                    ":now": {"N": repr(now)},
                },
            )
        except ClientError as exc:
            if _condition_failed(exc):
                raise LeaseLostError(pk) from exc
            raise
        for item in list(self._range_items(pk, "pk, sk")):
            self._call(self.client.delete_item, Key={"pk": item["pk"], "sk": item["sk"]})

    def set_disposition(self, object_id: ObjectId, disposition: str) -> None:
        """Record what happened to a done object: ``kept``, ``archived`` or ``deleted``."""
        self._write_check()
        self._call(
            self.client.update_item,
            Key=self._key(str(object_id)),
            UpdateExpression="SET disposition = :d, updated_at = :now",
            ExpressionAttributeValues={
                ":d": {"S": disposition},
                ":now": {"N": repr(self._clock())},
            },
        )


def _plain(value: dict[str, Any]) -> object:
    """A DynamoDB attribute value as a plain value (S, N, BOOL, NULL)."""
    if "S" in value:
        return value["S"]
    if "N" in value:
        number = float(value["N"])
        return int(number) if number.is_integer() else number
    if "BOOL" in value:
        return bool(value["BOOL"])
    return None
