"""Smoke test of the delivery benchmarks' own senders (no timing): the minimal sender, the
reference ``forward`` is measured against, and the wire floor's concurrent clients deliver
every event, acknowledged, to real emulators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_delivery, bench_processes
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import FlowLogGenerator, cloudwatch_payload
from tests.conftest import TEST_TOKEN

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_minimal_sender_delivers_every_event_in_several_batches(
    emulator: HecEmulator, tmp_path: Path
) -> None:
    lines = list(FlowLogGenerator(seed=5).lines(12_000))  # about 2.6 MB of JSON: 3 batches
    payload = tmp_path / "cloudwatch.json.gz"
    payload.write_bytes(cloudwatch_payload(lines, log_stream="smoke"))
    done = subprocess.run(
        [sys.executable, str(bench_processes.MINIMAL_SENDER), emulator.url, TEST_TOKEN,
         str(payload)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12000"]
    stats = emulator.stats()
    assert stats.events_indexed == 12_000
    assert stats.data_requests == 3
    events = emulator.indexed_events()
    assert [event["event"] for event in events] == lines
    assert events[0]["source"] == "/aws/vpc/flowlogs:smoke"


def test_wire_floor_clients_deliver_every_event_to_two_emulators(tmp_path: Path) -> None:
    text = tmp_path / "flow.log"
    bench_delivery.write_flow_file(text, 12_000)
    bodies = list(bench_delivery._naive_bodies(text))
    token = bench_delivery.TOKEN
    with HecEmulator(token=token) as one, HecEmulator(token=token) as two:
        bench_processes.wire_floor(bodies, [one.url, two.url], clients=2)
        counts = [one.stats().events_indexed, two.stats().events_indexed]
    assert sum(counts) == 12_000
    assert all(counts)
