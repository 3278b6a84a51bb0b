"""Routing: built-in defaults, user rules cascading value by value, patterns, caching."""

from __future__ import annotations

import pytest

from tests.factories import CUSTOM_FIELDS
from transforms.errors import RoutePatternError
from transforms.options import Route, TransformOptions
from transforms.records import Origin
from transforms.routing import (
    CLOUDTRAIL_SOURCETYPE,
    LAMBDA_SOURCETYPE,
    VPCFLOW_SOURCETYPE,
    Destination,
    compile_pattern,
    default_source,
    resolve,
    router_for,
)
from transforms.vpc_flow import DEFAULT_FIELDS, V5_FIELDS

DEFAULTS = TransformOptions()


def route(
    options: TransformOptions = DEFAULTS,
    *,
    log_group: str | None = "app",
    log_stream: str | None = "stream-1",
    account: str | None = "123456789012",
    origin: Origin = "cloudwatch",
    flow_fields: tuple[str, ...] | None = None,
) -> Destination:
    return resolve(
        options,
        log_group=log_group,
        log_stream=log_stream,
        account=account,
        origin=origin,
        flow_fields=flow_fields,
    )


# --- built-in defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_group", "log_stream", "origin", "sourcetype"),
    [
        ("/aws/vpc/flowlogs", "anything", "cloudwatch", VPCFLOW_SOURCETYPE),
        ("/aws/vpc-flow-logs/prod", "x", "cloudwatch", VPCFLOW_SOURCETYPE),
        ("flow-logs-prod", "eni-0a1b2c3d4e5f60718-all", "cloudwatch", VPCFLOW_SOURCETYPE),
        (None, None, "direct", VPCFLOW_SOURCETYPE),
        ("aws-cloudtrail-logs-123456789012-1a2b3c4d", "x", "cloudwatch", CLOUDTRAIL_SOURCETYPE),
        ("Org-CloudTrail", "x", "cloudwatch", CLOUDTRAIL_SOURCETYPE),
        ("audit", "123456789012_CloudTrail_us-east-1", "cloudwatch", CLOUDTRAIL_SOURCETYPE),
        ("/aws/lambda/checkout", "2023/11/14/[$LATEST]abc", "cloudwatch", LAMBDA_SOURCETYPE),
        ("/aws/lambda/odd", "eni-named-stream", "cloudwatch", LAMBDA_SOURCETYPE),
        ("/aws/lambda-insights", "x", "cloudwatch", "aws:cloudwatchlogs"),
        ("/ecs/web", "web/web/0a1b2c", "cloudwatch", "aws:cloudwatchlogs"),
        (None, None, "text", "aws:cloudwatchlogs"),
    ],
)
def test_builtin_defaults(
    log_group: str | None, log_stream: str | None, origin: Origin, sourcetype: str
) -> None:
    """DESIGN.md §3: VPC flow logs, CloudTrail, Lambda, then the default sourcetype."""
    assert route(log_group=log_group, log_stream=log_stream, origin=origin).sourcetype == (
        sourcetype
    )


def test_flow_log_destination_defaults() -> None:
    """A flow log gets the v2 format, raw events, source group:stream, no index or host."""
    dest = route(log_group="/aws/vpc/flowlogs", log_stream="eni-1-all")
    assert dest == Destination(
        sourcetype=VPCFLOW_SOURCETYPE,
        index=None,
        source="/aws/vpc/flowlogs:eni-1-all",
        host=None,
        fields=(),
        flow_fields=DEFAULT_FIELDS,
        event_format="raw",
    )
    assert dest.is_flow
    assert not route(log_group="/aws/lambda/f").is_flow


