"""CloudWatch Logs payloads and other records: decoding, bounded gunzip, bad input, re-encoding."""

from __future__ import annotations

import contextlib
import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_sample
from tests.factories import (
    ACCOUNT,
    CONTROL_TEXT,
    EPOCH_MS,
    VPC_LOG_GROUP,
    VPC_LOG_STREAM,
    gzip_json,
    make_control_payload,
    make_cwl_envelope,
    make_cwl_payload,
    make_direct_record,
    make_flow_lines,
    make_gzip_bomb,
)
from transforms.cloudwatch import (
    decode_record,
    decode_subscription_batch,
    encode_subscription_batch,
    gunzip,
    read_subscription,
)
from transforms.errors import DecodeError, PayloadTooLargeError, TransformError
from transforms.records import LogBatch, LogEvent

MB = 1024 * 1024
CEILING = 4 * MB


def decode(data: bytes, ceiling: int = CEILING) -> LogBatch:
    return decode_subscription_batch(data, max_decompressed_bytes=ceiling)


def with_envelope(**changes: Any) -> bytes:
    """A valid two-event flow payload with some keys changed (None deletes a key)."""
    envelope = make_cwl_envelope(make_flow_lines(2))
    for key, value in changes.items():
        if value is None:
            envelope.pop(key, None)
        else:
            envelope[key] = value
    return gzip_json(envelope)


def with_events(events: Any) -> bytes:
    envelope = make_cwl_envelope()
    envelope["logEvents"] = events
    return gzip_json(envelope)


# --- good payloads ----------------------------------------------------------------------------


def test_data_message_decodes_envelope_and_events() -> None:
    """Envelope fields and every event's id, timestamp and message are kept."""
    lines = make_flow_lines(3)
    batch = decode(make_cwl_payload(lines))
    assert batch.origin == "cloudwatch"
    assert (batch.log_group, batch.log_stream, batch.owner) == (
        VPC_LOG_GROUP,
        VPC_LOG_STREAM,
        ACCOUNT,
    )
    assert batch.subscription_filters == ("splunk-forwarder",)
    assert not batch.is_control
    assert [event.message for event in batch.events] == lines
    assert [event.timestamp_ms for event in batch.events] == [EPOCH_MS, EPOCH_MS + 7, EPOCH_MS + 14]
    assert all(isinstance(event.id, str) and len(event.id) == 56 for event in batch.events)
    assert len({event.id for event in batch.events}) == 3


def test_unknown_keys_are_tolerated() -> None:
    """Newer payloads carry more keys (policyLevel...); events may carry more too."""
    envelope = make_cwl_envelope(["hello"], extra={"policyLevel": "ACCOUNT_LEVEL_POLICY"})
    envelope["logEvents"][0]["extractedFields"] = {"a": "b"}
    assert [event.message for event in decode(gzip_json(envelope)).events] == ["hello"]


def test_control_message_is_flagged_and_has_no_events() -> None:
    """A CONTROL_MESSAGE is a reachability check: flagged, nothing to forward."""
    batch = decode(make_control_payload())
    assert batch.is_control
    assert batch.events == ()
    sample = json.loads(load_sample("cwl_control_message.json"))
    assert sample["logEvents"][0]["message"] == CONTROL_TEXT
    assert decode(gzip_json(sample)).is_control


def test_empty_batch_is_a_data_message_without_events() -> None:
    """logEvents [] is valid: a batch with nothing to deliver, not an error."""
    batch = decode(make_cwl_payload([]))
    assert batch.events == ()
    assert not batch.is_control


def test_invalid_utf8_in_a_message_is_replaced_not_fatal() -> None:
    """Bytes that are not UTF-8 become U+FFFD; the record and its other text survive."""
    raw = json.dumps(make_cwl_envelope(["caf\u00e9 PLACEHOLDER ok"]), ensure_ascii=False)
    data = gzip.compress(raw.encode().replace(b"PLACEHOLDER", b"\xff\xfe bad"))
    [event] = decode(data).events
    assert event.message == "caf\u00e9 \ufffd\ufffd bad ok"


def test_concatenated_gzip_members_are_one_payload() -> None:
    """gzip allows several members back to back; they decode as one stream."""
    text = json.dumps(make_cwl_envelope(["a", "b"])).encode()
    data = gzip.compress(text[:50]) + gzip.compress(text[50:])
    assert [event.message for event in decode(data).events] == ["a", "b"]


