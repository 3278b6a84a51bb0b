"""The daemon's drainer (``[drain] enabled = true``): drain cycles on a thread of their own
beside the source, stopped with the daemon, counted on its ``/metrics``.

The drainer shares the daemon's stop event: the first SIGTERM stops it after its chunk in
flight (within ``settle_s``) while the daemon flushes its own. Its counters are
``forwarder_drain_<name>_total`` (:data:`~forwarder.drain.drainer.COUNTERS`). Log events:
``drain_started``, and ``drain_failed`` if the thread ever ends on an unexpected error (the
daemon goes on; what the drain had not replayed waits in the bucket).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import structlog
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from config.drain import DrainSettings, state_option
from config.settings import Settings
from forwarder import aws
from forwarder.drain.drainer import COUNTERS, DrainCounters, Drainer

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
    ) -> None:
        self.settle_s = drain.settle_s
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
        """Start the thread, and count on ``metrics``' registry (when it serves)."""
        if self.drainer is None:
            return
        if metrics is not None:
            metrics.registry.register(DrainCollector(self.drainer.counters))
        self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
        self._thread.start()
        _log.info("drain_started", source=self.drainer.source)

    def _run(self) -> None:
        assert self.drainer is not None
        try:
            self.drainer.run()
        except Exception as exc:  # noqa: BLE001 - the daemon goes on; the bucket keeps the rest
            _log.error("drain_failed", error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop the drainer (after its chunk in flight) and wait for its thread."""
        if self.drainer is None or self._thread is None:
            return
        self.drainer.stop.set()
        self._thread.join(self.settle_s + JOIN_SLACK_S)
