"""Pure batching: group encoded events into HEC request bodies bounded by bytes and count.

Sizes are counted before compression and exactly: a body is the events' payloads joined by
``\\n`` (HEC's event endpoint takes concatenated JSON objects with any whitespace between them;
the raw endpoint takes one event per line), so a batch's size is the sum of its payloads plus
one separator between each two. No body is ever empty, and an event larger than ``max_bytes``
travels alone (HEC may answer 413; the deliverer then backsplashes it).

No Python step per event: the payload sizes are read at C speed (``TextEvents`` keeps them;
see :mod:`forwarder.delivery.texts`), their running sum is one ``itertools.accumulate``, and
each batch's end is one ``bisect`` in it, so the work in Python is per batch. The batches are
the ones the greedy per-event rule gives (add each event to the open batch while it fits,
else start a new batch with it); ``tests/unit/test_batching_cuts.py`` checks both agree.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise, repeat
from operator import add

from forwarder.delivery.texts import joined, merged, sizes_of
from transforms.records import EncodedEvent, RawTarget


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """Events for one HEC request.

    Attributes:
        events: the events, in order (never empty).
        nbytes: the uncompressed body size (payloads plus ``\\n`` separators).
        raw_target: the raw endpoint's query metadata (None on the event endpoint).
        arrival_ms: epoch milliseconds when the batch's first event reached the forwarder.
    """

    events: Sequence[EncodedEvent]
    nbytes: int
    raw_target: RawTarget | None = None
    arrival_ms: int = 0

    def __len__(self) -> int:
        return len(self.events)

    def body(self) -> bytes:
        """The request body before compression."""
        return joined(self.events)

    def derive(self, events: Sequence[EncodedEvent]) -> Batch:
        """A batch of some of these events, keeping the metadata."""
        return Batch(events, body_size(events), self.raw_target, self.arrival_ms)


def body_size(events: Sequence[EncodedEvent]) -> int:
    """Bytes of the body these events make (payloads plus separators)."""
    return sum(sizes_of(events)) + max(len(events) - 1, 0)


def marks(sizes: Sequence[int]) -> list[int]:
    """``marks[j]``: the bytes of the first ``j`` payloads, each with one separator."""
    return list(accumulate(map(add, sizes, repeat(1)), initial=0))


def ends(
    marks: Sequence[int],
    max_bytes: int,
    max_events: int,
    open_bytes: int = 0,
    open_count: int = 0,
) -> list[int]:
    """Where the full batches end among events whose running sizes are ``marks``.

    The greedy rule, one batch at a time: an event joins the open batch when the batch is
    empty, or when the body stays within ``max_bytes`` and the count within ``max_events``;
    else the open batch is full and the event starts the next one.

    Args:
        marks: :func:`marks` of the events' payload sizes.
        max_bytes: body size limit before compression.
        max_events: events per batch.
        open_bytes: the batch already open before these events: its payload bytes plus one
            separator per event (below ``max_bytes + 1``).
        open_count: that batch's events (below ``max_events``).

    Returns:
        Increasing indices ``e1 < e2 < ...``: the first full batch is the open one's
        events and ``events[:e1]`` (``e1`` is 0 when the first event does not fit with
        them), the next ``events[e1:e2]``, and so on; ``events[e_last:]`` (never empty)
        make the batch left open.
    """
    limit = max_bytes + 1  # marks count one separator per event, one more than a body has
    last = len(marks) - 1
    found: list[int] = []
    start, size, count = 0, open_bytes, open_count
    while True:
        end = bisect_right(marks, marks[start] + limit - size, start) - 1
        end = max(min(end, start + max_events - count), start)
        if end == start and not count:
            end = start + 1  # an event above max_bytes travels alone
        if end >= last:
            return found
        found.append(end)
        start, size, count = end, 0, 0


def pack(
    events: Sequence[EncodedEvent],
    max_bytes: int,
    max_events: int,
    *,
    raw_target: RawTarget | None = None,
    arrival_ms: int = 0,
) -> list[Batch]:
    """Split events into batches of at most ``max_bytes`` and ``max_events``, in order.

    Args:
        events: the events.
        max_bytes: body size limit before compression; an event above it forms its own batch.
        max_events: events per batch.
        raw_target: metadata every batch carries (raw endpoint).
        arrival_ms: arrival time every batch carries.

    Returns:
        The batches; none is empty; an empty input gives an empty list.
    """
    if not events:
        return []
    running = marks(sizes_of(events))
    bounds = [0, *ends(running, max_bytes, max_events), len(events)]
    return [
        Batch(events[low:high], running[high] - running[low] - 1, raw_target, arrival_ms)
        for low, high in pairwise(bounds)
    ]


def halve(batch: Batch) -> tuple[Batch, Batch]:
    """Split a batch into two halves by count (after HTTP 413, or to find a bad event).

    Raises:
        ValueError: the batch has fewer than two events.
    """
    if len(batch) < 2:
        raise ValueError("cannot halve a batch of one event")
    middle = len(batch) // 2
    return batch.derive(batch.events[:middle]), batch.derive(batch.events[middle:])


def isolate(batch: Batch, index: int) -> tuple[Batch | None, EncodedEvent, Batch | None]:
    """Cut out the event at ``index``: (events before it, the event, events after it).

    Raises:
        IndexError: ``index`` is outside the batch.
    """
    if not 0 <= index < len(batch):
        raise IndexError(f"event {index} is outside a batch of {len(batch)}")
    before = batch.events[:index]
    after = batch.events[index + 1 :]
    return (
        batch.derive(before) if before else None,
        batch.events[index],
        batch.derive(after) if after else None,
    )


@dataclass(slots=True)
class _Open:
    parts: list[Sequence[EncodedEvent]] = field(default_factory=list)  # joined when taken
    count: int = 0
    size: int = 0  # payload bytes + one separator per event
    opened_at: float = 0.0
    arrival_ms: int = 0


class Batcher:
    """Streaming batches with linger: full batches come out at once, partial ones age out.

    On the raw endpoint each ``RawTarget`` has its own open batch (a request carries one set of
    query parameters); on the event endpoint pass ``raw_target=None``.

    Args:
        max_bytes: body size limit before compression.
        max_events: events per batch.
        linger_s: how long a partial batch may wait for more events.
        clock: monotonic clock for linger.
        wall_ms: epoch milliseconds for ``Batch.arrival_ms``.
    """

    def __init__(
        self,
        max_bytes: int,
        max_events: int,
        linger_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if max_bytes < 1 or max_events < 1:
            raise ValueError("max_bytes and max_events must be positive")
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.linger_s = linger_s
        self._clock = clock
        self._wall_ms = wall_ms
        self._open: dict[RawTarget | None, _Open] = {}

    @property
    def pending_events(self) -> int:
        """Events waiting in partial batches."""
        return sum(o.count for o in self._open.values())

    def add(
        self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None
    ) -> list[Batch]:
        """Add events; return the batches that filled up (the rest waits).

        Args:
            events: the events, in order.
            raw_target: their raw-endpoint metadata (None on the event endpoint).

        Returns:
            Full batches, in order.
        """
        if not events:
            return []
        now_ms = -1
        opened = self._open.get(raw_target)
        if opened is None:
            now_ms = self._wall_ms()
            opened = self._open[raw_target] = _Open(opened_at=self._clock(), arrival_ms=now_ms)
        running = marks(sizes_of(events))
        out: list[Batch] = []
        start = 0
        for end in ends(running, self.max_bytes, self.max_events, opened.size, opened.count):
            if end > start:
                opened.parts.append(events[start:end])
            size = opened.size + running[end] - running[start]
            out.append(Batch(merged(opened.parts), size - 1, raw_target, opened.arrival_ms))
            if now_ms < 0:
                now_ms = self._wall_ms()
            opened.parts, opened.count, opened.size = [], 0, 0
            opened.opened_at = self._clock()
            opened.arrival_ms = now_ms
            start = end
        opened.parts.append(events[start:])
        opened.count += len(events) - start
        opened.size += running[-1] - running[start]
        if opened.count >= self.max_events or opened.size > self.max_bytes:
            out.append(self._take(raw_target))  # already full: no reason to wait
        return out

    def due(self, now: float | None = None) -> list[Batch]:
        """Partial batches older than the linger time.

        Args:
            now: the clock's time (read when None).

        Returns:
            The batches that aged out (removed from the batcher).
        """
        if not self._open:
            return []
        now = self._clock() if now is None else now
        ready = [key for key, o in self._open.items() if now - o.opened_at >= self.linger_s]
        return [self._take(key) for key in ready]

    def next_due(self) -> float | None:
        """Clock time at which the oldest partial batch ages out, or None."""
        if not self._open:
            return None
        return min(o.opened_at for o in self._open.values()) + self.linger_s

    def drain(self) -> list[Batch]:
        """Every partial batch, now (flush)."""
        return [self._take(key) for key in list(self._open)]

    def _take(self, key: RawTarget | None) -> Batch:
        opened = self._open.pop(key)
        return Batch(merged(opened.parts), opened.size - 1, key, opened.arrival_ms)
