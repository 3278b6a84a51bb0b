"""VPC and Transit Gateway flow logs: the field table, format strings, parsing, add-on names."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import load_sample
from tests.factories import CUSTOM_FIELDS, make_flow_lines
from transforms.errors import FlowLogFormatError, FlowLogParseError
from transforms.records import FlowLogRecord
from transforms.vpc_flow import (
    _TEMPLATE_CACHE_SIZE,
    ALL_VPC_FIELDS,
    DEFAULT_FIELDS,
    FIELDS,
    TGW_DEFAULT_FIELDS,
    V5_FIELDS,
    V5_FIELDS_ALPHABETICAL,
    addon_understands,
    compile_format,
    epoch_seconds,
    fields_from_header,
    is_flow_int,
    is_header_line,
    parse_flow_log,
    parse_format,
    to_splunk_fields,
)

#: The examples of the AWS page "Flow log record examples".
ACCEPT_LINE = (
    "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 "
    "1418530010 1418530070 ACCEPT OK"
)
NODATA_LINE = "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
SKIPDATA_LINE = (
    "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA"
)


def format_version(fields: Iterable[str]) -> int:
    """The ``version`` AWS writes for a format: the highest version among its fields."""
    return max((FIELDS[name].version for name in fields), default=2)


def format_flow_log(record: FlowLogRecord) -> str:
    """The line a record was parsed from (single spaces; ``-`` for ``None``)."""
    return " ".join("-" if value is None else value for value in record.values)


# --- the field table --------------------------------------------------------------------------


def test_default_format_is_the_documented_version_2_layout() -> None:
    """The default format is the 14 version 2 fields in documented order."""
    documented = "version account-id interface-id srcaddr dstaddr srcport dstport protocol"
    documented += " packets bytes start end action log-status"
    assert documented.split() == list(DEFAULT_FIELDS)


@pytest.mark.parametrize(
    ("version", "names"),
    [
        (3, "vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr"),
        (4, "region az-id sublocation-type sublocation-id"),
        (5, "pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path"),
        (
            7,
            "ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn "
            "ecs-container-instance-id ecs-container-id ecs-second-container-id "
            "ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id",
        ),
        (8, "reject-reason"),
        (9, "resource-id"),
        (10, "encryption-status"),
    ],
)
def test_every_documented_vpc_field_has_its_version(version: int, names: str) -> None:
    """Each later version's fields are in the table with the version that introduced them."""
    assert [name for name in ALL_VPC_FIELDS if FIELDS[name].version == version] == names.split()


def test_transit_gateway_fields_are_in_the_table() -> None:
    """The Transit Gateway default format parses, and its own fields are version 6."""
    tgw_only = [name for name, field in FIELDS.items() if field.transit_gateway]
    assert "resource-type" in tgw_only
    assert "tgw-pair-attachment-id" in tgw_only
    assert {FIELDS[name].version for name in tgw_only} == {6}
    assert len(TGW_DEFAULT_FIELDS) == 36
    assert set(TGW_DEFAULT_FIELDS) <= set(FIELDS)
    assert all(FIELDS[f"packets-lost-{kind}"].is_int for kind in ("no-route", "blackhole"))


def test_splunk_addon_names() -> None:
    """The add-on renames nine v2 fields; every other name swaps '-' for '_'."""
    renamed = {name: FIELDS[name].splunk_name for name in DEFAULT_FIELDS}
    assert renamed == {
        "version": "version",
        "account-id": "account_id",
        "interface-id": "interface_id",
        "srcaddr": "src_ip",
        "dstaddr": "dest_ip",
        "srcport": "src_port",
        "dstport": "dest_port",
        "protocol": "protocol_code",
        "packets": "packets",
        "bytes": "bytes",
        "start": "start_time",
        "end": "end_time",
        "action": "vpcflow_action",
        "log-status": "log_status",
    }
    assert FIELDS["pkt-src-aws-service"].splunk_name == "pkt_src_aws_service"
    assert FIELDS["tgw-src-vpc-account-id"].splunk_name == "tgw_src_vpc_account_id"


