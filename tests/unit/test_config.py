"""Settings: precedence, validation naming the key, secrets kept out of repr and errors."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import pytest
import structlog

from config.errors import ConfigError
from config.loader import load_settings, require_hec, warnings_for, with_token
from config.logs import REDACTED, configure_logging, redact_text, register_secret
from config.settings import LogSettings, Settings
from transforms.options import Route

TOKEN = "11111111-2222-3333-4444-555555555555"


def test_defaults_follow_the_design() -> None:
    """An empty environment gives DESIGN.md's defaults."""
    settings = load_settings(environ={})
    assert settings.hec.endpoint == "event"
    assert settings.hec.verify_tls is True
    assert settings.hec.gzip is True
    assert settings.acks.enabled is True
    assert settings.acks.timeout_s == 300
    assert settings.acks.poll_interval_s == 10
    assert settings.retry.duration_s == 3600
    assert settings.batching.max_bytes == 1_000_000
    assert settings.transform.event_format == "auto"
    assert settings.transform.max_decompressed_bytes > 1_000_000
    assert settings.firehose.response_limit_bytes == 6_291_456


def test_environment_values_are_parsed_and_normalised() -> None:
    """URLs lose collector paths, lists split, booleans and numbers parse, prefixes end in '/'."""
    settings = load_settings(
        environ={
            "SPLUNK_HEC_URL": "https://a.example:8088/services/collector/event, https://b.example:8088/",
            "SPLUNK_HEC_TOKEN": TOKEN,
            "SPLUNK_HEC_ENDPOINT": "RAW",
            "SPLUNK_HEC_ACK": "no",
            "SPLUNK_HEC_ACK_TIMEOUT": "240",
            "SPLUNK_HEC_RETRY_DURATION": "0",
            "BACKSPLASH_BUCKET": "my-backsplash",
            "BACKSPLASH_PREFIX": "/vpc/flow",
            "SPLUNK_INDEX": "network",
            "EVENT_FORMAT": "json",
        }
    )
    assert settings.hec.urls == ("https://a.example:8088", "https://b.example:8088")
    assert settings.hec.endpoint == "raw"
    assert settings.transform.endpoint == "raw"
    assert settings.acks.enabled is False
    assert settings.acks.timeout_s == 240.0
    assert settings.retry.duration_s == 0.0
    assert settings.backsplash.prefix == "vpc/flow/"
    assert settings.transform.default_index == "network"
    assert settings.transform.event_format == "json"


