"""Drainers sharing one DynamoDB state (issue 13's "Two drainers"), and the backlog figures of
``forwarder replay --dry-run --json``: moto S3 in server mode, the atomic DynamoDB server
(moto's own conditional writes are not atomic), the HEC emulator, real sockets.

Two drainers race on one bucket: every event is indexed exactly once and the counts add up. A
crashed drainer's expired lease is taken over and counted (``leases_taken_over``): what it had
recorded is not sent again; what it sent without recording is, and those events are the only
duplicates. The ledger's ``duplicates_possible`` (re-sends after a lost ack) does not count
them: the drain cannot know what the dead owner sent, so it counts the objects taken over."""

from __future__ import annotations

import argparse
import io
import json
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from config.drain import DrainSettings
from config.settings import Settings
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, run
from forwarder.devtools.emulator import HecEmulator
from forwarder.drain.backlog import measure_backlog
from forwarder.drain.drainer import CycleResult, Drainer
from forwarder.drain.gate import GateResult, HecGate
from forwarder.drain.service import DrainCollector
from forwarder.replay.dynamo_state import DynamoReplayState
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN, boto_client, create_replay_state_table
from tests.integration.conftest import BUCKET, FAST, delivery_settings
from tests.integration.test_drain import FakeContext
from tests.integration.test_replay import (
    SOURCE,
    event_ids,
    firehose_record,
    hec_event,
    hour_key,
    put_object,
)
from tests.integration.test_replay_dynamo import put_events

pytestmark = pytest.mark.integration

TABLE = "drain-state"
STATE = f"dynamodb://{TABLE}"
OBJECTS = 40
#: A bound for a drainer to see its bucket empty, generous for a loaded 2-core machine.
BOUND_S = 300.0


@pytest.fixture(name="settings")
def fixture_settings(emulator: HecEmulator) -> Settings:
    return delivery_settings(emulator.url)


@pytest.fixture(name="dynamodb")
def fixture_dynamodb(dynamodb_endpoint: str) -> Any:
    client = boto_client("dynamodb", dynamodb_endpoint)
    create_replay_state_table(client, TABLE)
    return client


def drain_settings() -> DrainSettings:
    """Two objects at a time, a commit per record (many lease renewals), quick pauses."""
    return DrainSettings(
        source=SOURCE,
        concurrency=2,
        chunk_mb=0.000001,
        pause_s=0.05,
        pause_max_s=0.4,
        interval_s=0.05,
        probe_interval_s=0.5,
        settle_s=5.0,
    )


