"""The transform pipeline: payload bytes to HEC-ready events, fast paths equal to the reference."""

from __future__ import annotations

import contextlib
import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_sample
from tests.factories import (
    CUSTOM_FIELDS,
    EPOCH_MS,
    VPC_LOG_GROUP,
    VPC_LOG_STREAM,
    gzip_json,
    make_control_payload,
    make_cwl_envelope,
    make_cwl_payload,
    make_direct_record,
    make_flow_lines,
    sample_files,
)
from transforms import shaping
from transforms.cloudwatch import decode_record, decode_subscription_batch
from transforms.errors import DecodeError, FlowLogFormatError, TransformError
from transforms.hec_event import flow_line_fits, to_hec_event
from transforms.options import DropRule, Route, Shaping, TransformOptions
from transforms.pipeline import (
    EncodedBatch,
    firehose_payload,
    transform_batch,
    transform_lines,
    transform_payload,
    transform_payload_slices,
)
from transforms.records import EncodedEvent, EncodedEvents, LogBatch, RawTarget
from transforms.routing import VPCFLOW_SOURCETYPE, Destination, resolve
from transforms.vpc_flow import (
    DEFAULT_FIELDS,
    V5_FIELDS,
    compile_format,
    fields_from_header,
    parse_flow_log,
)

CEILING = 4 * 1024 * 1024
EVENT = TransformOptions(max_decompressed_bytes=CEILING)
RAW = TransformOptions(endpoint="raw", max_decompressed_bytes=CEILING)
JSON = TransformOptions(event_format="json", max_decompressed_bytes=CEILING)
CUSTOM = TransformOptions(flow_log_format=CUSTOM_FIELDS, max_decompressed_bytes=CEILING)
LAMBDA_GROUP = "/aws/lambda/checkout"


def objects(body: bytes) -> list[Any]:
    """Concatenated JSON objects (the event endpoint's body)."""
    decoder, text, index, found = json.JSONDecoder(), body.decode(), 0, []
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        found.append(value)
    return found


def destination_for(batch: LogBatch, options: TransformOptions) -> Destination:
    """The destination a batch resolves to."""
    return resolve(
        options,
        log_group=batch.log_group,
        log_stream=batch.log_stream,
        account=batch.owner,
        origin=batch.origin,
    )


def reference(batch: LogBatch, options: TransformOptions) -> tuple[list[Any], int]:
    """What to_hec_event makes of a batch, and how many flow lines did not fit."""
    dest = destination_for(batch, options)
    events = [to_hec_event(event, dest) for event in batch.events]
    unparsed = 0
    if dest.flow_fields is not None:
        for event in batch.events:
            if dest.event_format == "json":
                try:
                    parse_flow_log(event.message, dest.flow_fields)
                except TransformError:
                    unparsed += 1
            elif not flow_line_fits(event.message, dest.flow_fields)[0]:
                unparsed += 1
    return events, unparsed


def check_against_reference(data: bytes, options: TransformOptions) -> EncodedBatch:
    """transform_payload gives the reference's objects, counts and ids, per event."""
    encoded = transform_payload(data, options)
    batch = decode_record(data, max_decompressed_bytes=CEILING)
    expected, unparsed = reference(batch, options)
    assert [json.loads(event.payload) for event in encoded.events] == expected
    assert objects(firehose_payload(encoded, "event")) == expected
    assert encoded.unparsed == unparsed
    assert [event.event_id for event in encoded.events] == [event.id for event in batch.events]
    return encoded


def flow_payload(lines: list[str], **kwargs: Any) -> bytes:
    return make_cwl_payload(lines, log_group=VPC_LOG_GROUP, log_stream=VPC_LOG_STREAM, **kwargs)


# --- flow logs on the event endpoint ----------------------------------------------------------


def test_flow_lines_are_sent_untouched_with_time_from_start() -> None:
    """The default: v2 lines as raw events, time = start, one object per line."""
    lines = make_flow_lines(50, nodata_every=9, skipdata_every=13)
    encoded = check_against_reference(flow_payload(lines), EVENT)
    first = json.loads(encoded.events[0].payload)
    assert first == {
        "time": int(lines[0].split()[10]),
        "source": f"{VPC_LOG_GROUP}:{VPC_LOG_STREAM}",
        "sourcetype": VPCFLOW_SOURCETYPE,
        "event": lines[0],
    }
    assert encoded.unparsed == 0
    assert (encoded.origin, encoded.endpoint, encoded.raw_target) == ("cloudwatch", "event", None)


