"""The daemon's drainer (``[drain] enabled = true``): drain cycles on a thread of their own
beside the source, stopped with the daemon, counted on its ``/metrics``.

The drainer shares the daemon's stop event: the first SIGTERM stops it after its chunk in
flight (within ``settle_s``) while the daemon flushes its own. Its counters are
``forwarder_drain_<name>_total`` (:data:`~forwarder.drain.drainer.COUNTERS`). Log events:
``drain_started``, and ``drain_failed`` if the thread ever ends on an unexpected error (the
daemon goes on; what the drain had not replayed waits in the bucket).

With a backsplash bucket (or a ``[drain] source``) and ``/metrics`` served, the backlog is
measured in the background whether the drain is enabled or not
(:mod:`forwarder.drain.gauges`: ``forwarder_backlog_*{kind}``, ``forwarder_failure_queue_depth``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from config.drain import DrainSettings, state_option
from config.settings import Settings
from forwarder import aws
from forwarder.drain.backlog import Backlog, measure_backlog
from forwarder.drain.drainer import COUNTERS, DrainCounters, Drainer
from forwarder.drain.gauges import BACKLOG_INTERVAL_S, BacklogCollector, BacklogGauges

if TYPE_CHECKING:
    from forwarder.delivery.metrics import MetricsServer

_log = structlog.get_logger("forwarder.drain")

#: How long :meth:`DrainService.close` waits for the thread beyond the drain's ``settle_s``.
JOIN_SLACK_S: Final = 30.0


class DrainCollector(Collector):
    """The drain's counters as Prometheus counters, read at scrape time."""

    def __init__(self, counters: DrainCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        values = self._counters.snapshot()
        for name, text in COUNTERS.items():
            yield CounterMetricFamily(f"forwarder_drain_{name}", text, value=values[name])


class DrainService:
    """The daemon's drainer thread; does nothing unless ``drain.enabled``.

    Args:
        settings: the daemon's delivery settings.
        drain: the ``[drain]`` table.
        client_factory: boto3 clients by service name (the drain's S3 client).
        stop: the daemon's stop event.
        failure_queue: the push Lambda's on-failure SQS queue URL, whose depth ``/metrics``
            shows (None: not measured).
        backlog_interval_s: at most one backlog measurement per this many seconds.

    Raises:
        ConfigError: enabled without anything to drain (no ``source`` nor backsplash bucket).
    """

    def __init__(
        self,
        settings: Settings,
        drain: DrainSettings,
        *,
        client_factory: aws.ClientFactory,
        stop: threading.Event,
        failure_queue: str | None = None,
        backlog_interval_s: float = BACKLOG_INTERVAL_S,
    ) -> None:
        self.settle_s = drain.settle_s
        self._client_factory = client_factory
        self._failure_queue = failure_queue or drain.failure_queue
        self._backlog_interval_s = backlog_interval_s
        #: What the backlog gauges measure: the drain's source, else the backsplash's.
        self.backlog_source: str | None = drain.source or (
            f"s3://{settings.backsplash.bucket}/{settings.backsplash.prefix}"
            if settings.backsplash.bucket
            else None
        )
        self.backlog: BacklogGauges | None = None
        self.drainer: Drainer | None = None
        if drain.enabled:
            self.drainer = Drainer(
                settings,
                drain,
                s3_client=client_factory("s3"),
                state=state_option(drain.state, {}),
                stop=stop,
            )
        self._thread: threading.Thread | None = None

    def start(self, metrics: MetricsServer | None) -> None:
        """Start the thread, and count on ``metrics``' registry (when it serves); with a
        registry and a bucket, measure the backlog in the background for it."""
        if metrics is not None and self.backlog_source is not None:
            self.backlog = BacklogGauges(self._measurer(), interval_s=self._backlog_interval_s)
            metrics.registry.register(BacklogCollector(self.backlog))
            self.backlog.start()
        if self.drainer is None:
            return
        if metrics is not None:
            metrics.registry.register(DrainCollector(self.drainer.counters))
        self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
        self._thread.start()
        _log.info("drain_started", source=self.drainer.source)

    def _measurer(self) -> Callable[[], Backlog]:
        """One backlog measurement, with clients built here (on the calling thread)."""
        source = self.backlog_source
        assert source is not None
        s3 = self._client_factory("s3")
        queue = self._failure_queue
        sqs = self._client_factory("sqs") if queue is not None else None
        return lambda: measure_backlog(s3, source, failure_queue=queue, sqs=sqs)

    def _run(self) -> None:
        assert self.drainer is not None
        try:
            self.drainer.run()
        except Exception as exc:  # noqa: BLE001 - the daemon goes on; the bucket keeps the rest
            _log.error("drain_failed", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop the backlog measurements, and the drainer (after its chunk in flight), and
        wait for their threads."""
        if self.backlog is not None:
            self.backlog.close()
        if self.drainer is None or self._thread is None:
            return
        self.drainer.stop.set()
        self._thread.join(self.settle_s + JOIN_SLACK_S)