def test_sample_data_message_decodes() -> None:
    """The decompressed sample in tests/samples decodes once gzipped."""
    envelope = json.loads(load_sample("cwl_data_message.json"))
    assert len(decode(gzip_json(envelope)).events) == 5


def test_read_subscription_reads_ids_lazily() -> None:
    """The hot path's columns: ids are read on access, a missing id reads as None."""
    envelope = make_cwl_envelope(["a", "b", "c"])
    del envelope["logEvents"][1]["id"]
    payload = read_subscription(gzip_json(envelope), max_decompressed_bytes=CEILING)
    assert payload.messages == ["a", "b", "c"]
    assert payload.ids[1] is None
    assert payload.ids[0] == envelope["logEvents"][0]["id"]
    assert payload.ids[1:] == [None, envelope["logEvents"][2]["id"]]
    assert len(payload.ids) == 3
    with pytest.raises(DecodeError, match=r"logEvents\[1\] has no 'id'"):
        payload.to_batch()


# --- bad payloads -----------------------------------------------------------------------------


def test_truncated_gzip() -> None:
    """A payload cut short fails as truncated, not as a crash."""
    data = make_cwl_payload(make_flow_lines(50))
    with pytest.raises(DecodeError, match="truncated gzip"):
        decode(data[: len(data) // 2])


def test_corrupt_gzip() -> None:
    """Bytes after the gzip magic that are not deflate data."""
    with pytest.raises(DecodeError, match="not valid gzip"):
        decode(b"\x1f\x8b\x08\x00garbage-garbage-garbage")


def test_not_gzip() -> None:
    """A record that is not gzip at all, given to the subscription decoder."""
    with pytest.raises(DecodeError, match="not valid gzip"):
        decode(b'{"message": "hello"}')


def test_trailing_garbage_after_gzip() -> None:
    """Data after the gzip trailer that is not another member."""
    with pytest.raises(DecodeError, match="trailing garbage"):
        decode(make_cwl_payload(["a"]) + b"junk")
    assert decode(make_cwl_payload(["a"]) + b"\0\0\0\0").events[0].message == "a"


def test_gzip_bomb_fails_fast_within_the_ceiling() -> None:
    """A bomb inflating to 256 MiB stops at the 1 MiB ceiling, in bounded memory (no timing
    threshold: the peak proves it never inflated past the ceiling)."""
    bomb = make_gzip_bomb(256 * MB)
    assert len(bomb) < 512 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match="1048576-byte ceiling"):
            decode(bomb, ceiling=1 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MB  # the ceiling plus a chunk, never the bomb


def test_ceiling_applies_across_gzip_members() -> None:
    """Several members each under the ceiling still add up against it."""
    member = gzip.compress(bytes(600 * 1024))
    with pytest.raises(PayloadTooLargeError):
        gunzip(member + member, max_decompressed_bytes=1 * MB)
    assert len(gunzip(member + member, max_decompressed_bytes=2 * MB)) == 1200 * 1024


def test_gzip_of_something_that_is_not_json() -> None:
    """gzip of plain text."""
    with pytest.raises(DecodeError, match="subscription payload is not JSON"):
        decode(gzip.compress(b"2 123456789010 eni-1 - - - - - - - 1 2 - NODATA"))


def test_json_nested_too_deeply() -> None:
    """A JSON bomb of nesting fails cleanly."""
    with pytest.raises(DecodeError):
        decode(gzip.compress(b"[" * 200_000))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (gzip_json([1, 2, 3]), "JSON list, not an object"),
        (with_envelope(messageType="DATA_MSG"), "messageType is 'DATA_MSG'"),
        (with_envelope(messageType=None), "messageType is missing"),
        (with_envelope(logEvents=None), "no logEvents"),
        (with_envelope(logEvents={"id": "1"}), "logEvents is dict, not a list"),
        (with_envelope(logGroup=42), "'logGroup' is int"),
        (with_envelope(subscriptionFilters="one"), "subscriptionFilters"),
        (with_events(["just a string"]), r"logEvents\[0\] is str, not an object"),
        (with_events([{"id": "1", "timestamp": 1}]), r"logEvents\[0\] has no 'message'"),
        (with_events([{"id": "1", "message": "m"}]), r"logEvents\[0\] has no 'timestamp'"),
        (
            with_events([{"id": "1", "timestamp": 1, "message": 5}]),
            r"logEvents\[0\]\.message is int, not str",
        ),
        (
            with_events([{"id": "1", "timestamp": "1", "message": "m"}]),
            r"logEvents\[0\]\.timestamp is str, not int",
        ),
        (
            with_events([{"id": "1", "timestamp": 1.5, "message": "m"}]),
            r"logEvents\[0\]\.timestamp is float, not int",
        ),
        (
            with_events([{"id": 7, "timestamp": 1, "message": "m"}]),
            r"logEvents\[0\]\.id is int, not str",
        ),
    ],
)
def test_json_of_the_wrong_shape(data: bytes, complaint: str) -> None:
    """Every shape problem is a DecodeError that says where."""
    with pytest.raises(DecodeError, match=complaint):
        decode(data)