def test_awkward_lines_take_the_per_line_path_with_the_same_result() -> None:
    """Double spaces, tabs, quotes, non-ASCII, ms or missing starts: still the reference."""
    lines = make_flow_lines(12)
    lines[1] = lines[1].replace(" ", "  ", 3)  # double spaces: tolerated, fits
    lines[2] = lines[2].replace(" ", "\t")  # tabs: tolerated
    lines[3] = lines[3].rsplit(" ", 1)[0]  # a value short: unparsed
    lines[4] = lines[4] + " extra"  # a value too many: unparsed
    fields = lines[5].split()
    fields[10] = fields[10] + "123"  # start in milliseconds
    lines[5] = " ".join(fields)
    fields = lines[6].split()
    fields[10] = "-"  # no start: CloudWatch time
    lines[6] = " ".join(fields)
    lines[7] = lines[7].replace("ACCEPT", 'ACC"EPT').replace("REJECT", 'REJ"ECT')
    lines[8] = lines[8].replace("OK", "\u00f6k")
    lines[9] = ""
    encoded = check_against_reference(flow_payload(lines), EVENT)
    assert encoded.unparsed == 4  # short, extra, start "-", empty
    by_line = {obj["event"]: obj for obj in objects(firehose_payload(encoded))}
    assert by_line[lines[1]]["time"] == int(lines[1].split()[10])
    assert by_line[lines[3]]["time"] == (EPOCH_MS + 3 * 7) / 1000
    assert by_line[lines[5]]["time"] == int(lines[5].split()[10]) / 1000


def test_json_events_for_a_custom_format() -> None:
    """auto picks json for layouts the add-on cannot read: typed, add-on-named records."""
    lines = make_flow_lines(40, fields=CUSTOM_FIELDS, nodata_every=7)
    encoded = check_against_reference(flow_payload(lines), CUSTOM)
    first = json.loads(encoded.events[0].payload)["event"]
    assert first["version"] == 8
    assert isinstance(first["src_port"], int)
    assert {"src_ip", "dest_ip", "vpcflow_action", "flow_direction"} <= set(first)


def test_json_events_slow_path_and_unparsed_lines() -> None:
    """Lines that do not parse go as text with the CloudWatch time, counted as unparsed."""
    lines = make_flow_lines(10, nodata_every=4)
    lines[2] = lines[2].replace(" 443 ", " https ") if " 443 " in lines[2] else lines[2] + " x"
    lines[5] = lines[5].replace(" ", "  ")
    fields = lines[6].split()
    fields[11] = fields[11] + "000"  # end in milliseconds
    lines[6] = " ".join(fields)
    lines[7] = lines[7].replace(" 6 ", " 06 ")
    encoded = check_against_reference(flow_payload(lines), JSON)
    assert encoded.unparsed == 1
    assert json.loads(encoded.events[2].payload)["event"] == lines[2]


def _json_paths_agree(lines: list[str], fields: tuple[str, ...], *, timed: bool = True) -> None:
    """The batch-wide JSON encoder gives the bytes of the line-by-line one, or declines."""
    fmt = compile_format(fields)
    env = '"source":"a%sb%%c","sourcetype":"x","event":'
    timestamps = [EPOCH_MS + i for i in range(len(lines))] if timed else None
    fast = shaping._flow_json_sliced(env, fmt, timestamps, lines)
    assert fast is not None
    slow = shaping._flow_json_fast(env, fmt, timestamps, lines)
    assert slow is not None
    assert fast == slow


