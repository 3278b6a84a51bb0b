"""``RowTexts``: one template over row-major values, some rows whole, equals its texts.

The Firehose body is ``joined`` (one ``str.join`` over the values); the daemon reads the
texts one by one. Both must be the texts a per-row reference builds, for any pieces, values,
whole rows (first, last, next to each other) and separator.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.records import EncodedEvents, RowTexts

_TEXT = st.text(alphabet='ab{}"\\:,\n\u00e9\ud800', max_size=4)


@st.composite
def _rows(draw: st.DrawFn) -> tuple[list[str], list[str], dict[int, str]]:
    width = draw(st.integers(1, 4))
    count = draw(st.integers(0, 7))
    pieces = draw(st.lists(_TEXT, min_size=width + 1, max_size=width + 1))
    values = draw(st.lists(_TEXT, min_size=width * count, max_size=width * count))
    rows = draw(st.sets(st.integers(0, count - 1))) if count else set()
    whole = {row: draw(_TEXT) for row in rows}
    return pieces, values, whole


def _reference(pieces: list[str], values: list[str], whole: dict[int, str]) -> list[str]:
    width = len(pieces) - 1
    texts = []
    for row in range(len(values) // width):
        if row in whole:
            texts.append(whole[row])
            continue
        text = pieces[0]
        for i, value in enumerate(values[row * width : (row + 1) * width]):
            text += value + pieces[i + 1]
        texts.append(text)
    return texts


@given(rows=_rows(), separator=st.sampled_from(["", "\n", "--"]))
@settings(max_examples=1500, deadline=None)
def test_joined_and_texts_equal_the_per_row_texts(
    rows: tuple[list[str], list[str], dict[int, str]], separator: str
) -> None:
    pieces, values, whole = rows
    expected = _reference(pieces, values, whole)
    texts = RowTexts(pieces, values, whole)
    assert texts.joined(separator) == separator.join(expected)
    assert len(texts) == len(expected)
    assert list(texts) == expected
    assert texts[1:3] == expected[1:3]
    assert RowTexts(pieces, values, whole).joined(separator) == separator.join(expected)


@given(parts=st.lists(_rows(), max_size=4))
@settings(max_examples=500, deadline=None)
def test_concat_equals_the_texts_in_order(
    parts: list[tuple[list[str], list[str], dict[int, str]]],
) -> None:
    expected = [text for part in parts for text in _reference(*part)]
    joined = RowTexts.concat([RowTexts(*part) for part in parts])
    assert list(joined) == expected
    same = [(parts[0][0], values, whole) for _, values, whole in parts[:1] * 2] if parts else []
    rows = RowTexts.concat([RowTexts(*part) for part in same])
    assert isinstance(rows, RowTexts) or not same
    assert list(rows) == [text for part in same for text in _reference(*part)]


def test_the_firehose_body_is_one_join() -> None:
    texts = RowTexts(["{", ":", "}"], ["a", "1", "b", "2", "c", "3"], {1: "{whole}"})
    assert EncodedEvents(texts).body() == b"{a:1}{whole}{c:3}"
    assert EncodedEvents(texts).body("\n", "\n") == b"{a:1}\n{whole}\n{c:3}\n"
    assert [event.payload for event in EncodedEvents(texts)] == [b"{a:1}", b"{whole}", b"{c:3}"]


def test_values_must_fill_whole_rows() -> None:
    with pytest.raises(ValueError, match="values for rows"):
        RowTexts(["{", ":", "}"], ["a"], {})
    with pytest.raises(ValueError, match="past the last row"):
        RowTexts(["{", "}"], ["a"], {1: "x"})
