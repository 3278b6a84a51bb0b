"""Text read a block of lines at a time against the per-line path, over generated input.

``text_line_blocks`` decodes the lines of one piece read in one pass, and ``forward``'s text
reader (``inputs._text_units``) cuts chunks with ``accumulate`` and ``bisect`` over each
block's line lengths. Both are compared with the per-line code they replace (below, as it
was): the same lines, long lines, chunks and header, for invalid UTF-8, ``\\r``, blank lines
and chunks that end at the line and character limits.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from forwarder.intake import inputs
from forwarder.intake.lines import (
    LongLine,
    bounded_lines,
    fill_chunks,
    line_chunks,
    text_line_blocks,
    text_lines,
)
from transforms.options import TransformOptions
from transforms.vpc_flow import fields_from_header, is_header_line

# ----------------------------------------------------------------- the per-line references


def reference_text_lines(data: bytes, chunk: int, cap: int) -> list[str | LongLine]:
    """``text_lines`` as it was: each line of ``bounded_lines`` decoded alone."""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return [
        item if isinstance(item, LongLine) else item.decode("utf-8", "replace").removesuffix("\r")
        for item in bounded_lines(iter(pieces), cap)
    ]


def reference_units(
    lines: list[str | LongLine], chunk_lines: int, max_chars: int
) -> list[tuple[Any, ...]]:
    """``_text_units`` as it was (a step per line), recording what it would transform."""
    out: list[tuple[Any, ...]] = []
    fields = None
    chunk: list[str] = []
    chars = 0
    first = True
    for line in lines:
        if isinstance(line, LongLine):
            first = False
            out.append(("long", line.line, line.size))
            continue
        if first and line.strip():
            first = False
            if is_header_line(line.strip()):
                fields = fields_from_header(line.strip())
                continue
        chunk.append(line)
        chars += len(line)
        if len(chunk) >= chunk_lines or chars >= max_chars:
            out.append(("chunk", tuple(chunk), fields))
            chunk, chars = [], 0
    if chunk:
        out.append(("chunk", tuple(chunk), fields))
    return out


def flatten(blocks: list[list[str] | LongLine]) -> list[str | LongLine]:
    return [line for item in blocks for line in ([item] if isinstance(item, LongLine) else item)]


# ----------------------------------------------------------------- generated input

# Bytes that make lines, line ends, and UTF-8 both valid and broken (a sequence cut short
# at a line's end or the input's, a stray continuation byte, an overlong form).
FRAGMENTS = st.sampled_from(
    [b"a", b"b c", b" ", b"\n", b"\n", b"\r", b"\r\n", b"\t", b"\xc3\xa9", b"\xe2\x82\xac",
     b"\xf0\x9f\x98\x80", b"\xe2\x82", b"\xf0\x9f", b"\xc3", b"\x80", b"\xc0\xaf", b"\xff",
     b"\xed\xa0\x80"]
)  # fmt: skip
DATA = st.lists(FRAGMENTS, max_size=60).map(b"".join)


@given(DATA, st.integers(min_value=1, max_value=17), st.integers(min_value=1, max_value=12))
def test_blocks_are_the_lines_each_decoded_alone(data: bytes, chunk: int, cap: int) -> None:
    class Chunked(io.RawIOBase):
        """A body that gives ``chunk`` bytes per read."""

        def __init__(self) -> None:
            self.data = memoryview(data)

        def readable(self) -> bool:
            return True

        def read1(self, size: int = -1) -> bytes:
            taken, self.data = bytes(self.data[:chunk]), self.data[chunk:]
            return taken

    blocks = list(text_line_blocks(Chunked(), max_line_bytes=cap, max_inflated=None))
    assert all(block for block in blocks)  # no empty block
    flat = flatten(blocks)
    assert flat == reference_text_lines(data, chunk, cap)
    assert list(text_lines(Chunked(), max_line_bytes=cap, max_inflated=None)) == flat


@given(st.lists(DATA.map(lambda data: data.replace(b"\n", b"")), min_size=1, max_size=8))
def test_decoding_joined_lines_is_decoding_each(lines: list[bytes]) -> None:
    joined = b"\n".join(lines).decode("utf-8", "replace").split("\n")
    assert joined == [line.decode("utf-8", "replace") for line in lines]


HEADER = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"  # noqa: E501
LINE = st.one_of(
    st.sampled_from(["", " ", "\t", HEADER, "x", "abc def"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=9),
)
ITEM = st.one_of(LINE, LINE, LINE, st.builds(LongLine, st.integers(1, 99), st.integers(1, 99)))


@given(
    st.lists(st.lists(ITEM, max_size=12), max_size=6),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=20),
)
def test_text_units_cut_the_chunks_the_per_line_loop_cut(
    blocks: list[list[str | LongLine]], chunk_lines: int, max_chars: int
) -> None:
    # As text_line_blocks gives them: lists of lines, each LongLine alone between them.
    given_blocks: list[list[str] | LongLine] = []
    for block in blocks:
        run: list[str] = []
        for item in block:
            if isinstance(item, LongLine):
                if run:
                    given_blocks.append(run)
                    run = []
                given_blocks.append(item)
            else:
                run.append(item)
        if run:
            given_blocks.append(run)
    flat = flatten(given_blocks)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inputs, "CHUNK_LINES", chunk_lines)
        patch.setattr(inputs, "MAX_CHUNK_CHARS", max_chars)
        patch.setattr(
            inputs,
            "transform_lines",
            lambda lines, *, flow_fields, **_: ("chunk", tuple(lines), flow_fields),
        )
        units: list[object] = list(
            inputs._text_units(
                iter(given_blocks),
                TransformOptions(),
                log_group=None,
                log_stream=None,
                stop=threading.Event(),
            )
        )
    got = [
        ("long", *_line_and_size(unit.detail)) if isinstance(unit, inputs.Failure) else unit
        for unit in units
    ]
    assert got == reference_units(flat, chunk_lines, max_chars)


def _line_and_size(detail: str) -> tuple[int, int]:
    # "line N: S bytes, skipped"
    line, size = detail.removeprefix("line ").split(": ")
    return int(line), int(size.split(" ")[0])


def test_a_stop_ends_the_text_after_the_chunk_it_was_set_in() -> None:
    stop = threading.Event()

    def transform(lines: list[str], **_: object) -> tuple[str, ...]:
        stop.set()
        return tuple(lines)

    blocks: Iterator[list[str] | LongLine] = iter([["a", "b", "c"], ["d"]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inputs, "CHUNK_LINES", 2)
        patch.setattr(inputs, "transform_lines", transform)
        units: list[object] = list(
            inputs._text_units(
                blocks, TransformOptions(), log_group=None, log_stream=None, stop=stop
            )
        )
    assert units == [("a", "b")]


# Lines that line_chunks keeps, strips or skips: whitespace of every kind str.strip knows.
CHUNK_LINE = st.one_of(
    st.sampled_from(["", " ", "\t", "\r", "a\r", "\x1c", "\xa0", "\u2028", "\u3000 ", HEADER]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=9),
    st.text(st.sampled_from(["a", " ", "\t", "\r", "\x0b", "\x85", "é"]), max_size=5),
)


@given(
    st.lists(
        st.one_of(
            st.lists(CHUNK_LINE, min_size=1, max_size=12),
            st.builds(LongLine, st.integers(1, 99), st.integers(1, 99)),
        ),
        max_size=6,
    ),
    st.integers(min_value=1, max_value=5),
    st.one_of(st.none(), st.integers(min_value=1, max_value=20)),
)
@example([["x"], ["a\r", "b"]], 5, None)  # a line that loses its \r
@example([["x"], ["a", " \u3000", "b"]], 5, 3)  # a blank line among others
def test_line_chunks_of_blocks_are_line_chunks_of_their_lines(
    blocks: list[list[str] | LongLine], chunk_lines: int, max_chars: int | None
) -> None:
    """A list of lines given at once is cut as its lines one by one would be."""
    told: list[LongLine] = []
    told_each: list[LongLine] = []
    got = list(line_chunks(iter(blocks), chunk_lines, max_chars, on_long_line=told.append))
    want = list(
        line_chunks(iter(flatten(blocks)), chunk_lines, max_chars, on_long_line=told_each.append)
    )
    assert got == want
    assert told == told_each


@given(
    st.lists(st.text(max_size=6), max_size=20),
    st.lists(st.text(max_size=6), max_size=4),
    st.integers(min_value=1, max_value=5),
    st.one_of(st.none(), st.integers(min_value=1, max_value=20)),
)
def test_fill_chunks_ends_each_chunk_at_the_line_that_fills_it(
    lines: list[str], open_lines: list[str], chunk_lines: int, max_chars: int | None
) -> None:
    open_lines = open_lines[: chunk_lines - 1]
    chars = sum(map(len, open_lines))
    if max_chars is not None and chars >= max_chars:
        open_lines, chars = [], 0
    full, rest, rest_chars = fill_chunks(list(open_lines), chars, lines, chunk_lines, max_chars)
    expected: list[list[str]] = []
    chunk, count = list(open_lines), chars
    for line in lines:
        chunk.append(line)
        count += len(line)
        if len(chunk) >= chunk_lines or (max_chars is not None and count >= max_chars):
            expected.append(chunk)
            chunk, count = [], 0
    assert (full, rest, rest_chars) == (expected, chunk, count)
