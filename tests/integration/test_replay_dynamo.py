"""Replays sharing a DynamoDB state (``--state dynamodb://TABLE``) end to end: moto in server
mode, the HEC emulator, real sockets. Two replays race on one bucket and no object is sent
twice; a crashed owner's expired lease is taken over (counted) and its recorded records are
not re-sent; a live lease keeps an object out of another run; a replay whose lease is taken
over meanwhile stops that object and records nothing more."""

from __future__ import annotations

import argparse
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from config.settings import Settings
from forwarder.backsplash.writers import ReplayFailedBacksplash
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, run
from forwarder.devtools.emulator import HecEmulator
from forwarder.replay.dynamo_state import DynamoReplayState
from forwarder.replay.engine import replay
from forwarder.replay.options import DynamoStateSpec, ReplayOptions
from forwarder.replay.report import ReplayReport, format_summary
from forwarder.replay.worker import Sink, default_deliverer_factory
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN, boto_client, create_replay_state_table
from tests.integration.conftest import BUCKET, FAST, delivery_settings
from tests.integration.test_replay import (
    SOURCE,
    event_ids,
    firehose_record,
    hec_event,
    hour_key,
    put_object,
)
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration

TABLE = "replay-state"
STATE = DynamoStateSpec(TABLE)


@pytest.fixture(name="settings")
def fixture_settings(emulator: HecEmulator) -> Settings:
    return delivery_settings(emulator.url)


@pytest.fixture(name="dynamodb")
def fixture_dynamodb(dynamodb_endpoint: str) -> Any:
    client = boto_client("dynamodb", dynamodb_endpoint)
    create_replay_state_table(client, TABLE)
    return client


def put_events(s3: Any, name: str, records: Sequence[Sequence[str]]) -> str:
    """An object of Firehose splunk-failed records, each holding the named events."""
    key = hour_key("splunk-failed", name)
    put_object(
        s3,
        key,
        [
            firehose_record(b"".join(hec_event(event) for event in names), n)
            for n, names in enumerate(records)
        ],
    )
    return key


def etag(s3: Any, key: str) -> str:
    return str(s3.head_object(Bucket=BUCKET, Key=key)["ETag"]).strip('"')


def owner_store(dynamodb: Any, owner: str, clock: Any = time.time) -> DynamoReplayState:
    return DynamoReplayState(TABLE, client=dynamodb, owner=owner, clock=clock)


