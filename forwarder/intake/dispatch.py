"""Dispatch of input onto one ledger: CloudWatch payloads and text lines through the transform
to the main deliverer, backsplash records to re-delivery deliverers (one per endpoint), and
what cannot be delivered stored or counted (the push Lambda and the daemon share this).

- A payload or lines the transform refuses are stored under ``processing-failed/``
  (:func:`store_unprocessable`), counted backsplashed and logged ``record_unprocessable``.
- A CloudWatch Logs control message is counted dropped (``control_message``).
- A backsplash record goes to the deliverer of the destination and endpoint it names, built
  by :class:`Redeliverers`: that destination's HEC with that endpoint, whose backsplash writes
  under ``replay-failed/`` (``replayAttempts: 1``), never ``splunk-failed/``, on the same
  ledger. A record naming a destination the settings do not have is stored under
  ``replay-failed/`` at once (``Splunk.UnknownDestination``), counted backsplashed.
- A corrupt backsplash record is dropped (``backsplash_record_corrupt``) and logged with its
  key and line; a line too long to read is dropped (``line_too_long``, logged ``line_dropped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

from config.settings import Settings
from forwarder.backsplash.codec import DecodedRecord, Failure, encode_records
from forwarder.backsplash.objects import CORRUPT_RECORD
from forwarder.backsplash.writers import (
    BacksplashWriter,
    DestinationBacksplash,
    ReplayFailedBacksplash,
    put_under,
)
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.destinations import Delivery, member
from forwarder.delivery.ledger import Ledger
from forwarder.intake.lines import LINE_TOO_LONG
from transforms.errors import TransformError
from transforms.options import DEFAULT_DESTINATION, Endpoint
from transforms.pipeline import (
    PAYLOAD_SLICE_EVENTS,
    EncodedBatch,
    transform_lines,
    transform_payload_slices,
)
from transforms.records import EncodedEvent, Origin


def store_unprocessable(
    writer: BacksplashWriter,
    data: bytes,
    *,
    error_code: str,
    message: str,
    endpoint: Endpoint,
    clock: Callable[[], float] = time.time,
) -> str:
    """Store an input record the transform refused under ``processing-failed/`` (its bytes
    as they came, in Firehose's backup layout), so nothing is lost and replay can see it.

    Args:
        writer: a ``Backsplash``, ``LocalSpool`` or ``FallbackBacksplash``.
        data: the original record bytes.
        error_code: e.g. ``Transform.DecodeError``.
        message: what was wrong.
        endpoint: the HEC endpoint in use (stored with the record).
        clock: wall clock.

    Returns:
        The key written (``spool:<key>`` when it went to the spool).

    Raises:
        BacksplashError: nowhere to store it.
    """
    now_ms = int(clock() * 1000)
    body = encode_records(
        [EncodedEvent(data, None)], Failure(error_code, message, 0, endpoint), ending_ms=now_ms
    )
    return put_under(writer, "processing-failed", body)


@dataclass(eq=False)
class Redeliverers:
    """Deliverers for re-delivered backsplash records, one per endpoint, built on first use.

    Args:
        settings: the configured HEC (each deliverer gets it with the endpoint it serves).
        backsplash: the ordinary backsplash; failures go under its ``replay-failed/``.
        log: a structlog logger (each deliverer's is bound with ``redelivery=<endpoint>``).
        clock: monotonic clock for the deliverers.
        prepare: called with each new deliverer (share a ledger, a deadline, an abort).
    """

    settings: Settings
    backsplash: BacksplashWriter
    _: KW_ONLY
    log: Any
    clock: Callable[[], float] = time.monotonic
    prepare: Callable[[Deliverer], None] | None = None
    _by_endpoint: dict[tuple[Endpoint, str], Deliverer] = field(default_factory=dict, init=False)

    def get(self, endpoint: Endpoint, destination: str = DEFAULT_DESTINATION) -> Deliverer:
        """The deliverer for records meant for ``endpoint`` of ``destination``.

        Raises:
            KeyError: the settings have no such destination.
        """
        found = self._by_endpoint.get((endpoint, destination))
        if found is None:
            settings = self.settings.for_destination(destination)
            if settings.hec.endpoint != endpoint:
                settings = replace(settings, hec=replace(settings.hec, endpoint=endpoint))
            log = self.log.bind(redelivery=endpoint)
            writer: BacksplashWriter = ReplayFailedBacksplash(self.backsplash)
            if destination != DEFAULT_DESTINATION:
                writer = DestinationBacksplash(writer, destination, None)
                log = log.bind(destination=destination)
            found = Deliverer(settings, backsplash=writer, clock=self.clock, log=log)
            if self.prepare is not None:
                self.prepare(found)
            self._by_endpoint[(endpoint, destination)] = found
        return found

    def all(self) -> list[Deliverer]:
        """Every deliverer built so far."""
        return list(self._by_endpoint.values())

    def remove(self, deliverer: Delivery) -> None:
        """Forget ``deliverer`` (the next record for its endpoint builds a new one)."""
        for endpoint, found in list(self._by_endpoint.items()):
            if found is deliverer:
                del self._by_endpoint[endpoint]

    def clear(self) -> list[Deliverer]:
        """Forget every deliverer; returns them (for the caller to release)."""
        dropped = list(self._by_endpoint.values())
        self._by_endpoint.clear()
        return dropped


@dataclass(eq=False)
class Intake:
    """Hands input to the deliverers, every count on the main deliverer's ledger.

    Args:
        settings: transform options and the HEC endpoint (stored with unprocessable input).
        deliverer: the main delivery (one deliverer, or one per destination); its ledger is
            the one every outcome is counted on.
        backsplash: where unprocessable input is stored.
        redeliverer: the deliverer for backsplash records meant for an endpoint of a
            destination the settings have (it must count on the same ledger).
        log: a structlog logger (the entry point's).
    """

    settings: Settings
    deliverer: Delivery
    backsplash: BacksplashWriter
    redeliverer: Callable[[Endpoint, str], Deliverer]
    _: KW_ONLY
    log: Any
    #: Corrupt backsplash records dropped.
    records_corrupt: int = field(default=0, init=False)

    @property
    def ledger(self) -> Ledger:
        """The one ledger (the main deliverer's)."""
        return self.deliverer.ledger

    def deliver(self, batch: EncodedBatch) -> None:
        """A transformed batch: its events submitted; a control message counted dropped."""
        if batch.is_control:
            self.ledger.drop("control_message")
            return
        deliverer = member(self.deliverer, batch.destination)
        deliverer.ledger.shaped(batch.filtered, batch.sampled, batch.time_unparsed)  # its row
        if batch.events:
            deliverer.submit(batch.events, batch.raw_target)

    def payload(self, data: bytes) -> None:
        """A CloudWatch Logs payload (awslogs, a Kinesis record).

        Raises:
            BacksplashError: refused by the transform and nowhere to store it.
        """
        try:
            batches = transform_payload_slices(
                data, self.settings.transform, max_events=PAYLOAD_SLICE_EVENTS
            )
        except TransformError as exc:
            self.unprocessable(data, exc)
            return
        for batch in batches:  # a big payload in slices: sent while the rest is shaped
            self.deliver(batch)

    def lines(
        self,
        lines: Sequence[str],
        *,
        log_group: str | None,
        log_stream: str | None,
        origin: Origin,
        flow_fields: tuple[str, ...] | None,
    ) -> None:
        """Text lines of an object, a file or stdin (flow logs, or plain lines).

        Raises:
            BacksplashError: refused by the transform and nowhere to store it.
        """
        try:
            batch = transform_lines(
                lines,
                log_group=log_group,
                log_stream=log_stream,
                origin=origin,
                options=self.settings.transform,
                flow_fields=flow_fields,
            )
        except TransformError as exc:
            self.unprocessable("\n".join(lines).encode(), exc)
            return
        self.deliver(batch)

    def backsplash_record(self, decoded: DecodedRecord) -> None:
        """A decoded backsplash record: to the re-delivery deliverer of its endpoint."""
        known = decoded.destination in self.settings.destination_names
        row = member(self.deliverer, decoded.destination).ledger if known else self.ledger
        row.shaped(decoded.filtered, decoded.sampled, 0)
        if decoded.control:
            self.ledger.drop("control_message")
        elif decoded.destination not in self.settings.destination_names:
            self.unknown_destination(decoded)
        elif decoded.events:
            found = self.redeliverer(decoded.endpoint, decoded.destination)
            found.submit(decoded.events, decoded.raw_target)

    def unknown_destination(self, decoded: DecodedRecord) -> None:
        """A backsplash record naming a destination the settings lack: stored under
        ``replay-failed/`` as it is (``Splunk.UnknownDestination``), counted backsplashed.

        Raises:
            BacksplashError: nowhere to store it.
        """
        count = len(decoded.events)
        if not count:
            return
        message = f"no [destinations.{decoded.destination}] in the settings"
        ReplayFailedBacksplash(self.backsplash).write(decoded.events, decoded.unrouted(message))
        self.ledger.add(events_in=count, backsplashed=count, backsplash_objects=1)
        self.log.error("backsplash_record_unrouted", destination=decoded.destination, events=count)

    def corrupt_record(
        self, bucket: str | None, key: str | None, line: int | None, reason: str | None
    ) -> None:
        """A backsplash record that cannot be re-delivered: dropped and logged."""
        self.records_corrupt += 1
        self.ledger.drop(CORRUPT_RECORD)
        self.log.error(
            "backsplash_record_corrupt", bucket=bucket, key=key, line=line, reason=reason
        )

    def dropped_line(
        self,
        bucket: str | None,
        key: str | None,
        line: int | None,
        size: int | None,
        reason: str = LINE_TOO_LONG,
    ) -> None:
        """A line that was not read (longer than the cap): dropped and logged."""
        self.ledger.drop(reason)
        self.log.warning(
            "line_dropped", reason=reason, bucket=bucket, key=key, line=line, bytes=size
        )

    def unprocessable(self, data: bytes, exc: Exception) -> None:
        """Input the transform refused: stored under ``processing-failed/``, counted.

        Raises:
            BacksplashError: nowhere to store it.
        """
        key = store_unprocessable(
            self.backsplash,
            data,
            error_code="Transform.DecodeError",
            message=f"{type(exc).__name__}: {exc}",
            endpoint=self.settings.hec.endpoint,
        )
        self.ledger.add(events_in=1, backsplashed=1, backsplash_objects=1)
        self.log.error("record_unprocessable", key=key, reason=f"{type(exc).__name__}: {exc}")