def test_errors_do_not_echo_payload_contents() -> None:
    """Messages describe the problem, not the data (payloads may be sensitive)."""
    secret = "password=hunter2"
    for data in (
        gzip.compress(f"not json {secret}".encode()),
        with_envelope(messageType=secret * 10),
        with_events([{"id": secret, "timestamp": secret, "message": secret}]),
    ):
        with pytest.raises(DecodeError) as caught:
            decode(data)
        assert secret * 2 not in str(caught.value)
        assert len(str(caught.value)) < 300


# --- records that are not subscription payloads -----------------------------------------------


def test_decode_record_sniffs_gzip_as_a_subscription_payload() -> None:
    """Kinesis and Firehose records of a CloudWatch subscription are gzip."""
    assert decode_record(make_cwl_payload(["x"]), max_decompressed_bytes=CEILING).origin == (
        "cloudwatch"
    )


def test_flow_log_sent_straight_to_firehose() -> None:
    """{"message": "<line>"} records (one, or one per line) have no id or timestamp."""
    line = make_flow_lines(1)[0]
    batch = decode_record(make_direct_record(line), max_decompressed_bytes=CEILING)
    assert batch.origin == "direct"
    assert batch.events == (LogEvent(None, None, line),)
    two = make_direct_record("a") + b"\n" + make_direct_record("b") + b"\n"
    assert [e.message for e in decode_record(two, max_decompressed_bytes=CEILING).events] == [
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("data", "messages"),
    [
        (b"first line\r\nsecond line\n\n", ["first line", "second line"]),
        (b'{"level": "info", "msg": "not a flow"}', ['{"level": "info", "msg": "not a flow"}']),
        (b'{"message": 42}', ['{"message": 42}']),
        (b"[1, 2]", ["[1, 2]"]),
        (b"", []),
        (b"\xff\xfe\x00", ["\ufffd\ufffd\x00"]),
    ],
)
def test_other_records_become_text_events(data: bytes, messages: list[str]) -> None:
    """Plain text and foreign JSON are delivered as text, one event per non-empty line."""
    batch = decode_record(data, max_decompressed_bytes=CEILING)
    assert batch.origin == "text"
    assert [event.message for event in batch.events] == messages


def test_oversized_plain_record() -> None:
    """The ceiling also bounds records that are not compressed."""
    with pytest.raises(PayloadTooLargeError):
        decode_record(b"x" * 2048, max_decompressed_bytes=1024)


def test_gzip_record_that_is_not_a_subscription_payload_is_an_error() -> None:
    """gzip is always read as a subscription payload; anything else in it fails the record."""
    with pytest.raises(DecodeError):
        decode_record(gzip.compress(b"plain text"), max_decompressed_bytes=CEILING)


# --- re-encoding ------------------------------------------------------------------------------


def test_encode_round_trips_and_splits() -> None:
    """encode(batch) decodes to the same batch; halves keep the envelope."""
    batch = decode(make_cwl_payload(make_flow_lines(6)))
    assert decode(encode_subscription_batch(batch)) == batch
    first = LogBatch(
        origin=batch.origin,
        events=batch.events[:3],
        log_group=batch.log_group,
        log_stream=batch.log_stream,
        owner=batch.owner,
        subscription_filters=batch.subscription_filters,
    )
    half = decode(encode_subscription_batch(first))
    assert half.events == batch.events[:3]
    assert (half.log_group, half.owner) == (batch.log_group, batch.owner)


def test_encode_keeps_unusual_text() -> None:
    """Non-ASCII text and lone surrogates (from \\udXXX escapes) survive a round trip."""
    envelope = make_cwl_envelope(["caf\u00e9 \u2603", "lone \ud800 surrogate"])
    batch = decode(gzip_json(envelope))
    assert batch.events[1].message == "lone \ud800 surrogate"
    assert decode(encode_subscription_batch(batch)) == batch


