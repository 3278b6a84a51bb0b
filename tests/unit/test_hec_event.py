"""HEC event shaping: envelopes, time in seconds, flow lines raw or as add-on JSON."""

from __future__ import annotations

import json

from tests.factories import CUSTOM_FIELDS, make_flow_lines
from transforms.hec_event import encode, envelope, flow_line_fits, hec_time, to_hec_event
from transforms.records import LogEvent
from transforms.routing import VPCFLOW_SOURCETYPE, Destination
from transforms.vpc_flow import DEFAULT_FIELDS

LINE = (
    "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 "
    "1418530010 1418530070 ACCEPT OK"
)
NODATA = "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
FLOW_RAW = Destination(
    sourcetype=VPCFLOW_SOURCETYPE,
    source="/aws/vpc/flowlogs:eni-1",
    flow_fields=DEFAULT_FIELDS,
    event_format="raw",
)
FLOW_JSON = Destination(
    sourcetype=VPCFLOW_SOURCETYPE,
    source="/aws/vpc/flowlogs:eni-1",
    index="network",
    flow_fields=DEFAULT_FIELDS,
    event_format="json",
)
LAMBDA = Destination(
    sourcetype="aws:cloudwatchlogs:lambda",
    source="/aws/lambda/f:2023/11/14/[$LATEST]abc",
    index="apps",
    host="lambda",
    fields=(("env", "prod"), ("team", "payments")),
)


def test_envelope_is_the_constant_middle_of_every_object() -> None:
    """Keys in HEC's order, absent values left out, serialized once per destination."""
    assert envelope(LAMBDA) == (
        '"host":"lambda","source":"/aws/lambda/f:2023/11/14/[$LATEST]abc",'
        '"sourcetype":"aws:cloudwatchlogs:lambda","index":"apps",'
        '"fields":{"env":"prod","team":"payments"},"event":'
    )
    assert envelope(FLOW_RAW) == (
        '"source":"/aws/vpc/flowlogs:eni-1","sourcetype":"aws:cloudwatchlogs:vpcflow","event":'
    )


def test_cloudwatch_milliseconds_become_seconds() -> None:
    """HEC time is seconds with a millisecond fraction (the blueprint's classic mistake)."""
    assert hec_time(1_700_000_000_123) == 1_700_000_000.123
    event = to_hec_event(LogEvent("1", 1_700_000_000_123, "START RequestId: 1"), LAMBDA)
    assert event == {
        "time": 1_700_000_000.123,
        "host": "lambda",
        "source": LAMBDA.source,
        "sourcetype": "aws:cloudwatchlogs:lambda",
        "index": "apps",
        "fields": {"env": "prod", "team": "payments"},
        "event": "START RequestId: 1",
    }


def test_json_messages_stay_strings() -> None:
    """A JSON log message is not parsed: the sourcetype extracts it in Splunk."""
    message = '{"level":"info","msg":"order placed"}'
    assert to_hec_event(LogEvent("1", 0, message), LAMBDA)["event"] == message


def test_raw_flow_line_takes_time_from_start() -> None:
    """event_format raw: the line untouched, time = start."""
    event = to_hec_event(LogEvent("1", 1_700_000_000_000, LINE), FLOW_RAW)
    assert event == {
        "time": 1418530010,
        "source": "/aws/vpc/flowlogs:eni-1",
        "sourcetype": VPCFLOW_SOURCETYPE,
        "event": LINE,
    }


def test_json_flow_line_is_the_addon_named_record() -> None:
    """event_format json: the parsed record with the add-on's names; '-' left out."""
    event = to_hec_event(LogEvent("1", 1_700_000_000_000, NODATA), FLOW_JSON)
    assert event["time"] == 1431280876
    assert event["index"] == "network"
    assert event["event"] == {
        "version": 2,
        "account_id": "123456789010",
        "interface_id": "eni-1235b8ca123456789",
        "start_time": 1431280876,
        "end_time": 1431280934,
        "log_status": "NODATA",
    }


def test_line_that_does_not_fit_goes_as_text_with_the_cloudwatch_time() -> None:
    """Wrong field count: delivered as raw text, time from the CloudWatch timestamp."""
    short = LINE.rsplit(" ", 2)[0]
    for dest in (FLOW_RAW, FLOW_JSON):
        event = to_hec_event(LogEvent("1", 1_700_000_000_500, short), dest)
        assert (event["event"], event["time"]) == (short, 1_700_000_000.5)


def test_millisecond_start_and_missing_timestamps() -> None:
    """A start in milliseconds becomes seconds; no timestamp at all means no time key."""
    ms_line = LINE.replace("1418530010 ", "1418530010250 ")
    assert to_hec_event(LogEvent(None, None, ms_line), FLOW_RAW)["time"] == 1418530010.25
    assert "time" not in to_hec_event(LogEvent(None, None, "plain text"), LAMBDA)


def test_flow_line_fits_only_checks_count_and_start() -> None:
    """Raw mode sends the line untouched, so only the value count and start matter."""
    assert flow_line_fits(LINE, DEFAULT_FIELDS) == (True, 1418530010)
    assert flow_line_fits(LINE.replace(" 22 ", " ssh "), DEFAULT_FIELDS) == (True, 1418530010)
    assert flow_line_fits(LINE.replace("1418530010", "soon"), DEFAULT_FIELDS) == (False, None)
    assert flow_line_fits(LINE, DEFAULT_FIELDS[:-1]) == (False, None)
    assert flow_line_fits("a b", ("srcaddr", "dstaddr")) == (True, None)


def test_encode_concatenates_compact_objects() -> None:
    """The event endpoint takes objects back to back, UTF-8, no separators."""
    events = [
        to_hec_event(LogEvent("1", 1_700_000_000_000, "caf\u00e9 \u2603"), LAMBDA),
        to_hec_event(LogEvent("2", 1_700_000_000_001, 'say "hi"\n\ttab'), LAMBDA),
    ]
    body = encode(events)
    assert "caf\u00e9 \u2603".encode() in body
    decoder, text, index, decoded = json.JSONDecoder(), body.decode(), 0, []
    while index < len(text):
        value, index = decoder.raw_decode(text, index)
        decoded.append(value)
    assert decoded == events


def test_lone_surrogates_are_written_as_json_escapes() -> None:
    """A lone surrogate (legal in CloudWatch's JSON) cannot be UTF-8: it stays an escape."""
    body = encode([to_hec_event(LogEvent("1", 0, "bad \ud83d half"), LAMBDA)])
    assert b"bad \\ud83d half" in body
    assert json.loads(body)["event"] == "bad \ud83d half"


def test_custom_format_json_events() -> None:
    """Every line of a custom layout becomes a typed add-on record."""
    dest = Destination(
        sourcetype=VPCFLOW_SOURCETYPE, flow_fields=CUSTOM_FIELDS, event_format="json"
    )
    for line in make_flow_lines(10, fields=CUSTOM_FIELDS, nodata_every=3):
        event = to_hec_event(LogEvent("1", 0, line), dest)
        body = event["event"]
        assert isinstance(body, dict)
        assert body["version"] == 8
        assert event["time"] == body["start_time"]
        assert "-" not in body.values()
