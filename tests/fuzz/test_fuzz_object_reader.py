"""Fuzz the S3-object line reader (``forwarder.intake``: ``text_lines``, ``line_chunks``,
``object_chunks``).

Whatever an object holds, reading it raises nothing but ``OBJECT_READ_ERRORS`` (what the
sqs-s3 source and the push Lambda catch: broken gzip, S3 errors) or ``FlowLogFormatError``
(a header naming an unknown field), and every chunk respects its line and character bounds.
A small gzip object holding one enormous line costs bounded memory, not the line's size.
"""

from __future__ import annotations

import gzip
import io

from hypothesis import given
from hypothesis import strategies as st

from forwarder.intake.lines import line_chunks, text_lines
from forwarder.intake.objects import OBJECT_READ_ERRORS, object_chunks
from tests.fuzz.support import (
    Blob,
    MiB,
    deep_payloads,
    fuzzing,
    gzip_of_repeated,
    gzip_variants,
    hostile_bytes,
    huge,
    peak_memory,
)
from transforms.errors import FlowLogFormatError

DOCUMENTED = (*OBJECT_READ_ERRORS, FlowLogFormatError)
HEADER = b"version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
HEADER += b"bytes start end action log-status\n"

line_texts = st.one_of(
    hostile_bytes(),
    st.lists(st.binary(max_size=80), max_size=30).map(b"\n".join),
    st.lists(st.binary(max_size=80), max_size=30).map(lambda lines: HEADER + b"\r\n".join(lines)),
    st.sampled_from([b"version srcaddr nonsense-field\n1 2 3\n", b"version version\n", b"\n\n\n"]),
    st.sampled_from(deep_payloads()),
)
object_bodies = st.one_of(line_texts, gzip_variants(line_texts)).map(Blob)


class Body:
    """botocore's StreamingBody as the reader sees it: ``read(n)`` and ``close()``."""

    def __init__(self, data: bytes, step: int | None = None) -> None:
        self.stream = io.BytesIO(data)
        self.step = step
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        if self.step is not None and size > 0:
            size = min(size, self.step)  # short reads, as a network stream gives
        return self.stream.read(size)

    def close(self) -> None:
        self.closed = True


@fuzzing(quick=150)
@given(
    object_bodies,
    st.integers(min_value=1, max_value=50),
    st.one_of(st.none(), st.integers(min_value=1, max_value=500)),
    st.one_of(st.none(), st.integers(min_value=1, max_value=7000)),
)
def test_line_chunks_raise_only_documented_errors(
    data: bytes, chunk_lines: int, max_chars: int | None, step: int | None
) -> None:
    try:
        for lines, fields in line_chunks(text_lines(Body(data, step)), chunk_lines, max_chars):
            assert 0 < len(lines) <= chunk_lines
            assert all(isinstance(line, str) and "\n" not in line for line in lines)
            assert fields is None or all(isinstance(name, str) for name in fields)
    except DOCUMENTED:
        pass


@fuzzing(quick=100)
@given(object_bodies, st.integers(min_value=1, max_value=50))
def test_object_chunks_raise_only_documented_errors_and_close_the_body(
    data: bytes, chunk_lines: int
) -> None:
    body = Body(data)
    try:
        for lines, _fields in object_chunks(body, chunk_lines):
            assert 0 < len(lines) <= chunk_lines
    except DOCUMENTED:
        pass
    assert body.closed


def test_one_enormous_line_costs_bounded_memory() -> None:
    """A small gzip object holding one line far larger than any chunk (issue item 6): read
    in pieces, the peak a fixed bound, not the line's size."""
    size = huge(quick=96 * MiB, deep=400 * MiB)
    data = gzip.compress(HEADER, mtime=0) + gzip_of_repeated(b"z", size)
    assert len(data) < size // 500

    def read() -> int:
        chunks = 0
        try:
            for _lines, _fields in object_chunks(Body(data), 5000):
                chunks += 1
        except DOCUMENTED:
            pass
        return chunks

    _chunks, peak = peak_memory(read)

    assert peak < 64 * MiB, f"peak {peak / MiB:.0f} MiB for one {size / MiB:.0f} MiB line"
