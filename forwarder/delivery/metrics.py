"""Health and Prometheus metrics for the daemon, on a local HTTP port.

``GET /healthz``  liveness: 200 while the main loop turns (503 once it stalled or stopped).
``GET /readyz``   readiness: 200 when the source is attached, its last operation succeeded
                  (not failing and being retried) and HEC answered its health probe
                  (``/services/collector/health``) recently; else 503 with the reason.
``GET /metrics``  the Prometheus exposition (``prometheus_client``, a private registry).

Counters are read from the delivery ledger at scrape time, so the metrics *are* the ledger:
``forwarder_events_in_total``, ``forwarder_events_acknowledged_total``,
``forwarder_events_backsplashed_total``, ``forwarder_events_dropped_total{reason}``,
``forwarder_retries_total``, ``forwarder_resends_total``, ``forwarder_duplicates_possible_total``,
``forwarder_requests_total``, ``forwarder_backsplash_failed_total``,
``forwarder_fallback_index_resent_total`` (events re-sent to ``SPLUNK_FALLBACK_INDEX``),
``forwarder_source_errors_total{operation,kind}`` (failed source operations, each retried),
``forwarder_destination_events_total{destination,outcome}`` (only with ``[destinations.NAME]``
tables: ``in``, ``acknowledged``, ``backsplashed`` per destination, ``default`` included); gauges
``forwarder_pending_acks``, ``forwarder_events_in_flight``, ``forwarder_source_lag_seconds``,
``forwarder_spool_objects``, ``forwarder_spool_bytes``, ``forwarder_ready``,
``forwarder_hec_concurrency`` (requests allowed on the wire: ``SPLUNK_HEC_CONCURRENCY``, or the
adaptive limit as it stands),
``forwarder_checkpoints_total`` (a counter). The drain service registers its own collectors on
:attr:`MetricsServer.registry` (``forwarder_drain_*``, and the backlog gauges
``forwarder_backlog_*{kind}`` and ``forwarder_failure_queue_depth``: :mod:`forwarder.drain.gauges`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forwarder.delivery.ledger import Ledger

#: The ``outcome`` label of ``forwarder_destination_events_total`` and its ledger counter.
_DESTINATION_OUTCOMES: Final = (
    ("in", "events_in"),
    ("acknowledged", "acknowledged"),
    ("backsplashed", "backsplashed"),
)

#: How often the server loop checks for a shutdown request: bounds :meth:`MetricsServer.stop`.
_POLL_INTERVAL_S: Final = 0.05


@dataclass
class DaemonState:
    """What the daemon tells the metrics server; read from the server's threads.

    Attributes:
        ledger: the daemon's ledger: one combined view, shared by every deliverer (the main
            one and those re-delivering backsplash objects under ``replay-failed/``).
        pending_acks: unacknowledged requests over every deliverer (a callable, read at
            scrape time).
        concurrency: requests the main deliverer may have on the wire now (a callable).
        source_lag: the source's lag in seconds, when known.
        source_attached: the source is attached.
        hec_probe: probes HEC's health: (healthy, reason).
        spool_dir: the local spool directory, if any.
        heartbeat: monotonic time the main loop last turned.
        stall_after_s: liveness fails when the loop has not turned for this long.
        source_error: why the source is failing (its operations being retried), or None.
        source_errors: failed source operations, by (operation, kind).
    """

    ledger: Ledger
    pending_acks: Callable[[], int] = lambda: 0
    concurrency: Callable[[], int] = lambda: 1
    source_lag: Callable[[], float | None] = lambda: None
    source_attached: Callable[[], bool] = lambda: False
    hec_probe: Callable[[], tuple[bool, str]] = lambda: (True, "not probed")
    spool_dir: str | None = None
    heartbeat: float = field(default_factory=time.monotonic)
    stall_after_s: float = 300.0
    stopped: bool = False
    checkpoints: int = 0
    probe_ttl_s: float = 15.0
    source_error: str | None = None
    source_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    _probe_at: float = -1e18
    _probe: tuple[bool, str] = (False, "not probed yet")
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _errors_lock: threading.Lock = field(default_factory=threading.Lock)

    def beat(self) -> None:
        """The main loop turned."""
        self.heartbeat = time.monotonic()

    def source_failed(self, operation: str, kind: str, reason: str) -> None:
        """A source operation failed (it is retried): counted, and readiness turns false."""
        with self._errors_lock:
            key = (operation, kind)
            self.source_errors[key] = self.source_errors.get(key, 0) + 1
            self.source_error = f"{operation} failed: {reason}"

    def source_error_counts(self) -> list[tuple[tuple[str, str], int]]:
        """Failed source operations so far, by (operation, kind)."""
        with self._errors_lock:
            return sorted(self.source_errors.items())

    def source_recovered(self) -> None:
        """A source operation succeeded again."""
        self.source_error = None

    def live(self) -> tuple[bool, str]:
        """Liveness: the loop turns."""
        if self.stopped:
            return False, "stopped"
        idle = time.monotonic() - self.heartbeat
        if idle > self.stall_after_s:
            return False, f"main loop stalled for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness: source attached and not failing, and HEC healthy (probe cached for
        ``probe_ttl_s``)."""
        failing = self.source_error
        if failing is not None:
            return False, f"source failing: {failing}"
        if not self.source_attached():
            return False, "source not attached"
        with self._lock:
            now = time.monotonic()
            if now - self._probe_at >= self.probe_ttl_s:
                self._probe = self.hec_probe()
                self._probe_at = now
            healthy, reason = self._probe
        return (True, "ok") if healthy else (False, f"HEC unhealthy: {reason}")

    def spool_size(self) -> tuple[int, int]:
        """(objects, bytes) waiting in the spool."""
        if not self.spool_dir:
            return 0, 0
        directory = Path(self.spool_dir)
        if not directory.is_dir():
            return 0, 0
        files = [p for p in directory.rglob("*.gz") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)


