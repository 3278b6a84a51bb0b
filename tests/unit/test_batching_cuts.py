"""Batch-wide batching against the straightforward per-event path, over generated input.

``pack`` and ``Batcher.add`` cut batches with ``accumulate`` and ``bisect`` over the payload
sizes, and the deliverer keeps the transforms' events as texts (``TextEvents``): sizes read as
``len(text)`` where the text is ASCII, one join and one encode per body. Each is compared here
with the per-event reference it replaces (the loops below are the code as it was): the same
batches, the same events in the same order, the same sizes and bodies, byte for byte, for
non-ASCII text and lone surrogates, events exactly at and over the limits, and single events
larger than a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise

from hypothesis import given
from hypothesis import strategies as st

from forwarder.delivery.batching import Batch, Batcher, body_size, ends, halve, isolate, marks, pack
from forwarder.delivery.texts import (
    TextEvents,
    batchable,
    ids_of,
    joined,
    merged,
    payload_sizes,
    sizes_of,
)
from forwarder.delivery.work import Work
from forwarder.hec.client import gzip_body
from transforms.records import WIRE_ERRORS, EncodedEvent, EncodedEvents, InterleavedTexts

# ----------------------------------------------------------------- the per-event references


def reference_pack(
    events: Sequence[EncodedEvent], max_bytes: int, max_events: int
) -> list[tuple[list[EncodedEvent], int]]:
    """The per-event loop ``pack`` was: (events, nbytes) per batch."""
    batches: list[tuple[list[EncodedEvent], int]] = []
    limit = max_bytes + 1
    start = size = count = 0
    for index, event in enumerate(events):
        n = len(event[0]) + 1
        if count and (size + n > limit or count >= max_events):
            batches.append((list(events[start:index]), size - 1))
            start, size, count = index, 0, 0
        size += n
        count += 1
    if count:
        batches.append((list(events[start:]), size - 1))
    return batches


class ReferenceBatcher:
    """The per-event loop ``Batcher.add`` was (no linger: a wall clock that counts reads)."""

    def __init__(self, max_bytes: int, max_events: int) -> None:
        self.max_bytes, self.max_events = max_bytes, max_events
        self.events: list[EncodedEvent] | None = None
        self.size = 0
        self.arrival = 0
        self.reads = 0

    def _wall(self) -> int:
        self.reads += 1
        return self.reads

    def add(self, events: Sequence[EncodedEvent]) -> list[tuple[list[EncodedEvent], int, int]]:
        if not events:
            return []
        now = -1
        if self.events is None:
            now = self._wall()
            self.events, self.size, self.arrival = [], 0, now
        buffer, size, count = self.events, self.size, len(self.events)
        limit = self.max_bytes + 1
        out: list[tuple[list[EncodedEvent], int, int]] = []
        start = 0
        for index, event in enumerate(events):
            n = len(event[0]) + 1
            if count and (size + n > limit or count >= self.max_events):
                out.append(([*buffer, *events[start:index]], size - 1, self.arrival))
                buffer = []
                if now < 0:
                    now = self._wall()
                self.arrival = now
                start, size, count = index, 0, 0
            size += n
            count += 1
        self.events, self.size = [*buffer, *events[start:]], size
        if count >= self.max_events or size >= limit:
            out.append(self.take())
        return out

    def take(self) -> tuple[list[EncodedEvent], int, int]:
        assert self.events is not None
        taken = (self.events, self.size - 1, self.arrival)
        self.events = None
        return taken


def shape(batches: Sequence[Batch]) -> list[tuple[list[EncodedEvent], int, int]]:
    return [(list(batch.events), batch.nbytes, batch.arrival_ms) for batch in batches]


# ----------------------------------------------------------------- generated input

# Sizes around a small max_bytes, so batches end exactly at, one below and one over the limit,
# and single events are larger than a whole batch.
MAX_BYTES = st.integers(min_value=1, max_value=40)
MAX_EVENTS = st.integers(min_value=1, max_value=6)
SIZES = st.lists(st.integers(min_value=0, max_value=50), max_size=40)

# ASCII most of the time (the fast path), with non-ASCII characters and lone surrogates (which
# WIRE_ERRORS writes as ``\\udXXX``: six bytes from one character) now and then.
CHARS = st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.sampled_from(["é", "€", "😀", "\ud800", "\udfff", "\n", "\x00", "\x7f"]),
)
TEXT = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    st.text(CHARS, max_size=12),
)


@st.composite
def text_events(draw: st.DrawFn) -> EncodedEvents:
    """Transform output as the deliverer gets it: texts (a list, or interleaved columns)."""
    count = draw(st.integers(min_value=0, max_value=30))
    ids = draw(st.one_of(st.none(), st.lists(st.one_of(st.none(), TEXT), min_size=count,
                                             max_size=count)))  # fmt: skip
    if draw(st.booleans()):
        width = draw(st.integers(min_value=1, max_value=3))
        pieces = draw(st.lists(TEXT, min_size=width + 1, max_size=width + 1))
        columns = [draw(st.lists(TEXT, min_size=count, max_size=count)) for _ in range(width)]
        return EncodedEvents(InterleavedTexts(pieces, columns), ids)
    return EncodedEvents(draw(st.lists(TEXT, min_size=count, max_size=count)), ids)


def splits(events: Sequence[EncodedEvent], cuts: list[int]) -> list[Sequence[EncodedEvent]]:
    bounds = sorted({0, len(events), *(cut % (len(events) + 1) for cut in cuts)})
    return [events[low:high] for low, high in pairwise(bounds)]


# ----------------------------------------------------------------- cuts


@given(SIZES, MAX_BYTES, MAX_EVENTS)
def test_pack_gives_the_per_event_batches(
    sizes: list[int], max_bytes: int, max_events: int
) -> None:
    events = [EncodedEvent(b"x" * size, f"id{i}") for i, size in enumerate(sizes)]
    batches = pack(events, max_bytes, max_events)
    assert [(list(b.events), b.nbytes) for b in batches] == reference_pack(
        events, max_bytes, max_events
    )
    for batch in batches:
        assert batch.nbytes == len(batch.body())


@given(SIZES, MAX_BYTES, MAX_EVENTS, st.lists(st.integers(min_value=0), max_size=8))
def test_batcher_gives_the_per_event_batches_however_events_arrive(
    sizes: list[int], max_bytes: int, max_events: int, cuts: list[int]
) -> None:
    """Any split of the same events into add() calls: the reference's batches, arrival
    times included (the wall clock is read at the same moments)."""
    events = [EncodedEvent(b"y" * size, f"id{i}") for i, size in enumerate(sizes)]
    reference = ReferenceBatcher(max_bytes, max_events)
    reads = 0

    def wall() -> int:
        nonlocal reads
        reads += 1
        return reads

    batcher = Batcher(max_bytes, max_events, 60.0, clock=lambda: 0.0, wall_ms=wall)
    for part in splits(events, cuts):
        assert shape(batcher.add(part)) == reference.add(part)
        assert batcher.pending_events == len(reference.events or ())
    assert shape(batcher.drain()) == ([reference.take()] if reference.events else [])
    assert reads == reference.reads


@given(SIZES, MAX_BYTES, MAX_EVENTS, st.integers(min_value=0, max_value=60),
       st.integers(min_value=0, max_value=5))  # fmt: skip
def test_ends_with_an_open_batch_matches_the_greedy_rule(
    sizes: list[int], max_bytes: int, max_events: int, open_bytes: int, open_count: int
) -> None:
    """Each end is where the per-event rule cuts; what is left never passes a limit but by
    one oversized event alone."""
    open_count = min(open_count, max_events - 1)
    open_bytes = min(open_bytes, max_bytes) if open_count else 0
    found = ends(marks(sizes), max_bytes, max_events, open_bytes, open_count)
    expected, size, count = [], open_bytes, open_count
    for index, n in enumerate(payload + 1 for payload in sizes):
        if count and (size + n > max_bytes + 1 or count >= max_events):
            expected.append(index)
            size, count = 0, 0
        size += n
        count += 1
    assert found == expected


def test_marks_are_running_sizes_with_one_separator_each() -> None:
    assert marks([3, 0, 5]) == [0, 4, 5, 11]
    assert marks([]) == [0]
    assert marks([2, 2]) == list(accumulate([0, 3, 3]))


def test_an_event_exactly_at_the_limit_and_one_over() -> None:
    at = [EncodedEvent(b"a" * 10, "at"), EncodedEvent(b"b" * 11, "over"), EncodedEvent(b"", "e")]
    assert [(b.nbytes, len(b)) for b in pack(at, 10, 5)] == [(10, 1), (11, 1), (0, 1)]
    batcher = Batcher(10, 5, 1.0, clock=lambda: 0.0)
    assert [b.nbytes for b in batcher.add(at)] == [10, 11]  # each full at once
    assert [b.nbytes for b in batcher.drain()] == [0]


# ----------------------------------------------------------------- events kept as texts


@given(text_events())
def test_text_events_read_as_the_events_they_were_made_from(events: EncodedEvents) -> None:
    expected = list(events)
    kept = TextEvents.of(events)
    assert list(kept) == expected
    assert [kept[i] for i in range(len(kept))] == expected
    assert kept.sizes == payload_sizes(events.texts) == [len(e.payload) for e in expected]
    assert kept.ids == [e.event_id for e in expected]
    assert kept.body() == b"\n".join(e.payload for e in expected)
    assert sizes_of(kept) == sizes_of(expected) and ids_of(kept) == ids_of(expected)
    assert joined(kept) == joined(expected)
    assert body_size(kept) == body_size(expected) == len(joined(expected))


@given(
    text_events(), st.integers(min_value=0, max_value=31), st.integers(min_value=0, max_value=31)
)
def test_slices_of_text_events_are_text_events_of_the_same_events(
    events: EncodedEvents, low: int, high: int
) -> None:
    expected = list(events)[low:high]
    part = TextEvents.of(events)[low:high]
    assert isinstance(part, TextEvents)
    assert list(part) == expected
    assert part.sizes == [len(e.payload) for e in expected]
    assert part.body() == b"\n".join(e.payload for e in expected)


@given(st.lists(text_events(), max_size=4), st.booleans())
def test_merged_parts_are_the_events_in_order(parts: list[EncodedEvents], mix: bool) -> None:
    """TextEvents stay TextEvents; with a plain list among them the result is a list."""
    runs: list[Sequence[EncodedEvent]] = [TextEvents.of(part) for part in parts if len(part)]
    if mix:
        runs.append([EncodedEvent(b"plain", "p")])
    if not runs:
        return
    expected = [event for run in runs for event in run]
    result = merged(runs)
    assert list(result) == expected
    assert joined(result) == b"\n".join(e.payload for e in expected)
    assert sizes_of(result) == [len(e.payload) for e in expected]
    assert isinstance(result, TextEvents) == (not mix)


@given(st.lists(text_events(), max_size=5), MAX_BYTES, MAX_EVENTS)
def test_batcher_over_text_events_matches_the_per_event_path(
    submits: list[EncodedEvents], max_bytes: int, max_events: int
) -> None:
    """What the deliverer sends: the same batches (events, sizes, bodies byte for byte) as
    when every event is encoded first."""
    fast = Batcher(max_bytes, max_events, 60.0, clock=lambda: 0.0, wall_ms=lambda: 7)
    slow = Batcher(max_bytes, max_events, 60.0, clock=lambda: 0.0, wall_ms=lambda: 7)
    got: list[Batch] = []
    want: list[Batch] = []
    for events in submits:
        got += fast.add(batchable(events))
        want += slow.add(list(events))
    got += fast.drain()
    want += slow.drain()
    assert shape(got) == shape(want)
    assert [b.body() for b in got] == [b.body() for b in want]
    for batch in got:
        assert batch.nbytes == len(batch.body())
        if len(batch) > 1:  # 413 halving and bad-event isolation keep events and sizes exact
            first, second = halve(batch)
            assert list(first.events) + list(second.events) == list(batch.events)
            assert (first.nbytes, second.nbytes) == (len(first.body()), len(second.body()))
            before, bad, after = isolate(batch, len(batch) // 2)
            assert bad == batch.events[len(batch) // 2]
            for side in (before, after):
                assert side is None or side.nbytes == len(side.body())


@given(text_events(), st.booleans())
def test_a_parked_batch_of_text_events_restores_the_same_events(
    events: EncodedEvents, gzipped: bool
) -> None:
    if not len(events):
        return
    kept = TextEvents.of(events)
    batch = Batch(kept, body_size(kept), None, 5)
    work = Work.of(batch)
    body = batch.body()
    work.wire = gzip_body(body) if gzipped else body
    work.park()
    assert work.batch is None
    restored = work.restore(gzipped)
    assert list(restored.events) == list(events)
    assert restored.nbytes == batch.nbytes and restored.body() == body


def test_batchable_keeps_lists_and_text_events_and_lists_the_rest() -> None:
    plain = [EncodedEvent(b"a", None)]
    assert batchable(plain) is plain
    kept = TextEvents.of(EncodedEvents(["x"], ["i"]))
    assert batchable(kept) is kept
    assert isinstance(batchable(EncodedEvents(["x"])), TextEvents)
    assert batchable((EncodedEvent(b"t", None),)) == [EncodedEvent(b"t", None)]


def test_sizes_count_bytes_not_characters() -> None:
    texts = ["abc", "é", "€", "😀", "\ud800", ""]
    assert payload_sizes(texts) == [3, 2, 3, 4, 6, 0]
    interleaved = InterleavedTexts(["<", "|", ">"], [["a", "é"], ["\udfff", "b"]])
    assert payload_sizes(interleaved) == [len(t.encode("utf-8", WIRE_ERRORS)) for t in interleaved]
    assert payload_sizes(InterleavedTexts(["<", ">"], [["ab", "c"]])) == [4, 3]
