"""The Firehose transformation's record codec: the wire shapes, per-record results, reading the
event, building the answer and counting its bytes, and halving a CloudWatch record too large
for any answer. Pure: no logging, no I/O, no settings.

Firehose invokes the transform with ``{invocationId, deliveryStreamArn, region, records:
[{recordId, approximateArrivalTimestamp, data}]}`` (plus ``sourceKinesisStreamArn`` and each
record's ``kinesisRecordMetadata`` for Kinesis-sourced streams) and wants ``{records: [{recordId,
result, data}]}`` back, every recordId exactly once, in order ("Amazon Data Firehose Developer
Guide", "Data transformation and status model"). ``data`` is required in every answer: ``Ok``
carries the HEC-ready bytes, ``ProcessingFailed`` the original bytes (Firehose backs them up
under ``processing-failed/``), ``Dropped`` an empty string. The answer must fit in Lambda's
6 MB synchronous response (DESIGN.md section 2), hence the byte arithmetic here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NotRequired, TypedDict

from transforms.cloudwatch import encode_subscription_batch

if TYPE_CHECKING:
    from transforms.records import LogBatch


Result = Literal["Ok", "Dropped", "ProcessingFailed"]
DropReason = Literal["control_message", "empty_batch", "reingested", "split"]

#: Room kept free under the response limit for what we cannot count exactly (the Lambda
#: runtime's own serialisation). Small limits (tests) keep an eighth instead.
RESPONSE_SAFETY_MARGIN_BYTES = 16 * 1024

#: Firehose's record limit; split halves must stay under it to be re-ingested
#: ("Amazon Data Firehose quota": 1,000 KiB per record before base64).
MAX_RECORD_BYTES = 1000 * 1024

# --- wire shapes ----------------------------------------------------------------------------


class KinesisRecordMetadata(TypedDict, total=False):
    """``records[i].kinesisRecordMetadata`` when the Firehose source is a Kinesis stream."""

    shardId: str
    partitionKey: str
    approximateArrivalTimestamp: int
    sequenceNumber: str
    subsequenceNumber: int


class FirehoseEventRecord(TypedDict):
    """``records[i]`` of the transformation event; ``data`` is base64."""

    recordId: str
    data: str
    approximateArrivalTimestamp: NotRequired[int]
    kinesisRecordMetadata: NotRequired[KinesisRecordMetadata]


class ResponseRecord(TypedDict):
    """``records[i]`` of the answer: the same recordId, a result and base64 data."""

    recordId: str
    result: Result
    data: str


class FirehoseResponse(TypedDict):
    """The answer to one invocation."""

    records: list[ResponseRecord]


class InvalidEventError(ValueError):
    """The event is not a Firehose transformation event (not an object, ``records`` not a
    list, or a record without a recordId): it cannot be answered record by record."""


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirehoseRecord:
    """One input record, as much of it as could be read.

    Attributes:
        record_id: ``recordId``, echoed in the answer.
        data: ``data`` as received (base64), or None when absent or not a string.
        partition_key: ``kinesisRecordMetadata.partitionKey`` for Kinesis sources.
    """

    record_id: str
    data: str | None
    partition_key: str | None = None

    @classmethod
    def from_wire(cls, raw: object) -> FirehoseRecord:
        """Read one ``records[i]`` entry.

        Raises:
            InvalidEventError: no string ``recordId``, so it cannot be answered.
        """
        if not isinstance(raw, Mapping) or not isinstance(raw.get("recordId"), str):
            raise InvalidEventError("a record without a string recordId cannot be answered")
        data = raw.get("data")
        metadata = raw.get("kinesisRecordMetadata")
        key = metadata.get("partitionKey") if isinstance(metadata, Mapping) else None
        return cls(
            record_id=raw["recordId"],
            data=data if isinstance(data, str) else None,
            partition_key=key if isinstance(key, str) and key else None,
        )


@dataclass(frozen=True, slots=True)
class Ok:
    """Transformed: ``data`` is the base64 of what Firehose delivers to HEC."""

    data: str
    result: ClassVar[Literal["Ok"]] = "Ok"


@dataclass(frozen=True, slots=True)
class Dropped:
    """Intentionally not delivered now (control message, empty batch, re-ingested, split)."""

    reason: DropReason
    result: ClassVar[Literal["Dropped"]] = "Dropped"

    @property
    def data(self) -> str:
        """Dropped records carry no data."""
        return ""


@dataclass(frozen=True, slots=True)
class ProcessingFailed:
    """Could not be transformed; ``data`` is the original base64 so Firehose backs it up."""

    reason: str
    data: str
    result: ClassVar[Literal["ProcessingFailed"]] = "ProcessingFailed"


TransformationResult = Ok | Dropped | ProcessingFailed


def build_response(results: Iterable[tuple[str, TransformationResult]]) -> FirehoseResponse:
    """The answer Firehose expects, one entry per (recordId, result), in the given order."""
    return {
        "records": [
            {"recordId": record_id, "result": result.result, "data": result.data}
            for record_id, result in results
        ]
    }


def parse_event(event: Mapping[str, Any]) -> list[FirehoseRecord]:
    """The records of a transformation event (none when ``records`` is absent or empty).

    Raises:
        InvalidEventError: ``records`` is not a list, or a record has no recordId.
    """
    records = event.get("records") if isinstance(event, Mapping) else None
    if records is None:
        return []
    if not isinstance(records, list):
        raise InvalidEventError("records must be a list")
    return [FirehoseRecord.from_wire(raw) for raw in records]


# --- response size accounting ---------------------------------------------------------------

#: ``{"records": []}`` as ``json.dumps`` renders it.
RESPONSE_OVERHEAD_BYTES = len(json.dumps({"records": []}))
#: ``", "`` between two entries.
_ENTRY_SEPARATOR_BYTES = 2
#: ``{"recordId": , "result": "", "data": ""}`` without the three values.
_ENTRY_OVERHEAD_BYTES = len(json.dumps({"recordId": "", "result": "", "data": ""})) - 2


def entry_size(record_id: str, result: Result, data_length: int) -> int:
    """Bytes one answer entry takes in JSON (``json.dumps`` defaults, ASCII-escaped).

    This is an upper bound of any common serialisation: default separators are the widest,
    and ``\\uXXXX`` escapes are longer than the UTF-8 they replace. Base64 needs no escaping.
    """
    return _ENTRY_OVERHEAD_BYTES + len(json.dumps(record_id)) + len(result) + data_length


def response_budget(limit_bytes: int) -> int:
    """Bytes the answer may take: the limit minus a safety margin."""
    return limit_bytes - min(RESPONSE_SAFETY_MARGIN_BYTES, limit_bytes // 8)


def frame_size(entries: int) -> int:
    """Bytes of an answer of ``entries`` entries, the entries themselves not counted."""
    return RESPONSE_OVERHEAD_BYTES + _ENTRY_SEPARATOR_BYTES * max(entries - 1, 0)


# --- splitting a record too large for any answer --------------------------------------------


def split_batch(
    batch: LogBatch, *, output_bytes: int, room_bytes: int, max_record_bytes: int
) -> list[bytes]:
    """Halve a CloudWatch batch until each piece should fit in an answer on its own.

    A piece's output is estimated from its share of the message bytes; a piece that turns out
    too large anyway is split again on the invocation that receives it. Pieces of one event
    are never split further.

    Args:
        batch: the decoded subscription batch (at least two events).
        output_bytes: the answer bytes the whole batch needed.
        room_bytes: the answer bytes one record may take.
        max_record_bytes: the largest record the source stream accepts.

    Returns:
        Gzip CloudWatch Logs payloads, in event order.
    """
    events = batch.events
    weights = [len(event.message) + 1 for event in events]
    total = sum(weights)
    pieces: list[bytes] = []

    def emit(low: int, high: int) -> None:
        encoded = encode_subscription_batch(replace(batch, events=events[low:high]))
        share = output_bytes * sum(weights[low:high]) / total
        too_large = share > room_bytes or len(encoded) > max_record_bytes
        if too_large and high - low > 1:
            middle = (low + high) // 2
            emit(low, middle)
            emit(middle, high)
        else:
            pieces.append(encoded)

    middle = len(events) // 2
    emit(0, middle)
    emit(middle, len(events))
    return pieces
