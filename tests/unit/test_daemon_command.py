"""``forwarder daemon``'s command module: the shared flags (``--token`` included), the one
token resolution, the exit status from ``status_for`` and the two-stage stop installed only
for the run."""

from __future__ import annotations

import argparse
import io
import signal
from pathlib import Path

import pytest

from config.errors import ConfigError
from forwarder.commands import daemon as command
from forwarder.commands.context import CommandContext
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="forwarder daemon")
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def config_file(tmp_path: Path, paths: list[str]) -> Path:
    path = tmp_path / "forwarder.toml"
    listed = ", ".join(f'"{p}"' for p in paths)
    path.write_text(
        f'[source]\ntype = "files"\npaths = [{listed}]\n\n'
        '[daemon]\nmetrics_enabled = false\ncheckpoint_store = "none"\nshutdown_grace_s = 5\n'
    )
    return path


def test_the_common_flags_are_accepted() -> None:
    args = parse(
        "--config",
        "f.toml",
        "--token",
        TEST_TOKEN,
        "--hec-url",
        "http://127.0.0.1:9",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
        "--metrics-port",
        "9200",
    )
    assert (args.config, args.token, args.hec_url, args.metrics_port) == (
        "f.toml",
        TEST_TOKEN,
        "http://127.0.0.1:9",
        9200,
    )


def test_without_a_token_the_run_refuses_before_any_io(tmp_path: Path) -> None:
    config = config_file(tmp_path, [str(tmp_path / "never-read.log")])
    args = parse("--config", str(config), "--hec-url", "http://127.0.0.1:9")
    ctx = CommandContext(args, {}, io.StringIO())
    with pytest.raises(ConfigError, match="SPLUNK_HEC_TOKEN"):
        command.run(args, ctx)


def test_a_finite_run_exits_ok_and_leaves_the_signal_handlers_as_they_were(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    args = parse(
        "--config",
        str(config_file(tmp_path, [str(empty)])),
        "--token",
        TEST_TOKEN,
        "--hec-url",
        "http://127.0.0.1:9",
    )
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    status = command.run(args, CommandContext(args, {}, io.StringIO()))
    assert status is ExitStatus.OK
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    args = parse(
        "--config",
        str(config_file(tmp_path, [str(tmp_path / "missing.log")])),
        "--token",
        TEST_TOKEN,
        "--hec-url",
        "http://127.0.0.1:9",
    )
    assert command.run(args, CommandContext(args, {}, io.StringIO())) is ExitStatus.USAGE
