"""KinesisSource against a fake with Kinesis' exact end-of-shard and iterator semantics.

Kinesis (GetRecords API reference): once a closed shard is read to its end, the answer has no
records and a null (or absent) ``NextShardIterator``; a daemon that is caught up when a shard
closes sees the end only there, on a read with no records. A shard iterator expires five
minutes after it is handed out (``ExpiredIteratorException``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from config.daemon import SourceSettings
from forwarder.sources.checkpoints import SHARD_END, MemoryCheckpointStore, pin_position, pinned_at
from forwarder.sources.kinesis import LATEST_PIN_MARGIN_S, KinesisSource

STREAM = "s"


@dataclass
class FakeShard:
    parents: tuple[str, ...] = ()
    closed: bool = False
    #: (data, arrival epoch seconds); the sequence number is the index.
    records: list[tuple[bytes, float]] = field(default_factory=list)


class FakeKinesis:
    """Shards whose sequence numbers are list indexes; iterators are ``shard:next index``."""

    def __init__(self, omit_next_iterator: bool = False) -> None:
        self.shards: dict[str, FakeShard] = {}
        self.omit_next_iterator = omit_next_iterator
        self.iterator_kinds: list[tuple[str, str]] = []
        self.expire_next: set[str] = set()
        self.now = 1_764_000_000.0

    def put(self, shard_id: str, data: bytes) -> None:
        self.now += 1.0
        self.shards[shard_id].records.append((data, self.now))

    def list_shards(self, **kwargs: Any) -> dict[str, Any]:
        listed = []
        for shard_id, shard in self.shards.items():
            item: dict[str, Any] = {"ShardId": shard_id, "SequenceNumberRange": {}}
            if shard.parents:
                item["ParentShardId"] = shard.parents[0]
            if len(shard.parents) > 1:
                item["AdjacentParentShardId"] = shard.parents[1]
            if shard.closed:
                item["SequenceNumberRange"]["EndingSequenceNumber"] = str(len(shard.records) - 1)
            listed.append(item)
        return {"Shards": listed}

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        shard_id, kind = kwargs["ShardId"], kwargs["ShardIteratorType"]
        self.iterator_kinds.append((shard_id, kind))
        records = self.shards[shard_id].records
        if kind == "TRIM_HORIZON":
            start = 0
        elif kind == "LATEST":
            start = len(records)
        elif kind == "AFTER_SEQUENCE_NUMBER":
            start = int(kwargs["StartingSequenceNumber"]) + 1
        elif kind == "AT_TIMESTAMP":
            moment = kwargs["Timestamp"]
            at = moment.timestamp() if isinstance(moment, datetime) else float(moment)
            start = next((i for i, (_, t) in enumerate(records) if t >= at), len(records))
        else:
            raise AssertionError(kind)
        return {"ShardIterator": f"{shard_id}:{start}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard_id, _, index = ShardIterator.partition(":")
        if shard_id in self.expire_next:
            self.expire_next.discard(shard_id)
            raise ClientError(
                {"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}},
                "GetRecords",
            )
        shard = self.shards[shard_id]
        start = int(index)
        chunk = shard.records[start : start + Limit]
        end = start + len(chunk)
        answer: dict[str, Any] = {
            "Records": [
                {"Data": data, "SequenceNumber": str(start + i)}
                for i, (data, _) in enumerate(chunk)
            ],
            "MillisBehindLatest": 0 if end >= len(shard.records) else 1000,
        }
        if shard.closed and end >= len(shard.records):
            if not self.omit_next_iterator:
                answer["NextShardIterator"] = None
        else:
            answer["NextShardIterator"] = f"{shard_id}:{end}"
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {
        "type": "kinesis",
        "stream_name": STREAM,
        "poll_interval_s": 0.0,
        "shard_refresh_interval_s": 0.0,
    }
    values.update(overrides)
    return SourceSettings(**values)


def like_the_daemon(source: KinesisSource, rounds: int = 20) -> list[bytes]:
    """Poll, and commit only after rounds that took records (the daemon's checkpoint rule)."""
    got: list[bytes] = []
    for _ in range(rounds):
        records = source.poll(100)
        if records:
            got.extend(r.payload or b"" for r in records)
            source.commit()
    return got


def resharded(fake: FakeKinesis) -> None:
    """Close s0 and add its two children (a split), each with a record."""
    fake.shards["s0"].closed = True
    fake.shards["s1"] = FakeShard(parents=("s0",))
    fake.shards["s2"] = FakeShard(parents=("s0",))
    fake.put("s1", b"c1")
    fake.put("s2", b"c2")


@pytest.mark.parametrize("omit", [False, True], ids=["null-iterator", "absent-iterator"])
def test_end_of_shard_on_an_empty_read_is_committed_and_children_are_read(omit: bool) -> None:
    """GIVEN a caught-up reader (everything read is committed) WHEN the shard closes and the
    end comes on a read with no records THEN SHARD_END is written at once (no cycle with
    records is needed) and the children are read."""
    fake = FakeKinesis(omit_next_iterator=omit)
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"p0")
    fake.put("s0", b"p1")
    store = MemoryCheckpointStore()
    source = KinesisSource(fake, settings(), store)
    source.attach()
    assert like_the_daemon(source, rounds=3) == [b"p0", b"p1"]
    assert store.load(STREAM) == {"s0": "1"}
    resharded(fake)
    assert sorted(like_the_daemon(source)) == [b"c1", b"c2"]
    assert store.load(STREAM) == {"s0": SHARD_END, "s1": "0", "s2": "0"}