@pytest.mark.parametrize("timed", [True, False])
def test_json_batch_path_equals_the_template_path(timed: bool) -> None:
    """Slices of 256 lines, NODATA/SKIPDATA lines, a "-" start, "%" in the envelope."""
    lines = make_flow_lines(600, nodata_every=37, skipdata_every=101)
    values = lines[5].split()
    values[0] = values[-1] = values[10] = "-"  # first, last and start without a value
    lines[5] = " ".join(values)
    lines[300] = " ".join(["-"] * len(DEFAULT_FIELDS))
    lines[400] = lines[400].replace(" ", "   ", 2)  # runs of spaces: the values still fit
    _json_paths_agree(lines, DEFAULT_FIELDS, timed=timed)
    _json_paths_agree(lines[:1], DEFAULT_FIELDS, timed=timed)
    _json_paths_agree([lines[300]], DEFAULT_FIELDS, timed=timed)
    strings = ("account-id", "action", "log-status")
    _json_paths_agree([" ".join(line.split()[i] for i in (1, 12, 13)) for line in lines], strings)
    no_start = tuple(name for name in V5_FIELDS if name != "start")
    _json_paths_agree(make_flow_lines(300, fields=no_start, nodata_every=9), no_start, timed=timed)


@pytest.mark.parametrize(
    "change",
    [
        lambda v: v.__setitem__(5, "080"),  # leading zero
        lambda v: v.__setitem__(10, v[10] + "000"),  # start in milliseconds
        lambda v: v.__setitem__(8, "1-2"),  # a dash inside an integer
        lambda v: v.__setitem__(8, "x"),  # not an integer
        lambda v: v.append("extra"),  # a value too many
        lambda v: v.__setitem__(3, "caf\u00e9"),  # not ASCII
        lambda v: v.__setitem__(3, 'a"b'),  # needs escaping
    ],
)
def test_json_batch_path_declines_what_it_does_not_handle(change: Any) -> None:
    """Any doubt leaves the batch to the other paths: the reference result either way."""
    lines = make_flow_lines(300, nodata_every=11)
    values = lines[270].split()
    change(values)
    lines[270] = " ".join(values)
    fmt = compile_format(DEFAULT_FIELDS)
    assert shaping._flow_json_sliced("", fmt, None, lines) is None
    check_against_reference(flow_payload(lines), JSON)


def test_json_batch_path_out_of_range_timestamp_fails_like_the_other_paths() -> None:
    """CloudWatch times are computed for the whole chunk once a line needs one."""
    lines = make_flow_lines(600)
    values = lines[10].split()
    values[10] = "-"
    lines[10] = " ".join(values)
    envelope = make_cwl_envelope(lines, log_group=VPC_LOG_GROUP, log_stream=VPC_LOG_STREAM)
    envelope["logEvents"][500]["timestamp"] = 10**400
    with pytest.raises(DecodeError, match="out of range"):
        transform_payload(gzip_json(envelope), JSON)
    lines[10] = make_flow_lines(11)[10]
    clean = make_cwl_envelope(lines, log_group=VPC_LOG_GROUP, log_stream=VPC_LOG_STREAM)
    clean["logEvents"][500]["timestamp"] = 10**400
    assert len(transform_payload(gzip_json(clean), JSON).events) == 600  # time from start


def test_v5_layout_is_sent_raw_and_forced_formats_are_honoured() -> None:
    """The documented v5 layout stays raw under auto; event_format json forces records."""
    lines = make_flow_lines(20, version=5, nodata_every=6)
    options = TransformOptions(flow_log_format=V5_FIELDS, max_decompressed_bytes=CEILING)
    raw = check_against_reference(flow_payload(lines), options)
    assert json.loads(raw.events[0].payload)["event"] == lines[0]
    forced = TransformOptions(
        flow_log_format=V5_FIELDS, event_format="json", max_decompressed_bytes=CEILING
    )
    records = check_against_reference(flow_payload(lines), forced)
    assert isinstance(json.loads(records.events[0].payload)["event"], dict)


def test_transit_gateway_flow_logs_by_route() -> None:
    """A route can give a log group the Transit Gateway format."""
    lines = make_flow_lines(15, version="tgw")
    options = TransformOptions(
        routes=(Route(log_group="tgw-*", flow_log_format=parse_tgw()),),
        max_decompressed_bytes=CEILING,
    )
    data = make_cwl_payload(lines, log_group="tgw-flows", log_stream="tgw-attach-1")
    encoded = check_against_reference(data, options)
    assert json.loads(encoded.events[0].payload)["event"]["tgw_id"] == "tgw-0123456789abcdef0"


