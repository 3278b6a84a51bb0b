"""Per-route shaping (issue 12 items 1-5): time, JSON events, drop, sample, redact, dedup key."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from config.errors import ConfigError
from config.loader import load_settings
from forwarder.delivery.ledger import Ledger
from forwarder.status import incomplete
from tests.unit.test_firehose_handler import RecordingReingester
from transforms.event_time import iso_batch, time_parser
from transforms.firehose_invocation import transform_invocation
from transforms.json_batch import MISSING, parse_json, parse_messages
from transforms.options import DropRule, RedactRule, Route, Shaping, TransformOptions
from transforms.pipeline import transform_lines, transform_payload
from transforms.records import EncodedBatch
from transforms.rules import _batch_redactor, _redactor, compile_shaper, dedup_key

GROUP = "/app/web"


def payload(messages: list[str], group: str = GROUP, ids: bool = True) -> bytes:
    events = [
        {"id": f"id{i}" if ids else None, "timestamp": 1_700_000_000_000 + i, "message": m}
        for i, m in enumerate(messages)
    ]
    return gzip.compress(
        json.dumps(
            {
                "messageType": "DATA_MESSAGE",
                "owner": "123456789012",
                "logGroup": group,
                "logStream": "s1",
                "subscriptionFilters": [],
                "logEvents": events,
            }
        ).encode()
    )


def options(shaping: Shaping | None = None, **route: Any) -> TransformOptions:
    dedup = route.pop("dedup_field", None)
    return TransformOptions(
        routes=(Route(log_group=GROUP, shaping=shaping or Shaping(), **route),),
        dedup_field=dedup,
    )


def shaped(
    messages: list[str], opts: TransformOptions
) -> tuple[list[dict[str, Any]], EncodedBatch]:
    batch = transform_payload(payload(messages), opts)
    return [json.loads(event.payload) for event in batch.events], batch


# --- time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time_format", "value", "expected"),
    [
        (None, "2023-11-14T22:13:20.5Z", "1700000000.500"),
        (None, "2023-11-14T23:13:20+01:00", "1700000000.000"),
        (None, "2023-11-14 22:13:20", "1700000000.000"),
        (None, 1_700_000_000, "1700000000.000"),
        (None, 1_700_000_000_123, "1700000000.123"),
        (None, "1700000000123456", "1700000000.123"),
        ("iso8601", "2023-11-14T22:13:20.123456Z", "1700000000.123"),
        ("epoch", "1700000000.25", "1700000000.250"),
        ("epoch_ms", 1_700_000_000_123, "1700000000.123"),
        ("epoch_us", 1_700_000_000_123_000, "1700000000.123"),
        ("%d/%b/%Y:%H:%M:%S %z", "14/Nov/2023:23:13:20 +0100", "1700000000.000"),
        (None, "yesterday", None),
        ("iso8601", 1_700_000_000, None),
        ("epoch", True, None),
        (None, float("nan"), None),
        (None, -5, None),
        (None, {"a": 1}, None),
    ],
)
def test_time_formats(time_format: str | None, value: object, expected: str | None) -> None:
    assert time_parser(time_format)(value) == expected


def test_time_field_sets_hec_time_and_unreadable_keeps_cloudwatch_time() -> None:
    opts = options(Shaping(time_field="meta.ts"))
    events, batch = shaped(
        [
            '{"meta":{"ts":"2023-11-14T22:13:20.5Z"},"m":1}',
            '{"meta":{"ts":"not a time"}}',
            "plain text",
        ],
        opts,
    )
    assert [e["time"] for e in events] == [1700000000.5, 1700000000.001, 1700000000.002]
    assert batch.time_unparsed == 2
    assert events[0]["event"] == '{"meta":{"ts":"2023-11-14T22:13:20.5Z"},"m":1}'


def test_time_regex_named_group_and_strptime() -> None:
    opts = options(Shaping(time_regex=r"\[(?P<time>[^\]]+)\]", time_format="%d/%b/%Y:%H:%M:%S %z"))
    events, batch = shaped(['1.2.3.4 - - [14/Nov/2023:22:13:20 +0000] "GET /"'], opts)
    assert events[0]["time"] == 1700000000.0
    assert batch.time_unparsed == 0


def test_flow_logs_keep_start_whatever_the_time_rule() -> None:
    line = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1600000000 1600000060 ACCEPT OK"
    opts = TransformOptions(
        routes=(Route(log_group="/aws/vpc/*", shaping=Shaping(time_regex=r"(\d{13})")),)
    )
    batch = transform_payload(payload([line], group="/aws/vpc/x"), opts)
    event = json.loads(batch.events[0].payload)
    assert event["time"] == 1600000000
    assert event["event"] == line
    assert batch.time_unparsed == 0


# --- JSON events ---------------------------------------------------------------------------


def test_event_format_json_and_auto_for_non_flow_routes() -> None:
    messages = ['{"a": 1}\n', "[1, 2]", "text", '{"bad": NaN}', "{broken"]
    auto, _ = shaped(messages, options(event_format="auto"))
    assert [e["event"] for e in auto] == [{"a": 1}, "[1, 2]", "text", '{"bad": NaN}', "{broken"]
    as_json, _ = shaped(messages, options(event_format="json"))
    assert [e["event"] for e in as_json] == [{"a": 1}, [1, 2], "text", '{"bad": NaN}', "{broken"]
    default, _ = shaped(messages, options(index="main"))
    assert [e["event"] for e in default] == messages


# --- filters -------------------------------------------------------------------------------


def test_drop_by_message_and_by_field_counts_filtered() -> None:
    opts = options(
        Shaping(
            drop=(
                DropRule(message="re:GET /health"),
                DropRule(field="level", equals="DEBUG"),
                DropRule(message="*noise*", field="n", equals=3),
            )
        )
    )
    messages = [
        "GET /health 200",
        '{"level":"DEBUG"}',
        '{"level":"INFO"}',
        '{"n":3,"x":"noise"}',
        '{"n":"3","x":"noise"}',
        '{"n":3}',
    ]
    events, batch = shaped(messages, opts)
    assert [e["event"] for e in events] == messages[2:3] + messages[4:]
    assert [event.event_id for event in batch.events] == ["id2", "id4", "id5"]
    assert batch.filtered == 3


def test_sample_is_deterministic_by_event_id() -> None:
    messages = [f"line {i}" for i in range(2000)]
    opts = options(Shaping(sample=0.1))
    first = transform_payload(payload(messages), opts)
    again = transform_payload(payload(messages), opts)
    kept = [event.event_id for event in first.events]
    assert kept == [event.event_id for event in again.events]
    assert 100 < len(kept) < 300
    assert first.sampled == 2000 - len(kept)
    none = transform_payload(payload(messages), options(Shaping(sample=0.0)))
    assert (none.event_count, none.sampled) == (0, 2000)


def test_sample_key_field_keeps_or_drops_events_together() -> None:
    messages = [json.dumps({"trace": f"t{i % 50}", "n": i}) for i in range(500)]
    batch = transform_payload(payload(messages), options(Shaping(sample=0.5, sample_key="trace")))
    kept_traces = {json.loads(json.loads(e.payload)["event"])["trace"] for e in batch.events}
    assert all(
        sum(json.loads(m)["trace"] == trace for m in messages) == 10 for trace in kept_traces
    )
    assert batch.event_count == 10 * len(kept_traces)


def test_filtered_and_sampled_balance_the_ledger_and_are_no_loss() -> None:
    ledger = Ledger()
    ledger.shaped(filtered=3, sampled=2, time_unparsed=4)
    ledger.add(events_in=5, acknowledged=5)
    summary = ledger.summary()
    assert summary["dropped"] == {"filtered": 3, "sampled": 2}
    assert summary["events_in"] == 10
    assert summary["time_unparsed"] == 4
    assert summary["balanced"]
    assert not incomplete(summary)


# --- redaction -----------------------------------------------------------------------------


def test_redact_patterns_and_fields_at_any_depth() -> None:
    opts = options(
        Shaping(
            redact=(RedactRule("re:token=\\w+", "token=****"), RedactRule("4111-1111")),
            redact_fields=("Password", "authorization"),
        ),
        event_format="auto",
    )
    messages = [
        "user x token=abc123 card 4111-1111",
        '{"a":{"b":[{"password":"hunter2"}]},"Authorization":"Bearer z","ok":"token=q"}',
    ]
    events, _ = shaped(messages, opts)
    assert events[0]["event"] == "user x token=**** card ****"
    assert events[1]["event"] == {
        "a": {"b": [{"password": "****"}]},
        "Authorization": "****",
        "ok": "token=****",
    }


def test_redaction_that_breaks_json_sends_text() -> None:
    opts = options(Shaping(redact=(RedactRule('re:"x":1', "X"),)), event_format="json")
    events, _ = shaped(['{"x":1}'], opts)
    assert events[0]["event"] == "{X}"


def test_replacement_forming_the_pattern_again_is_replaced_again() -> None:
    shaper = compile_shaper(Shaping(redact=(RedactRule("a*", "*"),)))
    result = shaper.apply(["aa**", "a*a*a**"], None, None)
    assert all("a*" not in m for m in result.messages)


def test_redaction_and_counts_reach_the_firehose_answer() -> None:
    opts = options(Shaping(redact=(RedactRule("s3cr3t"),), drop=(DropRule(message="drop*"),)))
    records: list[dict[str, Any]] = [
        {"recordId": "1", "data": base64.b64encode(payload(["the s3cr3t is out", "drop me"]))},
        {"recordId": "2", "data": base64.b64encode(payload(["drop all"]))},
    ]
    event = {
        "invocationId": "i",
        "records": [{"recordId": r["recordId"], "data": r["data"].decode()} for r in records],
    }
    with capture_logs() as logs:
        answer = transform_invocation(
            event, opts, limit_bytes=6_000_000, reingester=RecordingReingester()
        )
    body = base64.b64decode(answer["records"][0]["data"])
    assert b"s3cr3t" not in body
    assert b"the **** is out" in body
    assert answer["records"][1]["result"] == "Dropped"
    (summary,) = [line for line in logs if line["event"] == "firehose_invocation_summarized"]
    assert (summary["events_filtered"], summary["events_out"]) == (2, 1)


def strings(value: object) -> list[str]:
    """Every string a decoded event holds (values and keys, at any depth)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in (k, *strings(v))]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    secret=st.text(min_size=1, max_size=12).filter(lambda s: s not in "****"),
)
@settings(max_examples=300, deadline=None)
def test_redaction_never_leaks_the_masked_text(before: str, after: str, secret: str) -> None:
    opts = options(Shaping(redact=(RedactRule(secret),), redact_fields=("k",)), event_format="auto")
    message = before + secret + after
    as_json = json.dumps({"k": secret, "v": [before, {"k": after}]}, ensure_ascii=False)
    batch = transform_payload(payload([message, as_json]), opts)
    for event in batch.events:
        assert all(secret not in text for text in strings(json.loads(event.payload)["event"]))
    lines = transform_lines([message], log_group=GROUP, log_stream="f", options=opts)
    assert all(secret not in json.loads(e.payload)["event"] for e in lines.events)