class _LedgerCollector(Collector):
    def __init__(self, state: DaemonState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        data = state.ledger.summary()
        for name, key, text in (
            ("forwarder_events_in", "events_in", "Events handed to delivery (or dropped)."),
            ("forwarder_events_acknowledged", "acknowledged", "Events Splunk acknowledged."),
            ("forwarder_events_backsplashed", "backsplashed", "Events written to the backsplash."),
            ("forwarder_backsplash_failed", "backsplash_failed", "Events whose backsplash failed."),
            ("forwarder_retries", "retries", "Backoff sleeps scheduled."),
            ("forwarder_resends", "resends", "Batches re-sent after an ack timeout."),
            ("forwarder_duplicates_possible", "duplicates_possible", "Events possibly duplicated."),
            ("forwarder_requests", "requests", "HEC data requests sent."),
            ("forwarder_batches_sent", "batches_sent", "HEC requests accepted."),
            ("forwarder_ack_polls", "ack_polls", "Ack queries sent."),
            (
                "forwarder_fallback_index_resent",
                "fallback_index_resent",
                "Events re-sent to the fallback index after code 7.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=data[key])
        dropped = CounterMetricFamily(
            "forwarder_events_dropped", "Events dropped on purpose.", labels=["reason"]
        )
        for reason, count in sorted(data["dropped"].items()):
            dropped.add_metric([reason], count)
        yield dropped
        rows = data.get("destinations")
        if rows:  # only with [destinations.NAME] tables: one deliverer per destination
            by_destination = CounterMetricFamily(
                "forwarder_destination_events",
                "Events per destination: in, acknowledged, backsplashed.",
                labels=["destination", "outcome"],
            )
            for destination, row in sorted(rows.items()):
                for outcome, key in _DESTINATION_OUTCOMES:
                    by_destination.add_metric([destination, outcome], row[key])
            yield by_destination
        yield CounterMetricFamily(
            "forwarder_checkpoints", "Checkpoints committed.", value=state.checkpoints
        )
        errors = CounterMetricFamily(
            "forwarder_source_errors",
            "Failed source operations (each retried with backoff).",
            labels=["operation", "kind"],
        )
        for (operation, kind), count in state.source_error_counts():
            errors.add_metric([operation, kind], count)
        yield errors
        yield GaugeMetricFamily(
            "forwarder_events_in_flight", "Events not yet settled.", value=data["in_flight"]
        )
        yield GaugeMetricFamily(
            "forwarder_pending_acks", "Requests awaiting an ack.", value=state.pending_acks()
        )
        yield GaugeMetricFamily(
            "forwarder_hec_concurrency",
            "Requests allowed on the wire at once (SPLUNK_HEC_CONCURRENCY; adaptive: its limit).",
            value=state.concurrency(),
        )
        lag = state.source_lag()
        yield GaugeMetricFamily(
            "forwarder_source_lag_seconds",
            "Source delay (Kinesis MillisBehindLatest, SQS message age); NaN when unknown.",
            value=float("nan") if lag is None else lag,
        )
        objects, size = state.spool_size()
        yield GaugeMetricFamily("forwarder_spool_objects", "Objects in the spool.", value=objects)
        yield GaugeMetricFamily("forwarder_spool_bytes", "Bytes in the spool.", value=size)
        yield GaugeMetricFamily(
            "forwarder_ready", "1 when ready (see /readyz).", value=1 if state.ready()[0] else 0
        )


def build_registry(state: DaemonState) -> CollectorRegistry:
    """A private registry holding the daemon's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LedgerCollector(state))
    return registry


class MetricsServer:
    """Serves /healthz, /readyz and /metrics from a daemon thread.

    Args:
        state: the daemon's state.
        host: address to bind (loopback by default: metrics are not for the world).
        port: port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, state: DaemonState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.registry = build_registry(state)
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name="metrics",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL."""
        host = self._server.server_address[0]
        return f"http://{host!s}:{self.port}"

    def start(self) -> MetricsServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (within about ``_POLL_INTERVAL_S``); safe if never started."""
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever's next poll to notice
            self._thread.join(timeout=5)
        self._server.server_close()

    def exposition(self) -> bytes:
        """The current metrics text."""
        return generate_latest(self.registry)


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: access logs would drown the daemon's own."""

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, server.exposition(), CONTENT_TYPE_LATEST)
                return
            if path in ("/healthz", "/readyz"):
                check = server.state.live if path == "/healthz" else server.state.ready
                ok, reason = check()
                self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain")
                return
            self._send(404, b"not found\n", "text/plain")

    return Handler
