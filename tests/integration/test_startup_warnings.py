"""Start-up warnings for settings that lose the safety net: no backsplash bucket,
acknowledgment off, plain HTTP to another host, TLS verification off. ``forward``, ``daemon``,
``replay`` and the push Lambda (once per container) each log one ``settings_warning`` line per
setting, naming it, before they send anything.

The commands run as a user runs them (``python -m forwarder``), each stopping right after
start-up without touching the network: ``forward`` on a missing file, the daemon on an empty
file, ``replay --dry-run`` on an empty bucket of the moto server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_settings
from forwarder import push
from tests.conftest import TEST_TOKEN, boto_client
from tests.integration.cli_runs import clean_environ, forwarder

#: Every setting that loses part of the safety net, at once; HEC on a host that is not this
#: one, never contacted.
RISKY = {
    "SPLUNK_HEC_URL": "http://splunk.example.com:8088",
    "SPLUNK_HEC_ACK": "false",
    "SPLUNK_HEC_VERIFY_TLS": "false",
}
ALL = ["BACKSPLASH_BUCKET", "SPLUNK_HEC_ACK", "SPLUNK_HEC_URL", "SPLUNK_HEC_VERIFY_TLS"]


def warned_settings(stderr: str) -> list[str]:
    """The setting each ``settings_warning`` line names first, sorted."""
    named = []
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        record: dict[str, Any] = json.loads(line)
        if record.get("event") == "settings_warning":
            named.append(str(record["problem"]).split(" ")[0].split("=")[0])
    return sorted(named)


def test_forward_warns_once_per_setting_at_start_up(tmp_path: Path) -> None:
    proc = forwarder(["forward", "missing.log"], {**clean_environ(tmp_path), **RISKY}, tmp_path)
    assert warned_settings(proc.stderr) == ALL, proc.stderr
    assert "nowhere to go" in proc.stderr


def test_the_daemon_warns_once_per_setting_and_its_spool_counts_as_a_net(tmp_path: Path) -> None:
    (tmp_path / "empty.log").write_text("")
    (tmp_path / "daemon.toml").write_text(
        f'[source]\ntype = "files"\npaths = ["{tmp_path / "empty.log"}"]\n\n'
        '[daemon]\nmetrics_enabled = false\ncheckpoint_store = "none"\n'
    )
    environ = {**clean_environ(tmp_path), **RISKY}
    proc = forwarder(["daemon", "--config", "daemon.toml"], environ, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warned_settings(proc.stderr) == ALL, proc.stderr
    spooled = {**environ, "BACKSPLASH_SPOOL_DIR": str(tmp_path / "spool")}
    proc = forwarder(["daemon", "--config", "daemon.toml"], spooled, tmp_path)
    assert warned_settings(proc.stderr) == [s for s in ALL if s != "BACKSPLASH_BUCKET"]


def test_replay_warns_once_per_setting_but_not_of_the_bucket(
    tmp_path: Path, aws_endpoint: str
) -> None:
    """Replay puts what fails again under replay-failed/ of the replayed bucket."""
    boto_client("s3", aws_endpoint).create_bucket(Bucket="empty-backsplash")
    environ = {
        **clean_environ(tmp_path),
        **RISKY,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    argv = ["replay", "s3://empty-backsplash/", "--dry-run", "--no-progress"]
    proc = forwarder(argv, environ, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warned_settings(proc.stderr) == [s for s in ALL if s != "BACKSPLASH_BUCKET"]
    assert "nothing would be sent: no objects under s3://empty-backsplash/" in proc.stdout


def test_safe_settings_give_no_warning(tmp_path: Path) -> None:
    environ = {
        **clean_environ(tmp_path),
        "SPLUNK_HEC_URL": "https://splunk.example.com:8088",
        "BACKSPLASH_BUCKET": "my-backsplash",
    }
    proc = forwarder(["forward", "missing.log"], environ, tmp_path)
    assert warned_settings(proc.stderr) == []
    assert proc.returncode == 2


def test_the_push_lambda_warns_once_per_setting_when_its_container_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load_settings(
        environ={**RISKY, "SPLUNK_HEC_TOKEN": TEST_TOKEN, "LOG_FORMAT": "json"}
    )
    try:
        push.configure(settings)
        assert warned_settings(capsys.readouterr().err) == ALL
    finally:
        push.reset()
