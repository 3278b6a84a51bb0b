"""The one input sniffer (``transforms.sniff``) and the reader ``forward`` and ``transform``
share (``forwarder.intake.inputs``): what each kind of input becomes, and its ``source``."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import random
from typing import Any

import pytest

from forwarder.intake import inputs
from forwarder.intake.inputs import INPUT_ERRORS, Failure, input_names, read_units
from forwarder.push import shape_of
from tests.conftest import make_settings
from tests.factories import (
    make_control_payload,
    make_cwl_payload,
    make_firehose_event,
    make_flow_lines,
)
from transforms.options import TransformOptions
from transforms.pipeline import transform_payload
from transforms.records import EncodedBatch
from transforms.sniff import event_payloads, event_shape, sniff

FLOW_GROUP = "/aws/vpc/flowlogs"
LAMBDA_GROUP = "/aws/lambda/orders"
HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
    "bytes start end action log-status"
)


def options(**environ: str) -> TransformOptions:
    return make_settings(**environ).transform


def events(
    data: bytes, file: str = "flows.log", log_group: str | None = None, **environ: str
) -> list[dict[str, Any]]:
    """The event objects read_units makes of ``data`` named as ``forward FILE`` names it."""
    group, stream = input_names(file, log_group, None)
    units = list(
        read_units(io.BytesIO(data), options(**environ), log_group=group, log_stream=stream)
    )
    assert not [unit for unit in units if isinstance(unit, Failure)]
    return [
        json.loads(event.payload)
        for unit in units
        if isinstance(unit, EncodedBatch)
        for event in unit.events
    ]


# --- the sniffer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "gzipped"),
    [
        (make_cwl_payload(["a"], log_group=FLOW_GROUP), "payload", True),
        (gzip.compress(b"2 123 eni-1 ...\n"), "text", True),
        (gzip.compress(f"{HEADER}\n".encode()), "text", True),
        (b'  {"records": []}', "json", False),
        (b'{"message": "x"}\n{"message": "y"}\n', "json", False),
        (b"plain text\n", "text", False),
        (b"", "text", False),
        (b"\x1f\x8b\x08garbage", "text", True),  # broken gzip: the line reader says so
        (bytes(range(256)), "text", False),
    ],
)
def test_sniff_tells_the_kind_from_the_first_bytes(data: bytes, kind: str, gzipped: bool) -> None:
    sniffed = sniff(data)
    assert (sniffed.kind, sniffed.gzip) == (kind, gzipped)


@pytest.mark.parametrize(
    ("document", "shape"),
    [
        ({"awslogs": {"data": "H4sI"}}, "awslogs"),
        ({"records": [{"recordId": "1", "data": ""}]}, "firehose"),
        ({"Records": [{"eventSource": "aws:kinesis", "kinesis": {"data": ""}}]}, "kinesis"),
        ({"Records": [{"kinesis": {"data": ""}}]}, "kinesis"),  # a saved record list
        ({"Records": [{"eventSource": "aws:sqs", "messageId": "m", "body": "{}"}]}, "sqs"),
        ({"Records": [{"eventSource": "aws:sqs", "kinesis": {}}]}, None),
        ({"Records": []}, None),
        ({"awslogs": {"data": 3}}, None),
        ({"message": "x"}, None),
        ([], None),
        ("text", None),
    ],
)
def test_event_shape_is_the_one_the_push_lambda_uses(document: Any, shape: str | None) -> None:
    assert event_shape(document) == shape
    assert shape_of(document) == (None if shape == "firehose" else shape)


def test_event_payloads_in_order_with_none_for_a_record_without_data() -> None:
    event = {"records": [{"data": "YQ=="}, {"recordId": "2"}, "junk"]}
    assert event_payloads(event, "firehose") == ["YQ==", None, None]
    kinesis = {"Records": [{"kinesis": {"data": "Yg=="}}, {"kinesis": 3}]}
    assert event_payloads(kinesis, "kinesis") == ["Yg==", None]
    with pytest.raises(ValueError, match="sqs"):
        event_payloads({"Records": []}, "sqs")


# --- what each input becomes (migrated from transform_file_contents) ------------------------


def test_a_firehose_event_gives_each_records_events_and_names_a_bad_record() -> None:
    lines = make_flow_lines(2)
    event = make_firehose_event(
        [make_cwl_payload(lines, log_group=FLOW_GROUP), b"\x1f\x8bbad", b"plain"]
    )
    units = list(read_units(io.BytesIO(json.dumps(event).encode()), options()))
    failures = [unit for unit in units if isinstance(unit, Failure)]
    assert [failure.reason for failure in failures] == ["undecodable_record"]
    assert "record 1" in failures[0].detail
    texts = [
        json.loads(e.payload)["event"]
        for unit in units
        if isinstance(unit, EncodedBatch)
        for e in unit.events
    ]
    assert texts == [*lines, "plain"]


def test_a_gzip_payload_and_a_push_event_read_alike() -> None:
    payload = make_cwl_payload(["a", "b"], log_group=LAMBDA_GROUP, log_stream="2025/11/26/[1]a")
    push = json.dumps({"awslogs": {"data": base64.b64encode(payload).decode()}}).encode()
    kinesis = json.dumps({"Records": [{"kinesis": {"data": base64.b64encode(payload).decode()}}]})
    for data in (payload, push, kinesis.encode()):
        objects = events(data, log_group="/ignored/for/payloads")
        assert [obj["sourcetype"] for obj in objects] == ["aws:cloudwatchlogs:lambda"] * 2
        assert {obj["source"] for obj in objects} == {f"{LAMBDA_GROUP}:2025/11/26/[1]a"}


def test_a_control_message_is_a_control_batch_without_events() -> None:
    units = list(read_units(io.BytesIO(make_control_payload()), options()))
    assert len(units) == 1
    assert isinstance(units[0], EncodedBatch)
    assert units[0].is_control
    assert not units[0].events


def test_direct_flow_records_are_flow_logs_named_by_the_file() -> None:
    lines = make_flow_lines(2)
    data = "\n".join(json.dumps({"message": line}) for line in lines).encode()
    objects = events(data, file="direct.json")
    assert [obj["event"] for obj in objects] == lines
    assert {obj["sourcetype"] for obj in objects} == {"aws:cloudwatchlogs:vpcflow"}
    assert {obj["source"] for obj in objects} == {"direct.json"}


@pytest.mark.parametrize("compress", [False, True])
def test_a_flow_log_file_with_a_header_is_a_flow_log_whatever_its_name(compress: bool) -> None:
    lines = make_flow_lines(3)
    data = "\n".join([HEADER, *lines]).encode()
    objects = events(gzip.compress(data) if compress else data, file="flows_hdr.log")
    assert [obj["event"] for obj in objects] == lines
    assert {obj["sourcetype"] for obj in objects} == {"aws:cloudwatchlogs:vpcflow"}
    assert all("time" in obj for obj in objects)
    assert {obj["source"] for obj in objects} == {"flows_hdr.log"}


@pytest.mark.parametrize("compress", [False, True])
def test_a_headerless_flow_log_file_is_text_unless_a_log_group_routes_it(compress: bool) -> None:
    """The README's routing table: "anything else" gets the default sourcetype; the README's
    `--log-group /aws/vpc/flowlogs` makes headerless flow logs flow logs."""
    lines = make_flow_lines(3)
    data = ("\n".join(lines) + "\n").encode()
    data = gzip.compress(data) if compress else data
    plain = events(data)
    assert [obj["event"] for obj in plain] == lines
    assert {obj["sourcetype"] for obj in plain} == {"aws:cloudwatchlogs"}
    assert not any("time" in obj for obj in plain)
    routed = events(data, log_group=FLOW_GROUP)
    assert {obj["sourcetype"] for obj in routed} == {"aws:cloudwatchlogs:vpcflow"}
    assert all("time" in obj for obj in routed)


def test_plain_text_json_lines_and_binary_garbage_are_text() -> None:
    text = events(b"hello\n\nworld\r\n", file="app.log")
    assert [(obj["event"], obj["sourcetype"]) for obj in text] == [
        ("hello", "aws:cloudwatchlogs"),
        ("world", "aws:cloudwatchlogs"),
    ]
    json_lines = events(b'{"a": 1}\n{"b": 2}\n', file="app.jsonl")
    assert [obj["event"] for obj in json_lines] == ['{"a": 1}', '{"b": 2}']
    garbage = events(random.Random(7).randbytes(4096).replace(b"\x1f\x8b", b"xx"))
    assert garbage
    assert {obj["sourcetype"] for obj in garbage} == {"aws:cloudwatchlogs"}


def test_one_json_document_of_another_shape_is_one_text_event() -> None:
    document = json.dumps({"hello": ["world"]}, indent=2)
    objects = events(document.encode(), file="doc.json")
    assert [obj["event"] for obj in objects] == [document]
    sqs = {"Records": [{"eventSource": "aws:sqs", "messageId": "m", "body": "{}"}]}
    assert [obj["event"] for obj in events(json.dumps(sqs).encode())] == [json.dumps(sqs)]


# --- honest sources --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "log_group", "log_stream", "names"),
    [
        ("flows.log", None, None, (None, "flows.log")),
        ("flows.log", FLOW_GROUP, None, (FLOW_GROUP, "flows.log")),
        ("flows.log", FLOW_GROUP, "eni-1", (FLOW_GROUP, "eni-1")),
        ("-", None, None, (None, "stdin")),
        ("-", FLOW_GROUP, None, (FLOW_GROUP, None)),
        ("-", None, "eni-1", (None, "eni-1")),
    ],
)
def test_input_names(
    file: str, log_group: str | None, log_stream: str | None, names: tuple[str | None, ...]
) -> None:
    assert input_names(file, log_group, log_stream) == names


@pytest.mark.parametrize(
    ("file", "log_group", "header", "source"),
    [
        # zcat ... | forwarder forward - --log-group /aws/vpc/flowlogs (the README's example)
        ("-", FLOW_GROUP, True, FLOW_GROUP),
        ("-", FLOW_GROUP, False, FLOW_GROUP),
        ("-", None, True, "stdin"),
        ("-", None, False, "stdin"),
        ("flows_hdr.log", FLOW_GROUP, True, f"{FLOW_GROUP}:flows_hdr.log"),
        ("logs/flows_hdr.log", None, True, "logs/flows_hdr.log"),
        ("logs/flows.log", None, False, "logs/flows.log"),
    ],
)
def test_sources_of_local_inputs_are_honest(
    file: str, log_group: str | None, header: bool, source: str
) -> None:
    lines = make_flow_lines(2)
    data = ("\n".join([HEADER, *lines] if header else lines) + "\n").encode()
    sources = {obj["source"] for obj in events(data, file=file, log_group=log_group)}
    assert sources == {source}
    assert "://" not in source


def test_raw_endpoint_lines_carry_the_same_source() -> None:
    group, stream = input_names("-", FLOW_GROUP, None)
    data = gzip.compress(("\n".join([HEADER, *make_flow_lines(2)]) + "\n").encode())
    units = list(
        read_units(
            io.BytesIO(data),
            options(SPLUNK_HEC_ENDPOINT="raw"),
            log_group=group,
            log_stream=stream,
        )
    )
    assert [unit.raw_target.source for unit in units if isinstance(unit, EncodedBatch)] == [
        FLOW_GROUP
    ]


def test_random_bytes_never_raise_beyond_input_errors() -> None:
    rng = random.Random(11)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 600))
        head = rng.choice([b"", b"{", b"\x1f\x8b", b'{"records": '])
        with contextlib.suppress(INPUT_ERRORS):
            list(read_units(io.BytesIO(head + data), options(), log_stream="x"))


class Dribble(io.RawIOBase):
    """A pipe that hands out a few bytes per read, as a slow writer's pipe does."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(self._step, len(buffer), len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