def test_integer_fields() -> None:
    """Fields typed INT_32/INT_64 in the AWS tables are integers; the others strings."""
    integers = {name for name, field in FIELDS.items() if field.is_int}
    assert integers == {
        "version",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "start",
        "end",
        "tcp-flags",
        "traffic-path",
        "encryption-status",
        "packets-lost-no-route",
        "packets-lost-blackhole",
        "packets-lost-mtu-exceeded",
        "packets-lost-ttl-expired",
    }


def test_layouts_the_addon_understands() -> None:
    """auto sends raw only the v2 default, v5 documented and v5 alphabetical layouts."""
    assert len(V5_FIELDS) == 29
    assert V5_FIELDS_ALPHABETICAL[:3] == ("account-id", "action", "az-id")
    assert addon_understands(DEFAULT_FIELDS)
    assert addon_understands(V5_FIELDS)
    assert addon_understands(V5_FIELDS_ALPHABETICAL)
    assert not addon_understands(CUSTOM_FIELDS)
    assert not addon_understands(DEFAULT_FIELDS[:-1])
    assert not addon_understands(TGW_DEFAULT_FIELDS)


def test_format_version_is_the_highest_field_version() -> None:
    """The version AWS writes for a custom format."""
    assert format_version(DEFAULT_FIELDS) == 2
    assert format_version(("srcaddr", "az-id")) == 4
    assert format_version(CUSTOM_FIELDS) == 8


# --- format strings ---------------------------------------------------------------------------


def test_parse_format_accepts_log_format_syntax_and_header_lines() -> None:
    """${field} syntax, plain names and any whitespace between them."""
    assert parse_format("${version} ${srcaddr}  ${dstaddr}") == ("version", "srcaddr", "dstaddr")
    assert parse_format("version srcaddr\tdstaddr\n") == ("version", "srcaddr", "dstaddr")
    assert parse_format("${version} srcaddr") == ("version", "srcaddr")


def test_parse_format_names_unknown_fields_and_how_to_fix() -> None:
    """A typo is named, with the closest documented field and where to copy the format."""
    with pytest.raises(FlowLogFormatError) as caught:
        parse_format("${version} ${srcadr} ${bogus-field}")
    message = str(caught.value)
    assert "'srcadr' (did you mean 'srcaddr'?)" in message
    assert "'bogus-field'" in message
    assert "describe-flow-logs" in message


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("${version}${srcaddr}", "malformed"),
        ("${version} $srcaddr", "malformed"),
        ("${version} ${srcaddr} ${version}", "more than once"),
    ],
)
def test_parse_format_rejects_malformed_formats(spec: str, complaint: str) -> None:
    """Empty, glued, half-written and duplicated fields are errors with a clear message."""
    with pytest.raises(FlowLogFormatError, match=complaint):
        parse_format(spec)


def test_header_lines_of_s3_files() -> None:
    """The first line of an S3 flow-log file names the fields; data lines are not headers."""
    header, first, *_ = load_sample("vpc_flow_custom.log").decode().splitlines()
    assert is_header_line(header)
    assert fields_from_header(header) == CUSTOM_FIELDS
    assert not is_header_line(first)
    assert not is_header_line(NODATA_LINE)
    assert not is_header_line("")
    assert not is_header_line("version account-id something-else")


# --- parsing lines ----------------------------------------------------------------------------


def test_parse_the_documented_accept_line() -> None:
    """The AWS example line parses into its fields, values kept as written."""
    record = parse_flow_log(ACCEPT_LINE)
    values = dict(zip(record.fields, record.values, strict=True))
    assert values["srcaddr"] == "172.31.16.139"
    assert values["dstport"] == "22"
    assert values["action"] == "ACCEPT"


