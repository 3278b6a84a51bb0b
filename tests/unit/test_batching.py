"""pack(), halve(), isolate() and the streaming Batcher: exact sizes, no empty body, linger."""

from __future__ import annotations

import pytest

from forwarder.batching import Batch, Batcher, body_size, halve, isolate, pack
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