def parse_tgw() -> tuple[str, ...]:
    header = load_sample("vpc_flow_tgw.log").decode().splitlines()[0]
    return tuple(header.split())


@pytest.mark.parametrize("options", [EVENT, JSON], ids=["raw-events", "json-events"])
def test_large_records_are_processed_in_chunks_with_the_same_result(
    options: TransformOptions,
) -> None:
    """5,000-line records (Firehose's large case) across chunk boundaries, one odd line."""
    lines = make_flow_lines(2500, nodata_every=97)
    lines[1500] = lines[1500].rsplit(" ", 1)[0]
    encoded = check_against_reference(flow_payload(lines), options)
    assert encoded.unparsed == 1
    assert len(encoded.events) == 2500


# --- other logs -------------------------------------------------------------------------------


def test_lambda_messages_are_strings_with_millisecond_time() -> None:
    """Non-flow messages stay strings (JSON inside too), time from CloudWatch in seconds."""
    messages = [
        "START RequestId: 6f0a7c1e Version: $LATEST\n",
        '{"level":"info","msg":"order \\"A-1\\" placed"}\n',
        "multi\nline\ttabbed \u2603 \ud83d",
        "",
    ]
    data = make_cwl_payload(messages, log_group=LAMBDA_GROUP, log_stream="2023/11/14/x")
    encoded = check_against_reference(data, EVENT)
    decoded = [json.loads(event.payload) for event in encoded.events]
    assert [obj["event"] for obj in decoded] == messages
    assert decoded[0]["time"] == EPOCH_MS / 1000
    assert decoded[1]["time"] == (EPOCH_MS + 7) / 1000
    assert {obj["sourcetype"] for obj in decoded} == {"aws:cloudwatchlogs:lambda"}


def test_plain_messages_without_anything_to_escape() -> None:
    """The no-escape fast path gives the same objects."""
    data = make_cwl_payload([f"line {i}" for i in range(20)], log_group="app", log_stream="s")
    check_against_reference(data, EVENT)


def test_invalid_utf8_in_a_message_is_delivered_with_replacement_characters() -> None:
    """The record is not lost: bad bytes become U+FFFD in an otherwise intact event."""
    text = json.dumps(make_cwl_envelope(["ok PLACEHOLDER ok"], log_group="app"))
    data = gzip.compress(text.encode().replace(b"PLACEHOLDER", b"\xc3\x28"))
    [event] = transform_payload(data, EVENT).events
    assert json.loads(event.payload)["event"] == "ok \ufffd( ok"


def test_flow_log_sent_straight_to_firehose() -> None:
    """{"message": line} records are flow logs: vpcflow, time from start, no event id."""
    line = make_flow_lines(1)[0]
    encoded = transform_payload(make_direct_record(line), EVENT)
    [event] = encoded.events
    assert encoded.origin == "direct"
    assert event.event_id is None
    assert json.loads(event.payload) == {
        "time": int(line.split()[10]),
        "source": "firehose:direct",
        "sourcetype": VPCFLOW_SOURCETYPE,
        "event": line,
    }


def test_plain_text_record() -> None:
    """Neither gzip nor {"message"}: one text event per line, no time."""
    encoded = transform_payload(b"first\nsecond\n", EVENT)
    assert [json.loads(event.payload) for event in encoded.events] == [
        {"source": "firehose:text", "sourcetype": "aws:cloudwatchlogs", "event": "first"},
        {"source": "firehose:text", "sourcetype": "aws:cloudwatchlogs", "event": "second"},
    ]


def test_routing_metadata_reaches_every_object() -> None:
    """Index, host and indexed fields from the route are on each event."""
    options = TransformOptions(
        routes=(Route(log_group="/aws/vpc/*", index="network", host="{account}"),),
        extra_fields=(("env", "prod"),),
        max_decompressed_bytes=CEILING,
    )
    encoded = check_against_reference(flow_payload(make_flow_lines(3)), options)
    first = json.loads(encoded.events[0].payload)
    assert (first["index"], first["host"], first["fields"]) == (
        "network",
        "123456789012",
        {"env": "prod"},
    )


