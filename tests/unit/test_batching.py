"""pack(), halve(), isolate() and the streaming Batcher: exact sizes, no empty body, linger."""

from __future__ import annotations

import time

import pytest

from forwarder.delivery.batching import Batch, Batcher, _wall_ms, body_size, halve, isolate, pack
from transforms.records import EncodedEvent, RawTarget


def events(*sizes: int) -> list[EncodedEvent]:
    return [EncodedEvent(b"x" * size, f"id{i}") for i, size in enumerate(sizes)]


def test_pack_respects_bytes_exactly() -> None:
    """A batch's body (payloads joined by newlines) never exceeds max_bytes."""
    batches = pack(events(4, 4, 4, 4), max_bytes=9, max_events=100)
    assert [len(b) for b in batches] == [2, 2]
    for batch in batches:
        assert len(batch.body()) == batch.nbytes <= 9


def test_pack_respects_event_count() -> None:
    batches = pack(events(*[1] * 7), max_bytes=1000, max_events=3)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_oversized_event_travels_alone() -> None:
    """An event above max_bytes is its own batch; its neighbours are not held back."""
    batches = pack(events(2, 50, 2), max_bytes=10, max_events=100)
    assert [b.nbytes for b in batches] == [2, 50, 2]


def test_pack_empty_and_metadata() -> None:
    target = RawTarget("src", "st", "idx", "host")
    assert pack([], 10, 10) == []
    (batch,) = pack(events(3), 10, 10, raw_target=target, arrival_ms=5)
    assert (batch.raw_target, batch.arrival_ms) == (target, 5)


def test_body_is_newline_joined() -> None:
    batch = pack([EncodedEvent(b'{"a":1}', None), EncodedEvent(b'{"b":2}', None)], 100, 10)[0]
    assert batch.body() == b'{"a":1}\n{"b":2}'
    assert body_size(batch.events) == len(batch.body())


def test_halve_keeps_order_sizes_and_metadata() -> None:
    batch = Batch(events(1, 2, 3, 4, 5), 19, RawTarget("s", None, None, None), 9)
    first, second = halve(batch)
    assert [e.event_id for e in (*first.events, *second.events)] == [f"id{i}" for i in range(5)]
    assert (first.nbytes, second.nbytes) == (len(first.body()), len(second.body()))
    assert second.raw_target == batch.raw_target
    assert second.arrival_ms == 9
    with pytest.raises(ValueError, match="one event"):
        halve(Batch(events(1), 1))