@pytest.mark.parametrize("line", [NODATA_LINE, SKIPDATA_LINE])
def test_nodata_and_skipdata_lines_parse_with_missing_values(line: str) -> None:
    """NODATA and SKIPDATA records carry '-' in most fields: those become None."""
    record = parse_flow_log(line)
    values = dict(zip(record.fields, record.values, strict=True))
    assert values["srcaddr"] is None
    assert values["action"] is None
    assert values["log-status"] == line.rsplit(" ", 1)[1]
    assert values["start"] == "1431280876"


def test_double_space_and_tabs_are_tolerated() -> None:
    """Values are split on runs of whitespace."""
    assert parse_flow_log(ACCEPT_LINE.replace(" 22 ", "  22 ")) == parse_flow_log(ACCEPT_LINE)
    assert parse_flow_log(ACCEPT_LINE.replace(" ", "\t") + "\r") == parse_flow_log(ACCEPT_LINE)


def test_wrong_field_count_is_a_parse_error_naming_both_counts() -> None:
    """A line that does not fit its format says how many values it has and expects."""
    with pytest.raises(FlowLogParseError, match="has 13 values but its format has 14"):
        parse_flow_log(ACCEPT_LINE.rsplit(" ", 1)[0])
    with pytest.raises(FlowLogParseError, match="has 14 values but its format has 3"):
        parse_flow_log(ACCEPT_LINE, ("version", "srcaddr", "dstaddr"))


def test_non_integer_in_an_integer_field_is_a_parse_error() -> None:
    """Integer fields take digits or '-'."""
    with pytest.raises(FlowLogParseError, match="'dstport' should be an integer"):
        parse_flow_log(ACCEPT_LINE.replace(" 22 ", " ssh "))


def test_custom_and_transit_gateway_lines_parse() -> None:
    """Lines of any layout parse with that layout's fields."""
    for fields, lines in (
        (CUSTOM_FIELDS, make_flow_lines(20, fields=CUSTOM_FIELDS, nodata_every=5)),
        (TGW_DEFAULT_FIELDS, make_flow_lines(20, version="tgw")),
        (V5_FIELDS, make_flow_lines(20, version=5, skipdata_every=4)),
    ):
        for line in lines:
            assert format_flow_log(parse_flow_log(line, fields)) == line


# --- add-on fields and time -------------------------------------------------------------------


def test_to_splunk_fields_types_and_renames() -> None:
    """Add-on names, integers as numbers, and '-' values left out."""
    assert to_splunk_fields(parse_flow_log(ACCEPT_LINE)) == {
        "version": 2,
        "account_id": "123456789010",
        "interface_id": "eni-1235b8ca123456789",
        "src_ip": "172.31.16.139",
        "dest_ip": "172.31.16.21",
        "src_port": 20641,
        "dest_port": 22,
        "protocol_code": 6,
        "packets": 20,
        "bytes": 4249,
        "start_time": 1418530010,
        "end_time": 1418530070,
        "vpcflow_action": "ACCEPT",
        "log_status": "OK",
    }
    assert to_splunk_fields(parse_flow_log(NODATA_LINE)) == {
        "version": 2,
        "account_id": "123456789010",
        "interface_id": "eni-1235b8ca123456789",
        "start_time": 1431280876,
        "end_time": 1431280934,
        "log_status": "NODATA",
    }


def test_millisecond_start_and_end_become_seconds() -> None:
    """Values above 1e11 are milliseconds."""
    assert epoch_seconds("1418530010") == 1418530010
    assert epoch_seconds("1418530010000") == 1418530010
    assert epoch_seconds("1418530010250") == 1418530010.25
    line = ACCEPT_LINE.replace("1418530010 1418530070", "1418530010123 1418530070000")
    fields = to_splunk_fields(parse_flow_log(line))
    assert fields["start_time"] == 1418530010.123
    assert fields["end_time"] == 1418530070