@given(messages=st.lists(st.text(max_size=80), max_size=20))
@settings(max_examples=200, deadline=None)
def test_arbitrary_messages_never_raise(messages: list[str]) -> None:
    opts = options(
        Shaping(
            time_field="t",
            drop=(DropRule(field="level", equals="x"), DropRule(message="re:^\\s*$")),
            sample=0.9,
            redact=(RedactRule("re:[0-9]{3,}"),),
            redact_fields=("p",),
        ),
        event_format="json",
        dedup_field="event_id",
    )
    batch = transform_payload(payload(messages, ids=False), opts)
    assert batch.event_count + batch.filtered + batch.sampled == len(messages)
    for event in batch.events:
        json.loads(event.payload)


# --- dedup key -------------------------------------------------------------------------------


def test_dedup_field_carries_event_id_or_a_stable_hash() -> None:
    opts = options(index="main", dedup_field="event_id")
    events, _ = shaped(["a", "b"], opts)
    assert [e["fields"]["event_id"] for e in events] == ["id0", "id1"]
    lines = ["one", "two", "one"]
    first = transform_lines(lines, log_group=GROUP, log_stream="f", options=opts)
    again = transform_lines(lines, log_group=GROUP, log_stream="f", options=opts)
    keys = [json.loads(e.payload)["fields"]["event_id"] for e in first.events]
    assert keys == [json.loads(e.payload)["fields"]["event_id"] for e in again.events]
    assert keys[0] == keys[2] != keys[1]
    source = json.loads(first.events[0].payload)["source"]
    assert source == f"{GROUP}:f"
    assert keys[0] == dedup_key(None, source, None, "one")


