"""Fuzz the Firehose HTTP request parser (``forwarder.sources.firehose_protocol.decode_body``).

Any body, gzipped or not, yields ``(requestId, records)`` or ``RequestRejectedError`` with a
400 or 413 status (documented), never another exception: the request handler answers only
that error with a status, anything else would drop the connection without an answer.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.sources.firehose_protocol import RequestRejectedError, decode_body
from tests.fuzz.support import (
    Blob,
    MiB,
    deep_documents,
    fuzzing,
    gzip_of_repeated,
    gzip_variants,
    hostile_bytes,
    huge,
    json_values,
    peak_memory,
)

MAX_BYTES = 1 * MiB

records = st.lists(
    st.one_of(
        st.binary(max_size=100).map(lambda data: {"data": base64.b64encode(data).decode()}),
        st.dictionaries(st.sampled_from(["data", "other"]), json_values(max_leaves=3)),
        json_values(max_leaves=3),
    ),
    max_size=6,
)
documents = st.one_of(
    st.fixed_dictionaries(
        {"records": records},
        optional={"requestId": json_values(max_leaves=2), "timestamp": st.integers()},
    ),
    json_values(),
).map(lambda doc: json.dumps(doc).encode())
bodies = st.one_of(documents, hostile_bytes(), st.sampled_from([b"", b"{}", b'{"records": {}}']))


def decode(body: bytes, *, gzipped: bool, max_bytes: int = MAX_BYTES) -> None:
    try:
        request_id, datas = decode_body(body, gzipped=gzipped, max_bytes=max_bytes)
    except RequestRejectedError as exc:
        assert exc.status in (400, 413)
        return
    assert request_id is None or isinstance(request_id, str)
    assert all(isinstance(data, bytes) for data in datas)


@fuzzing(quick=150)
@given(st.one_of(bodies, gzip_variants(bodies)).map(Blob), st.booleans())
def test_decode_body_answers_or_rejects(body: bytes, gzipped: bool) -> None:
    decode(body, gzipped=gzipped)


@pytest.mark.parametrize("document", deep_documents(), ids=range(len(deep_documents())))
def test_deeply_nested_bodies_are_rejected_not_raised(document: str) -> None:
    data = document.encode()
    decode(data, gzipped=False, max_bytes=len(data) + 1)
    decode(gzip.compress(data, mtime=0), gzipped=True, max_bytes=len(data) + 1)


def test_a_gzip_bomb_is_refused_in_bounded_memory() -> None:
    size = huge(quick=256 * MiB, deep=2048 * MiB)
    bomb = gzip_of_repeated(b"{", size)

    _result, peak = peak_memory(lambda: decode(bomb, gzipped=True))

    assert peak < 4 * MAX_BYTES + MiB