def test_compiled_json_matches_the_reference() -> None:
    """FlowFormat.to_json and its templates give json.dumps(to_splunk_fields(...))."""
    lines = [*make_flow_lines(30, fields=CUSTOM_FIELDS, nodata_every=7), ACCEPT_LINE]
    for fields, batch in ((CUSTOM_FIELDS, lines[:-1]), (DEFAULT_FIELDS, [ACCEPT_LINE])):
        compiled = compile_format(fields)
        for line in batch:
            values = line.split()
            expected = json.dumps(
                to_splunk_fields(parse_flow_log(line, fields)),
                separators=(",", ":"),
                ensure_ascii=False,
            )
            assert compiled.to_json(values) == expected
            dashes = tuple(index for index, value in enumerate(values) if value == "-")
            template = compiled.json_template(dashes)
            assert template.template % template.values(values) == expected


def test_compiled_json_normalises_leading_zeros_and_refuses_bad_integers() -> None:
    """JSON numbers have no leading zeros; a non-integer makes the line unfit (None)."""
    compiled = compile_format(DEFAULT_FIELDS)
    padded = ACCEPT_LINE.replace(" 22 ", " 022 ").split()
    assert json.loads(compiled.to_json(padded) or "")["dest_port"] == 22
    assert compiled.to_json(ACCEPT_LINE.replace(" 22 ", " 2x ").split()) is None


def test_start_position_is_reached_with_the_fewest_splits() -> None:
    """compile_format finds start from whichever end of the line is nearer."""
    v2 = compile_format(DEFAULT_FIELDS)
    assert v2.start_from_end
    assert ACCEPT_LINE.rsplit(" ", v2.start_maxsplit)[v2.start_pick] == "1418530010"
    early = compile_format(("start", *DEFAULT_FIELDS[:10]))
    assert not early.start_from_end
    assert compile_format(("srcaddr", "dstaddr")).start_index is None


# --- properties -------------------------------------------------------------------------------

_value = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Zs", "Zl", "Zp", "Cc")),
    min_size=1,
    max_size=12,
).filter(lambda value: value != "-")
_int_value = st.integers(min_value=0, max_value=10**11).map(str) | st.just("-")


@st.composite
def records(draw: st.DrawFn) -> FlowLogRecord:
    """A record of any format with values valid for its fields."""
    fields = tuple(draw(st.lists(st.sampled_from(list(FIELDS)), min_size=1, unique=True)))
    values = [draw(_int_value if FIELDS[name].is_int else _value) for name in fields]
    return FlowLogRecord(fields, tuple(None if value == "-" else value for value in values))


@given(records())
def test_format_and_parse_round_trip(record: FlowLogRecord) -> None:
    """parse_flow_log(format_flow_log(record)) is the record, for any format."""
    assert parse_flow_log(format_flow_log(record), record.fields) == record


@given(records())
def test_compiled_json_equals_reference_for_any_record(record: FlowLogRecord) -> None:
    """The hot path's JSON is exactly the reference's, for any record."""
    line = format_flow_log(record)
    expected = json.dumps(to_splunk_fields(record), separators=(",", ":"), ensure_ascii=False)
    assert compile_format(record.fields).to_json(line.split()) == expected


@given(st.lists(st.sampled_from(list(FIELDS)), min_size=1, unique=True))
def test_format_strings_round_trip(fields: list[str]) -> None:
    """Both format syntaxes give back the fields."""
    assert parse_format(" ".join(f"${{{name}}}" for name in fields)) == tuple(fields)
    assert fields_from_header(" ".join(fields)) == tuple(fields)


# --- boundaries and messages that mutation testing showed unpinned (make mutation) ------------

_FORMAT_HOWTO = (
    "write each field as ${name}, separated by single spaces, e.g. '${version} ${account-id} "
    "${interface-id}' (the LogFormat of `aws ec2 describe-flow-logs`)"
)


