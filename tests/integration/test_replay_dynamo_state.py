"""The DynamoDB replay state (``--state dynamodb://TABLE``) against moto in server mode:
conditional lease writes (take, renew, expire, take over, release), handled ranges round
trips (split over several items), done objects, and a missing table."""

from __future__ import annotations

from typing import Any

import pytest

from config.errors import ConfigError
from forwarder.replay import dynamo_state
from forwarder.replay.dynamo_state import DynamoReplayState, decode_ranges, encode_ranges
from forwarder.replay.options import DynamoStateSpec
from forwarder.replay.state import LeaseLostError, Row
from forwarder.replay.state_store import open_state
from tests.conftest import boto_client, create_replay_state_table

pytestmark = pytest.mark.integration

TABLE = "replay-state"
LEASE_S = 120.0
OBJECT = ("backsplash", "fh/splunk-failed/2026/12/03/06/a#b.gz", "0123abcd")


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="dynamodb")
def fixture_dynamodb(dynamodb_endpoint: str) -> Any:
    client = boto_client("dynamodb", dynamodb_endpoint)
    create_replay_state_table(client, TABLE)
    return client


@pytest.fixture(name="clock")
def fixture_clock() -> Clock:
    return Clock()


def store(dynamodb: Any, clock: Clock, owner: str, **kwargs: Any) -> DynamoReplayState:
    return DynamoReplayState(
        TABLE, client=dynamodb, lease_s=LEASE_S, clock=clock, owner=owner, **kwargs
    )


def rows(*numbers: int, events: int = 2) -> list[Row]:
    return [(n, f"id{n}", events, "delivered") for n in numbers]


def range_items(dynamodb: Any) -> list[dict[str, Any]]:
    items = dynamodb.scan(TableName=TABLE)["Items"]
    return [item for item in items if item["sk"]["S"].startswith("r#")]


def test_a_live_lease_keeps_others_out_until_it_expires(dynamodb: Any, clock: Clock) -> None:
    """GIVEN owner A holds the lease WHEN B claims THEN held elsewhere; after A's lease
    expires B takes it over (naming A); A's renewal and writes are refused from then on."""
    a, b = store(dynamodb, clock, "A"), store(dynamodb, clock, "B")
    claim = a.claim(*OBJECT, 100, "splunk-failed")
    assert (claim.lease, claim.done, claim.previous_owner) == ("taken", False, None)
    assert claim.object_id == "s3://backsplash/fh/splunk-failed/2026/12/03/06/a#b.gz#0123abcd"
    assert b.claim(*OBJECT, 100, None).lease == "held-elsewhere"
    assert b.claim(*OBJECT, 100, None).object_id is None
    assert a.claim(*OBJECT, 100, None).lease == "taken"  # our own lease: taken again

    clock.now += LEASE_S - 1
    assert b.claim(*OBJECT, 100, None).lease == "held-elsewhere"
    clock.now += 2  # past A's expiry
    taken = b.claim(*OBJECT, 100, None)
    assert (taken.lease, taken.previous_owner) == ("taken-over", "A")
    assert taken.object_id == claim.object_id

    assert claim.object_id is not None
    assert a.renew_lease(claim.object_id) is False
    with pytest.raises(LeaseLostError):
        a.record_chunk(claim.object_id, rows(0, 1), delivered=4, failed=0)
    with pytest.raises(LeaseLostError):
        a.finish_object(claim.object_id)
    a.release_lease(claim.object_id)  # not ours: left alone
    item = b.object_item(*OBJECT)
    assert item is not None
    assert (item["lease_owner"], item["records_handled"], item["status"]) == ("B", 0, "partial")
    assert range_items(dynamodb) == []
    assert not b.handled(*OBJECT).ranges


def test_renewal_extends_the_lease(dynamodb: Any, clock: Clock) -> None:
    """GIVEN A renews every so often WHEN B claims after the first lease would have ended
    THEN it is still held elsewhere; a chunk commit renews too."""
    a, b = store(dynamodb, clock, "A"), store(dynamodb, clock, "B")
    object_id = a.claim(*OBJECT, 100, None).object_id
    assert object_id is not None
    clock.now += LEASE_S * 0.6
    assert a.renew_lease(object_id) is True
    clock.now += LEASE_S * 0.6
    assert b.claim(*OBJECT, 100, None).lease == "held-elsewhere"
    a.record_chunk(object_id, rows(0), delivered=2, failed=0)
    clock.now += LEASE_S * 0.6
    assert b.claim(*OBJECT, 100, None).lease == "held-elsewhere"
    item = a.object_item(*OBJECT)
    assert item is not None
    assert item["lease_expires"] == pytest.approx(clock.now - LEASE_S * 0.6 + LEASE_S)


def test_release_lets_the_next_owner_take_it_without_a_takeover(
    dynamodb: Any, clock: Clock
) -> None:
    """GIVEN A left an object partial and released its lease WHEN B claims THEN taken (no
    takeover: nothing unrecorded was sent), and B sees what A recorded."""
    a, b = store(dynamodb, clock, "A"), store(dynamodb, clock, "B")
    object_id = a.claim(*OBJECT, 100, None).object_id
    assert object_id is not None
    a.record_chunk(object_id, rows(0, 1, 2), delivered=6, failed=0)
    a.release_lease(object_id)
    claim = b.claim(*OBJECT, 100, None)
    assert (claim.lease, claim.previous_owner) == ("taken", None)
    assert b.handled(*OBJECT).ranges == [(0, 2)]