def test_restart_on_a_closed_shard_commits_its_end_and_reads_the_children() -> None:
    """GIVEN a checkpoint at the last record of a shard closed while the daemon was down
    (kill -9) WHEN a new daemon starts THEN it commits SHARD_END and reads the children."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"p0")
    resharded(fake)
    store = MemoryCheckpointStore()
    store.save(STREAM, {"s0": "0"})
    source = KinesisSource(fake, settings(), store)
    source.attach()
    assert sorted(like_the_daemon(source)) == [b"c1", b"c2"]
    assert store.load(STREAM)["s0"] == SHARD_END


def test_merge_waits_for_both_parents() -> None:
    """GIVEN two shards merged into one WHEN both parents end on empty reads THEN both are
    committed SHARD_END and only then is the child read."""
    fake = FakeKinesis()
    fake.shards["a"] = FakeShard()
    fake.shards["b"] = FakeShard()
    fake.put("a", b"a0")
    fake.put("b", b"b0")
    store = MemoryCheckpointStore()
    source = KinesisSource(fake, settings(), store)
    source.attach()
    assert sorted(like_the_daemon(source, rounds=3)) == [b"a0", b"b0"]
    fake.shards["a"].closed = fake.shards["b"].closed = True
    fake.shards["m"] = FakeShard(parents=("a", "b"))
    fake.put("m", b"m0")
    assert like_the_daemon(source) == [b"m0"]
    assert store.load(STREAM) == {"a": SHARD_END, "b": SHARD_END, "m": "0"}
    first_child_read = fake.iterator_kinds.index(("m", "TRIM_HORIZON"))
    assert {shard for shard, _ in fake.iterator_kinds[:first_child_read]} == {"a", "b"}


def test_shard_end_is_not_committed_past_records_still_in_doubt() -> None:
    """GIVEN records read from a shard and not yet committed (not delivered) WHEN the end
    comes on the next, empty read THEN SHARD_END waits for the commit (the records could be
    lost otherwise), and the children wait for it too."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"p0")
    store = MemoryCheckpointStore()
    source = KinesisSource(fake, settings(), store)
    source.attach()
    assert [r.payload for r in source.poll(100)] == [b"p0"]
    resharded(fake)
    for _ in range(5):
        assert source.poll(100) == []
    assert store.load(STREAM) == {}
    assert source.commit() == 1
    assert store.load(STREAM) == {"s0": SHARD_END}
    assert sorted(like_the_daemon(source)) == [b"c1", b"c2"]


def test_lag_grows_while_children_wait_and_while_reading_stops() -> None:
    """GIVEN a parent read to its end but not committed, its children waiting WHEN time
    passes THEN the lag is that time, not 0; and a shard no longer read falls behind by the
    time since its last read (beyond one poll interval)."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"p0")
    clock = Clock()
    source = KinesisSource(
        fake, settings(poll_interval_s=1.0), MemoryCheckpointStore(), clock=clock
    )
    source.attach()
    assert len(source.poll(100)) == 1
    assert source.lag_seconds() == 0.0
    clock.now += 0.5
    assert source.lag_seconds() == 0.0  # within one poll interval: still caught up
    clock.now += 60.0
    assert source.lag_seconds() == pytest.approx(59.5)  # nobody read for a minute
    resharded(fake)
    source.poll(100)  # the end, on an empty read; p0 is not committed: children wait
    clock.now += 120.0
    lag = source.lag_seconds()
    assert lag is not None and lag >= 120.0


def test_expired_first_latest_iterator_does_not_skip_records() -> None:
    """GIVEN a shard read from LATEST whose first iterator expires before its first read
    WHEN records arrived in between THEN they are read (AT_TIMESTAMP of the pin), not
    skipped by a new LATEST."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"old")
    fake.now += 2 * LATEST_PIN_MARGIN_S  # "old" is older than the pin's margin
    store = MemoryCheckpointStore()
    source = KinesisSource(
        fake, settings(start_position="LATEST"), store, wall_clock=lambda: fake.now
    )
    source.attach()
    pin = pinned_at(store.load(STREAM)["s0"])
    assert pin == pytest.approx(fake.now - LATEST_PIN_MARGIN_S, abs=0.001)
    fake.expire_next.add("s0")
    assert source.poll(100) == []  # the first iterator (LATEST) expired unused
    fake.put("s0", b"new-0")
    fake.put("s0", b"new-1")
    assert [r.payload for r in source.poll(100)] == [b"new-0", b"new-1"]
    assert fake.iterator_kinds == [("s0", "LATEST"), ("s0", "AT_TIMESTAMP")]


