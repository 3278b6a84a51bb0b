"""One Firehose transformation invocation: every record transformed, the answer fitted into
Lambda's response limit, the overflow re-ingested, one summary line.

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

Logs (``record_failed``, ``record_dropped``, ``records_reingested``,
``firehose_invocation_summarized``) but reads no settings: ``transforms.firehose`` turns the
Lambda's settings into the options and limit passed here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import structlog

from transforms.cloudwatch import decode_subscription_batch
from transforms.errors import TransformError
from transforms.firehose_codec import (
    MAX_RECORD_BYTES,
    Dropped,
    DropReason,
    FirehoseRecord,
    FirehoseResponse,
    Ok,
    ProcessingFailed,
    TransformationResult,
    build_response,
    entry_size,
    frame_size,
    parse_event,
    response_budget,
    split_batch,
)
from transforms.firehose_passthrough import is_marked, unwrap
from transforms.pipeline import firehose_payload, transform_payload

if TYPE_CHECKING:
    from transforms.options import TransformOptions
    from transforms.records import LogBatch
    from transforms.reingest import Reingester, ReingestRecord, ReingestReport

log = structlog.get_logger()


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
        origin: the payload's kind (``cloudwatch``, ``direct``, ``text``; ``passthrough``: a
            HEC event handed on unchanged, ``transforms.firehose_passthrough``).
        filtered, sampled: events a route's ``drop`` / ``sample`` rules removed;
        time_unparsed: events whose time could not be read from the message.
    """

    record: FirehoseRecord
    result: TransformationResult
    raw: bytes | None = None
    events: int = 0
    unparsed: int = 0
    payload_bytes: int = 0
    origin: str | None = None
    filtered: int = 0
    sampled: int = 0
    time_unparsed: int = 0


def _failed(
    record: FirehoseRecord, reason: str, raw: bytes | None = None, **context: object
) -> RecordOutcome:
    log.warning("record_failed", record_id=record.record_id, reason=reason, **context)
    return RecordOutcome(record, ProcessingFailed(reason, record.data or ""), raw=raw)


def _dropped(record: FirehoseRecord, reason: DropReason, raw: bytes) -> RecordOutcome:
    log.info("record_dropped", record_id=record.record_id, reason=reason)
    return RecordOutcome(record, Dropped(reason), raw=raw)


def transform_record(record: FirehoseRecord, options: TransformOptions) -> RecordOutcome:
    """Transform one record; bad input of any kind ends in ``ProcessingFailed``, never raises.

    Args:
        record: the input record.
        options: routing, formats and limits.
    """
    if record.data is None:
        return _failed(record, "missing_data")
    try:
        raw = base64.b64decode(record.data, validate=True)
    except (binascii.Error, ValueError):
        return _failed(record, "invalid_base64")
    if is_marked(raw):
        passthrough = _passthrough(record, raw, options)
        if passthrough is not None:
            return passthrough
    try:
        batch = transform_payload(raw, options)
        if batch.is_control:
            return _dropped(record, "control_message", raw)
        if not batch.events:
            outcome = _dropped(record, "empty_batch", raw)
            outcome.filtered, outcome.sampled = batch.filtered, batch.sampled
            return outcome
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
        filtered=batch.filtered,
        sampled=batch.sampled,
        time_unparsed=batch.time_unparsed,
    )


def _passthrough(
    record: FirehoseRecord, raw: bytes, options: TransformOptions
) -> RecordOutcome | None:
    """A HEC event put back by ``forwarder replay --via-firehose``: handed on unchanged (never
    wrapped a second time); made for the other endpoint: ``ProcessingFailed``, so Firehose
    backs it up and ``forwarder replay`` sends it to that endpoint. None: not an envelope."""
    inner = unwrap(raw)
    if inner is None:
        return None
    if inner.endpoint != options.endpoint:
        return _failed(record, "passthrough_endpoint_mismatch", raw, endpoint=inner.endpoint)
    return RecordOutcome(
        record,
        Ok(base64.b64encode(inner.payload).decode("ascii")),
        raw=raw,
        events=1,
        payload_bytes=len(inner.payload),
        origin="passthrough",
    )


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
    events_filtered: int = 0
    events_sampled: int = 0
    time_unparsed: int = 0
    passthrough: int = 0
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
    used = frame_size(len(outcomes)) + sum(
        entry_size(o.record.record_id, "Dropped", 0) for o in outcomes
    )
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
    return frame_size(len(outcomes)) + sum(_entry_bytes(o) for o in outcomes)


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


def transform_invocation(
    event: Mapping[str, Any],
    options: TransformOptions,
    *,
    limit_bytes: int,
    reingester: Reingester,
) -> FirehoseResponse:
    """Transform every record, fit the answer, re-ingest the overflow.

    Args:
        event: the Firehose transformation event.
        options: routing, formats and limits.
        limit_bytes: the largest answer (Lambda's response limit).
        reingester: where overflow goes (the source stream in Lambda; a fake in tests).

    Returns:
        The answer, every recordId exactly once, in input order, within the size limit.
        Overflow that could not be put back is ``ProcessingFailed`` with its original data.

    Raises:
        InvalidEventError: the event has a record without a recordId.
    """
    records = parse_event(event)
    summary = InvocationSummary(records_in=len(records))
    outcomes = [transform_record(record, options) for record in records]
    for outcome in outcomes:
        summary.bytes_in += len(outcome.raw) if outcome.raw is not None else 0
    overflow = _fit(outcomes, options, limit_bytes=limit_bytes, summary=summary)
    if overflow:
        report = _reingest(overflow, reingester, summary)
        if report.failed:
            _refit(outcomes, limit_bytes=limit_bytes, summary=summary)
    for outcome in outcomes:
        result = outcome.result
        if isinstance(result, Ok) or (
            isinstance(result, Dropped) and result.reason == "empty_batch"
        ):  # not re-ingested records: their next invocation counts them
            summary.events_filtered += outcome.filtered
            summary.events_sampled += outcome.sampled
            summary.time_unparsed += outcome.time_unparsed
        if isinstance(result, Ok):
            summary.ok += 1
            summary.events_out += outcome.events
            summary.unparsed_lines += outcome.unparsed
            summary.bytes_out += outcome.payload_bytes
            summary.passthrough += int(outcome.origin == "passthrough")
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
