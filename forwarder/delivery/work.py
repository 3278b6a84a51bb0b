"""A batch on its way through the deliverer, and the two ways a send step stops short."""

from __future__ import annotations

import gzip
from array import array
from dataclasses import dataclass, field

from forwarder.delivery.batching import Batch
from forwarder.delivery.retry import RetryBudget
from forwarder.delivery.texts import ids_of, sizes_of
from transforms.records import EncodedEvent, RawTarget


@dataclass(slots=True, eq=False)
class Work:
    """A batch on its way, with its retry budget (shared across re-sends).

    While it waits for its ack the batch is *parked*: only the request body as sent (gzip,
    about a seventh of the events' size), the payload lengths and the event ids are kept, so
    ``max_pending`` unacknowledged requests cost little memory. A re-send reuses the body as
    is; a backsplash cuts it back into the exact payloads.
    """

    batch: Batch | None
    count: int
    raw_target: RawTarget | None
    arrival_ms: int
    budget: RetryBudget = field(default_factory=RetryBudget)
    wire: bytes | None = None  # the request body as sent (gzip-compressed when gzip is on)
    lengths: array[int] | None = None  # parked: payload sizes, to cut the body into events
    ids: list[str | None] | None = None  # parked: the events' ids
    #: For one event re-addressed to the fallback index (code 7): the event as it was first
    #: sent. What cannot be delivered is backsplashed as this, so a replay addresses it anew.
    original: EncodedEvent | None = None

    @classmethod
    def of(
        cls, batch: Batch, budget: RetryBudget | None = None, original: EncodedEvent | None = None
    ) -> Work:
        return cls(
            batch,
            len(batch),
            batch.raw_target,
            batch.arrival_ms,
            budget or RetryBudget(),
            original=original,
        )

    def park(self) -> None:
        """Drop the events, keeping what restores them exactly (``wire`` must be set)."""
        if self.batch is not None and self.wire is not None:
            events = self.batch.events
            self.lengths = array("I", sizes_of(events))
            self.ids = ids_of(events)
            self.batch = None

    def restore(self, gzipped: bool) -> Batch:
        """The batch, rebuilt from the parked body when it was parked."""
        if self.batch is not None:
            return self.batch
        assert self.wire is not None and self.lengths is not None and self.ids is not None
        body = gzip.decompress(self.wire) if gzipped else self.wire
        events: list[EncodedEvent] = []
        offset = 0
        for length, event_id in zip(self.lengths, self.ids, strict=True):
            events.append(EncodedEvent(body[offset : offset + length], event_id))
            offset += length + 1
        self.batch = Batch(events, len(body), self.raw_target, self.arrival_ms)
        self.lengths = self.ids = None
        return self.batch


class GiveUp(Exception):
    """No attempt can be made (deadline passed while waiting for capacity)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class Halted(Exception):
    """A backoff sleep ended at a cut-off (deadline, abort, fatal, shutdown): no next attempt."""
