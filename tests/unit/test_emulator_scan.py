"""The HEC emulator's event-body scan: the one-call path for one event per line answers exactly
what the stream scan answers, or leaves the body to it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.devtools.emulator import _Rejection, _scan_events, _scan_lines, _scan_stream

FLOW = '{"time":1764000000,"source":"g:s","sourcetype":"aws:cloudwatchlogs:vpcflow","event":"2 x"}'

# Bodies the one-call path must leave to the stream scan, with what the stream scan answers.
TRICKY = [
    # A string "spanning" two lines ("}" then "{"): invalid for the stream scan (code 6).
    '{"a":"}\n{"}, {"event":"v"}',
    # An array spanning two lines and a second object in the second line: invalid too.
    '{"event":[{"b":1}\n{"c":2}]}, {"event":"d"}',
    '{"event":[{"b":1}\n{"c":2}]},{"event":"d"}',
    # Two objects on one line, with and without spaces: valid, two events.
    '{"event":"a"} , {"event":"b"}\n{"event":"c"}',
    '{"event":"a"}{"event":"b"}',
    # Pretty-printed, CRLF, blank lines, leading and trailing spaces, trailing newlines.
    '{\n  "event": "a"\n}\n{"event":"b"}',
    '{"event":"a"}\r\n{"event":"b"}\r\n',
    '{"event":"a"}\n\n{"event":"b"}\n',
    ' {"event":"a"}\n{"event":"b"} \n',
    '{"event":"a"}\n\n\n',
    # Rejections: not an object, no event, blank or null event, bad fields, bad JSON.
    '{"event":"a"}\n[1]',
    '{"event":"a"}\n{"time":1}',
    '{"event":"a"}\n{"event":""}',
    '{"event":null}',
    '{"event":"a","fields":{"x":{"y":1}}}',
    '{"event":"a","fields":{"x":"y"}}',
    '{"event":"a"}\n{"event":"b"',
    '{"event":"a"}\n{"event":"b"}}',
    '{"event":"a\nb"}',
    "",
    "\n",
]


def _same(body: str, indexes: list[str] | None = None) -> None:
    assert _scan_events(body, indexes) == _scan_stream(body, indexes)


@pytest.mark.parametrize("body", TRICKY)
def test_tricky_bodies_answer_as_the_stream_scan(body: str) -> None:
    _same(body)
    _same(body, ["main"])


def test_tricky_bodies_are_left_to_the_stream_scan() -> None:
    # The first three would parse as a JSON array of as many objects as lines (joined with
    # commas); none is one valid event per line.
    for body in TRICKY:
        assert _scan_lines(body, None) is None, body


def test_one_event_per_line_takes_the_one_call_path() -> None:
    body = "\n".join([FLOW] * 3)
    fast = _scan_lines(body, None)
    assert fast is not None
    assert fast == _scan_stream(body, None)
    assert fast[1] == [FLOW] * 3  # the client's own bytes, one output line per event
    assert _scan_lines(body + "\n", None) == fast


def test_index_checks_stay_with_the_stream_scan() -> None:
    body = '{"event":"a","index":"main"}\n{"event":"b","index":"other"}'
    assert _scan_lines(body, ["main"]) is None
    assert _scan_events(body, ["main"]) == _Rejection(7, 1)
    assert _scan_lines(body, None) == _scan_stream(body, None)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
_events = st.dictionaries(st.sampled_from(["event", "time", "index", "fields", "x"]), _values)
_separators = st.sampled_from(["\n", "\n", "\n", "", " ", "\r\n", "\n\n", " \n", "\t,\n"])


@given(st.lists(st.tuples(_events, _separators), max_size=6), st.booleans())
def test_generated_bodies_answer_as_the_stream_scan(
    items: list[tuple[dict[str, object], str]], indexes: bool
) -> None:
    body = "".join(json.dumps(event) + separator for event, separator in items)
    _same(body, ["main"] if indexes else None)
