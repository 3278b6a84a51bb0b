"""The batch-wide shortcuts of ``transforms.shaping`` and of the rules give what one event at a
time gives.

Each shortcut is compared with a straightforward per-event reference over generated input,
including the cases that must leave it (odd timestamps, missing times).
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import json_batch
from transforms.errors import DecodeError
from transforms.event_time import iso_batch, time_parser
from transforms.options import DropRule, Shaping
from transforms.rules import _equals, compile_shaper, field_value, field_values
from transforms.shaping import _cloudwatch_time, _dash_value, _leading_zero, timed_events

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


# --- the rules' batch-wide steps ------------------------------------------------------------

_FIELD_VALUES = st.one_of(
    st.sampled_from(["DEBUG", "INFO", "debug", "", "1", "True"]),
    st.integers(-2, 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.lists(st.just("DEBUG"), max_size=1),
)


@st.composite
def _messages(draw: st.DrawFn) -> list[str]:
    """JSON log lines with a ``level`` (top-level, nested, repeated, absent) and non-JSON."""
    out = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["top", "nested", "duplicate", "absent", "text", "array"]))
        value = json.dumps(draw(_FIELD_VALUES))
        out.append(
            {
                "top": f'{{"level":{value},"msg":"a\\"b"}}',
                "nested": f'{{"ctx":{{"level":{value}}}}}',
                "duplicate": f'{{"level":"DEBUG","level":{value}}}',
                "absent": '{"msg":"DEBUG"}',
                "text": f"level={value}",
                "array": f'[{{"level":{value}}}]',
            }[kind]
        )
    return out


@given(
    messages=_messages(),
    wanted=st.sampled_from(["DEBUG", 1, True, False, 0, 1.0]),
    by_message=st.booleans(),
)
@settings(max_examples=800, deadline=None)
def test_drop_rules_keep_what_one_message_at_a_time_keeps(
    messages: list[str], wanted: str | int | bool | float, by_message: bool
) -> None:
    rules = [DropRule(field="level", equals=wanted)]
    if by_message:
        rules.append(DropRule(message="re:msg"))
    shaper = compile_shaper(Shaping(drop=tuple(rules)))

    def dropped(message: str) -> bool:
        value = json_batch.parse_json(message)
        level = value.get("level", json_batch.MISSING) if isinstance(value, dict) else None
        by_field = level is not json_batch.MISSING and _equals(level, wanted)
        return by_field or (by_message and "msg" in message)

    shaped = shaper.apply(messages, None, None)
    assert shaped.messages == [message for message in messages if not dropped(message)]
    assert shaped.filtered == sum(map(dropped, messages))


@given(objects=st.lists(st.dictionaries(st.sampled_from(["level", "x"]), _FIELD_VALUES)))
@settings(max_examples=300, deadline=None)
def test_field_values_of_objects_equal_one_lookup_each(objects: list[object]) -> None:
    for batch in (objects, [*objects, ["not an object"]]):
        assert field_values(batch, ("level",)) == [field_value(o, ("level",)) for o in batch]


_ISO = st.builds(
    "{}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}{}".format,
    st.sampled_from(["1970", "2023", "9999", "0001"]),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 24),
    st.integers(0, 60),
    st.integers(0, 60),
    st.sampled_from([".", ".", ",", "x"]),
    st.sampled_from(["000", "999", "123", "1a3", "\u0661\u0662\u0663", "12"]),
    st.sampled_from(["Z", "Z", "z", "+", "0"]),
)


@given(values=st.lists(_ISO | st.text(max_size=24), min_size=1, max_size=6))
@settings(max_examples=800, deadline=None)
def test_iso_batch_equals_the_one_by_one_parser(values: list[object]) -> None:
    fast = iso_batch(values)
    if fast is not None:
        assert fast == [time_parser("iso8601")(value) for value in values]


def test_equals_true_and_equals_one_do_not_share_a_compiled_shaper() -> None:
    """``True == 1`` in Python (same hash), not in JSON: each rule keeps its own meaning."""
    messages = ['{"level":1}', '{"level":true}']
    by_one = compile_shaper(Shaping(drop=(DropRule(field="level", equals=1),)))
    by_true = compile_shaper(Shaping(drop=(DropRule(field="level", equals=True),)))
    assert by_one.apply(messages, None, None).messages == ['{"level":true}']
    assert by_true.apply(messages, None, None).messages == ['{"level":1}']


# --- the flow-log JSON batch's scans --------------------------------------------------------


@given(text=st.text(alphabet=" -0a\0", max_size=30), start=st.integers(0, 31))
@settings(max_examples=1000, deadline=None)
def test_dash_value_finds_what_the_regular_expression_finds(text: str, start: int) -> None:
    found = re.compile(r" -(?= |\Z)").search(text, start)
    assert _dash_value(text, start) == (found.start() if found is not None else -1)


@given(values=st.lists(st.text(alphabet="0123", min_size=1, max_size=4), max_size=6))
@settings(max_examples=500, deadline=None)
def test_leading_zero_is_what_the_regular_expression_finds(values: list[str]) -> None:
    numbers = " ".join(values)
    expected = any(len(value) > 1 and value[0] == "0" for value in values)
    assert _leading_zero(numbers) == expected