def test_latest_pin_survives_a_restart_and_a_release() -> None:
    """GIVEN a LATEST reader that took records but never committed WHEN it restarts (or
    releases them) THEN it reads them again from the pin, not from a new LATEST."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    store = MemoryCheckpointStore()
    wall = lambda: fake.now  # noqa: E731
    source = KinesisSource(fake, settings(start_position="LATEST"), store, wall_clock=wall)
    source.attach()
    assert source.poll(100) == []
    fake.put("s0", b"r0")
    fake.put("s0", b"r1")
    records = source.poll(100)
    assert [r.payload for r in records] == [b"r0", b"r1"]
    source.release(records)
    assert [r.payload for r in source.poll(100)] == [b"r0", b"r1"]

    restarted = KinesisSource(fake, settings(start_position="LATEST"), store, wall_clock=wall)
    restarted.attach()
    assert [r.payload for r in restarted.poll(100)] == [b"r0", b"r1"]
    assert restarted.commit() == 1
    assert store.load(STREAM) == {"s0": "1"}  # the sequence number replaces the pin
    assert fake.iterator_kinds[-1] == ("s0", "AT_TIMESTAMP")


def test_pin_positions_round_trip() -> None:
    assert pinned_at(pin_position(1_764_000_000.25)) == 1_764_000_000.25
    assert pinned_at("49590338271490256608559692538361571095921575989136588898") is None
    assert pinned_at(SHARD_END) is None and pinned_at(None) is None
    assert pinned_at("AT_TIMESTAMP:x") is None


class FailingOnceStore(MemoryCheckpointStore):
    """A store whose first save fails (DynamoDB unreachable for a moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def save(self, stream_name: str, positions: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("store unreachable")
        super().save(stream_name, positions)


def test_a_pin_that_could_not_be_saved_is_saved_on_the_next_attach() -> None:
    """GIVEN the pin's save fails at attach WHEN attach is retried (the daemon does) THEN the
    pin is saved then: a shard is never read from LATEST without a durable pin."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    store = FailingOnceStore()
    source = KinesisSource(fake, settings(start_position="LATEST"), store)
    with pytest.raises(OSError, match="unreachable"):
        source.attach()
    assert source._shards == {}  # no shard known before its pin is saved
    source.attach()
    assert pinned_at(store.load(STREAM)["s0"]) is not None


class FailingSaveStore(MemoryCheckpointStore):
    """A store that refuses saves while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def save(self, stream_name: str, positions: Any) -> None:
        if self.down:
            raise OSError("store unreachable")
        super().save(stream_name, positions)


def test_shard_end_is_retried_until_the_store_takes_it() -> None:
    """GIVEN the end of a shard on an empty read while the checkpoint store is down WHEN the
    store comes back THEN SHARD_END is written on a later poll (not kept in memory only) and
    the children are read."""
    fake = FakeKinesis()
    fake.shards["s0"] = FakeShard()
    fake.put("s0", b"p0")
    store = FailingSaveStore()
    source = KinesisSource(fake, settings(), store)
    source.attach()
    assert like_the_daemon(source, rounds=2) == [b"p0"]
    resharded(fake)
    store.down = True
    assert source.poll(100) == []  # the end, seen on an empty read
    with pytest.raises(OSError, match="unreachable"):
        source.poll(100)  # the store refuses before anything is read
    store.down = False
    assert sorted(like_the_daemon(source)) == [b"c1", b"c2"]
    assert store.load(STREAM)["s0"] == SHARD_END


def test_a_failed_read_after_records_keeps_them() -> None:
    """GIVEN a poll that read records from one shard WHEN the next shard's read fails THEN the
    poll returns the records (never lost to the exception); the failed shard comes next."""
    fake = FakeKinesis()
    fake.shards["a"] = FakeShard()
    fake.shards["b"] = FakeShard()
    fake.put("a", b"a0")
    fake.put("b", b"b0")
    real = fake.get_records
    failures = {"n": 0}

    def flaky(ShardIterator: str, Limit: int) -> dict[str, Any]:
        if not ShardIterator.startswith("a") and failures["n"] == 0:
            failures["n"] += 1
            raise ClientError({"Error": {"Code": "InternalFailure", "Message": "x"}}, "GetRecords")
        return real(ShardIterator=ShardIterator, Limit=Limit)

    fake.get_records = flaky  # type: ignore[method-assign]
    source = KinesisSource(fake, settings(), MemoryCheckpointStore())
    source.attach()
    got = [r.payload or b"" for r in source.poll(100)]
    assert failures["n"] == 1
    got += [r.payload or b"" for r in source.poll(100)]
    assert sorted(got) == [b"a0", b"b0"]