def test_format_version_of_no_fields_is_the_default_version_2() -> None:
    assert format_version(()) == 2
    assert format_version(("srcaddr",)) == 2


def test_a_half_written_brace_token_is_malformed_and_quoted() -> None:
    """A token with only an opening or only a closing brace is malformed, not unknown."""
    with pytest.raises(FlowLogFormatError) as caught:
        parse_format("${version} {srcaddr dstaddr}")
    assert str(caught.value) == (
        f"malformed flow-log format token(s) '{{srcaddr', 'dstaddr}}': {_FORMAT_HOWTO}"
    )


def test_an_empty_format_says_how_to_fix_it() -> None:
    with pytest.raises(FlowLogFormatError) as caught:
        parse_format(" \t")
    assert str(caught.value) == (
        "empty flow-log format: name at least one field, e.g. '${version} ${srcaddr}', or "
        "leave the setting unset for the default version 2 format"
    )


def test_unknown_fields_are_listed_with_hints_and_every_known_field() -> None:
    with pytest.raises(FlowLogFormatError) as caught:
        parse_format("${version} ${srcadr} ${zzzz}")
    assert str(caught.value) == (
        "unknown flow-log field(s) 'srcadr' (did you mean 'srcaddr'?), 'zzzz': use the field "
        "names of the AWS 'Flow log records' and 'Transit Gateway Flow Log records' tables, "
        "spelled exactly (lower case, with hyphens); copy the LogFormat of `aws ec2 "
        f"describe-flow-logs` to be sure. Known fields: {' '.join(FIELDS)}"
    )
    assert str(caught.value).endswith(
        "tgw-pair-attachment-id packets-lost-no-route "
        "packets-lost-blackhole packets-lost-mtu-exceeded packets-lost-ttl-expired"
    )


def test_duplicated_fields_are_listed_once_each_in_order() -> None:
    with pytest.raises(FlowLogFormatError) as caught:
        parse_format("${version} ${srcaddr} ${version} ${srcaddr} ${dstaddr}")
    assert str(caught.value) == (
        "flow-log field(s) 'srcaddr', 'version' appear more than once in the format: name each "
        "field once"
    )


def test_a_line_of_the_wrong_length_is_quoted_to_40_characters() -> None:
    line = "abcdefghij" * 5
    with pytest.raises(FlowLogParseError) as caught:
        parse_flow_log(line)
    assert str(caught.value) == (
        f"flow-log line has 1 values but its format has 14 fields (line starts {line[:40]!r}); "
        "check the flow-log format configured for this source"
    )


def test_a_bad_integer_is_quoted_to_20_characters() -> None:
    value = "p" * 30
    with pytest.raises(FlowLogParseError) as caught:
        parse_flow_log(ACCEPT_LINE.replace(" 22 ", f" {value} "))
    assert str(caught.value) == (
        f"flow-log field 'dstport' should be an integer or '-', got {'p' * 20!r}"
    )


def test_epoch_seconds_at_the_millisecond_threshold_1e11() -> None:
    """1e11 itself is seconds (year 5138); one more is milliseconds."""
    assert epoch_seconds("100000000000") == 100_000_000_000
    assert epoch_seconds("100000000001") == 100_000_000.001
    assert epoch_seconds("99999999999") == 99_999_999_999


def test_whole_milliseconds_become_integer_seconds_others_a_fraction() -> None:
    whole = epoch_seconds("1418530010000")
    assert (whole, type(whole)) == (1418530010, int)
    fraction = epoch_seconds("1418530010001")
    assert (fraction, type(fraction)) == (1418530010.001, float)
    assert type(epoch_seconds("1418530010")) is int