@pytest.mark.parametrize("buffered", [False, True])
def test_a_pipe_that_dribbles_is_sniffed_like_the_file(buffered: bool) -> None:
    """A pipe's first read may hold a few bytes: the sniffer still sees enough of them."""
    payload = make_cwl_payload(["a", "b"], log_group=LAMBDA_GROUP, log_stream="s")
    lines = make_flow_lines(3)
    flow = gzip.compress(("\n".join([HEADER, *lines]) + "\n").encode())
    for data, expected in ((payload, ["a", "b"]), (flow, lines)):
        raw = Dribble(data)
        stream: Any = io.BufferedReader(raw, buffer_size=8) if buffered else raw
        units = list(read_units(stream, options(), log_stream="-"))
        texts = [
            json.loads(e.payload)["event"]
            for unit in units
            if isinstance(unit, EncodedBatch)
            for e in unit.events
        ]
        assert texts == expected


def test_a_big_payload_is_read_in_slices_holding_its_events_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN a payload of more events than a slice WHEN read THEN it comes as several units
    whose events, joined, are the payload's (what forward sends and transform prints)."""
    monkeypatch.setattr(inputs, "PAYLOAD_SLICE_EVENTS", 4)
    payload = make_cwl_payload(make_flow_lines(10), log_group=FLOW_GROUP)
    units = list(read_units(io.BytesIO(payload), options()))
    assert [len(unit.events) for unit in units if isinstance(unit, EncodedBatch)] == [4, 4, 2]
    whole = transform_payload(payload, options())
    assert [e for unit in units if isinstance(unit, EncodedBatch) for e in unit.events] == list(
        whole.events
    )