def left_in(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return sorted(item["Key"] for item in listed)


class StartTogether:
    """The gate: both drainers' first probe waits for the other's, then HEC's own gate."""

    def __init__(self, settings: Settings, barrier: threading.Barrier) -> None:
        self._gate = HecGate(settings)
        self._barrier = barrier
        self._first = True

    def __call__(self) -> GateResult:
        if self._first:
            self._first = False
            self._barrier.wait(timeout=BOUND_S)
        return self._gate()


def drain_until_empty(drainer: Drainer, results: list[CycleResult]) -> None:
    """Cycles until one finds nothing to replay (the other drainer may still hold leases:
    a cycle that did nothing waits a moment before looking again)."""
    end = time.monotonic() + BOUND_S
    while time.monotonic() < end:
        result = drainer.cycle()
        results.append(result)
        if result.outcome == "empty":
            return
        if not result.worked:
            drainer.stop.wait(0.05)


def test_two_drainers_racing_send_every_object_once(
    emulator: HecEmulator, s3: Any, dynamodb: Any, settings: Settings
) -> None:
    """GIVEN 40 objects and two drainers with one DynamoDB state, started together WHEN they
    race until the bucket is empty THEN every event is indexed exactly once, every object is
    replayed by one drainer and skipped by the other (done or leased elsewhere), nothing was
    taken over, re-sent or given up, and the counts add up."""
    expected: list[str] = []
    for n in range(OBJECTS):
        records = [[f"race{n}-{r}-{i}" for i in range(1 + r % 2)] for r in range(3)]
        expected += [event for names in records for event in names]
        put_events(s3, f"race-{n:02d}.gz", records)

    barrier = threading.Barrier(2)
    drainers = [
        Drainer(
            settings,
            drain_settings(),
            s3_client=boto_client("s3", s3.meta.endpoint_url),
            state=STATE,
            probe=StartTogether(settings, barrier),
        )
        for _ in range(2)
    ]
    results: list[list[CycleResult]] = [[], []]
    threads = [
        threading.Thread(target=drain_until_empty, args=(drainer, out), name=f"drainer-{n}")
        for n, (drainer, out) in enumerate(zip(drainers, results, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BOUND_S + 60)
    assert not any(thread.is_alive() for thread in threads)

    assert Counter(event_ids(emulator)) == Counter(expected)  # none lost, none twice
    assert left_in(s3) == []
    for out in results:
        assert out and out[-1].outcome == "empty", [r.outcome for r in out]
        assert {r.outcome for r in out} <= {"drained", "empty"}, [r.reason for r in out]
        for result in out:
            report = result.report
            assert report is not None
            assert (
                report.objects_done + report.objects_already_done + report.objects_leased_elsewhere
                == report.objects_selected
            ), report.to_dict()
            assert (report.objects_partial, report.objects_failed, report.leases_lost) == (0, 0, 0)
    reports = [r.report for out in results for r in out if r.report is not None]
    assert sum(report.objects_done for report in reports) == OBJECTS
    counters = [drainer.counters.snapshot() for drainer in drainers]
    total = {name: sum(c[name] for c in counters) for name in counters[0]}
    assert total["events_delivered"] == len(expected)
    assert total["objects_deleted"] == OBJECTS
    assert (total["leases_taken_over"], total["duplicates_possible"]) == (0, 0)
    assert (total["events_requeued"], total["events_abandoned"]) == (0, 0)
    items = dynamodb.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    objects = [item for item in items if item["sk"]["S"] == "object"]
    assert [item["status"]["S"] for item in objects] == ["done"] * OBJECTS
    assert not any("lease_owner" in item for item in objects)


def test_a_crashed_drainers_lease_is_taken_over_and_counted(
    emulator: HecEmulator, s3: Any, dynamodb: Any, settings: Settings
) -> None:
    """GIVEN an object whose drainer crashed an hour ago (its lease long expired) after
    recording its first record and sending its second without recording it WHEN another
    drainer cycles THEN it takes the lease over (``leases_taken_over`` 1, logged with the old
    owner), does not re-send the recorded record, re-sends the unrecorded one (the only
    duplicates: ``duplicates_possible`` stays 0, as no ack was lost) and drains the bucket."""
    key = put_events(s3, "crashed.gz", [["a0"], ["a1", "a1b"], ["a2"]])
    put_events(s3, "other.gz", [["b0"]])
    etag = str(s3.head_object(Bucket=BUCKET, Key=key)["ETag"]).strip('"')
    long_ago = time.time() - 3600
    dead = DynamoReplayState(TABLE, client=dynamodb, owner="dead-drainer", clock=lambda: long_ago)
    claim = dead.claim(BUCKET, key, etag, 1, "splunk-failed")
    assert claim.object_id is not None
    dead.record_chunk(claim.object_id, [(0, None, 1, "delivered")], delivered=1, failed=0)
    for event in ("a0", "a1", "a1b"):  # what the dead drainer had sent: a0 recorded, a1 not
        answer = requests.post(
            f"{emulator.url}/services/collector/event",
            data=hec_event(event),
            headers={
                "Authorization": f"Splunk {TEST_TOKEN}",
                "X-Splunk-Request-Channel": str(uuid.uuid4()),
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    drainer = Drainer(settings, drain_settings(), s3_client=s3, state=STATE)
    with capture_logs() as logs:
        result = drainer.cycle()
    assert result.outcome == "drained", result.reason
    assert result.report is not None and result.report.leases_taken_over == 1
    counters = drainer.counters.snapshot()
    assert counters["leases_taken_over"] == 1
    assert counters["duplicates_possible"] == 0  # only lost acks count there
    assert counters["events_delivered"] == 4  # a1, a1b, a2, b0
    assert Counter(event_ids(emulator)) == Counter({"a0": 1, "a1": 2, "a1b": 2, "a2": 1, "b0": 1})
    taken = [entry for entry in logs if entry["event"] == "replay_lease_taken_over"]
    assert [(entry["key"], entry["previous_owner"]) for entry in taken] == [(key, "dead-drainer")]
    assert left_in(s3) == []
    exposed = {m.name: m.samples[0].value for m in DrainCollector(drainer.counters).collect()}
    assert exposed["forwarder_drain_leases_taken_over"] == 1


def test_replay_dry_run_json_reports_the_backlog(emulator: HecEmulator, s3: Any) -> None:
    """``forwarder replay --dry-run --json`` carries the backlog per kind (what waits under
    the URI, whatever the selection), the figures of ``measure_backlog``."""
    put_events(s3, "one.gz", [["x0"], ["x1"]])
    put_events(s3, "two.gz", [["y0"]])
    put_object(s3, hour_key("processing-failed", "p.gz"), [firehose_record(b"raw", 0)])
    put_object(s3, hour_key("replay-failed/splunk-failed", "r.gz"), [firehose_record(b"r", 0)])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [SOURCE, "--hec-url", emulator.url, "--dry-run", "--json", "--no-progress",
         "--include", "splunk-failed"]
    )  # fmt: skip
    out = io.StringIO()
    status = run(args, CommandContext(args, dict(FAST), out))
    assert status == ExitStatus.OK
    backlog = json.loads(out.getvalue())["backlog"]
    assert emulator.indexed_events() == []

    measured = measure_backlog(s3, SOURCE).to_dict()
    assert backlog["by_kind"].keys() == measured["by_kind"].keys()
    for kind, row in measured["by_kind"].items():
        reported = backlog["by_kind"][kind]
        assert (reported["objects"], reported["bytes"]) == (row["objects"], row["bytes"])
        assert 0 <= reported["oldest_age_s"] <= row["oldest_age_s"]
    assert backlog["by_kind"]["splunk-failed"]["objects"] == 2
    assert backlog["by_kind"]["processing-failed"]["objects"] == 1
    assert backlog["by_kind"]["replay-failed"]["objects"] == 1
    assert (backlog["objects"], backlog["bytes"]) == (measured["objects"], measured["bytes"])
    assert backlog["objects"] == 3  # replay-failed/ is apart: what needs a person

    # The text summary of the same dry run ends with the same figures.
    args = parser.parse_args([SOURCE, "--hec-url", emulator.url, "--dry-run", "--no-progress"])
    out = io.StringIO()
    assert run(args, CommandContext(args, dict(FAST), out)) == ExitStatus.OK
    text = out.getvalue()
    total = f"backlog  3 objects  {measured['bytes']:,} bytes  oldest "
    assert total in text, text
    for kind, row in measured["by_kind"].items():
        assert re.search(rf"\n    {re.escape(kind)}\s+{row['objects']} objects\s+", text), kind


def test_the_drain_lambdas_emf_line_carries_the_failure_queue_depth(
    emulator: HecEmulator,
    s3: Any,
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a failure queue holding three messages WHEN the drain Lambda runs THEN its EMF
    line and its answer carry the queue's depth beside the (drained) backlog."""
    from forwarder import drain

    aws_endpoint = s3.meta.endpoint_url
    sqs = boto_client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName="push-failures")["QueueUrl"]
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"destination record {n}")
    put_events(s3, "waiting.gz", [["w0"], ["w1"]])
    drain.configure(
        settings,
        environ={"DRAIN_STATE": str(tmp_path / "state"), "DRAIN_SOURCE": SOURCE},
        client_factory=lambda service: boto_client(service, aws_endpoint),
        failure_queue=url,
    )
    try:
        answer = drain.handler({}, FakeContext(remaining_ms=120_000))
    finally:
        drain.reset()
    assert answer["outcome"] == "empty", answer["reason"]
    assert Counter(event_ids(emulator)) == Counter(["w0", "w1"])
    assert (answer["backlog"]["objects"], answer["backlog"]["failure_queue_depth"]) == (0, 3)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    document = json.loads(line)
    metrics = document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert {"Name": "FailureQueueDepth", "Unit": "Count"} in metrics
    assert (document["FailureQueueDepth"], document["BacklogObjects"]) == (3, 0)