def test_compiled_json_converts_milliseconds_only_in_start_and_end() -> None:
    """start/end above 1e11 are milliseconds; a large bytes count stays as it is."""
    compiled = compile_format(DEFAULT_FIELDS)
    line = ACCEPT_LINE.replace(
        "20 4249 1418530010 1418530070", "20 1234567890123 100000000001 1418530070250"
    )
    data = json.loads(compiled.to_json(line.split()) or "")
    assert data["bytes"] == 1234567890123
    assert data["start_time"] == 100_000_000.001
    assert data["end_time"] == 1418530070.25
    at_threshold = ACCEPT_LINE.replace("1418530010 ", "100000000000 ")
    assert json.loads(compiled.to_json(at_threshold.split()) or "")["start_time"] == 1e11


def test_compiled_json_strips_a_single_leading_zero() -> None:
    compiled = compile_format(DEFAULT_FIELDS)
    data = json.loads(compiled.to_json(ACCEPT_LINE.replace(" 22 6 ", " 07 0 ").split()) or "")
    assert (data["dest_port"], data["protocol_code"]) == (7, 0)


def test_values_that_do_not_match_the_fields_are_refused() -> None:
    """A record or value list of the wrong length is an error, never silently cut."""
    with pytest.raises(ValueError):
        to_splunk_fields(FlowLogRecord(("version", "srcaddr"), ("2",)))
    with pytest.raises(ValueError):
        compile_format(DEFAULT_FIELDS).to_json(ACCEPT_LINE.split()[:-1])


def test_json_templates_are_cached_per_dash_pattern() -> None:
    compiled = compile_format.__wrapped__(DEFAULT_FIELDS)
    first = compiled.json_template((3, 4))
    assert compiled.json_template((3, 4)) is first
    assert compiled.json_template((3,)) is not first
    assert compiled.json_template() is compiled.json_template(())


def test_json_template_cache_is_bounded() -> None:
    """Past _TEMPLATE_CACHE_SIZE patterns, templates are built but no longer kept."""
    compiled = compile_format.__wrapped__(DEFAULT_FIELDS)
    patterns = [
        tuple(i for i in range(14) if mask >> i & 1) for mask in range(_TEMPLATE_CACHE_SIZE + 1)
    ]
    for pattern in patterns[:-1]:
        compiled.json_template(pattern)
    last = patterns[-1]
    assert compiled.json_template(patterns[-2]) is compiled.json_template(patterns[-2])
    assert compiled.json_template(last) is not compiled.json_template(last)
    assert compiled.json_template(last).template == compiled.json_template(last).template


@pytest.mark.parametrize("kept", [0, 1, 2, 3])
def test_json_template_with_few_values_left_matches_to_json(kept: int) -> None:
    """Templates for lines with 0, 1, 2 or 3 values that are not '-' give to_json's result."""
    fields = ("srcaddr", "dstport", "action", "bytes")
    compiled = compile_format(fields)
    values = ["10.0.0.1", "443", "ACCEPT", "99"][:kept] + ["-"] * (4 - kept)
    dashes = tuple(range(kept, 4))
    template = compiled.json_template(dashes)
    assert template.template % template.values(values) == compiled.to_json(values)
    assert template.integers(values) == tuple(v for v in values[:kept] if v.isdigit())


def test_a_flow_log_integer_is_at_most_twenty_digits() -> None:
    """64-bit counters fit (20 digits); a longer digit run is not a flow-log value."""
    assert is_flow_int("1" * 20)
    assert not is_flow_int("1" * 21)
    assert not is_flow_int("")
    assert not is_flow_int("\u0661")  # a non-ASCII digit


def test_epoch_seconds_refuses_what_is_not_a_flow_log_integer() -> None:
    with pytest.raises(ValueError, match=r"^not a flow-log integer: '9{20}'$"):
        epoch_seconds("9" * 4400)


def test_a_line_with_a_huge_integer_is_a_parse_error_not_a_crash() -> None:
    line = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 " + "9" * 4400 + " 1 1 2 ACCEPT OK"
    with pytest.raises(FlowLogParseError, match="should be an integer"):
        parse_flow_log(line)
