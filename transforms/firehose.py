"""The Firehose transformation Lambda (``transforms.firehose.handler``): a thin adapter.

Firehose invokes us with ``{invocationId, deliveryStreamArn, region, records: [{recordId,
approximateArrivalTimestamp, data}]}`` (plus ``sourceKinesisStreamArn`` and each record's
``kinesisRecordMetadata`` for Kinesis-sourced streams) and wants ``{records: [{recordId, result,
data}]}`` back, every recordId exactly once, in order ("Amazon Data Firehose Developer Guide",
"Data transformation and status model"). ``data`` is required in every answer: ``Ok`` carries
the HEC-ready bytes, ``ProcessingFailed`` the original bytes (Firehose backs them up under
``processing-failed/``), ``Dropped`` an empty string.

The answer must fit in Lambda's 6 MB synchronous response (DESIGN.md section 2). Decoded
CloudWatch batches grow several-fold on the way to HEC, so the size of the answer is counted as
it is built. Records whose output does not fit are put back into the source stream with their
original bytes (``transforms.reingest``) and answered ``Dropped``; a record too large to fit even
alone is split into halves of its log events, re-ingested, and transformed on a later
invocation; a single log event too large alone is ``ProcessingFailed``.

Re-ingestion failures never fail the invocation. A record that could not be put back (any of
its pieces, for a split record) is answered ``ProcessingFailed`` with its original data, so
Firehose backs it up under ``processing-failed/`` for ``forwarder replay``. Failing the
invocation instead would make Firehose retry all of it and put back a second time what the
earlier chunks had already put back. Should those echoes not fit, ``Ok`` records are demoted
to ``ProcessingFailed`` (their original data, smaller than their output) until the answer fits.

No re-ingestion counter: the raw bytes have no room for one (they go back unchanged), and no
loop is possible without one. A record that fits alone fits in some later, emptier answer; one
that does not is split into strictly fewer events; a single event that does not fit fails.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NotRequired, TypedDict

import structlog

from transforms.cloudwatch import GZIP_MAGIC, decode_subscription_batch, encode_subscription_batch
from transforms.errors import DecodeError, TransformError
from transforms.pipeline import firehose_payload, transform_lines, transform_payload
from transforms.vpc_flow import DEFAULT_FIELDS, is_header_line

if TYPE_CHECKING:
    from config.settings import Settings
    from transforms.options import TransformOptions
    from transforms.records import EncodedBatch, LogBatch
    from transforms.reingest import (
        FirehoseReingester,
        KinesisReingester,
        Reingester,
        ReingestRecord,
        ReingestReport,
    )


Result = Literal["Ok", "Dropped", "ProcessingFailed"]
DropReason = Literal["control_message", "empty_batch", "reingested", "split"]

#: Room kept free under the response limit for what we cannot count exactly (the Lambda
#: runtime's own serialisation). Small limits (tests) keep an eighth instead.
RESPONSE_SAFETY_MARGIN_BYTES = 16 * 1024

#: Firehose's record limit; split halves must stay under it to be re-ingested
#: ("Amazon Data Firehose quota": 1,000 KiB per record before base64).
MAX_RECORD_BYTES = 1000 * 1024

log = structlog.get_logger()


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


class FirehoseEvent(TypedDict):
    """The transformation event Firehose sends to the Lambda."""

    invocationId: str
    deliveryStreamArn: str
    region: str
    records: list[FirehoseEventRecord]
    sourceKinesisStreamArn: NotRequired[str]


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


# --- one record -----------------------------------------------------------------------------


@dataclass(slots=True)
class RecordOutcome:
    """What one record became, with what is needed to re-ingest or split it later.

    Attributes:
        record: the input record.
        result: its answer (replaced when the answer must shrink).
        raw: the decoded bytes, when the base64 was valid.
        events: HEC events made; ``unparsed``: flow lines that did not fit their format.
        payload_bytes: bytes of the Ok output before base64.
        origin: the payload's kind (``cloudwatch``, ``direct``, ``text``).
        lines: each HEC event's bytes, only when asked for (``forwarder transform``).
    """

    record: FirehoseRecord
    result: TransformationResult
    raw: bytes | None = None
    events: int = 0
    unparsed: int = 0
    payload_bytes: int = 0
    origin: str | None = None
    lines: tuple[bytes, ...] = ()


def _failed(
    record: FirehoseRecord, reason: str, raw: bytes | None = None, **context: object
) -> RecordOutcome:
    log.warning("record_failed", record_id=record.record_id, reason=reason, **context)
    return RecordOutcome(record, ProcessingFailed(reason, record.data or ""), raw=raw)


def _dropped(record: FirehoseRecord, reason: DropReason, raw: bytes) -> RecordOutcome:
    log.info("record_dropped", record_id=record.record_id, reason=reason)
    return RecordOutcome(record, Dropped(reason), raw=raw)


def transform_record(
    record: FirehoseRecord, options: TransformOptions, *, keep_lines: bool = False
) -> RecordOutcome:
    """Transform one record; bad input of any kind ends in ``ProcessingFailed``, never raises.

    Args:
        record: the input record.
        options: routing, formats and limits.
        keep_lines: keep each HEC event's bytes (for ``forwarder transform``).
    """
    if record.data is None:
        return _failed(record, "missing_data")
    try:
        raw = base64.b64decode(record.data, validate=True)
    except (binascii.Error, ValueError):
        return _failed(record, "invalid_base64")
    try:
        batch = transform_payload(raw, options)
        if batch.is_control:
            return _dropped(record, "control_message", raw)
        if not batch.events:
            return _dropped(record, "empty_batch", raw)
        payload = firehose_payload(batch, options.endpoint)
    except TransformError as exc:
        return _failed(record, type(exc).__name__, raw, error=str(exc)[:300])
    except Exception:  # one bad record must never fail the invocation; logged with trace
        log.exception("record_failed", record_id=record.record_id, reason="internal_error")
        return RecordOutcome(record, ProcessingFailed("internal_error", record.data), raw=raw)
    return RecordOutcome(
        record,
        Ok(base64.b64encode(payload).decode("ascii")),
        raw=raw,
        events=len(batch.events),
        unparsed=batch.unparsed,
        payload_bytes=len(payload),
        origin=batch.origin,
        lines=tuple(event.payload for event in batch.events) if keep_lines else (),
    )


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


# --- one invocation -------------------------------------------------------------------------


@dataclass(slots=True)
class InvocationSummary:
    """The ``firehose_invocation_summarized`` line: counts for one invocation."""

    records_in: int = 0
    ok: int = 0
    dropped: int = 0
    processing_failed: int = 0
    control_messages: int = 0
    empty_batches: int = 0
    events_out: int = 0
    unparsed_lines: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    response_bytes: int = 0
    reingested_records: int = 0
    split_records: int = 0
    reingested_pieces: int = 0
    reingested_bytes: int = 0
    reingest_failed_records: int = 0
    partially_reingested_records: int = 0
    demoted_records: int = 0


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


#: One record (or split piece) to put back, with the outcome it belongs to.
Overflow = tuple[RecordOutcome, "ReingestRecord"]


def _fit(
    outcomes: list[RecordOutcome],
    options: TransformOptions,
    *,
    limit_bytes: int,
    summary: InvocationSummary,
) -> list[Overflow]:
    """Make the answer fit ``limit_bytes``; returns what must be re-ingested, in order.

    Every entry is first counted at its smallest (``Dropped``, no data). ``ProcessingFailed``
    entries are then reserved (the input itself is bounded by Lambda's 6 MB request limit, so
    echoing bad records always fits in practice). ``Ok`` entries are kept first-fit in input
    order; the rest become ``Dropped`` and go back to the source stream.
    """
    budget = response_budget(limit_bytes)
    used = RESPONSE_OVERHEAD_BYTES + _ENTRY_SEPARATOR_BYTES * max(len(outcomes) - 1, 0)
    used += sum(entry_size(o.record.record_id, "Dropped", 0) for o in outcomes)
    room = budget - used  # what one record may add when it is the only one with data
    overflow: list[Overflow] = []

    def extra(outcome: RecordOutcome) -> int:
        record_id, result = outcome.record.record_id, outcome.result
        return entry_size(record_id, result.result, len(result.data)) - entry_size(
            record_id, "Dropped", 0
        )

    for outcome in outcomes:
        if isinstance(outcome.result, Ok) and extra(outcome) > room:
            _too_large_alone(outcome, options, room=room, overflow=overflow, summary=summary)
    for outcome in outcomes:
        if isinstance(outcome.result, ProcessingFailed):
            if used + extra(outcome) > budget:
                # Only reachable with a limit far below Lambda's: echo nothing rather than
                # answer too much (Firehose still backs up the record under processing-failed/).
                outcome.result = ProcessingFailed(outcome.result.reason, "")
            used += extra(outcome)
    for outcome in outcomes:
        if isinstance(outcome.result, Ok):
            size = extra(outcome)
            if used + size <= budget:
                used += size
            else:
                assert outcome.raw is not None  # an Ok record was decoded
                overflow.append((outcome, (outcome.raw, outcome.record.partition_key)))
                outcome.result = Dropped("reingested")
                summary.reingested_records += 1
                log.debug("record_dropped", record_id=outcome.record.record_id, reason="reingested")
    summary.response_bytes = used
    return overflow


def _too_large_alone(
    outcome: RecordOutcome,
    options: TransformOptions,
    *,
    room: int,
    overflow: list[Overflow],
    summary: InvocationSummary,
) -> None:
    """Split a record whose output fits in no answer, or fail it when it cannot be split."""
    assert outcome.raw is not None and isinstance(outcome.result, Ok)
    record = outcome.record
    output_bytes = len(outcome.result.data)
    batch: LogBatch | None = None
    if outcome.origin == "cloudwatch":
        try:
            batch = decode_subscription_batch(
                outcome.raw, max_decompressed_bytes=options.max_decompressed_bytes
            )
        except TransformError:  # it decoded a moment ago; be safe all the same
            batch = None
    if batch is None or len(batch.events) < 2:
        reason = "event_too_large" if outcome.events <= 1 else "output_too_large"
        log.warning(
            "record_failed", record_id=record.record_id, reason=reason, output_bytes=output_bytes
        )
        outcome.result = ProcessingFailed(reason, record.data or "")
        return
    pieces = split_batch(
        batch, output_bytes=output_bytes, room_bytes=room, max_record_bytes=MAX_RECORD_BYTES
    )
    overflow.extend((outcome, (piece, record.partition_key)) for piece in pieces)
    summary.split_records += 1
    log.info(
        "record_dropped",
        record_id=record.record_id,
        reason="split",
        pieces=len(pieces),
        events=len(batch.events),
        output_bytes=output_bytes,
    )
    outcome.result = Dropped("split")


def _entry_bytes(outcome: RecordOutcome) -> int:
    result = outcome.result
    return entry_size(outcome.record.record_id, result.result, len(result.data))


def answer_bytes(outcomes: Sequence[RecordOutcome]) -> int:
    """Bytes the answer for ``outcomes`` takes in JSON (``json.dumps`` defaults)."""
    separators = _ENTRY_SEPARATOR_BYTES * max(len(outcomes) - 1, 0)
    return RESPONSE_OVERHEAD_BYTES + separators + sum(_entry_bytes(o) for o in outcomes)


def _reingest(
    overflow: list[Overflow], reingester: Reingester, summary: InvocationSummary
) -> ReingestReport:
    """Put the overflow back; a record any piece of which did not go back becomes
    ``ProcessingFailed`` with its original data (Firehose backs it up for replay).

    A split record whose pieces went back only in part is backed up whole: the events of the
    pieces that did go back can then arrive twice (counted: ``partially_reingested_records``).
    """
    report = reingester.put([record for _owner, record in overflow])
    failed = set(report.failed)
    owners: dict[int, tuple[RecordOutcome, list[bool]]] = {}
    for position, (owner, _record) in enumerate(overflow):
        owners.setdefault(id(owner), (owner, []))[1].append(position not in failed)
    went_back = [record for position, (_o, record) in enumerate(overflow) if position not in failed]
    summary.reingested_pieces = len(went_back)
    summary.reingested_bytes = sum(len(data) for data, _key in went_back)
    for owner, pieces in owners.values():
        if all(pieces):
            continue
        assert isinstance(owner.result, Dropped)  # only re-ingested records are in the overflow
        if owner.result.reason == "split":
            summary.split_records -= 1
        else:
            summary.reingested_records -= 1
        summary.reingest_failed_records += 1
        if any(pieces):
            summary.partially_reingested_records += 1
        log.warning(
            "record_failed",
            record_id=owner.record.record_id,
            reason="reingest_failed",
            pieces=len(pieces),
            pieces_reingested=sum(pieces),
            error_codes=list(report.error_codes),
        )
        owner.result = ProcessingFailed("reingest_failed", owner.record.data or "")
    if went_back:
        log.info(
            "records_reingested",
            records=summary.reingested_records,
            split_records=summary.split_records,
            pieces=summary.reingested_pieces,
            bytes=summary.reingested_bytes,
        )
    return report


def _refit(outcomes: list[RecordOutcome], *, limit_bytes: int, summary: InvocationSummary) -> None:
    """Make room for the echoes of records whose re-ingestion failed.

    ``Ok`` records, last first, become ``ProcessingFailed`` with their original data where
    that is smaller than their output, until the answer fits. With Lambda's limit that always
    suffices: an answer of original data only is smaller than the event that brought it
    (Firehose's processor buffer is at most 3 MiB). Only far smaller limits (tests) reach the
    last resort of echoing nothing (Firehose still backs the record up).
    """
    budget = response_budget(limit_bytes)
    size = answer_bytes(outcomes)
    for outcome in reversed(outcomes):
        if size <= budget:
            break
        if isinstance(outcome.result, Ok):
            before = _entry_bytes(outcome)
            kept = outcome.result
            outcome.result = ProcessingFailed("answer_full", outcome.record.data or "")
            if _entry_bytes(outcome) >= before:
                outcome.result = kept
                continue
            size -= before - _entry_bytes(outcome)
            summary.demoted_records += 1
            log.warning("record_failed", record_id=outcome.record.record_id, reason="answer_full")
    for outcome in reversed(outcomes):
        if size <= budget:
            break
        if isinstance(outcome.result, ProcessingFailed) and outcome.result.data:
            size -= len(outcome.result.data)
            outcome.result = ProcessingFailed(outcome.result.reason, "")
            log.warning("record_failed", record_id=outcome.record.record_id, reason="echo_omitted")
    summary.response_bytes = size


def transform_event(
    event: Mapping[str, Any], settings: Settings, *, reingester: Reingester
) -> FirehoseResponse:
    """The handler's core: transform every record, fit the answer, re-ingest the overflow.

    Args:
        event: the Firehose transformation event.
        settings: transform options and the response limit.
        reingester: where overflow goes (the source stream in Lambda; a fake in tests).

    Returns:
        The answer, every recordId exactly once, in input order, within the size limit.
        Overflow that could not be put back is ``ProcessingFailed`` with its original data.

    Raises:
        InvalidEventError: the event has a record without a recordId.
    """
    records = parse_event(event)
    options = settings.transform
    summary = InvocationSummary(records_in=len(records))
    outcomes = [transform_record(record, options) for record in records]
    for outcome in outcomes:
        summary.bytes_in += len(outcome.raw) if outcome.raw is not None else 0
    overflow = _fit(
        outcomes, options, limit_bytes=settings.firehose.response_limit_bytes, summary=summary
    )
    if overflow:
        report = _reingest(overflow, reingester, summary)
        if report.failed:
            _refit(outcomes, limit_bytes=settings.firehose.response_limit_bytes, summary=summary)
    for outcome in outcomes:
        result = outcome.result
        if isinstance(result, Ok):
            summary.ok += 1
            summary.events_out += outcome.events
            summary.unparsed_lines += outcome.unparsed
            summary.bytes_out += outcome.payload_bytes
        elif isinstance(result, Dropped):
            summary.dropped += 1
            if result.reason == "control_message":
                summary.control_messages += 1
            elif result.reason == "empty_batch":
                summary.empty_batches += 1
        else:
            summary.processing_failed += 1
    log.info("firehose_invocation_summarized", **asdict(summary))
    return build_response((o.record.record_id, o.result) for o in outcomes)


# --- the Lambda entry point -----------------------------------------------------------------


class _Loaded:
    """Settings for this container: loaded on the first invocation, never at import."""

    settings: Settings | None = None


def use_settings(settings: Settings | None) -> None:
    """Set the container's settings (tests), or forget them so the next call reloads."""
    _Loaded.settings = settings


def current_settings() -> Settings:
    """The container's settings, loading them (and configuring logging) the first time.

    Raises:
        config.loader.ConfigError: a setting is invalid; the invocation fails loudly.
    """
    if _Loaded.settings is None:
        from config.loader import load_settings  # noqa: PLC0415 - lazily, once per container
        from config.logs import configure_logging  # noqa: PLC0415

        settings = load_settings(os.environ)
        configure_logging(settings.log)
        _Loaded.settings = settings
    return _Loaded.settings


class _SourceStreamReingester:
    """Builds the boto3-backed reingester on first use, so most invocations never import it."""

    def __init__(self, event: Mapping[str, Any], remaining_s: Callable[[], float] | None) -> None:
        self.delivery_stream_arn = _str_or_none(event.get("deliveryStreamArn"))
        self.kinesis_stream_arn = _str_or_none(event.get("sourceKinesisStreamArn"))
        self.remaining_s = remaining_s
        self.inner: FirehoseReingester | KinesisReingester | None = None

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        from transforms.reingest import (  # noqa: PLC0415 - boto3 is slow
            ReingestError,
            ReingestReport,
            reingester_for,
        )

        if self.inner is None:
            try:
                self.inner = reingester_for(
                    delivery_stream_arn=self.delivery_stream_arn,
                    kinesis_stream_arn=self.kinesis_stream_arn,
                    remaining_s=self.remaining_s,
                )
            except ReingestError:
                log.exception("reingest_failed", failed=len(records), of=len(records))
                return ReingestReport.all_failed(len(records), "NoSourceStream")
        return self.inner.put(records)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _remaining_seconds(context: Any) -> Callable[[], float] | None:
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining_ms):
        return None
    return lambda: float(remaining_ms()) / 1000.0