# --- control messages, empty batches, bad payloads --------------------------------------------


def test_control_message_has_no_events() -> None:
    """Flagged for the caller to drop and count; nothing to deliver."""
    encoded = transform_payload(make_control_payload(), EVENT)
    assert encoded.is_control
    assert encoded.event_count == 0
    assert firehose_payload(encoded) == b""


def test_every_entry_point_gives_the_same_batch_for_a_control_message() -> None:
    """The bytes and the LogBatch entry points share one encoder: a control message is the
    same empty, flagged batch from either, on either endpoint, with its envelope kept."""
    data = make_control_payload()
    batch = decode_subscription_batch(data, max_decompressed_bytes=CEILING)
    for options in (EVENT, RAW):
        from_bytes = transform_payload(data, options)
        from_batch = transform_batch(batch, options)
        for encoded in (from_bytes, from_batch):
            assert encoded.is_control
            assert (encoded.origin, encoded.endpoint, encoded.raw_target) == (
                "cloudwatch",
                options.endpoint,
                None,
            )
            assert (encoded.log_group, encoded.log_stream, encoded.owner) == (
                batch.log_group,
                batch.log_stream,
                batch.owner,
            )
            assert list(encoded.events) == []


def test_lines_carry_the_envelope_their_caller_names() -> None:
    encoded = transform_lines(
        ["plain text"], log_group="g", log_stream="s", origin="text", options=EVENT, account="1"
    )
    assert not encoded.is_control
    assert (encoded.origin, encoded.log_group, encoded.log_stream, encoded.owner) == (
        "text",
        "g",
        "s",
        "1",
    )
    assert encoded.event_count == 1


def test_empty_batch_has_no_events() -> None:
    """logEvents [] is a data message with nothing in it."""
    encoded = transform_payload(flow_payload([]), EVENT)
    assert not encoded.is_control
    assert encoded.event_count == 0
    assert firehose_payload(encoded) == b""


@pytest.mark.parametrize(
    "data",
    [
        make_cwl_payload(["x"])[:20],
        b"\x1f\x8bnot gzip at all",
        gzip.compress(b"not json"),
        gzip_json({"messageType": "NOPE"}),
        gzip_json({"messageType": "DATA_MESSAGE", "logGroup": "g"}),
    ],
)
def test_bad_payloads_raise_decode_errors(data: bytes) -> None:
    """Truncated, corrupt, not JSON, wrong type, no logEvents: a DecodeError for the record."""
    with pytest.raises(DecodeError):
        transform_payload(data, EVENT)


def test_out_of_range_timestamp_is_a_decode_error() -> None:
    """A timestamp no float can hold is bad input, not a crash."""
    envelope = make_cwl_envelope(["x"], log_group="app")
    envelope["logEvents"][0]["timestamp"] = 10**400
    with pytest.raises(DecodeError, match="out of range"):
        transform_payload(gzip_json(envelope), EVENT)


# --- the raw endpoint -------------------------------------------------------------------------


def test_raw_endpoint_lines_and_metadata() -> None:
    """Lines untouched and newline-joined; metadata once per batch for the query string."""
    lines = make_flow_lines(5)
    encoded = transform_payload(flow_payload(lines), RAW)
    assert [event.payload.decode() for event in encoded.events] == lines
    assert encoded.raw_target == RawTarget(
        source=f"{VPC_LOG_GROUP}:{VPC_LOG_STREAM}",
        sourcetype=VPCFLOW_SOURCETYPE,
        index=None,
        host=None,
    )
    assert firehose_payload(encoded, "raw") == ("\n".join(lines) + "\n").encode()
    assert encoded.unparsed == 0


def test_raw_endpoint_strips_only_trailing_line_breaks() -> None:
    """A message's own trailing newline would make an empty line; inner ones stay."""
    data = make_cwl_payload(
        ["one\n", "two\r\n", "three\nlines"], log_group=LAMBDA_GROUP, log_stream="2023/11/14/x"
    )
    encoded = transform_payload(data, RAW)
    assert firehose_payload(encoded) == b"one\ntwo\nthree\nlines\n"
    assert encoded.raw_target is not None
    assert encoded.raw_target.sourcetype == "aws:cloudwatchlogs:lambda"


