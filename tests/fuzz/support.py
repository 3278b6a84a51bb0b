"""What every fuzz test shares: the two profiles, hostile-input strategies, a peak-memory probe.

``make test`` runs these with the quick profile (a few dozen examples each, small "huge"
inputs); ``make fuzz`` sets ``HYPOTHESIS_PROFILE=fuzz`` for thousands of examples each and
larger inputs. There are no deadlines in either (DESIGN: behaviour, not speed).
"""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

#: ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``) goes deep; anything else is the quick run.
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"

MiB = 1024 * 1024

#: Nesting depth of the "deep nesting" inputs: far past Python's recursion limit.
NESTING = 100_000


def fuzzing(quick: int = 50, deep: int = 1500) -> settings:
    """Per-test settings: ``quick`` examples in ``make test``, ``deep`` in ``make fuzz``."""
    return settings(
        max_examples=deep if DEEP else quick,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def huge(quick: int, deep: int) -> int:
    """A "huge input" size: smaller in the quick run, larger in ``make fuzz``."""
    return deep if DEEP else quick


# --- hostile inputs ------------------------------------------------------------------------


def nested(depth: int = NESTING, *, kind: str = "list", close: bool = True) -> str:
    """``depth`` nested JSON arrays or objects (``{"a":{"a":...}}``), closed or not."""
    if kind == "list":
        return "[" * depth + ("]" * depth if close else "")
    return '{"a":' * depth + "1" + ("}" * depth if close else "")


class Nested(str):
    """A deep-nesting text whose repr stays short (Hypothesis prints failing examples)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} characters of nesting: {str.__repr__(self[:12])}...>"


def deep_documents() -> list[Nested]:
    """Deep-nesting texts every JSON reader must survive."""
    return [Nested(text) for text in _deep_texts()]


class NestedBytes(bytes):
    """The bytes of a :class:`Nested` text, with a short repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of nesting: {bytes.__repr__(self[:12])}...>"


class Blob(bytes):
    """Bytes whose repr stays short when they are long (a failing example prints them)."""

    __slots__ = ()

    def __repr__(self) -> str:
        if len(self) <= 200:
            return bytes.__repr__(self)
        return f"<{len(self)} bytes: {bytes.__repr__(self[:60])}...>"


def deep_payloads() -> list[NestedBytes]:
    """:func:`deep_documents` as UTF-8 bytes."""
    return [NestedBytes(text.encode()) for text in _deep_texts()]


def _deep_texts() -> list[str]:
    return [
        nested(),
        nested(close=False),
        nested(kind="object"),
        nested(kind="object", close=False),
        '{"records": ' + nested() + "}",
        '{"acks": ' + nested(kind="object") + "}",
        '{"rawData": ' + nested() + "}",
        '{"messageType": "DATA_MESSAGE", "logEvents": ' + nested() + "}",
        "]" * NESTING,
        "[{" * (NESTING // 2),
    ]


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values, with the awkward scalars (huge ints, NaN-free floats, unicode)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner),
        max_leaves=max_leaves,
    )


def json_bytes() -> st.SearchStrategy[bytes]:
    """JSON text as bytes, sometimes cut short or with a byte changed."""
    whole = json_values().map(lambda value: json.dumps(value).encode())
    return st.one_of(
        whole,
        st.tuples(whole, st.integers(min_value=0)).map(lambda p: p[0][: p[1] % (len(p[0]) + 1)]),
        st.tuples(whole, st.integers(min_value=0), st.integers(0, 255)).map(_flip),
    )


def _flip(args: tuple[bytes, int, int]) -> bytes:
    data, where, byte = args
    if not data:
        return bytes([byte])
    where %= len(data)
    return data[:where] + bytes([byte]) + data[where + 1 :]


def gzip_variants(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """``inner`` gzipped: whole, truncated, corrupted, doubled (multi-member), or fake."""
    zipped = inner.map(lambda data: gzip.compress(data, mtime=0))
    return st.one_of(
        zipped,
        st.tuples(zipped, st.integers(min_value=0)).map(lambda p: p[0][: p[1] % (len(p[0]) + 1)]),
        st.tuples(zipped, st.integers(min_value=0), st.integers(0, 255)).map(_flip),
        st.tuples(zipped, zipped).map(lambda p: p[0] + p[1]),
        st.binary(max_size=64).map(lambda data: b"\x1f\x8b" + data),
        inner.map(zlib.compress),  # zlib, not gzip
    )


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """Anything: random bytes, JSON-ish bytes, invalid UTF-8, and gzip of those."""
    plain = st.one_of(
        st.binary(max_size=300),
        json_bytes(),
        st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80", b"\x00" * 10]),
    )
    return st.one_of(plain, gzip_variants(plain))


def gzip_of_repeated(byte: bytes, size: int) -> bytes:
    """A small gzip member that inflates to ``size`` copies of ``byte`` (a bomb, a long line)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = byte * MiB
    parts = [compressor.compress(block) for _ in range(size // MiB)]
    parts.append(compressor.compress(byte * (size % MiB)))
    parts.append(compressor.flush())
    return b"".join(parts)


# --- memory --------------------------------------------------------------------------------


def peak_memory(function: Callable[[], T]) -> tuple[T, int]:
    """Run ``function`` and return its result and the peak bytes Python allocated meanwhile."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = function()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak
