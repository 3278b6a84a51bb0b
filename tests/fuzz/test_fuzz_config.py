"""Fuzz the config loader (``config.loader.load_settings``, ``config.daemon``).

Arbitrary environments and arbitrary TOML text (deep nesting, invalid UTF-8 included) give
settings or ``ConfigError`` naming a key, never another exception: a bad setting must fail at
start-up with that message, not a traceback.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from config.daemon import load_daemon_settings
from config.errors import ConfigError
from config.loader import KEYS, load_settings, read_toml
from tests.fuzz.support import NESTING, fuzzing, json_values

ENV_NAMES = [key.env for key in KEYS]
DAEMON_NAMES = [
    f"FORWARDER_{table}_{key}"
    for table, keys in (
        ("SOURCE", ["TYPE", "STREAM_NAME", "PORT", "MAX_RECORDS", "PATHS", "ACCESS_KEY",
                    "TLS_CERT_PATH", "POLL_INTERVAL_S", "THROTTLE_BACKOFF_S"]),
        ("DAEMON", ["CHECKPOINT_STORE", "SHUTDOWN_GRACE_S", "METRICS_PORT", "METRICS_ENABLED"]),
    )
    for key in keys
]  # fmt: skip
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "true", "no", "0", "-1", "1e309", "nan", "inf", "9" * 5000,
                     "https://h:8088", "http://u:p@h", "s3://b", "${version} ${nope}", "re:(",
                     "\x00", "\ud800"]),
    st.integers().map(str),
    st.floats().map(str),
)  # fmt: skip
environments = st.dictionaries(
    st.one_of(
        st.sampled_from(ENV_NAMES + DAEMON_NAMES + ["FORWARDER_CONFIG"]), st.text(max_size=10)
    ),
    values,
    max_size=8,
)


@fuzzing(quick=200)
@given(environments)
@example({"FORWARDER_CONFIG": "9" * 5000})  # a name too long to open
@example({"FORWARDER_CONFIG": "/"})  # a directory
@example({"FORWARDER_CONFIG": "forwarder\x00.toml"})
def test_any_environment_gives_settings_or_a_config_error(environ: dict[str, str]) -> None:
    try:
        load_settings(environ=environ)
    except ConfigError as exc:
        assert exc.key
    try:
        load_daemon_settings({}, environ)
    except ConfigError as exc:
        assert exc.key


toml_scalars = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=30).map(lambda text: json.dumps(text, ensure_ascii=True)),
    st.sampled_from(["[]", "{}", "[1, 'a']", "{a = 1}", "1979-05-27T07:32:00Z", "nan"]),
)  # fmt: skip
toml_keys = st.one_of(
    st.sampled_from([name.lower() for name in ENV_NAMES] + ["routes", "daemon", "source"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
toml_lines = st.one_of(
    st.tuples(toml_keys, toml_scalars).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(["[[routes]]", "[daemon]", "[source]", "[routes]", "[[source]]",
                     'log_group = "/aws/*"', 'index = "main"', 'fields = {a = "b"}',
                     'type = "kinesis"', 'type = "firehose-http"', "port = 99999"]),
    st.text(max_size=40),
)  # fmt: skip
toml_texts = st.lists(toml_lines, max_size=12).map("\n".join)


def load_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "forwarder.toml"
        path.write_bytes(data)
        try:
            load_settings(environ={}, path=path)
            load_daemon_settings(read_toml(path), {})
        except ConfigError as exc:
            assert exc.key


@fuzzing(quick=150)
@given(
    st.one_of(
        toml_texts.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=200)
    )
)
def test_any_settings_file_gives_settings_or_a_config_error(data: bytes) -> None:
    load_file(data)


@fuzzing(quick=100)
@given(st.dictionaries(st.sampled_from(["daemon", "source", "other"]), json_values(max_leaves=8)))
def test_any_daemon_document_gives_settings_or_a_config_error(document: dict[str, object]) -> None:
    try:
        load_daemon_settings(document, {})
    except ConfigError as exc:
        assert exc.key


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * NESTING + "]" * NESTING,
        "a = " + "{b = " * NESTING + "1" + "}" * NESTING,
        "[" * NESTING,
        "a = " + "[" * NESTING,
        'splunk_hec_url = "' + "x" * 2_000_000 + '"',
    ],
    ids=["arrays", "inline_tables", "table_headers", "unclosed", "huge_value"],
)
def test_hostile_settings_files_give_a_config_error(text: str) -> None:
    load_file(text.encode())


def test_a_settings_file_that_is_not_utf8_gives_a_config_error() -> None:
    load_file(b'splunk_index = "\xff\xfe"\n')
