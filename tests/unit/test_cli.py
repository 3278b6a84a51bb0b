"""The command table: every command resolves to a module with the one contract, ``--help`` loads
no command module, and exceptions that escape a command map through ``status_for``."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from forwarder import cli
from forwarder.commands import check, forward
from forwarder.commands.context import CommandContext, add_common_arguments
from forwarder.commands.forward import ForwardReport
from forwarder.hec.protocol import Outcome
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN, make_settings

ROOT = Path(__file__).resolve().parents[2]
#: What the command line must not pay for before a command runs.
HEAVY = ("requests", "boto3", "botocore", "urllib3", "tenacity", "prometheus_client")


def _fresh_modules(code: str) -> list[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter (help exits: caught)."""
    script = (
        "import json, sys\n"
        f"try:\n    {code}\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    loaded: list[str] = json.loads(proc.stderr.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_resolves_to_a_module_with_the_contract(name: str) -> None:
    module_path, help_text, description = cli.COMMANDS[name]
    module = cli.load_command(name)
    assert getattr(module, "__name__", None) == module_path
    assert list(inspect.signature(module.add_arguments).parameters) == ["parser"]
    assert list(inspect.signature(module.run).parameters) == ["args", "ctx"]
    assert help_text and description
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # adds its flags without error


def test_help_imports_no_command_module_nor_requests_nor_boto3() -> None:
    loaded = _fresh_modules("from forwarder.cli import main; main(['--help'])")
    assert "forwarder.cli" in loaded
    assert [m for m in loaded if m.split(".")[0] in (*HEAVY, "structlog")] == []
    commands = {path for path, _, _ in cli.COMMANDS.values()}
    assert [m for m in loaded if m in commands or m == cli.CONTEXT_MODULE] == []


def test_a_command_imports_its_own_module_only() -> None:
    loaded = _fresh_modules("from forwarder.cli import main; main(['transform', '--help'])")
    assert "forwarder.commands.transform" in loaded
    others = {path for name, (path, _, _) in cli.COMMANDS.items() if name != "transform"}
    assert [m for m in loaded if m in others] == []
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def test_help_lists_every_command_from_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text, _) in cli.COMMANDS.items():
        assert name in out
        assert help_text.split()[0] in out


def test_selected_command_is_the_first_word_that_is_not_an_option() -> None:
    assert cli.selected_command(["forward", "-", "--log-group", "check"]) == "forward"
    assert cli.selected_command(["--version"]) is None
    assert cli.selected_command(["-h", "check"]) == "check"
    assert cli.selected_command(["nonsense", "forward"]) is None
    assert cli.selected_command([]) is None


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nonsense"])
    assert exit_info.value.code == ExitStatus.USAGE
    assert "invalid choice" in capsys.readouterr().err


class _Raises:
    """A command module whose run raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config")

    def run(self, args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (ConfigError("SPLUNK_HEC_URL", "is required"), 2, "configuration error: SPLUNK_HEC_URL"),
        (
            FileNotFoundError(2, "No such file or directory", "x.log"),
            2,
            "forwarder check: x.log: no such file or directory",
        ),
        (IsADirectoryError(21, "Is a directory", "logs"), 2, "logs: is a directory"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (KeyboardInterrupt(), 130, None),
    ],
)
def test_an_escaping_exception_maps_through_status_for(
    exc: BaseException,
    status: int,
    message: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "load_command", lambda name: _Raises(exc))
    assert cli.main(["check"], environ={}, out=io.StringIO()) == status
    err = capsys.readouterr().err
    if message is None:
        assert err == ""
    else:
        assert message in err


def test_a_mistake_shows_its_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = FileNotFoundError(2, "No such file or directory", "x.log")
    monkeypatch.setattr(cli, "load_command", lambda name: _Raises(missing))
    assert cli.main(["check"], environ={}, out=io.StringIO()) == ExitStatus.USAGE
    assert capsys.readouterr().err == "forwarder check: x.log: no such file or directory\n"
    assert cli.main(["check"], environ={"LOG_LEVEL": "debug"}, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.splitlines()[-1] == "forwarder check: x.log: no such file or directory"


def test_log_level_takes_any_case() -> None:
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    assert parser.parse_args(["--log-level", "debug"]).log_level == "DEBUG"


def test_an_unexpected_exception_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug's traceback reaches the user: only the mapped exceptions become a status."""
    monkeypatch.setattr(cli, "load_command", lambda name: _Raises(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["check"], environ={}, out=io.StringIO())


def test_check_maps_its_findings_through_status_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused token (4) wins over an unhealthy URL (1); all well is 0."""
    answers: dict[str, tuple[bool, str]] = {}

    class FakeClient:
        def __init__(self, session: object, hec: object, url: str) -> None:
            self.url = url

        def health(self) -> tuple[bool, int, str]:
            healthy = answers[self.url][0]
            return healthy, 17 if healthy else 18, "HEC"

        def probe_token(self) -> Outcome:
            action = answers[self.url][1]
            return Outcome(action, "test")  # type: ignore[arg-type]

        def query_acks(self, ack_ids: list[int]) -> dict[int, bool]:
            return dict.fromkeys(ack_ids, False)  # acks on: nothing pending on a new channel

    monkeypatch.setattr(check, "HecClient", FakeClient)
    settings = make_settings(
        SPLUNK_HEC_URL="http://a.invalid,http://b.invalid", SPLUNK_HEC_TOKEN=TEST_TOKEN
    )
    for given, expected in [
        ({"http://a.invalid": (True, "ok"), "http://b.invalid": (True, "ok")}, 0),
        ({"http://a.invalid": (False, "ok"), "http://b.invalid": (True, "ok")}, 1),
        ({"http://a.invalid": (False, "ok"), "http://b.invalid": (True, "fatal")}, 4),
    ]:
        answers.clear()
        answers.update(given)
        assert check.check(settings, io.StringIO()) == expected


def _report(**changes: Any) -> ForwardReport:
    summary: dict[str, Any] = {"balanced": True, "backsplashed": 0, "dropped": {}}
    summary.update(changes.pop("summary", {}))
    return ForwardReport(
        summary=summary,
        fatal=changes.pop("fatal", False),
        unparsed=0,
        backsplash_error=changes.pop("backsplash_error", None),
    )


@pytest.mark.parametrize(
    ("report", "interrupted", "expected"),
    [
        (_report(), False, 0),
        (_report(summary={"dropped": {"control_message": 2}}), False, 0),
        (_report(summary={"dropped": {"undecodable_record": 1}}), False, 5),
        (_report(summary={"backsplashed": 3}), False, 5),
        (_report(summary={"backsplashed": 3}), True, 130),
        (_report(fatal=True, summary={"backsplashed": 3}), True, 4),
        (_report(fatal=True, backsplash_error="AccessDenied"), False, 6),
        (_report(summary={"balanced": False}), False, 6),
    ],
)
def test_forward_maps_its_report_through_status_for(
    report: ForwardReport, interrupted: bool, expected: int
) -> None:
    assert forward.exit_status(report, interrupted) == expected