def test_dedup_field_on_flow_events_and_off_by_default() -> None:
    line = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1600000000 1600000060 ACCEPT OK"
    opts = TransformOptions(dedup_field="eid")
    batch = transform_payload(payload([line], group="/aws/vpc/x"), opts)
    assert json.loads(batch.events[0].payload)["fields"] == {"eid": "id0"}
    plain = transform_payload(payload([line], group="/aws/vpc/x"), TransformOptions())
    assert "fields" not in json.loads(plain.events[0].payload)


# --- configuration ------------------------------------------------------------------------


def load(tmp_path: Path, text: str, **environ: str) -> TransformOptions:
    path = tmp_path / "forwarder.toml"
    path.write_text(text)
    return load_settings(environ, path).transform


def test_routes_toml_reads_every_shaping_key(tmp_path: Path) -> None:
    opts = load(
        tmp_path,
        """
[[routes]]
log_group = "/app/*"
time_field = "ts"
time_format = "epoch_ms"
event_format = "auto"
drop = [{ message = "re:health" }, { field = "level", equals = "DEBUG" }]
sample = 0.5
sample_key = "message"
redact = [{ pattern = "re:pw=\\\\S+", replace = "pw=x" }, { pattern = "secret" }]
redact_fields = ["password"]
""",
        SPLUNK_DEDUP_FIELD="event_id",
    )
    assert opts.dedup_field == "event_id"
    assert opts.routes[0].shaping == Shaping(
        time_field="ts",
        time_format="epoch_ms",
        drop=(DropRule(message="re:health"), DropRule(field="level", equals="DEBUG")),
        sample=0.5,
        sample_key="message",
        redact=(RedactRule("re:pw=\\S+", "pw=x"), RedactRule("secret")),
        redact_fields=("password",),
    )