def test_firehose_payload_checks_the_endpoint() -> None:
    """A batch encoded for one endpoint cannot be sent to the other."""
    encoded = transform_payload(flow_payload(make_flow_lines(2)), RAW)
    with pytest.raises(ValueError, match="raw endpoint, not event"):
        firehose_payload(encoded, "event")


def test_firehose_payload_of_plain_event_sequences() -> None:
    """Batches built by hand (a list of EncodedEvent) join the same way."""
    events = [EncodedEvent(b'{"event":"a"}', "1"), EncodedEvent(b'{"event":"b"}', None)]
    assert firehose_payload(EncodedBatch("text", "event", events)) == b'{"event":"a"}{"event":"b"}'
    assert firehose_payload(EncodedBatch("text", "raw", events[:1])) == b'{"event":"a"}\n'
    assert firehose_payload(EncodedBatch("text", "raw", [])) == b""


# --- S3 files and other lines -----------------------------------------------------------------


def test_s3_file_with_a_v2_header() -> None:
    """The header names the fields and is not an event; the lines go raw with time = start."""
    text = load_sample("vpc_flow_v2.log").decode()
    header, *lines = text.splitlines()
    encoded = transform_lines(
        text.splitlines(keepends=True),
        log_group="flow-bucket",
        log_stream="AWSLogs/123456789012/vpcflowlogs/us-east-1/2023/11/14/x.log.gz",
        options=EVENT,
    )
    decoded = [json.loads(event.payload) for event in encoded.events]
    assert [obj["event"] for obj in decoded] == lines
    assert header not in {obj["event"] for obj in decoded}
    assert decoded[0]["source"].startswith("s3://flow-bucket/AWSLogs/")
    assert decoded[0]["time"] == int(lines[0].split()[10])
    assert encoded.origin == "s3"


def test_s3_file_with_a_custom_header_becomes_json_records() -> None:
    """A custom header makes the file a flow log of that format, sent as JSON."""
    lines = load_sample("vpc_flow_custom.log").decode().splitlines()
    encoded = transform_lines(lines, log_group="b", log_stream="k", options=EVENT)
    first = json.loads(encoded.events[0].payload)
    assert first["sourcetype"] == VPCFLOW_SOURCETYPE
    assert first["event"]["version"] == 8
    assert len(encoded.events) == len(lines) - 1
    assert encoded.unparsed == 0


def test_lines_without_a_timestamp_or_start() -> None:
    """Unfit flow lines from a file have no CloudWatch time: the time key is left out."""
    encoded = transform_lines(
        ["not a flow line", ""],
        log_group="b",
        log_stream="k",
        options=EVENT,
        flow_fields=DEFAULT_FIELDS,
    )
    [event] = encoded.events
    assert "time" not in json.loads(event.payload)
    assert encoded.unparsed == 1


def test_a_header_with_an_unknown_field_is_not_taken_for_a_header() -> None:
    """An unknown name (typo, newer field) is no header: lines are delivered, not lost."""
    lines = ["version srcadr dstaddr", "2 a b"]
    encoded = transform_lines(lines, log_group="b", log_stream="k", options=EVENT)
    assert [json.loads(event.payload)["event"] for event in encoded.events] == lines
    with pytest.raises(FlowLogFormatError, match="'srcadr'"):
        fields_from_header(lines[0])


def test_transform_batch_equals_transform_payload() -> None:
    """The LogBatch entry point gives the same events as the bytes entry point."""
    data = flow_payload(make_flow_lines(8, nodata_every=3))
    batch = decode_subscription_batch(data, max_decompressed_bytes=CEILING)
    for options in (EVENT, RAW, JSON):
        assert list(transform_batch(batch, options).events) == list(
            transform_payload(data, options).events
        )


# --- EncodedEvents ----------------------------------------------------------------------------


