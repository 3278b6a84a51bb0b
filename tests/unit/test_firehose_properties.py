"""Properties of the Firehose handler: whatever the records hold, every one is answered once."""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.conftest import make_settings
from tests.factories import make_cwl_payload, make_firehose_event
from transforms.firehose import FirehoseResponse, transform_event
from transforms.reingest import ReingestRecord, ReingestReport

DEFAULTS = make_settings(MAX_DECOMPRESSED_BYTES=str(1024 * 1024))
TIGHT_LIMIT = 4096
TIGHT = make_settings(
    FIREHOSE_RESPONSE_LIMIT_BYTES=str(TIGHT_LIMIT), MAX_DECOMPRESSED_BYTES=str(1024 * 1024)
)
RESULTS = {"Ok", "Dropped", "ProcessingFailed"}
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class Recorder:
    """Keeps what it is given; the positions ``failing`` picks (per call) are reported failed
    and not kept, like entries a throttled stream refused."""

    def __init__(self, failing: Callable[[int], bool] = lambda _position: False) -> None:
        self.records: list[ReingestRecord] = []
        self.failing = failing
        self.offered = 0

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        failed = tuple(i for i in range(len(records)) if self.failing(i))
        self.offered += len(records)
        self.records.extend(record for i, record in enumerate(records) if i not in failed)
        return ReingestReport(failed, ("ServiceUnavailableException",) if failed else ())


messages = st.text(max_size=200)
cwl_payloads = st.builds(
    lambda events, group, control: make_cwl_payload(
        events, log_group=group, message_type="CONTROL_MESSAGE" if control else "DATA_MESSAGE"
    ),
    st.lists(messages, max_size=20),
    st.sampled_from(["/aws/vpc/flowlogs", "/aws/lambda/f", "app", "CloudTrail/x"]),
    st.booleans(),
)
json_documents: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
record_bytes = st.one_of(
    st.binary(max_size=512),
    cwl_payloads,
    # valid gzip cut anywhere, or with bytes flipped
    st.tuples(cwl_payloads, st.integers(min_value=0, max_value=600)).map(lambda p: p[0][: p[1]]),
    st.tuples(cwl_payloads, st.integers(min_value=0), st.integers(0, 255)).map(
        lambda p: (
            p[0][: p[1] % max(len(p[0]), 1)] + bytes([p[2]]) + p[0][p[1] % max(len(p[0]), 1) + 1 :]
        )
    ),
    st.binary(max_size=200).map(lambda b: b"\x1f\x8b" + b),
    json_documents.map(lambda doc: gzip.compress(json.dumps(doc).encode())),
    json_documents.map(lambda doc: json.dumps(doc).encode()),
    st.builds(
        lambda doc, events: gzip.compress(
            json.dumps({"messageType": "DATA_MESSAGE", "logEvents": events, **doc}).encode()
        ),
        st.dictionaries(
            st.sampled_from(["logGroup", "logStream", "owner", "policyLevel"]),
            json_documents,
            max_size=3,
        ),
        st.lists(json_documents, max_size=4),
    ),
)
# Batches whose output alone may exceed the tight limit: overflow, splits, too-large events.
large_cwl_payloads = st.builds(
    lambda events: make_cwl_payload(events, log_group="app", log_stream="s"),
    st.lists(st.text(min_size=20, max_size=1500), min_size=1, max_size=30),
)
# What Firehose would never send, but the handler must survive: data that is not base64,
# absent, or not a string.
odd_data = st.one_of(st.text(max_size=40), st.none(), st.integers(), st.just(""))


def assert_well_formed(event: dict[str, Any], response: FirehoseResponse, limit: int) -> None:
    ids = [record["recordId"] for record in event["records"]]
    assert [entry["recordId"] for entry in response["records"]] == ids
    assert len(json.dumps(response)) <= limit
    for record, entry in zip(event["records"], response["records"], strict=True):
        assert entry["result"] in RESULTS
        assert isinstance(entry["data"], str)
        if entry["result"] == "Ok":
            assert base64.b64decode(entry["data"], validate=True)
        elif entry["result"] == "Dropped":
            assert entry["data"] == ""
        elif isinstance(record.get("data"), str):
            assert entry["data"] in (record["data"], "")


