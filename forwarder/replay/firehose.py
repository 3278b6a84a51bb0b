"""``forwarder replay --via-firehose STREAM``: records go back into a Firehose delivery stream
instead of to HEC (for Splunk Cloud stacks that admit only Firehose's address ranges).

What is put (one Firehose record each), by :func:`firehose_record`:

- an original payload (``processing-failed``, ``decompression-failed``, any gzip ``rawData``)
  goes back as it is: the stream's transform makes the events, as it would have the first
  time;
- a HEC event (``splunk-failed``, ``replay-failed``) goes back wrapped in the passthrough
  envelope (:mod:`transforms.firehose_passthrough`), one event per record, which the transform
  hands on unchanged: never shaped, nor wrapped, a second time.

:class:`FirehoseSink` stands where the replay's deliverer stands (same ``submit`` / ``flush``
/ ``close`` calls, so the chunk-and-commit engine is unchanged): it puts with
``PutRecordBatch`` (:class:`transforms.reingest.FirehoseReingester`: at most 500 records and
4 MiB per call, 1000 KiB per record, failed entries retried by their ``ErrorCode`` with
exponential backoff and full jitter, bounded attempts). What still fails is written under
``replay-failed/`` as today (``Firehose.<ErrorCode>``), and the chunk is committed to the
state file only after the flush: "handed to Firehose" (outcome ``handed-to-firehose``) is
Firehose's at-least-once from there on, not an acknowledgment by Splunk. A stream that does
not exist or refuses us (:data:`FATAL_CODES`) stops the run, like a refused HEC token.

Ledger: ``acknowledged`` counts records Firehose accepted; ``backsplashed`` those stored under
``replay-failed/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from forwarder.backsplash.codec import (
    DecodedRecord,
    Failure,
    decode_record,
    is_original_payload,
    payload_event_id,
    raw_payload,
    record_meta,
)
from forwarder.backsplash.writers import ReplayFailedBacksplash
from forwarder.delivery.ledger import Ledger
from forwarder.errors import DeliveryError
from transforms.firehose_passthrough import wrap
from transforms.options import TransformOptions
from transforms.records import EncodedEvent, RawTarget
from transforms.reingest import PUT_RECORD_BATCH, Reingester

#: Error codes that no retry mends: the run stops (what was in flight is stored under
#: ``replay-failed/``), as it does when HEC refuses the token.
FATAL_CODES: Final = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidKMSResourceException",
        "InvalidSourceException",
    }
)


def firehose_record(
    record: dict[str, object], kind: str, options: TransformOptions
) -> DecodedRecord:
    """One backsplash record as Firehose records to put (in ``events``, endpoint ``event``).

    Raises:
        forwarder.backsplash.codec.CorruptRecordError: no usable ``rawData``, or a HEC
            payload that cannot be read.
    """
    payload = raw_payload(record)
    if is_original_payload(payload, kind, record.get("endpoint")):
        error_code, arrival_ms, attempts = record_meta(record)
        record_id = record.get("EventId")
        event_id = record_id if isinstance(record_id, str) and record_id else None
        return DecodedRecord(
            kind=kind,
            error_code=error_code,
            arrival_ms=arrival_ms,
            replay_attempts=attempts,
            endpoint="event",
            events=[EncodedEvent(payload, event_id or payload_event_id(payload))],
            raw_target=None,
            payload_bytes=len(payload),
            event_id=event_id,
        )
    decoded = decode_record(record, kind, options)
    decoded.events = [
        EncodedEvent(wrap(event.payload, decoded.endpoint), event.event_id)
        for event in decoded.events
    ]
    decoded.payload_bytes = sum(len(event.payload) for event in decoded.events)
    decoded.endpoint, decoded.raw_target = "event", None
    return decoded


class FirehoseRefusedError(DeliveryError):
    """The stream refused the put for a reason no retry mends (:data:`FATAL_CODES`)."""

    default_error_code = "Firehose.Refused"


class FirehoseSink:
    """The replay's deliverer for ``--via-firehose``: buffers submitted records and puts them
    a batch at a time; failures go to the replay-failed writer.

    Args:
        putter: puts records into the stream and names those that did not go
            (a :class:`transforms.reingest.FirehoseReingester` in production).
        stream: the delivery stream's name (for messages).
        backsplash: where records that could not be put are stored.
        on_close: called once when the sink closes (closes the client).
    """

    def __init__(
        self,
        putter: Reingester,
        stream: str,
        *,
        backsplash: ReplayFailedBacksplash,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._putter = putter
        self._stream = stream
        self._backsplash = backsplash
        self._on_close = on_close
        self._pending: list[EncodedEvent] = []
        self._pending_bytes = 0
        self.ledger = Ledger()
        self.fatal: DeliveryError | None = None

    def submit(self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        """Take records to put; full batches go out now."""
        del raw_target  # the envelope or the original payload says everything
        self.ledger.add(events_in=len(events))
        for event in events:
            if self._pending_bytes + len(event.payload) > PUT_RECORD_BATCH.max_bytes:
                self.flush()  # a full call's worth of bytes
            self._pending.append(event)
            self._pending_bytes += len(event.payload)
            if len(self._pending) >= PUT_RECORD_BATCH.max_records:
                self.flush()

    def flush(self, deadline: float | None = None) -> None:
        """Put everything taken so far; store what still fails under ``replay-failed/``.

        Raises:
            forwarder.errors.BacksplashError: a failed record could not be stored.
        """
        del deadline  # bounded by the put policy's attempts
        events, self._pending, self._pending_bytes = self._pending, [], 0
        if not events:
            return
        if self.fatal is not None:
            self._store(events, self.fatal.error_code, self.fatal.message, attempts=0)
            return
        report = self._putter.put([(event.payload, None) for event in events])
        failed = set(report.failed)
        self.ledger.add(acknowledged=len(events) - len(failed))
        if not failed:
            return
        codes = sorted(set(report.error_codes))
        fatal = sorted(FATAL_CODES.intersection(codes))
        message = f"PutRecordBatch into {self._stream} failed: {', '.join(codes)}"
        if fatal:
            self.fatal = FirehoseRefusedError(message, error_code=f"Firehose.{fatal[0]}")
        self._store(
            [events[position] for position in sorted(failed)],
            f"Firehose.{codes[0] if codes else 'Unknown'}",
            message,
            attempts=1,
        )

    def _store(self, events: list[EncodedEvent], code: str, message: str, attempts: int) -> None:
        self._backsplash.write(events, Failure(code, message, attempts, "event"))
        self.ledger.add(backsplashed=len(events), backsplash_objects=1)

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        """Put what is left, then close the client."""
        del summarize  # the replay sums the ledgers itself
        try:
            self.flush(deadline)
        finally:
            self.release()

    def release(self) -> None:
        """Close the client without putting what is buffered (it stays unhandled in the
        state file, so the next run sends it)."""
        self._pending, self._pending_bytes = [], 0
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