def test_encoded_events_is_a_lazy_sequence_of_encoded_events() -> None:
    """Index, slice and iterate; payloads are UTF-8 bytes, lone surrogates escaped."""
    events = EncodedEvents(['{"event":"a"}', '{"event":"\u00e9 \ud800"}'], ["1", "2"])
    assert len(events) == 2
    assert events[0] == EncodedEvent(b'{"event":"a"}', "1")
    assert events[1].payload == '{"event":"\u00e9 \\ud800"}'.encode()
    assert list(events[1:]) == [events[1]]
    assert [event.event_id for event in events] == ["1", "2"]
    assert next(iter(EncodedEvents(["x"]))).event_id is None
    with pytest.raises(ValueError, match="2 texts but 1 event ids"):
        EncodedEvents(["a", "b"], ["1"])


# --- properties -------------------------------------------------------------------------------

_MUTATIONS = (
    "none",
    "drop",
    "extra",
    "double-space",
    "tab",
    "ms-start",
    "dash-start",
    "bad-int",
    "quote",
    "non-ascii",
    "leading-zero",
)


def _mutate(line: str, mutation: str) -> str:
    fields = line.split()
    if mutation == "drop":
        fields.pop(3)
    elif mutation == "extra":
        fields.append("x")
    elif mutation == "double-space":
        return line.replace(" ", "  ", 1)
    elif mutation == "tab":
        return line.replace(" ", "\t", 2)
    elif mutation == "ms-start":
        fields[10] += "456"
    elif mutation == "dash-start":
        fields[10] = "-"
    elif mutation == "bad-int":
        fields[8] = "12a"
    elif mutation == "quote":
        fields[1] = 'a"b\\c'
    elif mutation == "non-ascii":
        fields[2] = "eni-\u00e9"
    elif mutation == "leading-zero":
        fields[10] = "0" + fields[10][1:]
    return " ".join(fields)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=30),
    seed=st.integers(min_value=0, max_value=1000),
    position=st.integers(min_value=0, max_value=29),
    mutation=st.sampled_from(_MUTATIONS),
    options=st.sampled_from([EVENT, JSON, RAW]),
)
def test_any_batch_with_one_odd_line_matches_the_reference(
    count: int, seed: int, position: int, mutation: str, options: TransformOptions
) -> None:
    """Fast or per-line path, every object and the unparsed count are the reference's."""
    lines = make_flow_lines(count, seed=seed, nodata_every=5)
    lines[position % count] = _mutate(lines[position % count], mutation)
    data = flow_payload(lines)
    if options.endpoint == "raw":
        encoded = transform_payload(data, options)
        assert firehose_payload(encoded) == ("\n".join(lines) + "\n").encode()
    else:
        check_against_reference(data, options)


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.text(max_size=60), max_size=8),
    log_group=st.sampled_from(["/aws/vpc/flowlogs", "/aws/lambda/f", "app"]),
    options=st.sampled_from([EVENT, JSON, CUSTOM]),
)
def test_any_messages_give_valid_json_equal_to_the_reference(
    messages: list[str], log_group: str, options: TransformOptions
) -> None:
    """Arbitrary text (control characters, quotes, surrogates) still makes valid objects."""
    check_against_reference(make_cwl_payload(messages, log_group=log_group), options)


@settings(max_examples=200)
@given(st.binary(max_size=1024))
def test_arbitrary_bytes_raise_only_transform_errors(data: bytes) -> None:
    """transform_payload never fails with anything but a TransformError."""
    with contextlib.suppress(TransformError):
        transform_payload(data, TransformOptions(max_decompressed_bytes=64 * 1024))


def test_samples_are_current() -> None:
    """tests/samples/ is what `python -m tests.factories` writes (regenerate after changes)."""
    for name, content in sample_files().items():
        assert load_sample(name) == content, f"{name} is stale: run python -m tests.factories"


# --- slices of a big payload ---------------------------------------------------------------


def _summed(batches: list[EncodedBatch]) -> dict[str, Any]:
    """What a caller adds up over slices (the ledger's counts), and the events in order."""
    return {
        "texts": [text for batch in batches for text in batch.events.texts],
        "ids": [i for batch in batches for i in batch.events.ids],
        "unparsed": sum(batch.unparsed for batch in batches),
        "filtered": sum(batch.filtered for batch in batches),
        "sampled": sum(batch.sampled for batch in batches),
        "time_unparsed": sum(batch.time_unparsed for batch in batches),
        "targets": {batch.raw_target for batch in batches},
        "destinations": {batch.destination for batch in batches},
    }