@PROPERTY_SETTINGS
@given(st.lists(record_bytes, max_size=25))
def test_arbitrary_record_bytes_never_raise_and_every_record_is_answered(
    datas: list[bytes],
) -> None:
    event = make_firehose_event(datas)

    response = transform_event(event, DEFAULTS, reingester=Recorder())

    assert_well_formed(event, response, DEFAULTS.firehose.response_limit_bytes)
    for data, entry in zip(datas, response["records"], strict=True):
        if entry["result"] == "ProcessingFailed":
            assert base64.b64decode(entry["data"]) == data  # the original, for the backup


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.one_of(record_bytes.map(lambda b: ("bytes", b)), odd_data.map(lambda d: ("odd", d))),
        max_size=15,
    )
)
def test_records_with_odd_data_fields_are_answered(
    items: list[tuple[str, Any]],
) -> None:
    event = make_firehose_event([b"" for _ in items])
    for record, (kind, value) in zip(event["records"], items, strict=True):
        if kind == "bytes":
            record["data"] = base64.b64encode(value).decode()
        elif value is None:
            del record["data"]
        else:
            record["data"] = value

    response = transform_event(event, DEFAULTS, reingester=Recorder())

    assert_well_formed(event, response, DEFAULTS.firehose.response_limit_bytes)


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(record_bytes, large_cwl_payloads), max_size=20))
def test_under_a_tight_limit_the_answer_fits_and_overflow_is_reingested(
    datas: list[bytes],
) -> None:
    event = make_firehose_event(datas)
    recorder = Recorder()

    response = transform_event(event, TIGHT, reingester=recorder)

    assert_well_formed(event, response, TIGHT_LIMIT)
    results = {entry["result"] for entry in response["records"]}
    hypothesis_event("overflow re-ingested" if recorder.records else "everything fit")
    hypothesis_event(f"results: {sorted(results)}")
    originals = set(datas)
    for data, _key in recorder.records:
        # either an original record, or a piece of a split CloudWatch batch
        assert data in originals or data.startswith(b"\x1f\x8b")


@PROPERTY_SETTINGS
@given(
    st.lists(st.one_of(record_bytes, large_cwl_payloads), max_size=20),
    st.sets(st.integers(min_value=0, max_value=40)),
)
def test_when_reingestion_fails_in_part_every_record_is_still_accounted_for(
    datas: list[bytes], failing: set[int]
) -> None:
    """Whatever re-ingestion refuses: the answer fits, a record Dropped for re-ingestion went
    back (whole, or every piece of it), and one that did not is ProcessingFailed with its
    original data; nothing goes back that is not answered Dropped."""
    event = make_firehose_event(datas)
    recorder = Recorder(failing=failing.__contains__)

    with capture_logs() as logs:
        response = transform_event(event, TIGHT, reingester=recorder)

    assert_well_formed(event, response, TIGHT_LIMIT)
    hypothesis_event(f"refused {recorder.offered - len(recorder.records)} of {recorder.offered}")
    reasons = {
        line["record_id"]: line["reason"] for line in logs if line["event"] == "record_dropped"
    }
    went_back = Counter(data for data, _key in recorder.records)
    split_records = 0
    for record, data, entry in zip(event["records"], datas, response["records"], strict=True):
        reason = reasons.get(record["recordId"])
        if entry["result"] == "Dropped" and reason == "reingested":
            assert went_back[data] > 0, "answered Dropped but never put back"
            went_back[data] -= 1
        elif reason == "split":
            # Dropped: every piece went back. ProcessingFailed: some piece did not, and the
            # original is backed up whole (the documented bound on duplicates).
            split_records += 1
            if entry["result"] == "ProcessingFailed":
                assert entry["data"] in (record["data"], "")
        elif entry["result"] == "ProcessingFailed" and reason == "reingested":
            assert entry["data"] in (record["data"], "")  # "": only under a tiny limit
    leftover = [data for data, count in went_back.items() for _ in range(count)]
    assert not leftover or split_records, "put back, yet answered as if not"
    assert all(data.startswith(b"\x1f\x8b") for data in leftover)  # split pieces only
