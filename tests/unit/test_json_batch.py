"""One JSON parse per batch (``transforms.json_batch``) equals one parse per message.

The joined forms are only a speed-up: whenever ``parse_joined`` or ``parse_wrapped`` answers,
each element must be what ``parse_json`` makes of that message alone, whatever the messages
hold (messages cut in the middle of a value, two values in one message, escapes, non-ASCII,
lone surrogates, duplicate keys, deep nesting, whitespace JSON does not know).
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.json_batch import MISSING, parse_joined, parse_json, parse_messages, parse_wrapped

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
    | st.sampled_from(["}, {", "],[", '"', "\\", "\n", "\u2028", "é", "\U0001f600"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_CONTAINERS = st.lists(_VALUES, max_size=3) | st.dictionaries(
    st.text(max_size=3), _VALUES, max_size=4
)


@st.composite
def _json_texts(draw: st.DrawFn) -> str:
    """One JSON object or array as a logger might write it: spacing, escapes, duplicate keys."""
    value = draw(_CONTAINERS)
    text = json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r\n")])),
    )
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = json.dumps(next(iter(value)))
        text = text[:-1] + f",{key}:{draw(st.sampled_from(['1', '[2]', '{}']))}}}"  # duplicate
    return text + draw(st.sampled_from(["", " ", "\n", "\t \r", "\u3000", "\x1c"]))


@st.composite
def _batches(draw: st.DrawFn) -> list[str]:
    """JSON messages, some cut apart or run together (so that a joined parse could fuse or
    split them), some not JSON at all."""
    texts = draw(st.lists(_json_texts() | st.text(max_size=8), max_size=8))
    if texts and draw(st.booleans()):
        whole = "".join(texts)
        cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=6)))
        texts = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    return texts


def _check(texts: list[str]) -> None:
    alone = [parse_json(text) for text in texts]
    assert parse_messages(texts) == alone
    chosen = [text for text in texts if text[:1] in ("{", "[")]
    for joined in (parse_joined(chosen), parse_wrapped(chosen)):
        if joined is not None:
            assert joined == [parse_json(text) for text in chosen]
            assert MISSING not in joined


@given(texts=_batches())
@settings(max_examples=1500, deadline=None)
def test_joined_parses_equal_one_parse_per_message(texts: list[str]) -> None:
    _check(texts)


@given(texts=st.lists(_json_texts(), min_size=2, max_size=6))
@settings(max_examples=800, deadline=None)
def test_joined_parses_equal_one_parse_per_message_on_whole_messages(texts: list[str]) -> None:
    _check(texts)


@given(texts=st.lists(st.text(alphabet='[]{},"\n\t :1a\\\u00e9\ud800', max_size=14), max_size=10))
@settings(max_examples=1500, deadline=None)
def test_joined_parses_equal_one_parse_per_message_on_bracket_soup(texts: list[str]) -> None:
    _check(texts)


def test_flat_objects_take_the_cheapest_form() -> None:
    texts = ['{"level":"INFO","n":1}', '{"level":"DEBUG","msg":"a \\"b\\"\\n"} ', "[1, 2]"]
    assert parse_joined(texts) == [parse_json(text) for text in texts]


def test_messages_that_fuse_or_split_are_refused() -> None:
    fused = ['{"a":1},{"b":2}', '{"c":[{}', '{"d":2}]}']  # 3 elements in the joined array
    assert parse_joined(fused) is None
    assert parse_messages(fused) == [MISSING, MISSING, MISSING]
    split = ["[1", "2]", "{}"]
    assert parse_joined(split) is None
    assert parse_messages(split) == [MISSING, MISSING, {}]


def test_nested_objects_fall_back_to_the_wrapped_form() -> None:
    texts = ['{"a":{"b":1},"c":2}', '{"d":[1],"e":{"f":[]}}']
    assert parse_joined(texts) is None  # a value closes before a comma
    assert parse_wrapped(texts) == [{"a": {"b": 1}, "c": 2}, {"d": [1], "e": {"f": []}}]
    assert parse_messages(texts) == [parse_json(text) for text in texts]


def test_messages_with_line_breaks_fall_back_to_the_wrapped_form() -> None:
    texts = ['{"a":\n1}', '{"b":[1\r\n]\t}\n']
    assert parse_joined(texts) is None  # a line break in a message: the proof needs none
    assert parse_wrapped(texts) == [{"a": 1}, {"b": [1]}]


def test_duplicate_keys_keep_the_last_value_as_alone() -> None:
    texts = ['{"level":"DEBUG","level":"INFO"}', '{"t":1,"t":{"x":2}}']
    assert parse_messages(texts) == [{"level": "INFO"}, {"t": {"x": 2}}]


def test_too_deep_a_message_fails_alone_not_its_batch() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    texts = ['{"a":1}', deep, '{"b":2}']
    assert parse_messages(texts) == [{"a": 1}, MISSING, {"b": 2}]