def object_items(dynamodb: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The object items and the range items of the table."""
    items = dynamodb.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    objects = [item for item in items if item["sk"]["S"] == "object"]
    return objects, [item for item in items if item["sk"]["S"].startswith("r#")]


def test_two_replays_racing_send_every_object_once(
    emulator: HecEmulator, s3: Any, dynamodb: Any, settings: Settings
) -> None:
    """GIVEN 30 objects and two replays (the CLI with --state dynamodb://TABLE, and the
    engine in another thread), each with 2 workers and a commit per record, started together
    WHEN they race THEN every event is indexed exactly once, each object is done by one run
    and skipped by the other (done or leased elsewhere), no lease was taken over, and the
    counts add up."""
    expected: list[str] = []
    for n in range(30):
        records = [[f"race{n}-{r}-{i}" for i in range(1 + r % 2)] for r in range(3)]
        expected += [event for names in records for event in names]
        put_events(s3, f"race-{n:02d}.gz", records)

    reports: list[ReplayReport] = []

    def other() -> None:
        reports.append(
            replay(
                settings,
                SOURCE,
                ReplayOptions(state=STATE, concurrency=2, chunk_bytes=1),
                s3_client=s3,
            )
        )

    thread = threading.Thread(target=other, name="other-replay")
    thread.start()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [SOURCE, "--hec-url", emulator.url, "--state", f"dynamodb://{TABLE}", "--concurrency",
         "2", "--chunk-mb", "0.000001", "--json", "--no-progress"]
    )  # fmt: skip
    out = io.StringIO()
    status = run(args, CommandContext(args, dict(FAST), out))
    thread.join(timeout=300)
    assert not thread.is_alive()
    cli = json.loads(out.getvalue())
    engine = reports[0].to_dict()

    assert status == ExitStatus.OK, cli
    assert reports[0].exit_status == ExitStatus.OK, engine
    assert Counter(event_ids(emulator)) == Counter(expected)  # none lost, none twice
    for report in (cli, engine):
        assert report["objects_selected"] == 30
        assert (
            report["objects_done"]
            + report["objects_already_done"]
            + report["objects_leased_elsewhere"]
            == 30
        ), report
        assert (report["leases_taken_over"], report["leases_lost"]) == (0, 0)
        assert (report["objects_partial"], report["objects_failed"]) == (0, 0)
    assert cli["objects_done"] + engine["objects_done"] == 30
    assert cli["events_delivered"] + engine["events_delivered"] == len(expected)
    assert cli["records_handled"] + engine["records_handled"] == 90
    objects, ranges = object_items(dynamodb)
    assert [item["status"]["S"] for item in objects] == ["done"] * 30
    assert not any("lease_owner" in item for item in objects)
    assert ranges == []
    assert sum(int(item["events_delivered"]["N"]) for item in objects) == len(expected)


def test_a_crashed_owners_lease_is_taken_over_and_a_live_one_is_left_alone(
    emulator: HecEmulator, s3: Any, dynamodb: Any, settings: Settings
) -> None:
    """GIVEN object A leased by an owner that crashed after recording its first record (its
    lease expired long ago), and object B leased by a live owner WHEN replayed THEN A is taken
    over (counted, logged with the old owner), its recorded record is not re-sent, the rest
    is; B is skipped and counted, its events unsent, exit 0; once B's owner releases it, the
    next run sends B and skips A as done."""
    a_key = put_events(s3, "crashed.gz", [["a0"], ["a1", "a1b"], ["a2"]])
    b_key = put_events(s3, "live.gz", [["b0"], ["b1"]])
    long_ago = time.time() - 3600
    dead = owner_store(dynamodb, "dead-owner", clock=lambda: long_ago)
    a_id = dead.claim(BUCKET, a_key, etag(s3, a_key), 1, "splunk-failed").object_id
    assert a_id is not None
    dead.record_chunk(a_id, [(0, None, 1, "delivered")], delivered=1, failed=0)
    alive = owner_store(dynamodb, "live-owner")
    b_id = alive.claim(BUCKET, b_key, etag(s3, b_key), 1, "splunk-failed").object_id
    assert b_id is not None

    with capture_logs() as logs:
        report = replay(settings, SOURCE, ReplayOptions(state=STATE), s3_client=s3)
    assert report.exit_status == ExitStatus.OK, report.to_dict()
    assert (report.leases_taken_over, report.objects_leased_elsewhere) == (1, 1)
    assert (report.objects_done, report.records_already_handled) == (1, 1)
    assert Counter(event_ids(emulator)) == Counter(["a1", "a1b", "a2"])
    taken = [entry for entry in logs if entry["event"] == "replay_lease_taken_over"]
    assert [(entry["key"], entry["previous_owner"]) for entry in taken] == [(a_key, "dead-owner")]
    skipped = [entry for entry in logs if entry["event"] == "replay_object_skipped"]
    assert [entry["key"] for entry in skipped] == [b_key]
    assert dead.is_done(BUCKET, a_key, etag(s3, a_key))
    assert alive.renew_lease(b_id)  # still the live owner's

    alive.release_lease(b_id)
    again = replay(settings, SOURCE, ReplayOptions(state=STATE), s3_client=s3)
    assert again.exit_status == ExitStatus.OK
    assert (again.objects_done, again.objects_already_done, again.leases_taken_over) == (1, 1, 0)
    assert Counter(event_ids(emulator)) == Counter(["a1", "a1b", "a2", "b0", "b1"])


class StealingSink:
    """A deliverer whose first flush lets another owner take the object's lease over (as if
    this replay had stalled past its lease)."""

    def __init__(self, inner: Sink, steal: Any) -> None:
        self._inner = inner
        self._steal = steal

    @property
    def ledger(self) -> Any:
        return self._inner.ledger

    @property
    def fatal(self) -> Any:
        return self._inner.fatal

    def submit(self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        self._inner.submit(events, raw_target)

    def flush(self, deadline: float | None = None) -> None:
        self._steal()
        self._inner.flush(deadline)

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        self._inner.close(deadline, summarize=summarize)

    def release(self) -> None:
        self._inner.release()


def test_a_lease_taken_over_mid_object_stops_it_without_recording(
    emulator: HecEmulator, s3: Any, dynamodb: Any, settings: Settings
) -> None:
    """GIVEN a replay committing per record WHEN another owner takes its lease over during
    the first chunk THEN the chunk is not recorded, the object stops (nothing more is sent),
    ``replay_lease_lost`` is logged and counted; the new owner holds the lease and finds no
    record handled (it re-sends that chunk: the duplicate its takeover counts)."""
    key = put_events(s3, "stolen.gz", [["s0"], ["s1"], ["s2"], ["s3"]])
    thief = owner_store(dynamodb, "thief", clock=lambda: time.time() + 3600)
    stolen: list[str] = []

    def steal() -> None:
        if not stolen:
            claim = thief.claim(BUCKET, key, etag(s3, key), 1, None)
            stolen.append(claim.lease)

    def factory(settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Sink:
        return StealingSink(default_deliverer_factory(settings, backsplash=backsplash), steal)

    with capture_logs() as logs:
        report = replay(
            settings,
            SOURCE,
            ReplayOptions(state=STATE, chunk_bytes=1),
            s3_client=s3,
            deliverer_factory=factory,
        )
    assert stolen == ["taken-over"]
    assert report.exit_status == ExitStatus.OK, report.to_dict()
    assert (report.leases_lost, report.records_handled) == (1, 0)
    assert (report.objects_done, report.objects_partial) == (0, 0)
    assert event_ids(emulator) == ["s0"]  # sent before the loss was known; nothing after
    lost = [entry for entry in logs if entry["event"] == "replay_lease_lost"]
    assert [entry["key"] for entry in lost] == [key]
    objects, ranges = object_items(dynamodb)
    assert [item["lease_owner"]["S"] for item in objects] == ["thief"]
    assert [item["records_handled"]["N"] for item in objects] == ["0"]
    assert ranges == []
    assert not thief.handled(BUCKET, key, etag(s3, key)).ranges


def test_a_missing_table_exits_2(emulator: HecEmulator, s3: Any, dynamodb_endpoint: str) -> None:
    """GIVEN --state dynamodb://TABLE naming no table WHEN run THEN exit 2, the report naming
    the table; nothing sent."""
    put_events(s3, "one.gz", [["x0"]])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [SOURCE, "--hec-url", emulator.url, "--token", TEST_TOKEN, "--state",
         "dynamodb://missing-table", "--json", "--no-progress"]
    )  # fmt: skip
    out = io.StringIO()
    assert run(args, CommandContext(args, dict(FAST), out)) == ExitStatus.USAGE
    document = json.loads(out.getvalue())
    assert "dynamodb://missing-table" in document["refused"]
    assert event_ids(emulator) == []


def test_acknowledged_events_the_state_could_not_record_count_as_possible_duplicates(
    emulator: HecEmulator,
    s3: Any,
    dynamodb: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN an object of three records and a DynamoDB state whose writes fail (an outage
    past botocore's retries) WHEN replayed with a commit per record THEN the first record's
    events are acknowledged but cannot be recorded: the run fails, logs
    ``replay_state_commit_failed`` and counts them as possible duplicates; the next run (the
    table back) sends them again, and exactly those are indexed twice."""
    put_events(s3, "outage.gz", [["d0", "d0b"], ["d1"], ["d2"]])
    outage = ClientError(
        {"Error": {"Code": "InternalServerError", "Message": "table unavailable"}},
        "TransactWriteItems",
    )

    def failing(*args: Any, **kwargs: Any) -> None:
        raise outage

    with monkeypatch.context() as patch:
        patch.setattr(DynamoReplayState, "record_chunk", failing)
        with capture_logs() as logs:
            report = replay(
                settings, SOURCE, ReplayOptions(state=STATE, chunk_bytes=1), s3_client=s3
            )
    assert report.exit_status != ExitStatus.OK
    assert report.events_unrecorded == 2, report.to_dict()
    (failed,) = [entry for entry in logs if entry["event"] == "replay_state_commit_failed"]
    assert failed["events"] == 2 and "InternalServerError" in failed["error"]
    (summary,) = [entry for entry in logs if entry["event"] == "delivery_summarized"]
    assert summary["duplicates_possible"] == 2 and summary["acknowledged"] == 2
    assert "possible duplicates" in format_summary(report)

    again = replay(settings, SOURCE, ReplayOptions(state=STATE), s3_client=s3)
    assert again.exit_status == ExitStatus.OK, again.to_dict()
    indexed = Counter(event_ids(emulator))
    assert indexed == Counter(["d0", "d0", "d0b", "d0b", "d1", "d2"])
    twice = sum(count - 1 for count in indexed.values())
    assert twice == report.events_unrecorded  # the count is the duplicates, no more