def test_handled_ranges_round_trip_over_several_items(
    dynamodb: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN chunks with gaps, one of them more ranges than an item holds WHEN read back
    THEN the same record numbers, merged; the counts add up; items stay bounded."""
    monkeypatch.setattr(dynamo_state, "MAX_RANGES_PER_ITEM", 3)
    a = store(dynamodb, clock, "A")
    object_id = a.claim(*OBJECT, 100, None).object_id
    assert object_id is not None
    first = [0, 1, 2, 4, 6, 7, 9, 11, 12, 13]  # ranges 0-2, 4, 6-7, 9, 11-13: two items
    a.record_chunk(object_id, rows(*first), delivered=18, failed=2)
    a.record_chunk(object_id, rows(14, 15, 20), delivered=6, failed=0)
    handled = a.handled(*OBJECT)
    assert handled.ranges == [(0, 2), (4, 4), (6, 7), (9, 9), (11, 15), (20, 20)]
    assert [n for n in range(22) if n in handled] == [*first, 14, 15, 20]
    items = range_items(dynamodb)
    assert len(items) == 3
    assert all(len(list(decode_ranges(item["ranges"]["S"]))) <= 3 for item in items)
    assert sum(int(item["events"]["N"]) for item in items) == 26
    item = a.object_item(*OBJECT)
    assert item is not None
    assert (item["records_handled"], item["events_delivered"], item["events_failed"]) == (
        13,
        24,
        2,
    )


def test_a_chunk_of_many_items_takes_several_transactions_counted_once(
    dynamodb: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN one range per item and two items per transaction WHEN a chunk of five ranges is
    recorded THEN five items in three transactions, every record handled, counts added once."""
    monkeypatch.setattr(dynamo_state, "MAX_RANGES_PER_ITEM", 1)
    monkeypatch.setattr(dynamo_state, "_PIECES_PER_TRANSACTION", 2)
    a = store(dynamodb, clock, "A")
    object_id = a.claim(*OBJECT, 100, None).object_id
    assert object_id is not None
    a.record_chunk(object_id, rows(0, 2, 4, 6, 8), delivered=10, failed=0)
    assert a.handled(*OBJECT).ranges == [(0, 0), (2, 2), (4, 4), (6, 6), (8, 8)]
    assert len(range_items(dynamodb)) == 5
    item = a.object_item(*OBJECT)
    assert item is not None
    assert (item["records_handled"], item["events_delivered"]) == (5, 10)


def test_a_done_object_is_skipped_and_its_ranges_forgotten(dynamodb: Any, clock: Clock) -> None:
    """GIVEN A finished an object WHEN anyone asks THEN it is done, its range items are
    gone, its lease is free; a claim says done and leaves no lease behind."""
    a, b = store(dynamodb, clock, "A"), store(dynamodb, clock, "B")
    object_id = a.claim(*OBJECT, 100, "splunk-failed").object_id
    assert object_id is not None
    assert not b.is_done(*OBJECT)
    a.record_chunk(object_id, rows(0, 1), delivered=4, failed=0)
    a.finish_object(object_id)
    a.set_disposition(object_id, "archived")
    assert b.is_done(*OBJECT)
    assert not b.is_done(OBJECT[0], OBJECT[1], "another-etag")  # a rewrite is a new object
    assert range_items(dynamodb) == []
    claim = b.claim(*OBJECT, 100, None)
    assert (claim.done, claim.lease) == (True, "taken")
    item = b.object_item(*OBJECT)
    assert item is not None
    assert "lease_owner" not in item
    assert (item["status"], item["disposition"], item["kind"]) == (
        "done",
        "archived",
        "splunk-failed",
    )
    assert item["finished_at"] == pytest.approx(clock.now)


def test_read_only_store_refuses_writes(dynamodb: Any, clock: Clock) -> None:
    """GIVEN a dry run's store WHEN it is asked to write THEN it refuses; reads work."""
    readonly = store(dynamodb, clock, "A", readonly=True)
    assert not readonly.is_done(*OBJECT)
    with pytest.raises(RuntimeError, match="read-only"):
        readonly.claim(*OBJECT, 1, None)


def test_a_missing_table_is_a_configuration_error(dynamodb_endpoint: str) -> None:
    """GIVEN a table name that does not exist WHEN opened and read THEN a ConfigError naming
    the table and the key schema to create (exit status 2 in a run)."""
    opened = open_state(
        DynamoStateSpec("no-such-table"),
        client_factory=lambda service: boto_client(service, dynamodb_endpoint),
    )
    with pytest.raises(ConfigError, match=r"dynamodb://no-such-table.*'pk'.*'sk'"):
        opened.is_done(*OBJECT)


def test_ranges_text_round_trip() -> None:
    assert encode_ranges([(0, 99), (120, 120)]) == "0-99,120-120"
    assert list(decode_ranges("0-99,120-120")) == [(0, 99), (120, 120)]
    assert list(decode_ranges("")) == []