@pytest.mark.parametrize(
    ("origin", "log_group", "log_stream", "source"),
    [
        ("cloudwatch", "/aws/vpc/flowlogs", "eni-1", "/aws/vpc/flowlogs:eni-1"),
        (
            "s3",
            "flow-bucket",
            "AWSLogs/1/vpcflowlogs/x.log.gz",
            "s3://flow-bucket/AWSLogs/1/vpcflowlogs/x.log.gz",
        ),
        ("direct", None, None, "firehose:direct"),
        ("text", None, None, "firehose:text"),
        ("text", "only-group", None, "only-group"),
        ("text", None, "logs/flows.log", "logs/flows.log"),  # a local file: its path
        ("text", "/aws/vpc/flowlogs", "flows_hdr.log", "/aws/vpc/flowlogs:flows_hdr.log"),
        ("text", "/aws/vpc/flowlogs", None, "/aws/vpc/flowlogs"),
        ("s3", "flow-bucket", None, "flow-bucket"),
    ],
)
def test_default_source(
    origin: Origin, log_group: str | None, log_stream: str | None, source: str
) -> None:
    """<logGroup>:<logStream>, s3://bucket/key, or where the record came from."""
    assert route(log_group=log_group, log_stream=log_stream, origin=origin).source == source


@pytest.mark.parametrize("origin", ["cloudwatch", "direct", "text", "s3"])
@pytest.mark.parametrize("log_group", [None, "", "/aws/vpc/flowlogs", "bucket"])
@pytest.mark.parametrize("log_stream", [None, "", "key/x.log", "/abs/x.log"])
def test_default_source_never_has_a_scheme_without_a_host(
    origin: Origin, log_group: str | None, log_stream: str | None
) -> None:
    source = default_source(origin, log_group, log_stream)
    assert source
    assert ":///" not in source
    is_object = origin == "s3" and log_group == "bucket" and bool(log_stream)
    assert source.startswith("s3://") == is_object


def test_configured_flow_format_and_event_format() -> None:
    """auto: raw for layouts the add-on reads, json for the others; raw/json force it."""
    group = "/aws/vpc/flowlogs"
    assert route(TransformOptions(flow_log_format=V5_FIELDS), log_group=group).event_format == (
        "raw"
    )
    custom = route(TransformOptions(flow_log_format=CUSTOM_FIELDS), log_group=group)
    assert (custom.flow_fields, custom.event_format) == (CUSTOM_FIELDS, "json")
    forced = TransformOptions(flow_log_format=CUSTOM_FIELDS, event_format="raw")
    assert route(forced, log_group=group).event_format == "raw"
    assert route(TransformOptions(event_format="json"), log_group=group).event_format == "json"


def test_default_index_and_extra_fields() -> None:
    """Options supply the index and the indexed fields every event gets."""
    options = TransformOptions(
        default_index="aws", extra_fields=(("env", "prod"),), default_sourcetype="custom:logs"
    )
    dest = route(options)
    assert (dest.index, dest.fields, dest.sourcetype) == ("aws", (("env", "prod"),), "custom:logs")


# --- user rules -------------------------------------------------------------------------------


def test_rules_cascade_value_by_value() -> None:
    """The first matching rule that sets a value wins; unset values fall through."""
    options = TransformOptions(
        routes=(
            Route(log_group="/aws/vpc/*", index="network"),
            Route(log_group="/aws/vpc/prod*", index="ignored", host="vpc-prod"),
            Route(account="123456789012", source="acct-{account}"),
        )
    )
    dest = route(options, log_group="/aws/vpc/prod-flows", log_stream="eni-1")
    assert dest.sourcetype == VPCFLOW_SOURCETYPE  # from the built-in rule
    assert dest.index == "network"
    assert dest.host == "vpc-prod"
    assert dest.source == "acct-123456789012"
    assert dest.flow_fields == DEFAULT_FIELDS


def test_rules_match_on_every_given_condition() -> None:
    """All of a rule's conditions must hold; a missing value never matches a pattern."""
    options = TransformOptions(
        routes=(Route(log_group="app*", account="999999999999", sourcetype="other:team"),)
    )
    assert route(options, log_group="app-1").sourcetype == "aws:cloudwatchlogs"
    assert route(options, log_group="app-1", account="999999999999").sourcetype == "other:team"
    assert route(options, log_group="app-1", account=None).sourcetype == "aws:cloudwatchlogs"