def test_encode_control_message() -> None:
    """A control batch re-encodes as a control message."""
    assert decode(encode_subscription_batch(decode(make_control_payload()))).is_control


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_transform_errors(data: bytes) -> None:
    """decode_record never fails with anything but a TransformError."""
    with contextlib.suppress(TransformError):
        decode_record(data, max_decompressed_bytes=64 * 1024)


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_after_the_gzip_magic(data: bytes) -> None:
    """Bytes that look like gzip by their first two bytes only."""
    with contextlib.suppress(TransformError):
        decode_record(b"\x1f\x8b" + data, max_decompressed_bytes=64 * 1024)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=15,
)
_envelopes = st.fixed_dictionaries(
    {"messageType": st.sampled_from(["DATA_MESSAGE", "CONTROL_MESSAGE", "OTHER"])},
    optional={
        "logGroup": _json,
        "logStream": _json,
        "owner": _json,
        "subscriptionFilters": _json,
        "logEvents": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.text(max_size=5) | _json,
                    "timestamp": st.integers() | _json,
                    "message": st.text(max_size=20) | _json,
                },
            )
            | _json,
            max_size=5,
        )
        | _json,
    },
)


@settings(max_examples=300)
@given(_envelopes | _json)
def test_gzip_json_of_any_shape_raises_only_transform_errors(document: Any) -> None:
    """Any JSON document in gzip decodes or fails with a DecodeError."""
    data = gzip.compress(json.dumps(document).encode())
    try:
        batch = decode_record(data, max_decompressed_bytes=64 * 1024)
    except TransformError:
        return
    assert batch.origin == "cloudwatch"


def test_zlib_streams_are_not_gzip() -> None:
    """A zlib (not gzip) stream is refused rather than guessed."""
    with pytest.raises(DecodeError):
        decode(zlib.compress(json.dumps(make_cwl_envelope(["a"])).encode()))


# --- boundaries that mutation testing showed unpinned (make mutation) -------------------------


def test_gunzip_at_exactly_the_ceiling_and_one_byte_over() -> None:
    payload = bytes(range(256)) * 4  # 1024 bytes
    data = gzip.compress(payload)
    assert gunzip(data, max_decompressed_bytes=1024) == payload
    with pytest.raises(PayloadTooLargeError) as caught:
        gunzip(data, max_decompressed_bytes=1023)
    assert str(caught.value) == (
        f"payload inflates past the 1023-byte ceiling ({len(data)} bytes compressed); "
        "a gzip bomb or a misrouted file"
    )


def test_gunzip_of_several_members_at_exactly_the_ceiling_and_one_byte_over() -> None:
    first, second = gzip.compress(b"a" * 300), gzip.compress(b"b" * 200)
    assert gunzip(first + second, max_decompressed_bytes=500) == b"a" * 300 + b"b" * 200
    with pytest.raises(PayloadTooLargeError):
        gunzip(first + second, max_decompressed_bytes=499)
    three = gunzip(first + second + first, max_decompressed_bytes=800)
    assert three == b"a" * 300 + b"b" * 200 + b"a" * 300


def test_plain_record_at_exactly_the_ceiling_and_one_byte_over() -> None:
    record = b"x" * 1024
    (event,) = decode_record(record, max_decompressed_bytes=1024).events
    assert event.message == "x" * 1024
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_record(record, max_decompressed_bytes=1023)
    assert str(caught.value) == "record of 1024 bytes is over the 1023-byte ceiling"


def test_subscription_payload_at_exactly_the_ceiling_and_one_byte_over() -> None:
    data = make_cwl_payload(["a", "b"])
    size = len(gzip.decompress(data))
    assert [e.message for e in decode(data, ceiling=size).events] == ["a", "b"]
    with pytest.raises(PayloadTooLargeError):
        decode(data, ceiling=size - 1)


def test_event_ids_keep_their_length_after_being_read() -> None:
    """One EventIds object: its length is the same before and after the ids are read."""
    envelope = make_cwl_envelope(["a", "b", "c"])
    envelope["logEvents"][2]["id"] = 12345  # not a string: reads as None
    ids = read_subscription(gzip_json(envelope), max_decompressed_bytes=CEILING).ids
    assert len(ids) == 3
    assert ids[2] is None
    assert len(ids) == 3
    assert list(ids) == [envelope["logEvents"][0]["id"], envelope["logEvents"][1]["id"], None]