def handler(event: Mapping[str, Any], context: Any) -> FirehoseResponse:
    """Lambda entry point for the Firehose transformation (``transforms.firehose.handler``).

    Raises:
        config.loader.ConfigError: the function is misconfigured.
        InvalidEventError: the event is not an object, or a record has no recordId.
    """
    settings = current_settings()
    if not isinstance(event, Mapping):
        raise InvalidEventError(f"the event is a JSON {type(event).__name__}, not an object")
    invocation_id = event.get("invocationId")
    with structlog.contextvars.bound_contextvars(
        aws_request_id=getattr(context, "aws_request_id", None), invocation_id=invocation_id
    ):
        reingester = _SourceStreamReingester(event, _remaining_seconds(context))
        try:
            return transform_event(event, settings, reingester=reingester)
        finally:
            reingester.close()


# --- forwarder transform FILE -----------------------------------------------------------------


def transform_file_contents(
    data: bytes, settings: Settings, *, name: str | None = None
) -> list[str]:
    """What the transform makes of a file, one HEC event per string (``forwarder transform``).

    Pure: nothing is sent or re-ingested. Accepted inputs, sniffed in this order:

    - gzip: a CloudWatch Logs subscription payload;
    - JSON with a ``records`` list: a Firehose transformation event; each record goes through
      the handler's per-record core (``transform_record``). The response-size step is skipped,
      so every record's events are shown; records that fail are logged (``record_failed``)
      and contribute nothing;
    - JSON ``{"awslogs": {"data": ...}}``: a push Lambda's CloudWatch Logs event;
    - other JSON (``{"message": "<flow line>"}`` per line...): one Firehose record;
    - anything else: a flow-log text file, one line per flow; a header line (S3 files) names
      the fields, otherwise ``VPC_FLOW_LOG_FORMAT`` (default version 2) applies.

    Args:
        data: the file's bytes.
        settings: routing, formats and endpoint.
        name: the file's name, used as the source of a flow-log text file.

    Returns:
        Event-endpoint JSON objects, or raw-endpoint lines, as text.

    Raises:
        TransformError: a single payload (not a Firehose event) cannot be decoded.
    """
    options = settings.transform
    if data.startswith(GZIP_MAGIC):
        return _payload_texts(transform_payload(data, options))
    if data.lstrip().startswith(b"{"):
        document = _json_object(data)
        if document is not None and isinstance(document.get("records"), list):
            lines: list[str] = []
            for record in parse_event(document):
                outcome = transform_record(record, options, keep_lines=True)
                lines.extend(_texts(outcome.lines))
            return lines
        awslogs = document.get("awslogs") if document is not None else None
        if isinstance(awslogs, Mapping) and isinstance(awslogs.get("data"), str):
            try:
                payload = base64.b64decode(awslogs["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(f"awslogs.data is not base64: {exc}") from None
            return _payload_texts(transform_payload(payload, options))
        return _payload_texts(transform_payload(data, options))
    text_lines = data.decode("utf-8", "replace").splitlines()
    first = next((line for line in text_lines if line.strip()), "")
    batch = transform_lines(
        text_lines,
        log_group=None,
        log_stream=name,
        options=options,
        flow_fields=None if is_header_line(first) else options.flow_log_format or DEFAULT_FIELDS,
    )
    return _payload_texts(batch)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _payload_texts(batch: EncodedBatch) -> list[str]:
    return _texts(event.payload for event in batch.events)


def _texts(payloads: Iterable[bytes]) -> list[str]:
    return [payload.decode("utf-8", "replace") for payload in payloads]
