"""Fuzz the Firehose transform (``transforms.firehose.handler``) with arbitrary records.

Whatever the records hold, the handler answers every recordId once, within the size limit,
and raises nothing but ``InvalidEventError`` (an event it cannot answer at all). Memory stays
within a small multiple of the decompression ceiling, whatever a record inflates to.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.factories import make_cwl_payload, make_firehose_event
from tests.fuzz.support import (
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
from transforms import firehose
from transforms.firehose import FirehoseResponse, InvalidEventError, handler

CEILING = 4 * MiB
SETTINGS = make_settings(MAX_DECOMPRESSED_BYTES=str(CEILING))
RESULTS = {"Ok", "Dropped", "ProcessingFailed"}


@pytest.fixture(autouse=True)
def _settings() -> Iterator[None]:
    firehose.use_settings(SETTINGS)
    yield
    firehose.use_settings(None)


def cwl_with(messages: list[str]) -> bytes:
    return make_cwl_payload(messages, log_group="/aws/vpc/flowlogs", log_stream="eni-1")


record_payloads = st.one_of(
    hostile_bytes(),
    st.lists(st.text(max_size=300), max_size=10).map(cwl_with),
    gzip_variants(st.lists(st.text(max_size=50), max_size=5).map(cwl_with)),
    json_values().map(lambda value: json.dumps({"message": value}).encode()),
    st.sampled_from(deep_payloads()),
    st.sampled_from(deep_documents()).map(lambda doc: gzipped(doc.encode())),
)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def assert_answered(event: dict[str, Any], response: FirehoseResponse) -> None:
    ids = [record["recordId"] for record in event["records"]]
    assert [entry["recordId"] for entry in response["records"]] == ids
    assert len(json.dumps(response)) <= SETTINGS.firehose.response_limit_bytes
    for record, entry in zip(event["records"], response["records"], strict=True):
        assert entry["result"] in RESULTS
        if entry["result"] == "ProcessingFailed" and isinstance(record.get("data"), str):
            assert entry["data"] == record["data"]  # the original, for processing-failed/


@fuzzing(quick=60)
@given(st.lists(record_payloads, max_size=12))
def test_arbitrary_records_are_each_answered(payloads: list[bytes]) -> None:
    event = make_firehose_event(payloads)

    response = handler(event, None)

    assert_answered(event, response)


wire_records = st.dictionaries(
    st.sampled_from(["recordId", "data", "approximateArrivalTimestamp", "kinesisRecordMetadata"]),
    json_values(max_leaves=6),
)


@fuzzing(quick=60)
@given(st.one_of(json_values(), st.lists(wire_records, max_size=6).map(lambda r: {"records": r})))
def test_arbitrary_events_answer_or_raise_invalid_event(event: Any) -> None:
    """Any JSON Lambda could be invoked with: an answer, or InvalidEventError (documented)."""
    try:
        response = handler(event, None)
    except InvalidEventError:
        return
    records = event.get("records") if isinstance(event, dict) else None
    assert len(response["records"]) == (len(records) if isinstance(records, list) else 0)


@pytest.mark.parametrize("document", deep_documents(), ids=range(len(deep_documents())))
def test_deeply_nested_records_fail_alone(document: str) -> None:
    """100,000 nested brackets, plain or gzip: that record fails, the good one goes through."""
    good = cwl_with(["fine"])
    for data in (document.encode(), gzipped(document.encode())):
        event = make_firehose_event([data, good])
        response = handler(event, None)
        assert_answered(event, response)
        assert response["records"][1]["result"] == "Ok"


def test_a_record_inflating_far_past_the_ceiling_costs_bounded_memory() -> None:
    """A gzip bomb and a single enormous line (both tiny on the wire) fail alone; the peak
    stays within a few times the decompression ceiling."""
    size = huge(quick=64 * MiB, deep=512 * MiB)  # still under Firehose's record size
    bomb = gzip_of_repeated(b"x", size)
    line = gzip_of_repeated(b"a", CEILING - 1024)  # one line just under the ceiling
    event = make_firehose_event([bomb, line, cwl_with(["fine"])])
    assert all(len(record["data"]) < 1_000 * 1024 for record in event["records"])

    response, peak = peak_memory(lambda: handler(event, None))

    assert_answered(event, response)
    assert response["records"][0]["result"] == "ProcessingFailed"
    assert response["records"][2]["result"] == "Ok"
    assert peak < 16 * CEILING, f"peak {peak / MiB:.0f} MiB for a {CEILING / MiB:.0f} MiB ceiling"


def test_huge_base64_data_is_one_records_problem() -> None:
    """A data field far beyond Firehose's record size, not base64 at the end: it fails alone."""
    size = huge(quick=8 * MiB, deep=64 * MiB)
    event = make_firehose_event([b"ok"])
    event["records"].insert(0, {"recordId": "huge", "data": "A" * size + "!"})

    response, peak = peak_memory(lambda: handler(event, None))

    assert [entry["result"] for entry in response["records"]] == ["ProcessingFailed", "Ok"]
    assert peak < 4 * size
    assert base64.b64decode(response["records"][1]["data"])