def test_isolate_cuts_out_one_event() -> None:
    batch = pack(events(1, 2, 3, 4), 100, 10)[0]
    before, bad, after = isolate(batch, 2)
    assert before is not None and after is not None
    assert [e.event_id for e in before.events] == ["id0", "id1"]
    assert bad.event_id == "id2"
    assert [e.event_id for e in after.events] == ["id3"]
    first, _, rest = isolate(batch, 0)
    assert first is None and rest is not None and len(rest) == 3
    with pytest.raises(IndexError):
        isolate(batch, 4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batcher_emits_full_batches_and_keeps_the_rest() -> None:
    """Full batches come out of add(); a partial one waits, then drain() gives it."""
    clock = FakeClock()
    batcher = Batcher(10, 100, 5.0, clock=clock, wall_ms=lambda: 1)
    assert batcher.add(events(4)) == []
    full = batcher.add(events(4, 4, 4))
    assert [len(b) for b in full] == [2]
    assert [e.event_id for e in full[0].events] == ["id0", "id0"]
    assert full[0].arrival_ms == 1
    assert batcher.pending_events == 2
    (rest,) = batcher.drain()
    assert len(rest) == 2 and rest.nbytes == 9
    assert batcher.drain() == []


def test_batcher_emits_an_exactly_full_batch_at_once() -> None:
    batcher = Batcher(9, 100, 5.0, clock=FakeClock())
    (full,) = batcher.add(events(4, 4))
    assert full.nbytes == 9
    assert batcher.pending_events == 0


def test_batcher_linger() -> None:
    """A partial batch ages out after linger_s; next_due() says when."""
    clock = FakeClock()
    batcher = Batcher(1000, 100, 2.0, clock=clock)
    batcher.add(events(3))
    assert batcher.next_due() == 102.0
    assert batcher.due() == []
    clock.now = 102.0
    (batch,) = batcher.due()
    assert len(batch) == 1
    assert batcher.next_due() is None


def test_batcher_never_mixes_raw_targets() -> None:
    """Each RawTarget has its own batch: a request carries one set of query parameters."""
    a, b = RawTarget("a", None, None, None), RawTarget("b", None, None, None)
    batcher = Batcher(1000, 2, 1.0, clock=FakeClock())
    assert batcher.add(events(1), a) == []
    assert batcher.add(events(1), b) == []
    (full,) = batcher.add(events(1), a)
    assert full.raw_target == a and len(full) == 2
    (rest,) = batcher.drain()
    assert rest.raw_target == b


def test_batcher_count_limit_with_many_events() -> None:
    batcher = Batcher(10_000, 3, 1.0, clock=FakeClock())
    out = batcher.add(events(*[1] * 10))
    assert [len(b) for b in out] == [3, 3, 3]
    assert [len(b) for b in batcher.drain()] == [1]


# Boundaries, secondary fields and branches that mutation testing showed unpinned
# (make mutation).


class CountingWall:
    """Epoch milliseconds that advance by 1000 at each reading: shows when it is read."""

    def __init__(self, start: int = 0) -> None:
        self.now = start - 1000
        self.reads = 0

    def __call__(self) -> int:
        self.now += 1000
        self.reads += 1
        return self.now


def test_wall_ms_is_integer_epoch_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = _wall_ms()
    after = time.time_ns() // 1_000_000
    assert type(value) is int
    assert before <= value <= after


def test_body_size_of_one_event_has_no_separator_and_of_none_is_zero() -> None:
    assert body_size(events(5)) == 5
    assert body_size(events(5, 3)) == 9
    assert body_size([]) == 0


def test_pack_keeps_a_body_of_exactly_max_bytes_and_splits_at_max_bytes_plus_one() -> None:
    """4 + newline + 5 is 10 bytes: one batch at max_bytes 10, two at max_bytes 9."""
    (exact,) = pack(events(4, 5), max_bytes=10, max_events=100)
    assert exact.nbytes == len(exact.body()) == 10
    over = pack(events(4, 5), max_bytes=9, max_events=100)
    assert [b.nbytes for b in over] == [4, 5]


def test_pack_keeps_exactly_max_events_together() -> None:
    assert [len(b) for b in pack(events(1, 1, 1), 1000, 3)] == [3]
    assert [len(b) for b in pack(events(1, 1, 1, 1), 1000, 3)] == [3, 1]


def test_every_packed_batch_carries_the_metadata_not_only_the_last() -> None:
    target = RawTarget("src", "st", "idx", "host")
    batches = pack(events(4, 4, 4), 4, 100, raw_target=target, arrival_ms=77)
    assert len(batches) == 3
    assert {(b.raw_target, b.arrival_ms) for b in batches} == {(target, 77)}


def test_pack_without_metadata_gives_no_target_and_arrival_zero() -> None:
    (first, second) = pack(events(4, 4), 4, 100)
    assert (first.raw_target, first.arrival_ms) == (None, 0)
    assert (second.raw_target, second.arrival_ms) == (None, 0)


def test_halve_splits_two_events_into_one_each() -> None:
    first, second = halve(Batch(events(2, 3), 6))
    assert ([e.event_id for e in first.events], [e.event_id for e in second.events]) == (
        ["id0"],
        ["id1"],
    )


def test_halve_puts_the_smaller_half_first() -> None:
    first, second = halve(Batch(events(1, 1, 1, 1, 1), 9))
    assert (len(first), len(second)) == (2, 3)
    first, second = halve(Batch(events(*[1] * 6), 11))
    assert (len(first), len(second)) == (3, 3)


def test_halve_refuses_a_single_event_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"^cannot halve a batch of one event$"):
        halve(Batch(events(7), 7))