def test_settings_are_frozen() -> None:
    """Nobody can change settings after start-up."""
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.hec.gzip = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("SPLUNK_HEC_URL", "splunk.example:8088", "https://"),
        ("SPLUNK_HEC_URL", "https://user:pw@splunk.example", "credentials"),
        ("SPLUNK_HEC_ENDPOINT", "metrics", "event, raw"),
        ("SPLUNK_HEC_ACK", "maybe", "true or false"),
        ("SPLUNK_HEC_ACK_TIMEOUT", "soon", "number"),
        ("SPLUNK_HEC_ACK_TIMEOUT", "nan", "finite"),
        ("SPLUNK_HEC_RETRY_DURATION", "7201", "between 0 and 7200"),
        ("SPLUNK_HEC_CA_BUNDLE", "/nonexistent/ca.pem", "no such file"),
        ("SPLUNK_HEC_CA_BUNDLE", "c" * 5000, "File name too long"),
        ("SPLUNK_HEC_CA_BUNDLE", "~no-such-user-here/ca.pem", "cannot use"),
        ("FORWARDER_CONFIG", "f" * 5000, "cannot read"),
        ("EVENT_FORMAT", "xml", "auto, raw, json"),
        ("BACKSPLASH_BUCKET", "s3://bucket", "without s3://"),
        ("BACKSPLASH_BUCKET", "Not_A_Bucket", "bucket name"),
        ("LOG_LEVEL", "LOUD", "DEBUG"),
        ("FIREHOSE_RESPONSE_LIMIT_BYTES", "7000000", "between"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(key: str, value: str, says: str) -> None:
    """Every invalid value fails with a ConfigError naming the key."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={key: value})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert says in str(caught.value)


def test_token_never_appears_in_repr_or_errors() -> None:
    """The token is hidden from repr, and a bad token is not echoed in the error."""
    settings = load_settings(environ={"SPLUNK_HEC_TOKEN": TOKEN})
    assert settings.hec.token == TOKEN
    assert TOKEN not in repr(settings)
    bad = "abc def-secret-with-space"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"SPLUNK_HEC_TOKEN": bad})
    assert "secret" not in str(caught.value)
    assert "SPLUNK_HEC_TOKEN" in str(caught.value)


def test_precedence_flag_over_environment_over_toml(tmp_path: Path) -> None:
    """CLI flag > environment > TOML > default."""
    path = tmp_path / "forwarder.toml"
    path.write_text(
        'splunk_hec_url = "https://toml.example:8088"\n'
        'splunk_index = "from_toml"\n'
        'splunk_sourcetype = "toml:st"\n'
        "splunk_hec_ack_timeout = 200\n"
        "splunk_hec_gzip = false\n"
    )
    settings = load_settings(
        environ={"FORWARDER_CONFIG": str(path), "SPLUNK_INDEX": "from_env"},
        overrides={"SPLUNK_HEC_URL": "https://flag.example:8088"},
    )
    assert settings.hec.urls == ("https://flag.example:8088",)
    assert settings.transform.default_index == "from_env"
    assert settings.transform.default_sourcetype == "toml:st"
    assert settings.acks.timeout_s == 200.0
    assert settings.hec.gzip is False


def test_lambda_finds_a_packaged_settings_file(tmp_path: Path) -> None:
    """In Lambda a forwarder.toml at the task root is read; FORWARDER_CONFIG still wins."""
    (tmp_path / "forwarder.toml").write_text('splunk_index = "packaged"\n')
    settings = load_settings(environ={"LAMBDA_TASK_ROOT": str(tmp_path)})
    assert settings.transform.default_index == "packaged"
    other = tmp_path / "other.toml"
    other.write_text('splunk_index = "explicit"\n')
    settings = load_settings(
        environ={"LAMBDA_TASK_ROOT": str(tmp_path), "FORWARDER_CONFIG": str(other)}
    )
    assert settings.transform.default_index == "explicit"
    assert load_settings(environ={"LAMBDA_TASK_ROOT": str(tmp_path / "none")}) == Settings()


def test_toml_unknown_key_and_bad_file_are_named(tmp_path: Path) -> None:
    """A typo in the TOML file or a broken file fails at start-up with its name."""
    path = tmp_path / "forwarder.toml"
    path.write_text('splunk_hec_urll = "https://x.example"\n')
    with pytest.raises(ConfigError, match="splunk_hec_urll"):
        load_settings(environ={}, path=path)
    path.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(environ={}, path=path)
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(environ={"FORWARDER_CONFIG": str(tmp_path / "missing.toml")})


def test_routes_from_toml(tmp_path: Path) -> None:
    """[[routes]] tables become ordered Route rules; bad ones are named by position."""
    path = tmp_path / "forwarder.toml"
    path.write_text(
        "[[routes]]\n"
        'log_group = "/aws/vpc/prod*"\n'
        'index = "netprod"\n'
        'fields = { env = "prod" }\n'
        "[[routes]]\n"
        'log_group = "re:^/app/(a|b)$"\n'
        'sourcetype = "app:log"\n'
        'event_format = "json"\n'
    )
    settings = load_settings(environ={}, path=path)
    assert settings.transform.routes == (
        Route(log_group="/aws/vpc/prod*", index="netprod", fields=(("env", "prod"),)),
        Route(log_group="re:^/app/(a|b)$", sourcetype="app:log", event_format="json"),
    )
    path.write_text('[[routes]]\nlog_group = "re:(unclosed"\nindex = "x"\n')
    with pytest.raises(ConfigError, match=r"routes\[1\]\.log_group"):  # counted from 1
        load_settings(environ={}, path=path)
    path.write_text('[[routes]]\nlog_group = "/a"\nindx = "x"\n')
    with pytest.raises(ConfigError, match=r"routes\[1\]\.indx"):
        load_settings(environ={}, path=path)
    path.write_text('[[routes]]\nindex = "a"\n[[routes]]\nindex = "b"\n[[routes]]\nindx = "c"\n')
    with pytest.raises(ConfigError, match=r"routes\[3\]\.indx"):  # the third rule
        load_settings(environ={}, path=path)
    path.write_text('[[routes]]\nlog_group = "/a"\n')
    with pytest.raises(ConfigError, match="at least one value"):
        load_settings(environ={}, path=path)


def test_custom_flow_log_format_with_unknown_field_fails_at_start_up() -> None:
    """A format naming a field AWS does not define is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"VPC_FLOW_LOG_FORMAT": "${version} ${srcaddr} ${no-such-field}"})
    assert caught.value.key == "VPC_FLOW_LOG_FORMAT"
    assert "no-such-field" in str(caught.value)
    settings = load_settings(environ={"VPC_FLOW_LOG_FORMAT": "${srcaddr} ${dstaddr} ${action}"})
    assert settings.transform.flow_log_format == ("srcaddr", "dstaddr", "action")


def test_empty_variables_mean_unset() -> None:
    """CloudFormation passes optional parameters as empty strings; they keep the default."""
    settings = load_settings(environ={"SPLUNK_INDEX": "", "SPLUNK_HEC_ACK_TIMEOUT": ""})
    assert settings.transform.default_index is None
    assert settings.acks.timeout_s == 300


