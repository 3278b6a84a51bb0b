"""What every daemon source is: :class:`SourceRecord` (one unit of input) and the
:class:`Source` contract the daemon's loop relies on.

- :meth:`Source.attach` connects and checks (readiness reports it);
- :meth:`Source.poll` returns the next records, waiting at most a short, bounded time when
  there is nothing, and never blocking a shutdown for long;
- :meth:`Source.commit` is called only after everything :meth:`Source.poll` returned so far is
  acknowledged or backsplashed: that is when a Kinesis checkpoint advances and an SQS message
  is deleted;
- :meth:`Source.release` hands back records :meth:`Source.poll` returned that the daemon did
  not deliver (a shutdown stops it mid-poll): the next commit does not pass them, so they are
  read again after a restart (Kinesis rewinds the shard, an SQS message is left on the queue);
- ``exhausted`` turns true when a finite source (files, stdin) has nothing more;
- ``lag_seconds`` is the source's delay (Kinesis ``MillisBehindLatest``, SQS message age).

The sources: :mod:`~forwarder.sources.files` (files and stdin), :mod:`~forwarder.sources.kinesis`,
:mod:`~forwarder.sources.sqs_s3` and :mod:`~forwarder.sources.firehose_http`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from config.daemon import SourceSettings
from forwarder.backsplash.codec import DecodedRecord
from transforms.records import Origin


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One unit of input: a payload (Kinesis record), a chunk of text lines (a file), or one
    record of a backsplash object (already decoded, or corrupt).

    Attributes:
        payload: record bytes for ``transforms.pipeline.transform_payload``.
        lines: text lines for ``transforms.pipeline.transform_lines``.
        log_group: the bucket or a name for the file source (lines and backsplash records).
        log_stream: the object key or file name (lines and backsplash records).
        flow_fields: the fields a flow-log header named (lines only).
        origin: ``s3`` or ``text`` (lines only).
        decoded: a backsplash record's HEC events, for the endpoint it names (re-delivered
            as they are; failures go under ``replay-failed/``).
        corrupt: why a backsplash record cannot be re-delivered (it is dropped, with
            ``line``).
        dropped: a line that was not read, and why (``line_too_long``): the daemon counts
            one event dropped for that reason, with ``line`` and ``size``.
        line: the 1-based line of a backsplash record (or dropped line) in its object.
        size: the dropped line's length in bytes.
        position: where the source stands *before* this record, for :meth:`Source.release`
            (Kinesis: ``(shard id, previous sequence number)``; SQS: the message). Opaque.
    """

    payload: bytes | None = None
    lines: Sequence[str] | None = None
    log_group: str | None = None
    log_stream: str | None = None
    flow_fields: tuple[str, ...] | None = None
    origin: Origin = "s3"
    decoded: DecodedRecord | None = None
    corrupt: str | None = None
    dropped: str | None = None
    line: int | None = None
    size: int | None = None
    position: Any = field(default=None, compare=False, repr=False)


class Source(Protocol):
    """What the daemon needs from a source (see the module docstring)."""

    name: str

    @property
    def exhausted(self) -> bool:
        """True when a finite source has nothing more to give."""
        ...

    @property
    def attached(self) -> bool:
        """True once :meth:`attach` succeeded."""
        ...

    def lag_seconds(self) -> float | None:
        """The source's delay, when known."""
        ...

    def attach(self) -> None:
        """Connect and load positions."""
        ...

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """The next records; may wait briefly when there are none: at most ``wait_s`` when
        given (the daemon's deliverers have work due then), else ``poll_interval_s``."""
        ...

    def commit(self) -> int:
        """Everything polled so far is delivered: checkpoint / delete; returns items committed."""
        ...

    def release(self, records: Sequence[SourceRecord]) -> None:
        """``records`` (the tail of the last poll) were not delivered: do not commit them."""
        ...

    def close(self) -> None:
        """Release threads and handles."""
        ...


class EndlessSource:
    """What the sources that never run out (Kinesis, SQS/S3, the Firehose endpoint) share:
    their name and settings, the stop event, the clocks, and the parts of :class:`Source`
    that do not differ (``exhausted`` stays false; ``attached`` once :meth:`attach` set
    ``_attached``).

    Args:
        name: the source's name, for logs and health.
        settings: the ``[source]`` settings.
        stop_event: set on shutdown; waits end early (a fresh event when None).
        clock: monotonic clock.
        wall_clock: epoch seconds.
    """

    def __init__(
        self,
        name: str,
        settings: SourceSettings,
        *,
        stop_event: threading.Event | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._settings = settings
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._clock = clock
        self._wall_clock = wall_clock
        self._attached = False

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def attached(self) -> bool:
        return self._attached


def poll_wait(interval: float, wait_s: float | None) -> float:
    """How long a poll may wait: ``interval``, or ``wait_s`` when given and shorter."""
    return interval if wait_s is None else max(min(interval, wait_s), 0.0)
