"""``forwarder routes check``: a settings file validated offline and described in plain words."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from forwarder import cli

ROUTES = """
splunk_index = "aws"
splunk_fallback_index = "lastchance"

[[routes]]
log_group = "/aws/vpc/prod-*"
index = "network_prod"
fields = { env = "prod" }

[[routes]]
log_group = "re:^/ecs/(payments|ledger)$"
account = "123456789012"
sourcetype = "payments:app"

[[routes]]
log_group = "/aws/lambda/*"
time_field = "timestamp"
time_format = "iso8601"
drop = [{ message = "re:GET /health" }, { field = "level", equals = "DEBUG" }]
redact = [{ pattern = "secret-token", replace = "[masked]" }]
redact_fields = ["password"]

[[routes]]
log_stream = "eni-*"
drop = [{ message = "* ACCEPT OK" }]
sample = 0.25
sample_key = "message"
"""


def check(tmp_path: Path, text: str, **environ: str) -> tuple[int, str]:
    config = tmp_path / "forwarder.toml"
    config.write_text(text, encoding="utf-8")
    out = io.StringIO()
    status = cli.main(["routes", "check", "--config", str(config)], environ, out)
    return status, out.getvalue()


def test_a_valid_file_is_printed_route_by_route_in_order(tmp_path: Path) -> None:
    status, out = check(tmp_path, ROUTES)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].endswith("forwarder.toml: valid")
    numbered = [line.strip() for line in lines if line.strip()[:2] in ("1.", "2.", "3.", "4.")]
    assert numbered == [
        "1. log group /aws/vpc/prod-* (glob): index network_prod; indexed fields env=prod",
        "2. log group matching the regular expression ^/ecs/(payments|ledger)$ and account "
        "123456789012: sourcetype payments:app",
        "3. log group /aws/lambda/* (glob): time from the JSON field timestamp read as "
        "iso8601; drop events whose message matches the regular expression GET /health; "
        "drop events whose field level equals 'DEBUG'; mask the text 'secret-token' with "
        "'[masked]'; mask the JSON keys password",
        "4. log stream eni-* (glob): drop events whose message is like * ACCEPT OK; keep 25% "
        "of the rest, chosen by message",
    ]
    assert "  anything else: sourcetype aws:cloudwatchlogs" in lines
    assert lines[-1] == (
        "every event: endpoint event; index when no route sets one: aws; dedup field: off; "
        "fallback index for code 7: lastchance"
    )


def test_no_routes_says_only_the_defaults_apply(tmp_path: Path) -> None:
    status, out = check(tmp_path, 'splunk_sourcetype = "mine"\n')
    assert status == 0
    assert "no routes: only the built-in defaults apply" in out
    assert "anything else: sourcetype mine" in out


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[routes]]\nlog_group = "a"\nindx = "x"\n', "routes[1].indx"),
        (
            '[[routes]]\nindex = "a"\n[[routes]]\nlog_group = "b"\ndrop = [{ message = "re:(" }]\n',
            "routes[2].drop[1].message: invalid regular expression",
        ),
        ('[[routes]]\nlog_group = "a"\nsample = 2\n', "routes[1].sample"),
        ('splunk_fallback_index = "Last Chance"\n', "SPLUNK_FALLBACK_INDEX"),
        ('[source]\ntype = "kinesis"\n', "source.stream_name"),
    ],
)
def test_a_mistake_exits_2_naming_the_rule_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    status, out = check(tmp_path, text)
    assert status == 2
    assert out == ""
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("forwarder routes: ") and named in line


def test_nothing_is_sent(tmp_path: Path) -> None:
    """A HEC URL in the file is only read: nothing listens there, and all is well."""
    status, out = check(
        tmp_path,
        'splunk_hec_url = "http://127.0.0.1:9"\n[[routes]]\nlog_group = "a"\nindex = "b"\n',
    )
    assert status == 0
    assert "1. log group a: index b" in out


def test_the_file_comes_from_forwarder_config_too(tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text('[[routes]]\norigin = "s3"\nhost = "{log_group}"\n', encoding="utf-8")
    out = io.StringIO()
    assert cli.main(["routes", "check"], {"FORWARDER_CONFIG": str(config)}, out) == 0
    assert "1. origin s3: host {log_group}" in out.getvalue()


def test_destinations_are_listed_without_their_tokens(tmp_path: Path) -> None:
    text = (
        'backsplash_prefix = "failed/"\n'
        "[destinations.security]\n"
        'hec_url = ["https://sec-1.example.com:8088", "https://sec-2.example.com:8088"]\n'
        'token = "s3cr3t-security-token"\n'
        'endpoint = "raw"\n'
        "ack = false\n"
        "[[routes]]\n"
        'log_group = "/aws/cloudtrail*"\n'
        'destination = "security"\n'
    )
    status, out = check(tmp_path, text)
    assert status == 0, out
    lines = out.splitlines()
    assert "  1. log group /aws/cloudtrail* (glob): deliver to destination security" in lines
    assert lines[-1] == (
        "destination security: https://sec-1.example.com:8088, https://sec-2.example.com:8088; "
        "endpoint raw; acks off; backsplash prefix failed/"
    )
    assert "s3cr3t" not in out


def test_a_route_naming_an_unknown_destination_exits_2_naming_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[[routes]]\nindex = "a"\n[[routes]]\nlog_group = "/x"\ndestination = "secops"\n'
    status, out = check(tmp_path, text)
    assert (status, out) == (2, "")
    (line,) = capsys.readouterr().err.splitlines()
    assert "routes[2].destination: no [destinations.secops] table; known: default" in line