def test_control_message_payload_keeps_its_envelope_and_has_empty_columns() -> None:
    payload = read_subscription(make_control_payload(), max_decompressed_bytes=CEILING)
    assert payload.message_type == "CONTROL_MESSAGE"
    assert payload.is_control
    assert (payload.events, payload.timestamps, payload.messages) == ([], [], [])
    envelope = make_cwl_envelope(message_type="CONTROL_MESSAGE", log_group="/g", log_stream="s")
    control = read_subscription(gzip_json(envelope), max_decompressed_bytes=CEILING)
    assert (control.owner, control.log_group, control.log_stream) == (ACCOUNT, "/g", "s")
    assert control.subscription_filters == ("splunk-forwarder",)
    assert (control.events, control.timestamps, control.messages) == ([], [], [])


def test_data_message_payload_says_so() -> None:
    payload = read_subscription(make_cwl_payload(["a"]), max_decompressed_bytes=CEILING)
    assert payload.message_type == "DATA_MESSAGE"
    assert not payload.is_control


def test_trailing_bytes_other_than_zero_padding_are_garbage() -> None:
    with pytest.raises(DecodeError, match=r"^2 bytes of trailing garbage after the gzip data$"):
        gunzip(gzip.compress(b"x") + b"XX", max_decompressed_bytes=10)
    with pytest.raises(DecodeError, match="trailing garbage"):
        gunzip(gzip.compress(b"x") + b"\0X\0", max_decompressed_bytes=10)


def test_a_later_gzip_member_inflates_only_into_what_is_left_of_the_ceiling() -> None:
    """After a first member near the ceiling, a bomb member allocates a few bytes, not MBs."""
    first = gzip.compress(bytes(MB - 10), compresslevel=1)
    bomb = make_gzip_bomb(64 * MB)
    data = first + bomb
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError):
            gunzip(data, max_decompressed_bytes=MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About 2 MiB: the first member's MiB of output (zlib sizes its buffer up to the limit).
    # A second member allowed a full ceiling of its own would take 5 MiB.
    assert peak < 3 * MB


def test_json_too_deep_or_unusable_is_named_in_the_error() -> None:
    with pytest.raises(DecodeError) as deep:
        decode(gzip.compress(b"[" * 200_000))
    assert str(deep.value) == "subscription payload is JSON nested too deeply to decode"
    with pytest.raises(DecodeError) as huge:
        decode(gzip.compress(b'{"logEvents": ' + b"7" * 5000 + b"}"))
    message = str(huge.value)
    prefix = "subscription payload is not usable JSON: "
    assert message.startswith(prefix + "Exceeds the limit")
    assert len(message) == len(prefix) + 80


def test_envelope_errors_name_the_problem_exactly() -> None:
    long_type = "X" * 40
    with pytest.raises(DecodeError) as caught:
        decode(with_envelope(messageType=long_type))
    shown = repr(long_type)[:24]
    assert str(caught.value) == (
        f"subscription payload messageType is {shown}; expected DATA_MESSAGE or CONTROL_MESSAGE"
    )
    with pytest.raises(DecodeError) as caught:
        decode(with_envelope(subscriptionFilters=[1]))
    assert str(caught.value) == "subscription payload subscriptionFilters is not a list of strings"
    with pytest.raises(DecodeError) as caught:
        decode(with_envelope(logEvents=None))
    assert str(caught.value) == "subscription payload has no logEvents"


def test_encode_writes_compact_utf8_json_in_a_deterministic_gzip() -> None:
    """Re-ingested halves are as small as the original format and identical run to run."""
    batch = LogBatch(
        origin="cloudwatch",
        events=(LogEvent("e1", 1700000000000, "caf\u00e9"),),
        log_group="/g",
        log_stream="s",
        owner="123",
        subscription_filters=("f",),
    )
    data = encode_subscription_batch(batch)
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    assert (
        gzip.decompress(data)
        == (
            '{"messageType":"DATA_MESSAGE","owner":"123","logGroup":"/g","logStream":"s",'
            '"subscriptionFilters":["f"],"logEvents":[{"id":"e1","timestamp":1700000000000,'
            '"message":"caf\u00e9"}]}'
        ).encode()
    )


def test_event_ids_iterated_first_read_missing_and_odd_ids_as_none() -> None:
    """Iterating (the deliverer's read) gives what indexing gives: a missing or non-string
    id is None."""
    envelope = make_cwl_envelope(["a", "b", "c", "d"])
    del envelope["logEvents"][1]["id"]
    envelope["logEvents"][3]["id"] = 7
    ids = read_subscription(gzip_json(envelope), max_decompressed_bytes=CEILING).ids
    first, _, third, _ = (event.get("id") for event in envelope["logEvents"])
    assert list(ids) == [first, None, third, None]
    assert [ids[i] for i in range(4)] == list(ids)