@pytest.mark.parametrize(
    ("route", "key"),
    [
        ('time_field = "a"\ntime_regex = "(x)"', ".time_regex"),
        ('time_regex = "(x"', ".time_regex"),
        ('time_regex = "(a)(b)"', ".time_regex"),
        ('time_field = "a"\ntime_format = "hours"', ".time_format"),
        ('time_format = "iso8601"', ".time_format"),
        ("sample = 1.5", ".sample"),
        ('sample = "half"', ".sample"),
        ('sample_key = "x"', ".sample_key"),
        ('drop = [{ message = "re:(" }]', ".drop[1].message"),
        ('drop = [{ message = "a" }, { field = "x" }]', ".drop[2].equals"),
        ("drop = [{ equals = 1 }]", ".drop[1].field"),
        ('drop = [{ messages = "a" }]', ".drop[1].messages"),
        ('drop = "a"', ".drop"),
        ('redact = [{ replace = "x" }]', ".redact[1].pattern"),
        ('redact = [{ pattern = "re:a*" }]', ".redact[1].pattern"),
        ('redact = [{ pattern = "a", replace = 1 }]', ".redact[1].replace"),
        ("redact_fields = []", ".redact_fields"),
    ],
)
def test_bad_shaping_keys_name_the_rule_and_key(tmp_path: Path, route: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'[[routes]]\nlog_group = "a"\nindex = "i"\n{route}\n')
    assert key in str(caught.value)
    assert "routes[" in str(caught.value)


def test_bad_dedup_field_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SPLUNK_DEDUP_FIELD"):
        load(tmp_path, "", SPLUNK_DEDUP_FIELD="no spaces")


def test_merged_routes_add_redaction_and_take_the_first_time_rule() -> None:
    opts = TransformOptions(
        routes=(
            Route(log_group=GROUP, index="a", shaping=Shaping(redact=(RedactRule("x1"),))),
            Route(log_group="*", shaping=Shaping(time_field="t", redact=(RedactRule("y2"),))),
            Route(log_group="*", shaping=Shaping(time_field="other")),
        )
    )
    events, _ = shaped(['{"t": 1700000000, "m": "x1 y2"}'], opts)
    assert events[0]["time"] == 1700000000.0
    assert "x1" not in events[0]["event"]
    assert "y2" not in events[0]["event"]