@pytest.mark.parametrize(
    ("options", "messages"),
    [
        # flow logs as raw lines, with lines that do not fit the format (unparsed)
        (TransformOptions(), [*make_flow_lines(23), "not a flow line", *make_flow_lines(9)]),
        # flow logs as JSON records, deduplicated by a key field
        (
            TransformOptions(
                routes=(Route(log_group=VPC_LOG_GROUP, event_format="json"),),
                dedup_field="dedup_key",
            ),
            make_flow_lines(31),
        ),
        # the raw endpoint
        (TransformOptions(endpoint="raw"), make_flow_lines(17)),
    ],
)
@pytest.mark.parametrize("max_events", [1, 5, 10, 1000])
def test_payload_slices_hold_the_whole_payloads_events_and_counts(
    options: TransformOptions, messages: list[str], max_events: int
) -> None:
    """GIVEN a payload WHEN shaped in slices THEN the slices, joined, are the whole payload's
    events in order, and their counts add up to its counts."""
    data = make_cwl_payload(messages, log_group=VPC_LOG_GROUP)
    whole = transform_payload(data, options)
    slices = list(transform_payload_slices(data, options, max_events=max_events))
    assert len(slices) == -(-len(messages) // max_events)
    assert all(len(batch.events) <= max_events for batch in slices)
    assert _summed(slices) == _summed([whole])
    assert {(b.origin, b.log_group, b.log_stream, b.owner, b.endpoint) for b in slices} == {
        (whole.origin, whole.log_group, whole.log_stream, whole.owner, whole.endpoint)
    }


def test_payload_slices_with_shaping_rules_count_what_one_batch_counts() -> None:
    """Drop, sample (a hash per event) and time from the message act per event: the same
    events are kept and counted whatever the slices."""
    shaping = Shaping(drop=(DropRule(message="*DEBUG*"),), sample=0.5, time_field="t")
    options = TransformOptions(routes=(Route(log_group="/app/web", shaping=shaping),))
    messages = [
        json.dumps({"t": "2025-11-26T10:00:00Z" if i % 3 else "bad", "m": "DEBUG" * (i % 4 == 0)})
        for i in range(60)
    ]
    data = make_cwl_payload(messages, log_group="/app/web", log_stream="web-1")
    whole = transform_payload(data, options)
    assert whole.filtered and whole.sampled and whole.time_unparsed  # every count is exercised
    slices = list(transform_payload_slices(data, options, max_events=7))
    assert _summed(slices) == _summed([whole])


def test_a_control_message_or_a_small_payload_is_one_slice() -> None:
    control = list(
        transform_payload_slices(make_control_payload(), TransformOptions(), max_events=1)
    )
    assert len(control) == 1 and control[0].is_control and not control[0].events
    data = make_cwl_payload(make_flow_lines(3), log_group=VPC_LOG_GROUP)
    (one,) = transform_payload_slices(data, TransformOptions(), max_events=3)
    assert _summed([one]) == _summed([transform_payload(data, TransformOptions())])


def test_payload_slices_raise_decoding_errors_before_any_slice() -> None:
    """A payload that does not decode fails the call itself, as transform_payload does."""
    with pytest.raises(DecodeError):
        transform_payload_slices(gzip.compress(b"[1, 2]"), TransformOptions(), max_events=5)
    with pytest.raises(ValueError, match="max_events"):
        transform_payload_slices(make_control_payload(), TransformOptions(), max_events=0)


@pytest.mark.parametrize("ids", [None, ["a", None, "c"]])
def test_encoded_events_iterate_as_they_index(ids: list[str | None] | None) -> None:
    """Iteration (what the deliverer lists) gives the same EncodedEvent values as indexing,
    text that is not valid UTF-8 escaped alike."""
    events = EncodedEvents(['{"event":"x"}', "plain", "bad \udc80 surrogate"], ids)
    listed = list(events)
    assert listed == [events[i] for i in range(3)]
    assert all(type(event) is EncodedEvent for event in listed)
    assert listed[2].payload == b"bad \\udc80 surrogate"
    assert [event.event_id for event in listed] == (ids or [None, None, None])