def test_warnings_for_risky_but_valid_settings() -> None:
    """Short ack timeouts, TLS off and plain HTTP off this host are accepted with a warning."""
    settings = load_settings(
        environ={
            "SPLUNK_HEC_ACK_TIMEOUT": "5",
            "SPLUNK_HEC_VERIFY_TLS": "false",
            "SPLUNK_HEC_URL": "http://splunk.example.com:8088",
            "BACKSPLASH_BUCKET": "my-backsplash",
        }
    )
    found = " | ".join(warnings_for(settings))
    assert "SPLUNK_HEC_ACK_TIMEOUT" in found
    assert "SPLUNK_HEC_VERIFY_TLS" in found
    assert "plain HTTP" in found
    assert warnings_for(load_settings(environ=SAFE)) == []


#: Settings that keep the whole safety net: acks on, a bucket, verified TLS.
SAFE = {"SPLUNK_HEC_URL": "https://splunk.example.com:8088", "BACKSPLASH_BUCKET": "my-backsplash"}


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"BACKSPLASH_BUCKET": ""}, "BACKSPLASH_BUCKET"),
        ({"SPLUNK_HEC_ACK": "false"}, "SPLUNK_HEC_ACK"),
        ({"SPLUNK_HEC_URL": "http://splunk.example.com:8088"}, "SPLUNK_HEC_URL"),
        ({"SPLUNK_HEC_URL": "https://a.example.com,http://10.0.0.7:8088"}, "SPLUNK_HEC_URL"),
        ({"SPLUNK_HEC_VERIFY_TLS": "false"}, "SPLUNK_HEC_VERIFY_TLS"),
    ],
)
def test_each_setting_that_loses_the_safety_net_gives_one_warning_naming_it(
    change: dict[str, str], setting: str
) -> None:
    found = warnings_for(load_settings(environ={**SAFE, **change}))
    assert len(found) == 1, found
    assert found[0].startswith(setting)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8088", "http://localhost:8088", "http://[::1]:8088"]
)
def test_plain_http_to_this_host_is_no_warning(url: str) -> None:
    assert warnings_for(load_settings(environ={**SAFE, "SPLUNK_HEC_URL": url})) == []


def test_what_a_caller_does_decides_which_warnings_apply() -> None:
    """Replay backsplashes into replay-failed/, not the bucket; the daemon's spool alone is a
    safety net; a caller that sends nothing (transform), or has no HEC URL, hears of neither
    acknowledgment nor backsplash."""
    no_bucket = {**SAFE, "BACKSPLASH_BUCKET": "", "SPLUNK_HEC_ACK": "false"}
    settings = load_settings(environ=no_bucket)
    assert [w.split(" ")[0] for w in warnings_for(settings)] == [
        "BACKSPLASH_BUCKET",
        "SPLUNK_HEC_ACK=false:",
    ]
    assert [w.split(" ")[0] for w in warnings_for(settings, backsplash=False)] == [
        "SPLUNK_HEC_ACK=false:"
    ]
    assert warnings_for(settings, delivers=False) == []
    spooled = load_settings(environ={**no_bucket, "BACKSPLASH_SPOOL_DIR": "/var/spool/fw"})
    assert len(warnings_for(spooled, spool=True)) == 1  # acks off only
    assert len(warnings_for(spooled)) == 2  # a spool is no safety net where none is used
    no_url = load_settings(environ={"SPLUNK_HEC_ACK": "false"})
    assert warnings_for(no_url) == []


def test_require_hec_and_with_token() -> None:
    """Delivery needs a URL and a token; a token can be supplied later (Secrets Manager)."""
    with pytest.raises(ConfigError, match="SPLUNK_HEC_URL"):
        require_hec(Settings())
    settings = load_settings(environ={"SPLUNK_HEC_URL": "https://s.example:8088"})
    with pytest.raises(ConfigError, match="SPLUNK_HEC_TOKEN"):
        require_hec(settings)
    assert require_hec(with_token(settings, TOKEN)).hec.token == TOKEN


def test_rendered_logs_redact_registered_tokens_and_auth_headers() -> None:
    """Whatever field carries the token, the rendered line says [REDACTED]."""
    register_secret(TOKEN)
    out = io.StringIO()
    configure_logging(LogSettings(level="DEBUG", format="json"), stream=out)
    log = structlog.get_logger()
    log.error("hec_fatal", detail=f"token {TOKEN} refused", nested={"h": [f"Splunk {TOKEN}"]})
    log.info("batch_sent", header="Authorization: Splunk abcdefgh12345678")
    text = out.getvalue()
    assert TOKEN not in text
    assert "abcdefgh12345678" not in text
    first = json.loads(text.splitlines()[0])
    assert first["event"] == "hec_fatal"
    assert REDACTED in first["detail"]
    assert redact_text("nothing secret") == "nothing secret"


def test_readme_documents_every_setting_and_command() -> None:
    """The README's reference names every setting key and every CLI command."""
    from config.loader import KEYS
    from forwarder.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [key.env for key in KEYS if f"`{key.env}`" not in readme]
    assert missing == []
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    commands = sorted(subparsers.choices)
    assert [c for c in commands if f"forwarder {c}" not in readme] == []
