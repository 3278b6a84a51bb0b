"""Indexer acknowledgment bookkeeping for one channel: pending ackIds, poll schedule, expiry.

Pure: the caller passes the clock's time and does the I/O (``HecClient.query_acks``). HEC
answers ``true`` for an ackId once, then forgets it; ``false`` means pending *or* lost, which
only the ack timeout can tell apart, so an expired ackId means "re-send the batch" (at least
once; the ledger counts the possible duplicate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    sent_at: float


class AckTracker(Generic[T]):
    """The ackIds one channel is waiting for, each with the item (batch) it stands for.

    Args:
        timeout_s: an ackId not true this long after its request was accepted has expired.
        poll_interval_s: the steady-state time between two polls.
        max_pending: at this many pending ackIds the channel is full: the sender must wait
            (poll) before sending more, which keeps memory bounded.
    """

    def __init__(self, *, timeout_s: float, poll_interval_s: float, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.max_pending = max_pending
        self._pending: dict[int, _Pending[T]] = {}  # insertion order is send order
        self._next_poll = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """True when no more requests may be sent on this channel until some are confirmed."""
        return len(self._pending) >= self.max_pending

    def add(self, ack_id: int, item: T, now: float) -> T | None:
        """Track a new ackId.

        Args:
            ack_id: the id HEC handed out.
            item: what it acknowledges.
            now: the clock's time when HEC accepted the request.

        Returns:
            The item this ackId stood for until now, if HEC reused a pending id (an indexer
            restart resets its counters): the caller must treat it as unacknowledged.
        """
        if not self._pending:
            self._next_poll = now + self.poll_interval_s
        previous = self._pending.pop(ack_id, None)
        self._pending[ack_id] = _Pending(item, now)
        return previous.item if previous is not None else None

    def ids(self) -> list[int]:
        """The pending ackIds, oldest first (one poll asks for all of them)."""
        return list(self._pending)

    def poll_due(self, now: float) -> bool:
        """True when the poll interval since the last poll (or first send) has passed."""
        return bool(self._pending) and now >= self._next_poll

    def next_poll_at(self) -> float | None:
        """Clock time of the next scheduled poll, or None with nothing pending."""
        return self._next_poll if self._pending else None

    def polled(self, now: float) -> None:
        """Record a poll (answered or not): the next one is a poll interval away."""
        self._next_poll = now + self.poll_interval_s

    def confirm(self, answer: Mapping[int, bool]) -> list[T]:
        """Apply an ack answer.

        Args:
            answer: ackId -> acknowledged, as ``HecClient.query_acks`` returns it.

        Returns:
            The items whose ackId turned true (no longer pending).
        """
        confirmed: list[T] = []
        for ack_id, done in answer.items():
            if done:
                pending = self._pending.pop(ack_id, None)
                if pending is not None:
                    confirmed.append(pending.item)
        return confirmed

    def expire(self, now: float) -> list[T]:
        """Remove and return the items whose ackId is older than the ack timeout."""
        expired: list[int] = []
        for ack_id, pending in self._pending.items():
            if now - pending.sent_at < self.timeout_s:
                break  # insertion order is send order: the rest are younger
            expired.append(ack_id)
        return [self._pending.pop(ack_id).item for ack_id in expired]

    def next_expiry_at(self) -> float | None:
        """Clock time at which the oldest pending ackId expires, or None."""
        for pending in self._pending.values():
            return pending.sent_at + self.timeout_s
        return None

    def drain(self) -> list[T]:
        """Remove and return every pending item (shutdown, deadline, ack unavailable)."""
        items = [pending.item for pending in self._pending.values()]
        self._pending.clear()
        return items