def test_regular_expressions_and_globs() -> None:
    """Globs are anchored and case-sensitive; re: patterns are searched."""
    glob = compile_pattern("/aws/vpc*")
    assert glob("/aws/vpc/flows")
    assert not glob("/AWS/VPC/flows")
    assert not glob("x/aws/vpc")
    assert not glob(None)
    regex = compile_pattern("re:(?i)prod-(eu|us)")
    assert regex("App-PROD-EU-1")
    assert not regex("prod-ap")


def test_origin_rules() -> None:
    """Rules may match where records came from (e.g. every S3 file)."""
    options = TransformOptions(routes=(Route(origin="s3", index="s3-files"),))
    assert route(options, origin="s3").index == "s3-files"
    assert route(options).index is None


def test_route_format_makes_a_flow_log_with_the_flow_sourcetype() -> None:
    """A rule that sets a flow format turns any group into a flow log (json for custom)."""
    options = TransformOptions(routes=(Route(log_group="tgw-*", flow_log_format=CUSTOM_FIELDS),))
    dest = route(options, log_group="tgw-flows")
    assert (dest.sourcetype, dest.flow_fields, dest.event_format) == (
        VPCFLOW_SOURCETYPE,
        CUSTOM_FIELDS,
        "json",
    )


def test_route_sourcetype_decides_whether_it_is_a_flow_log() -> None:
    """Another sourcetype makes a flow group plain text; the flow sourcetype makes any flow."""
    plain = TransformOptions(routes=(Route(log_group="/aws/vpc/*", sourcetype="my:text"),))
    assert not route(plain, log_group="/aws/vpc/x").is_flow
    flow = TransformOptions(routes=(Route(log_group="nets", sourcetype=VPCFLOW_SOURCETYPE),))
    assert route(flow, log_group="nets").flow_fields == DEFAULT_FIELDS
    per_rule = TransformOptions(
        routes=(Route(log_group="/aws/vpc/*", event_format="json"),),
    )
    assert route(per_rule, log_group="/aws/vpc/x").event_format == "json"


def test_route_fields_override_extra_fields() -> None:
    """Indexed fields: the rule's win over the options' for the same key."""
    options = TransformOptions(
        routes=(Route(log_group="app", fields=(("team", "payments"), ("env", "staging"))),),
        extra_fields=(("env", "prod"), ("region", "us-east-1")),
    )
    assert dict(route(options).fields) == {
        "env": "staging",
        "region": "us-east-1",
        "team": "payments",
    }


def test_placeholders_in_source_and_host() -> None:
    """{log_group}, {log_stream}, {account} and {origin}; other braces are kept."""
    options = TransformOptions(
        routes=(Route(source="{origin}/{log_group}/{log_stream}", host="{account}{x}"),)
    )
    dest = route(options)
    assert dest.source == "cloudwatch/app/stream-1"
    assert dest.host == "123456789012{x}"


def test_s3_header_fields_beat_configuration() -> None:
    """An S3 file's header names its fields: a flow log, whatever its name or the rules say."""
    options = TransformOptions(
        routes=(Route(log_group="*", flow_log_format=DEFAULT_FIELDS, index="files"),)
    )
    dest = route(options, log_group="cloudtrail-and-flows", origin="s3", flow_fields=V5_FIELDS)
    assert dest.sourcetype == VPCFLOW_SOURCETYPE
    assert dest.flow_fields == V5_FIELDS
    assert dest.index == "files"


def test_invalid_regular_expression_names_the_rule() -> None:
    """A broken pattern fails when the router is built, naming the rule."""
    options = TransformOptions(routes=(Route(), Route(log_stream="re:(unclosed")))
    with pytest.raises(RoutePatternError, match="rule 2 log_stream 're:\\(unclosed'"):
        router_for(options)


def test_resolutions_are_cached() -> None:
    """Equal inputs give the very same destination (the pipeline relies on identity)."""
    options = TransformOptions(routes=(Route(log_group="app", index="i"),))
    first = route(options)
    assert route(options) is first
    assert route(TransformOptions(routes=(Route(log_group="app", index="i"),))) is first
    assert route(options, log_stream="other") is not first
