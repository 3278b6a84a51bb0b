"""Fuzz the backsplash readers: ``forwarder.backsplash.codec.decode_records`` (strict) and
``forwarder.backsplash.objects.decode_object`` (streamed).

``decode_records`` raises only ``ValueError`` (not gzip/JSON records, invalid UTF-8) or
``TypeError`` (a record that is not an object), as documented. ``decode_object`` never raises:
every record is ``(line, decoded)`` or a ``CorruptLine`` (fatal when the rest cannot be read),
so one poison line costs one line. A huge line costs memory bounded by the record limit.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.backsplash.codec import MAX_RECORD_CHARS, CorruptLine, decode_records
from forwarder.backsplash.objects import decode_object
from tests.conftest import make_settings
from tests.factories import make_cwl_payload
from tests.fuzz.support import (
    DEEP,
    Blob,
    MiB,
    deep_documents,
    deep_payloads,
    fuzzing,
    gzip_of_repeated,
    gzip_variants,
    hostile_bytes,
    huge,
    json_values,
    peak_memory,
)

OPTIONS = make_settings(MAX_DECOMPRESSED_BYTES=str(4 * MiB)).transform
KINDS = [None, "splunk-failed", "processing-failed", "replay-failed"]


def record(raw: bytes, **extra: Any) -> bytes:
    fields = {"rawData": base64.b64encode(raw).decode(), "errorCode": "Splunk.ServerError"}
    return json.dumps({**fields, **extra}).encode()


good_records = st.one_of(
    st.text(max_size=80).map(lambda text: record(text.encode())),
    st.lists(st.text(max_size=40), max_size=4).map(
        lambda lines: record(make_cwl_payload(lines), lambdaArn="arn:aws:lambda:x")
    ),
)
odd_records = st.one_of(
    json_values().map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(["rawData", "lambdaArn", "arrivalTimestamp", "attemptsMade", "EventId",
                         "replayAttempts", "errorCode", "endpoint"]),
        json_values(max_leaves=4),
    ).map(lambda doc: json.dumps(doc).encode()),
    hostile_bytes().map(lambda raw: record(raw, lambdaArn="arn:aws:lambda:x")),
    st.sampled_from(deep_payloads()),
)  # fmt: skip
lines = st.lists(st.one_of(good_records, odd_records, hostile_bytes()), max_size=8)
separators = st.sampled_from([b"\n", b"", b"\r\n", b" \n\n"])
objects = st.one_of(
    st.tuples(lines, separators).map(lambda p: p[1].join(p[0])),
    gzip_variants(st.tuples(lines, separators).map(lambda p: p[1].join(p[0]))),
    hostile_bytes(),
).map(Blob)


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    # The reader re-parses a pending record on every chunk, so tiny chunks of a large object
    # cost quadratic time (S3 reads give full chunks): tiny chunks only for small objects.
    size = max(size, 1) if len(data) <= 16 * 1024 else max(size, 16 * 1024)
    for start in range(0, len(data), size):
        yield data[start : start + size]


def drain(data: bytes, kind: Any, chunk_size: int = 1 << 16) -> list[Any]:
    items = list(decode_object(chunked(data, chunk_size), kind, OPTIONS))
    fatal = [item for item in items if isinstance(item, CorruptLine) and item.fatal]
    assert len(fatal) <= 1 and (not fatal or items[-1] is fatal[0])
    return items


@fuzzing(quick=100)
@given(objects)
def test_decode_records_raises_only_documented_errors(data: bytes) -> None:
    try:
        for item in decode_records(data):
            assert isinstance(item, dict)
    except (ValueError, TypeError):
        pass


@fuzzing(quick=100)
@given(objects, st.sampled_from(KINDS), st.integers(min_value=1, max_value=4096))
def test_decode_object_never_raises(data: bytes, kind: Any, chunk_size: int) -> None:
    drain(data, kind, chunk_size)


@fuzzing(quick=50)
@given(st.lists(good_records, min_size=1, max_size=5), st.sampled_from(deep_documents()))
def test_a_poison_line_costs_only_itself(good: list[bytes], poison: str) -> None:
    """Good records before and after a deeply nested line are all decoded."""
    data = b"\n".join([*good, poison.encode(), *good]) + b"\n"
    for blob in (data, gzip.compress(data, mtime=0)):
        items = drain(blob, "splunk-failed")
        decoded = [item for item in items if not isinstance(item, CorruptLine)]
        assert len(decoded) == 2 * len(good)


@pytest.mark.parametrize("document", deep_documents(), ids=range(len(deep_documents())))
def test_decode_records_survives_deep_nesting(document: str) -> None:
    for blob in (document.encode(), gzip.compress(document.encode(), mtime=0)):
        with contextlib.suppress(ValueError, TypeError):
            list(decode_records(blob))


# The unterminated rawData string is re-parsed on every chunk (seconds of CPU): deep run only.
@pytest.mark.parametrize("line", [b"x", *([b'{"rawData": "' + b"A" * 16] if DEEP else [])])
def test_a_huge_line_costs_memory_bounded_by_the_record_limit(line: bytes) -> None:
    """One line far longer than any record may be (a tiny gzip object): corrupt, skipped,
    and the record after it decoded; the peak stays near the record limit, not the line."""
    size = huge(quick=MAX_RECORD_CHARS + 16 * MiB, deep=4 * MAX_RECORD_CHARS)
    body = gzip_of_repeated(line[-1:], size)
    head = gzip.compress(line[:-1], mtime=0)
    tail = gzip.compress(b"\n" + record(b"after") + b"\n", mtime=0)

    items, peak = peak_memory(lambda: drain(head + body + tail, "splunk-failed"))

    assert isinstance(items[0], CorruptLine)
    assert not isinstance(items[-1], CorruptLine)
    assert peak < 4 * MAX_RECORD_CHARS, f"peak {peak / MiB:.0f} MiB for a {size / MiB:.0f} MiB line"