def test_isolate_the_last_event_has_nothing_after_it() -> None:
    batch = pack(events(1, 2, 3), 100, 10)[0]
    before, bad, after = isolate(batch, 2)
    assert after is None
    assert before is not None and [e.event_id for e in before.events] == ["id0", "id1"]
    assert before.nbytes == 4
    assert bad.event_id == "id2"


def test_isolate_one_past_the_end_names_the_index_and_size() -> None:
    batch = pack(events(1, 2, 3, 4), 100, 10)[0]
    with pytest.raises(IndexError, match=r"^event 4 is outside a batch of 4$"):
        isolate(batch, 4)
    with pytest.raises(IndexError, match=r"^event -1 is outside a batch of 4$"):
        isolate(batch, -1)


@pytest.mark.parametrize(("max_bytes", "max_events"), [(0, 1), (1, 0), (0, 0), (-5, 10)])
def test_batcher_refuses_limits_below_one(max_bytes: int, max_events: int) -> None:
    with pytest.raises(ValueError, match=r"^max_bytes and max_events must be positive$"):
        Batcher(max_bytes, max_events, 1.0)


def test_batcher_accepts_limits_of_one() -> None:
    batcher = Batcher(1, 1, 1.0, clock=FakeClock())
    (first, second) = batcher.add(events(1, 1))
    assert (first.nbytes, second.nbytes) == (1, 1)


def test_batcher_flush_inside_add_keeps_size_target_and_arrival() -> None:
    """A batch that fills up inside add() carries its size, raw target and first arrival."""
    clock = FakeClock()
    wall = CountingWall(start=5000)
    target = RawTarget("s", "st", None, None)
    batcher = Batcher(10, 100, 5.0, clock=clock, wall_ms=wall)
    assert batcher.add(events(4), target) == []  # opens the batch: arrival 5000
    clock.now = 103.0
    (full,) = batcher.add(events(4, 4, 4), target)  # 4 + 4 fill it; the next two wait
    assert [e.event_id for e in full.events] == ["id0", "id0"]
    assert (full.nbytes, len(full.body())) == (9, 9)
    assert (full.raw_target, full.arrival_ms) == (target, 5000)
    # The rest opened at this add(): its linger and arrival start now.
    assert batcher.next_due() == 108.0
    (rest,) = batcher.drain()
    assert (rest.nbytes, rest.raw_target, rest.arrival_ms) == (9, target, 6000)


def test_batcher_reads_the_wall_clock_once_per_add() -> None:
    """Events handed over in one add() arrived together: every batch they open shares it."""
    wall = CountingWall(start=0)
    batcher = Batcher(4, 100, 5.0, clock=FakeClock(), wall_ms=wall)
    out = batcher.add(events(4, 4, 4, 4))
    assert [b.arrival_ms for b in out] == [0, 0, 0, 0]
    assert wall.reads == 1
    batcher.add(events(1))
    batcher.add(events(1))  # joins the open batch: no new arrival time
    assert wall.reads == 2
    (rest,) = batcher.drain()
    assert rest.arrival_ms == 1000


def test_batcher_due_uses_the_time_it_is_given() -> None:
    clock = FakeClock()
    batcher = Batcher(1000, 100, 2.0, clock=clock)
    batcher.add(events(3))
    assert batcher.due(now=101.9) == []
    (batch,) = batcher.due(now=102.0)  # the clock still reads 100
    assert len(batch) == 1


def test_batcher_due_returns_each_aged_raw_target_with_its_own_events() -> None:
    clock = FakeClock()
    wall = CountingWall(start=10_000)
    a, b = RawTarget("a", None, None, None), RawTarget("b", None, None, None)
    batcher = Batcher(1000, 100, 1.0, clock=clock, wall_ms=wall)
    batcher.add(events(1), a)
    clock.now = 100.5
    batcher.add(events(2, 2), b)
    clock.now = 101.0
    (aged,) = batcher.due()
    assert (aged.raw_target, len(aged), aged.arrival_ms) == (a, 1, 10_000)
    clock.now = 101.5
    (later,) = batcher.due()
    assert (later.raw_target, len(later), later.nbytes, later.arrival_ms) == (b, 2, 5, 11_000)
    assert batcher.due() == []
