"""Fuzz the flow-log parser (``transforms.vpc_flow``) and the line transform built on it.

A line that does not fit its format raises ``FlowLogParseError`` (documented) from
``parse_flow_log``; a format or header raises ``FlowLogFormatError``. Whatever parses must
also convert (``to_splunk_fields``, ``FlowFormat.to_json``), and ``transform_lines`` delivers
every non-blank line whatever it holds (unparsed lines as raw text, counted).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.conftest import make_settings
from tests.fuzz.support import MiB, deep_documents, fuzzing, huge, peak_memory
from transforms.errors import FlowLogFormatError, FlowLogParseError
from transforms.pipeline import transform_lines
from transforms.vpc_flow import (
    DEFAULT_FIELDS,
    FIELDS,
    compile_format,
    fields_from_header,
    parse_flow_log,
    parse_format,
    to_splunk_fields,
)

FIELD_NAMES = sorted(FIELDS)
formats = st.one_of(
    st.just(DEFAULT_FIELDS),
    st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=12, unique=True).map(tuple),
)
values = st.one_of(
    st.just("-"),
    st.integers(min_value=0, max_value=10**20).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),  # past int's 4300 digits
    st.integers(min_value=1, max_value=6000).map(lambda n: "0" * n + "1"),
    st.sampled_from(["ACCEPT", "REJECT", "OK", "NODATA", "SKIPDATA", "10.0.0.1", "eni-1a"]),
    st.text(max_size=20).filter(lambda text: text.strip() == text and " " not in text),
)


def line_for(fields: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.lists(values, min_size=len(fields), max_size=len(fields)).map(" ".join)


lines = st.one_of(
    st.text(max_size=300),
    formats.flatmap(line_for),
    st.sampled_from([doc[:2000] for doc in deep_documents()]),
)
OPTIONS = {mode: make_settings(EVENT_FORMAT=mode).transform for mode in ("auto", "raw", "json")}


def flow_line(packets: str = "10", start: str = "1620000000") -> str:
    """A version 2 line with the given ``packets`` and ``start`` values."""
    head = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 80 443 6"
    return f"{head} {packets} 840 {start} 1620000060 ACCEPT OK"


#: Integers Python refuses to convert (more than 4,300 digits), or to divide into a float.
HUGE_INTEGER_LINES = [
    flow_line(packets="9" * 4400),
    flow_line(packets="0" + "9" * 4400),
    flow_line(start="9" * 4400),
    flow_line(start="9" * 400 + "1"),
]


@fuzzing(quick=200)
@given(formats, st.one_of(lines, formats.flatmap(line_for)))
@example(DEFAULT_FIELDS, HUGE_INTEGER_LINES[0])
@example(DEFAULT_FIELDS, HUGE_INTEGER_LINES[2])
@example(DEFAULT_FIELDS, HUGE_INTEGER_LINES[3])
def test_parse_flow_log_raises_only_its_parse_error(fields: tuple[str, ...], line: str) -> None:
    try:
        record = parse_flow_log(line, fields)
    except FlowLogParseError:
        return
    converted = to_splunk_fields(record)
    assert isinstance(json.dumps(converted), str)
    compiled = compile_format(fields).to_json(line.split())
    assert compiled is None or json.loads(compiled) == converted


@fuzzing(quick=200)
@given(st.one_of(st.text(max_size=200), formats.map(lambda f: " ".join(f"${{{n}}}" for n in f))))
def test_formats_and_headers_raise_only_format_errors(spec: str) -> None:
    for parse in (parse_format, fields_from_header):
        try:
            fields = parse(spec)
        except FlowLogFormatError:
            continue
        assert fields and all(name in FIELDS for name in fields)


@fuzzing(quick=100)
@given(
    st.lists(lines, max_size=20), st.sampled_from(sorted(OPTIONS)), st.one_of(st.none(), formats)
)
@example(HUGE_INTEGER_LINES[1:2], "json", DEFAULT_FIELDS)  # int("0999...")
@example(["5 10.0.0.1 10 " + "9" * 4400], "raw", ("version", "srcaddr", "packets", "start"))
@example(["5 10.0.0.1 10 " + "9" * 400 + "1"], "auto", ("version", "srcaddr", "packets", "start"))
def test_every_line_is_delivered(
    batch: list[str], mode: str, fields: tuple[str, ...] | None
) -> None:
    try:
        encoded = transform_lines(
            batch, log_group="bucket", log_stream="key", options=OPTIONS[mode], flow_fields=fields
        )
    except FlowLogFormatError:
        return  # a first line that looks like a header but names a field twice
    kept = [line.rstrip("\r\n") for line in batch]
    assert len(encoded.events) <= len([line for line in kept if line.strip()])


def test_a_huge_line_costs_bounded_memory() -> None:
    """A very long line of one-character values: refused (wrong field count) in memory
    proportional to the line."""
    size = huge(quick=4 * MiB, deep=64 * MiB)
    line = "a " * (size // 2)

    def parse() -> str:
        try:
            parse_flow_log(line)
        except FlowLogParseError as exc:
            return str(exc)
        return ""

    message, peak = peak_memory(parse)

    assert "values but its format has" in message
    assert peak < 8 * size + MiB, f"peak {peak / MiB:.0f} MiB for a {size / MiB:.0f} MiB line"


@pytest.mark.parametrize("mode", sorted(OPTIONS))
def test_a_huge_line_is_delivered_raw_with_bounded_memory(mode: str) -> None:
    size = huge(quick=2 * MiB, deep=32 * MiB)
    line = "2 123 eni-1 " + "x" * size

    encoded, peak = peak_memory(
        lambda: transform_lines([line], log_group="b", log_stream="k", options=OPTIONS[mode])
    )

    assert len(encoded.events) == 1
    assert peak < 8 * size
