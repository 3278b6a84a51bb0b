"""SPLUNK_FALLBACK_INDEX against the HEC emulator: code 7 (incorrect index) costs no data.

The emulator refuses events naming an index outside its ``allowed_indexes`` with 400 code 7
and the event's number, as Splunk does for an index the token may not write.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from forwarder.backsplash.writers import Backsplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.metrics import DaemonState, MetricsServer
from forwarder.devtools.emulator import HecEmulator
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import backsplashed, delivery_settings, flow_events, raw_payload
from tests.integration.test_delivery import NoEventNumber
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def addressed(events: list[EncodedEvent], refused: set[int], index: str) -> list[EncodedEvent]:
    """``events`` with ``index`` set on those whose position is in ``refused``."""
    out = []
    for number, event in enumerate(events):
        if number in refused:
            obj = json.loads(event.payload)
            obj["index"] = index
            out.append(
                EncodedEvent(json.dumps(obj, separators=(",", ":")).encode(), event.event_id)
            )
        else:
            out.append(event)
    return out


def deliver(deliverer: Deliverer, events: list[EncodedEvent]) -> list[dict[str, Any]]:
    with capture_logs() as logs:
        deliverer.submit(events)
        deliverer.close()
    return logs


@pytest.fixture(name="strict_hec")
def fixture_strict_hec() -> Iterator[HecEmulator]:
    """A HEC whose token may write ``main`` and ``lastchance`` only."""
    with HecEmulator(token=TEST_TOKEN, allowed_indexes={"main", "lastchance"}) as emulator:
        yield emulator


def test_refused_events_land_in_the_fallback_index_with_orig_index(
    strict_hec: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN 3 of 30 events naming an index the token may not write WHEN delivered with
    SPLUNK_FALLBACK_INDEX THEN all 30 are indexed, those 3 in the fallback index with their
    own in orig_index, nothing is backsplashed, and the ledger balances and counts them."""
    events = addressed(flow_events(30), {4, 5, 21}, "secret_ops")
    settings = delivery_settings(strict_hec.url, SPLUNK_FALLBACK_INDEX="lastchance")
    deliverer = Deliverer(settings, backsplash=backsplash)
    logs = deliver(deliverer, events)

    indexed = strict_hec.indexed_events()
    assert sorted(e["fields"]["event_id"] for e in indexed) == sorted(
        str(e.event_id) for e in events
    )
    moved = {e["fields"]["event_id"]: e for e in indexed if e.get("index") == "lastchance"}
    assert sorted(moved) == sorted(str(events[n].event_id) for n in (4, 5, 21))
    for event in moved.values():
        assert event["fields"]["orig_index"] == "secret_ops"
        assert event["sourcetype"] == "aws:cloudwatchlogs:vpcflow"  # the rest unchanged
    assert backsplashed(s3) == []
    summary = deliverer.ledger.summary()
    assert summary["balanced"] and summary["acknowledged"] == 30
    assert summary["fallback_index_resent"] == 3
    resent = [line for line in logs if line["event"] == "fallback_index_resent"]
    assert len(resent) == 3 and all(line["index"] == "lastchance" for line in resent)
    assert not [line for line in logs if line["event"] == "hec_rejected"]


def test_a_refused_fallback_index_backsplashes_the_original_event(
    s3: Any, backsplash: Backsplash
) -> None:
    """GIVEN a fallback index the token may not write either WHEN an event is refused THEN it
    is re-sent once, refused again, and backsplashed as first sent (its own index, no
    orig_index); the rest is delivered and the ledger balances."""
    events = addressed(flow_events(20), {7}, "secret_ops")
    with HecEmulator(token=TEST_TOKEN, allowed_indexes={"main"}) as hec:
        settings = delivery_settings(hec.url, SPLUNK_FALLBACK_INDEX="lastchance")
        deliverer = Deliverer(settings, backsplash=backsplash)
        logs = deliver(deliverer, events)
        assert len(hec.indexed_events()) == 19
        assert hec.stats().rejected == {7: 2}  # the first send and the one re-send

    (record,) = backsplashed(s3)
    assert record["EventId"] == events[7].event_id
    assert record["errorCode"] == "Splunk.InvalidIndex"
    assert raw_payload(record) == events[7].payload
    summary = deliverer.ledger.summary()
    assert summary["balanced"]
    assert (summary["acknowledged"], summary["backsplashed"]) == (19, 1)
    assert summary["fallback_index_resent"] == 1
    assert [line["code"] for line in logs if line["event"] == "hec_rejected"] == [7]


def test_code_7_without_an_event_number_is_bisected_to_the_event(
    strict_hec: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    events = addressed(flow_events(16), {11}, "secret_ops")
    settings = delivery_settings(strict_hec.url, SPLUNK_FALLBACK_INDEX="lastchance")
    with NoEventNumber() as session:
        deliverer = Deliverer(settings, session=session, backsplash=backsplash)
        deliver(deliverer, events)
    indexed = strict_hec.indexed_events()
    assert sorted(e["fields"]["event_id"] for e in indexed) == sorted(
        str(e.event_id) for e in events
    )
    (moved,) = [e for e in indexed if e.get("index") == "lastchance"]
    assert moved["fields"] == {"event_id": events[11].event_id, "orig_index": "secret_ops"}
    assert backsplashed(s3) == []
    assert deliverer.ledger.balanced()


def test_without_a_fallback_index_refused_events_are_backsplashed(
    strict_hec: HecEmulator, s3: Any, backsplash: Backsplash
) -> None:
    events = addressed(flow_events(10), {2}, "secret_ops")
    deliverer = Deliverer(delivery_settings(strict_hec.url), backsplash=backsplash)
    deliver(deliverer, events)
    (record,) = backsplashed(s3)
    assert raw_payload(record) == events[2].payload
    summary = deliverer.ledger.summary()
    assert summary["balanced"] and summary["fallback_index_resent"] == 0


def test_the_daemon_metrics_export_the_count() -> None:
    ledger = Ledger()
    ledger.add(fallback_index_resent=3)
    server = MetricsServer(DaemonState(ledger=ledger)).start()
    try:
        text = requests.get(f"{server.url}/metrics", timeout=5).text
    finally:
        server.stop()
    assert "forwarder_fallback_index_resent_total 3.0" in text


def test_the_emulator_flag_refuses_other_indexes_with_code_7() -> None:
    """`hec-emulator --allowed-index main` answers code 7 to an event naming another index."""
    command = [sys.executable, "-m", "forwarder.devtools.emulator", "--port", "0"]
    command += ["--token", "t", "--no-acks", "--allowed-index", "main"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[-1]
            post = f"{url}/services/collector/event"
            auth = {"Authorization": "Splunk t"}
            with requests.Session() as session:
                refused = session.post(post, data='{"event":"x","index":"other"}', headers=auth)
                taken = session.post(post, data='{"event":"x","index":"main"}', headers=auth)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert (refused.status_code, refused.json()["code"]) == (400, 7)
    assert refused.json()["invalid-event-number"] == 0
    assert (taken.status_code, taken.json()["code"]) == (200, 0)
