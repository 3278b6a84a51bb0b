"""The backlog on the daemon's ``/metrics``: measured in the background, read at scrape time.

:class:`BacklogGauges` runs :func:`~forwarder.drain.backlog.measure_backlog` (it lists the
bucket: never on the scrape path, never on the daemon's loop) on a thread of its own, at most
every ``interval_s`` (:data:`BACKLOG_INTERVAL_S` by default), and keeps the last result.
:class:`BacklogCollector` exposes it:

- ``forwarder_backlog_objects{kind}``, ``forwarder_backlog_bytes{kind}``,
  ``forwarder_backlog_oldest_age_seconds{kind}``: per kind (``splunk-failed``,
  ``processing-failed``, ``decompression-failed``, ``replay-failed``, and ``other`` when
  objects lie under no kind's folder); ``replayed/`` (archived) is not backlog. The age is
  the oldest object's at the time of the measurement.
- ``forwarder_failure_queue_depth``: the push Lambda's failure queue
  (``ApproximateNumberOfMessages``), only when a failure queue is configured.

Nothing is exposed before the first measurement succeeds. A failed measurement keeps the last
values and logs ``backlog_unmeasured`` once per failure streak (a warning, with the error);
the first success after it logs ``backlog_measured`` (with the failures in the streak).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forwarder.drain.backlog import Backlog

_log = structlog.get_logger("forwarder.drain")

#: Seconds between two measurements at least (each lists the backsplash prefix).
BACKLOG_INTERVAL_S: Final = 60.0
#: How long :meth:`BacklogGauges.close` waits for a listing in flight (the thread is a daemon
#: thread: an S3 call that hangs does not hold the daemon's exit).
CLOSE_WAIT_S: Final = 5.0


#: ``forwarder_backlog_<name>{kind}``: (name, attribute of a ``KindBacklog``, help).
_FAMILIES: Final = (
    ("objects", "objects", "Backsplash objects waiting, by kind."),
    ("bytes", "bytes", "Backsplash bytes waiting, by kind."),
    (
        "oldest_age_seconds",
        "oldest_age_s",
        "Age of the oldest backsplash object, by kind, when measured (0 when none).",
    ),
)


class BacklogGauges:
    """The last backlog measurement, refreshed in the background.

    Args:
        measure: takes one measurement (lists S3; may raise).
        interval_s: at most one measurement per this many seconds.
        clock: monotonic clock (tests inject one and call :meth:`refresh`).
        log: where ``backlog_unmeasured`` / ``backlog_measured`` go.
    """

    def __init__(
        self,
        measure: Callable[[], Backlog],
        *,
        interval_s: float = BACKLOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        log: Any = _log,
    ) -> None:
        self._measure = measure
        self.interval_s = interval_s
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._latest: Backlog | None = None
        self._next_at: float | None = None
        self._failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def latest(self) -> Backlog | None:
        """The last successful measurement (None before the first)."""
        with self._lock:
            return self._latest

    def refresh(self) -> bool:
        """Measure if ``interval_s`` has passed since the last attempt (or none was made).

        Returns:
            Whether a measurement was taken and succeeded.
        """
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            return False
        self._next_at = now + self.interval_s
        try:
            backlog = self._measure()
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last values
            self._failures += 1
            if self._failures == 1:
                self._log.warning(
                    "backlog_unmeasured",
                    error=f"{type(exc).__name__}: {exc}",
                    keeping="the last values" if self.latest is not None else "none yet",
                )
            return False
        if self._failures:
            self._log.info("backlog_measured", after_failures=self._failures)
            self._failures = 0
        with self._lock:
            self._latest = backlog
        return True

    def start(self) -> BacklogGauges:
        """Measure on a daemon thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="backlog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            assert self._next_at is not None
            self._stop.wait(max(self._next_at - self._clock(), 0.0))

    def close(self) -> None:
        """Stop the thread (a listing in flight is waited for up to :data:`CLOSE_WAIT_S`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT_S)


class BacklogCollector(Collector):
    """:class:`BacklogGauges`' last measurement as Prometheus gauges (see the module notes)."""

    def __init__(self, gauges: BacklogGauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        backlog = self._gauges.latest
        if backlog is None:
            return
        for name, attribute, text in _FAMILIES:
            family = GaugeMetricFamily(f"forwarder_backlog_{name}", text, labels=["kind"])
            for kind, row in sorted(backlog.by_kind.items()):
                family.add_metric([kind], float(getattr(row, attribute)))
            yield family
        if backlog.failure_queue_depth is not None:
            yield GaugeMetricFamily(
                "forwarder_failure_queue_depth",
                "Messages in the push Lambda's failure queue (ApproximateNumberOfMessages).",
                value=backlog.failure_queue_depth,
            )
