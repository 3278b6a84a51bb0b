"""The daemon's ``[drain]`` table: a drainer thread beside the source empties the backsplash,
counts on ``/metrics``, and stops with the daemon."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from config.daemon import DaemonSettings, SourceSettings, load_daemon_settings
from config.drain import DrainSettings
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import Backsplash
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import HecEmulator
from forwarder.status import ExitStatus
from tests.conftest import boto_client
from tests.integration.conftest import BUCKET, PREFIX, delivery_settings
from tests.integration.test_daemon import wait_for
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[str, float]:
    text = requests.get(url, timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def event(n: int) -> EncodedEvent:
    body = {"time": 1764000000, "event": f"parked {n}", "fields": {"event_id": f"p{n}"}}
    return EncodedEvent(json.dumps(body).encode(), f"p{n}")


def test_daemon_drains_the_backsplash_beside_its_source(
    emulator: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    writer = Backsplash(s3, BUCKET, PREFIX, sleep=lambda s: None)
    for n in range(3):
        writer.write(
            [event(10 * n + i) for i in range(5)],
            Failure("Splunk.ConnectionTimeout", "down", 3, "event"),
        )
    read_end, write_end = os.pipe()
    config = DaemonSettings(
        source=SourceSettings(type="stdin", log_group="/app/live"),
        drain=DrainSettings(
            enabled=True,
            state=str(tmp_path / "drain.sqlite"),
            interval_s=0.05,
            pause_s=0.05,
            pause_max_s=0.2,
            probe_interval_s=0.1,
            settle_s=2.0,
        ),
        checkpoint_store="none",
        shutdown_grace_s=2.0,
        metrics_port=0,
    )
    with open(read_end, "rb") as stdin:
        daemon = Daemon(
            delivery_settings(emulator.url),
            config,
            client_factory=lambda service: boto_client(service, aws_endpoint),
            stdin=stdin,
        )
        status: list[int] = []
        thread = threading.Thread(target=lambda: status.append(daemon.run()), daemon=True)
        thread.start()
        try:
            wait_for(
                lambda: not s3.list_objects_v2(Bucket=BUCKET).get("KeyCount"),
                timeout=60,
                what="drain",
            )
            assert daemon.metrics is not None
            metrics_url = f"{daemon.metrics.url}/metrics"
            # The drain's counters move when a cycle ends, a moment after its last delete.
            wait_for(
                lambda: scrape(metrics_url).get("forwarder_drain_cycles_total", 0) >= 1,
                timeout=60,
                what="the first drain cycle to be counted",
            )
            samples = scrape(metrics_url)
        finally:
            os.close(write_end)  # stdin ends: the daemon stops, and its drainer with it
            thread.join(timeout=60)
    assert not thread.is_alive()
    assert status == [ExitStatus.OK]
    assert samples["forwarder_drain_events_delivered_total"] == 15
    assert samples["forwarder_drain_objects_deleted_total"] == 3
    assert samples["forwarder_drain_events_abandoned_total"] == 0
    indexed = sorted(str(e["fields"]["event_id"]) for e in emulator.indexed_events())
    assert indexed == sorted(f"p{10 * n + i}" for n in range(3) for i in range(5))
    assert daemon.drain._thread is not None and not daemon.drain._thread.is_alive()


def test_the_drain_table_in_the_daemon_settings(tmp_path: Path) -> None:
    """[drain] is read with [daemon] and [source]; its state defaults to replay's file."""
    document = {"source": {"type": "stdin"}, "drain": {"enabled": True, "max_attempts": 4}}
    settings = load_daemon_settings(document, {"XDG_STATE_HOME": str(tmp_path)})
    assert settings.drain.enabled and settings.drain.max_attempts == 4
    assert settings.drain.state == str(tmp_path / "firehose-splunk-forwarder" / "replay.sqlite")
    assert load_daemon_settings({}, {}).drain.enabled is False