def test_transform_command_shows_the_rules(tmp_path: Path) -> None:
    from forwarder.cli import main

    config = tmp_path / "forwarder.toml"
    config.write_text(
        f'[[routes]]\nlog_group = "{GROUP}"\ntime_field = "ts"\nevent_format = "auto"\n'
        'drop = [{ field = "level", equals = "DEBUG" }]\nredact_fields = ["pw"]\n'
    )
    data = tmp_path / "payload.gz"
    data.write_bytes(
        payload(['{"ts":"2023-11-14T22:13:20Z","level":"INFO","pw":"p"}', '{"level":"DEBUG"}'])
    )
    out = io.StringIO()
    status = main(["transform", str(data), "--config", str(config)], {}, out)
    assert status == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(events) == 1
    assert events[0]["time"] == 1700000000.0
    assert events[0]["event"] == {"ts": "2023-11-14T22:13:20Z", "level": "INFO", "pw": "****"}


def test_iso_batch_matches_the_one_by_one_parser() -> None:
    values: list[object] = [
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:21.007Z",
        "1970-01-01T00:00:00.000Z",
    ]
    assert iso_batch(values) == [time_parser("iso8601")(v) for v in values]
    assert iso_batch([*values, "2023-11-14T22:13:20Z"]) is None
    assert iso_batch(["2023-11-14T22:13:20.5a0Z"]) is None
    assert iso_batch(["2023-13-14T22:13:20.500Z"]) is None


@given(
    texts=st.lists(st.text(alphabet="ab\n x-", max_size=12), max_size=12),
    pattern=st.sampled_from(["a", "ab", "re:a\\s*b", "re:b+", "re:^a", "re:a$", "re:\\bx", "x-"]),
)
@settings(max_examples=300, deadline=None)
def test_batch_redaction_equals_line_by_line(texts: list[str], pattern: str) -> None:
    """Searching the joined batch to find the lines to scrub changes nothing."""
    rule = RedactRule(pattern, "#")
    assert _batch_redactor(rule)(texts) == [_redactor(rule)(text) for text in texts]


@given(texts=st.lists(st.text(alphabet='[]{},"\n :1a\\', max_size=14), max_size=10))
@settings(max_examples=1000, deadline=None)
def test_batch_json_parse_equals_one_by_one(texts: list[str]) -> None:
    """Messages built to fuse or split in a joined parse still map to their own values."""
    assert parse_messages(texts) == [parse_json(text) for text in texts]


def test_batch_json_parse_refuses_a_message_that_splits() -> None:
    texts = ['["a"', '"b"]', '{"x":1}],[{"y":2}', '{"z":3}']
    assert parse_messages(texts) == [parse_json(text) for text in texts]
    assert parse_json(texts[2]) is MISSING


def test_a_replacement_the_pattern_matches_stays() -> None:
    shaper = compile_shaper(Shaping(redact=(RedactRule("re:password=\\S+", "password=****"),)))
    result = shaper.apply(["login password=hunter2 ok", "a\\\\b"], None, None)
    assert result.messages == ["login password=**** ok", "a\\\\b"]


@pytest.mark.parametrize("event_format", [None, "auto"])
def test_redaction_reaches_text_a_json_message_spells_with_escapes(
    event_format: str | None,
) -> None:
    """GIVEN a JSON message spelling the secret with a \\u escape WHEN redacted THEN neither
    the wire text nor what Splunk decodes from it holds the secret."""
    route: dict[str, Any] = {"event_format": event_format} if event_format else {"index": "i"}
    opts = options(Shaping(redact=(RedactRule("re:password=\\w+"),)), **route)
    events, _ = shaped(['{"note":"pass\\u0077ord=abc","n":1}'], opts)
    value = events[0]["event"]
    decoded = value if isinstance(value, dict) else json.loads(value)
    assert decoded == {"note": "****", "n": 1}
