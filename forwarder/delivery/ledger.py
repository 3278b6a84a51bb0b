"""The delivery ledger: every event in ends acknowledged, backsplashed or dropped with a reason.

``events_in == acknowledged + backsplashed + dropped + in_flight``; after a flush ``in_flight``
is 0 and the ledger *balances*. Events whose backsplash write failed stay in flight (they are
neither delivered nor stored: the caller must fail loudly). Counts are per event unless named
otherwise (requests, polls and resends count HTTP requests and batches). Thread-safe.

With ``[destinations.NAME]`` tables each destination's deliverer counts on its own row,
:meth:`Ledger.destination`, whose counts add up into the ledger it came from: the totals
stay what they always were, and the summary gains ``destinations`` (one row per name, each
balancing by itself). A ledger no destination row was taken from has no ``destinations``.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

_COUNTERS = (
    "events_in",
    "acknowledged",
    "backsplashed",
    "backsplash_failed",
    "requests",
    "retries",
    "ack_polls",
    "resends",
    "duplicates_possible",
    "ack_unavailable",
    "bytes_sent",
    "batches_sent",
    "backsplash_objects",
    "time_unparsed",
    "fallback_index_resent",
)

#: Drop reasons of a route's shaping rules (README "Shaping events"): on purpose, not a loss.
FILTERED = "filtered"
SAMPLED = "sampled"


class Ledger:
    """Counters for one invocation, run or process.

    Attributes:
        events_in: events handed to the deliverer (plus those dropped before it, see ``drop``).
        acknowledged: events Splunk acknowledged (or accepted with a 200 when acks are off).
        backsplashed: events durably written to the backsplash.
        backsplash_failed: events whose backsplash write failed (still in flight).
        dropped: events dropped on purpose, by reason (control messages, filtered).
        requests: data requests sent (first attempts, retries and re-sends).
        retries: backoff sleeps scheduled.
        ack_polls: ack queries sent.
        resends: batches re-sent because their ack expired.
        duplicates_possible: events re-sent or backsplashed although HEC may already have them
            (ack expired or never true, read timeout, events before a bad one).
        ack_unavailable: requests accepted without indexer acknowledgment (token has acks off).
        bytes_sent: request bytes on the wire (after gzip).
        batches_sent: requests HEC accepted.
        backsplash_objects: backsplash objects written.
        time_unparsed: events whose time could not be read from the message (they keep the
            CloudWatch time; informational, not part of the balance).
        fallback_index_resent: events HEC refused with code 7 (incorrect index) and that were
            re-sent to ``SPLUNK_FALLBACK_INDEX`` (informational: each still ends acknowledged
            or backsplashed).
    """

    events_in: int
    acknowledged: int
    backsplashed: int
    backsplash_failed: int
    requests: int
    retries: int
    ack_polls: int
    resends: int
    duplicates_possible: int
    ack_unavailable: int
    bytes_sent: int
    batches_sent: int
    backsplash_objects: int
    time_unparsed: int
    fallback_index_resent: int

    def __init__(self, *, parent: Ledger | None = None) -> None:
        self._lock = threading.Lock()
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.dropped: dict[str, int] = {}
        self._parent = parent
        self._rows: dict[str, Ledger] = {}

    def destination(self, name: str) -> Ledger:
        """The row of destination ``name`` (made on first use): what is counted on it is
        counted on this ledger too."""
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                row = self._rows[name] = Ledger(parent=self)
            return row

    @property
    def destinations(self) -> dict[str, Ledger]:
        """The destination rows taken so far, by name."""
        with self._lock:
            return dict(self._rows)

    def add(self, **counts: int) -> None:
        """Add to counters atomically: ``ledger.add(requests=1, bytes_sent=n)``.

        Raises:
            AttributeError: an unknown counter name.
        """
        with self._lock:
            for name, n in counts.items():
                if name not in _COUNTERS:
                    raise AttributeError(f"unknown ledger counter {name!r}")
                setattr(self, name, getattr(self, name) + n)
        if self._parent is not None:
            self._parent.add(**counts)

    def drop(self, reason: str, count: int = 1) -> None:
        """Record events that came in and were dropped on purpose (counts them in, too)."""
        with self._lock:
            self.events_in += count
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        if self._parent is not None:
            self._parent.drop(reason, count)

    def shaped(self, filtered: int, sampled: int, time_unparsed: int) -> None:
        """Count what a batch's shaping rules did: events dropped by ``drop`` (``filtered``)
        and ``sample`` (``sampled``) rules, and times not read from the message."""
        with self._lock:
            for reason, count in ((FILTERED, filtered), (SAMPLED, sampled)):
                if count:
                    self.events_in += count
                    self.dropped[reason] = self.dropped.get(reason, 0) + count
            self.time_unparsed += time_unparsed
        if self._parent is not None:
            self._parent.shaped(filtered, sampled, time_unparsed)

    @property
    def dropped_total(self) -> int:
        """All dropped events, whatever the reason."""
        return sum(self.dropped.values())

    @property
    def in_flight(self) -> int:
        """Events neither acknowledged, backsplashed nor dropped (yet)."""
        return self.events_in - self.acknowledged - self.backsplashed - self.dropped_total

    def balanced(self) -> bool:
        """True when every event in is acknowledged, backsplashed or dropped."""
        return self.in_flight == 0

    def summary(self) -> dict[str, Any]:
        """All counters as a dict (``dropped`` by reason), plus ``in_flight`` and ``balanced``;
        and ``destinations`` (name: that row's summary) once a destination row was taken."""
        with self._lock:
            data: dict[str, Any] = {name: getattr(self, name) for name in _COUNTERS}
            data["dropped"] = dict(self.dropped)
            rows = dict(self._rows)
        if rows:
            data["destinations"] = {name: row.summary() for name, row in rows.items()}
        data["in_flight"] = (
            data["events_in"]
            - data["acknowledged"]
            - data["backsplashed"]
            - sum(data["dropped"].values())
        )
        data["balanced"] = data["in_flight"] == 0
        return data

    def log_summary(self, log: Any = None, **context: Any) -> dict[str, Any]:
        """Log ``delivery_summarized`` (warning when unbalanced) and return the summary."""
        logger = log if log is not None else structlog.get_logger("forwarder.delivery.ledger")
        data = self.summary()
        method = logger.info if data["balanced"] else logger.warning
        method("delivery_summarized", **context, **data)
        return data
