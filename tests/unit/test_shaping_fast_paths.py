"""The batch-wide shortcuts of ``transforms.shaping`` give the objects one event at a time would.

Each shortcut is compared with a straightforward per-event reference over generated input,
including the cases that must leave it (odd timestamps, missing times).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.errors import DecodeError
from transforms.shaping import _cloudwatch_time, timed_events

ENV = '"source":"s","sourcetype":"t","event":'

_TIMESTAMPS = st.one_of(
    st.integers(min_value=1_000_000_000_000, max_value=9_999_999_999_999),
    st.integers(min_value=0, max_value=10**15),
    st.none(),
)


def _reference(
    timestamps: list[int | None] | None, times: list[str | None] | None, bodies: list[str]
) -> list[str]:
    out = []
    for i, body in enumerate(bodies):
        time = times[i] if times is not None else None
        if time is None and timestamps is not None:
            time = _cloudwatch_time(timestamps[i])
        out.append(f'{{"time":{time},{ENV}{body}}}' if time is not None else f"{{{ENV}{body}}}")
    return out


@st.composite
def _batches(
    draw: st.DrawFn,
) -> tuple[list[int | None] | None, list[str | None] | None, list[str]]:
    count = draw(st.integers(0, 6))
    bodies = [
        json.dumps(text) for text in draw(st.lists(st.text(), min_size=count, max_size=count))
    ]
    timestamps = draw(st.none() | st.lists(_TIMESTAMPS, min_size=count, max_size=count))
    time = st.sampled_from(["1700000000.5", "0", "1.25"])
    times = draw(
        st.none()
        | st.lists(time, min_size=count, max_size=count)
        | st.lists(time | st.none(), min_size=count, max_size=count)
    )
    return timestamps, times, bodies


@given(batch=_batches())
@settings(max_examples=600, deadline=None)
def test_timed_events_equal_one_object_per_event(
    batch: tuple[list[int | None] | None, list[str | None] | None, list[str]],
) -> None:
    timestamps, times, bodies = batch
    texts = timed_events(ENV, timestamps, times, bodies)
    assert list(texts) == _reference(timestamps, times, bodies)


def test_a_timestamp_out_of_range_fails_even_when_every_message_has_its_time() -> None:
    """Reading every time from the messages skips the CloudWatch times, but not their check."""
    with pytest.raises(DecodeError):
        timed_events(ENV, [10**400], ["1700000000.5"], ['"m"'])
    texts = timed_events(ENV, [1_700_000_000_123], ["1700000000.5"], ['"m"'])
    assert list(texts) == [f'{{"time":1700000000.5,{ENV}"m"}}']
