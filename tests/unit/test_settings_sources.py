"""The merged config paths: one read of the settings file per command, flag names and token
resolution written once."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

import config.loader
from config.errors import ConfigError
from config.loader import flag_overrides, hec_token_from_environ, replay_state_path
from forwarder import secrets
from forwarder.commands.context import CommandContext
from tests.conftest import TEST_TOKEN, make_settings

SETTINGS_FILE = """\
splunk_index = "from_file"
[source]
type = "files"
paths = ["a.log"]
[daemon]
metrics_port = 9200
"""


def test_settings_and_daemon_tables_come_from_one_read_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "forwarder.toml"
    path.write_text(SETTINGS_FILE)
    reads: list[Path] = []
    real_read = config.loader.read_toml

    def counting_read(location: Path, origin: str = "FORWARDER_CONFIG") -> dict[str, Any]:
        reads.append(location)
        return real_read(location, origin)

    monkeypatch.setattr(config.loader, "read_toml", counting_read)
    args = argparse.Namespace(config=str(path), hec_url=None, token=None)
    ctx = CommandContext(args, {"FORWARDER_DAEMON_CHECKPOINT_PATH": "cp.json"}, io.StringIO())

    daemon = ctx.daemon_settings()
    settings = ctx.settings()
    path.write_text("not toml at all [")  # changed on disk: nothing reads it again
    again = ctx.daemon_settings()

    assert reads == [path]
    assert settings.transform.default_index == "from_file"
    assert daemon.source.paths == ("a.log",) and daemon.metrics_port == 9200
    assert daemon.checkpoint_path == "cp.json"  # FORWARDER_DAEMON_* still override the file
    assert again == daemon


def test_the_daemon_tables_follow_forwarder_config_like_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.toml"
    path.write_text(SETTINGS_FILE)
    ctx = CommandContext(argparse.Namespace(), {"FORWARDER_CONFIG": str(path)}, io.StringIO())
    assert ctx.daemon_settings().source.type == "files"
    assert ctx.settings().transform.default_index == "from_file"


def test_a_missing_file_is_a_config_error_naming_where_it_was_given(tmp_path: Path) -> None:
    """``--config`` when the flag named it, ``FORWARDER_CONFIG`` when the environment did."""
    args = argparse.Namespace(config=str(tmp_path / "absent.toml"))
    ctx = CommandContext(args, {}, io.StringIO())
    with pytest.raises(ConfigError, match=r"^--config: no such file: .*absent\.toml"):
        ctx.daemon_settings()
    environ = {"FORWARDER_CONFIG": str(tmp_path / "absent.toml")}
    ctx = CommandContext(argparse.Namespace(), environ, io.StringIO())
    with pytest.raises(ConfigError, match=r"^FORWARDER_CONFIG: no such file: .*absent\.toml"):
        ctx.settings()


def test_a_file_that_is_not_toml_is_named_by_its_flag(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("x = [\n")
    ctx = CommandContext(argparse.Namespace(config=str(path)), {}, io.StringIO())
    with pytest.raises(ConfigError, match=r"^--config: .*bad.toml is not valid TOML"):
        ctx.settings()


def test_flags_override_the_settings_they_name() -> None:
    flags = {"hec_url": "https://h:8088", "token": None, "log_level": "DEBUG", "other": "x"}
    assert flag_overrides(flags) == {"SPLUNK_HEC_URL": "https://h:8088", "LOG_LEVEL": "DEBUG"}
    assert flag_overrides({}) == {}


def test_the_emulator_default_token_is_the_raw_environment_value() -> None:
    assert hec_token_from_environ({"SPLUNK_HEC_TOKEN": "t"}) == "t"
    assert hec_token_from_environ({}) is None


def test_the_replay_state_file_follows_xdg_state_home(tmp_path: Path) -> None:
    assert replay_state_path({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "firehose-splunk-forwarder" / "replay.sqlite"
    )
    default = replay_state_path({})
    assert default.parts[-3:] == ("state", "firehose-splunk-forwarder", "replay.sqlite")


class _SecretsManager:
    def __init__(self) -> None:
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, str]:
        self.calls += 1
        return {"SecretString": '{"hec_token": "from-secret"}'}


@pytest.fixture(name="clean_cache")
def fixture_clean_cache() -> Any:
    secrets.clear_cache()
    yield
    secrets.clear_cache()


@pytest.mark.usefixtures("clean_cache")
def test_resolve_token_fetches_the_secret_once_when_no_token_is_given() -> None:
    client = _SecretsManager()
    made: list[str] = []

    def factory(service: str) -> _SecretsManager:
        made.append(service)
        return client

    settings = make_settings(SPLUNK_HEC_TOKEN_SECRET_ARN="arn:secret:1")
    resolved = secrets.resolve_token(settings, factory)
    again = secrets.resolve_token(settings, factory)

    assert resolved.hec.token == again.hec.token == "from-secret"
    assert made == ["secretsmanager"] and client.calls == 1  # cached: no second client


@pytest.mark.usefixtures("clean_cache")
def test_resolve_token_keeps_a_given_token_and_settings_without_a_secret() -> None:
    def factory(service: str) -> object:
        raise AssertionError("no client may be made")

    given = make_settings(SPLUNK_HEC_TOKEN=TEST_TOKEN, SPLUNK_HEC_TOKEN_SECRET_ARN="arn:secret:1")
    assert secrets.resolve_token(given, factory) is given
    plain = make_settings()
    assert secrets.resolve_token(plain, factory) is plain
