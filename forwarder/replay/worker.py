"""One replay thread's tools: the objects it is handed (:class:`ListedObject`), what all
threads share (:class:`Run`), and its own deliverers, state connection and replay-failed
writer (:class:`Worker`); plus the shared events-per-second limit (:class:`RateLimiter`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from config.settings import Settings
from forwarder.backsplash.writers import Backsplash, ReplayFailedBacksplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from forwarder.errors import DeliveryError
from forwarder.replay.options import ReplayOptions, Selection, StateSpec
from forwarder.replay.report import Progress, ReplayReport
from forwarder.replay.state import StateStore
from forwarder.replay.state_store import LeaseKeeper, open_state
from transforms.options import DEFAULT_DESTINATION, Endpoint
from transforms.records import EncodedEvent, RawTarget

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Sink(Protocol):
    """What a worker hands events to: a :class:`~forwarder.delivery.deliverer.Deliverer`
    (HEC), or :class:`forwarder.replay.firehose.FirehoseSink` (``--via-firehose``)."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def fatal(self) -> DeliveryError | None: ...

    def submit(self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        """Take events; what fails ends in the replay-failed writer."""

    def flush(self, deadline: float | None = None) -> None:
        """Deliver (or store) everything taken so far."""

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        """Flush, then release."""

    def release(self) -> None:
        """Stop without sending what is left."""


class DelivererFactory(Protocol):
    """Builds a deliverer for one endpoint; ``settings.hec.endpoint`` is already set."""

    def __call__(self, settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Sink:
        """A new deliverer writing its failures to ``backsplash``."""
        ...


def default_deliverer_factory(
    settings: Settings, *, backsplash: ReplayFailedBacksplash
) -> Deliverer:
    """A plain :class:`~forwarder.delivery.deliverer.Deliverer`."""
    return Deliverer(settings, backsplash=backsplash)


class RateLimiter:
    """Events per second over all threads: a token bucket one second deep that may go into
    debt (a record's events are taken at once), repaid by sleeping."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = rate
        self._last = clock()

    def acquire(self, count: int) -> float:
        """Take ``count`` tokens, sleeping as long as needed; returns the time slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class ByteCounter:
    """Counts the bytes a chunk iterator hands out (compressed bytes read from S3)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.total += len(chunk)
            yield chunk


@dataclass(frozen=True, slots=True)
class ListedObject:
    """An object listed for this run: its key, ETag (without quotes) and size."""

    key: str
    etag: str
    size: int


@dataclass(slots=True)
class Run:
    """What the worker threads of one run share (the report under ``lock``)."""

    settings: Settings
    options: ReplayOptions
    selection: Selection
    bucket: str
    root: str
    failed_bucket: str
    failed_root: str
    s3: S3Client
    report: ReplayReport
    state: StateSpec
    deliverer_factory: DelivererFactory
    stop: threading.Event
    limiter: RateLimiter | None
    progress: Progress | None
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    events_reserved: int = 0
    ledger: Ledger = field(default_factory=Ledger)


class Worker:
    """One thread's deliverers, state store and replay-failed writer; ``lease`` keeps the
    lease of the object being replayed (stores with leases)."""

    def __init__(self, shared: Run) -> None:
        self.shared = shared
        options = shared.options
        self.state: StateStore = open_state(
            shared.state, readonly=options.dry_run, clock=shared.wall_clock
        )
        self.lease: LeaseKeeper | None = None
        self.writer = ReplayFailedBacksplash(
            Backsplash(
                shared.s3, shared.failed_bucket, shared.failed_root, clock=shared.wall_clock
            ),
            clock=shared.wall_clock,
            tracked=True,
        )
        self.deliverers: dict[tuple[str, Endpoint], Sink] = {}

    def deliverer(self, endpoint: Endpoint, destination: str = DEFAULT_DESTINATION) -> Sink:
        """The sink for ``endpoint`` of ``destination`` (its settings: ``for_destination``).

        Raises:
            KeyError: the settings have no such destination.
        """
        found = self.deliverers.get((destination, endpoint))
        if found is None:
            settings = self.shared.settings.for_destination(destination)
            settings = replace(settings, hec=replace(settings.hec, endpoint=endpoint))
            found = self.shared.deliverer_factory(settings, backsplash=self.writer)
            self.deliverers[(destination, endpoint)] = found
        return found

    def lease_lost(self) -> bool:
        """Whether another owner took the current object's lease over."""
        return self.lease is not None and self.lease.lost.is_set()

    def fatal(self) -> str | None:
        """A fatal error that stops this worker: every destination it sends to has one (a
        destination refused alone gets its events stored under replay-failed/, see
        :meth:`refused`)."""
        by_destination: dict[str, str | None] = {}
        for (destination, _), deliverer in self.deliverers.items():
            error = deliverer.fatal.message if deliverer.fatal is not None else None
            if by_destination.get(destination) is None:
                by_destination[destination] = error
        errors = list(by_destination.values())
        return errors[0] if errors and all(errors) else None

    def refused(self) -> str | None:
        """The first fatal error of any destination (for the report and exit status)."""
        for deliverer in self.deliverers.values():
            if deliverer.fatal is not None:
                return deliverer.fatal.message
        return None

    def close(self, *, flush: bool = True) -> None:
        """Close the deliverers (``flush=False`` after a failed chunk: nothing more is sent,
        so nothing is delivered that the state does not record) and the state."""
        try:
            for (destination, _), deliverer in self.deliverers.items():
                if flush:
                    deliverer.close(summarize=False)
                else:
                    deliverer.release()  # stop its I/O thread; the chunk is retried next run
                summary = deliverer.ledger.summary()
                ledger = self.shared.ledger
                if self.shared.settings.destinations:  # a row per destination (adds up)
                    ledger = ledger.destination(destination)
                ledger.add(
                    **{
                        name: value
                        for name, value in summary.items()
                        if isinstance(value, int)
                        and not isinstance(value, bool)
                        and name != "in_flight"
                    }
                )
        finally:
            self.state.close()
