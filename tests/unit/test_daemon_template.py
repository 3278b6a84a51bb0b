"""daemon.yaml's EC2 launch template: the daemon runs under a supervisor that restarts it after
a failure, with a configuration the daemon accepts (issue 9, item 4)."""

from __future__ import annotations

import re
import tomllib
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]

from config.daemon import load_daemon_settings
from config.loader import load_settings

TEMPLATE = Path(__file__).resolve().parents[2] / "cloudformation" / "daemon.yaml"


def user_data(values: dict[str, str]) -> str:
    """The launch template's user data script, its ${...} filled from ``values``."""
    template, errors = decode(str(TEMPLATE))
    assert not errors
    data = template["Resources"]["DaemonLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert set(variables) <= set(values)
    return re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: values[m.group(1)], script)


def heredoc(script: str, name: str) -> str:
    match = re.search(rf"<<'{name}'\n(.*?)\n{name}\n", script, re.DOTALL)
    assert match is not None, name
    return match.group(1)


@pytest.fixture(name="script")
def fixture_script() -> str:
    return user_data(
        {
            "BacksplashBucket": "backsplash-bucket",
            "BacksplashPrefix": "daemon/",
            "DaemonSourceType": "kinesis",
            "DaemonSourceKey": "stream_name",
            "DaemonSourceName": "cwl-stream",
            "CheckpointTable": "checkpoints",
            "AWS::Region": "eu-west-1",
            "HecUrlLine": "SPLUNK_HEC_URL=https://hec.example.com:8088",
            "TokenSecretLine": "SPLUNK_HEC_TOKEN_SECRET_ARN=arn:aws:secretsmanager:eu-west-1:"
            "123456789012:secret:hec-AbCdEf",
            "ForwarderPackage": "firehose-splunk-forwarder",
        }
    )


def test_systemd_restarts_the_daemon_after_a_failure(script: str) -> None:
    unit = ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(heredoc(script, "UNIT"))
    service = unit["Service"]
    assert service["ExecStart"].endswith("forwarder daemon --config /etc/forwarder/forwarder.toml")
    assert service["Restart"] == "on-failure"
    assert float(service["RestartSec"]) > 0
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error: no restart loop
    assert service["KillSignal"] == "SIGTERM"  # the graceful first stage
    assert int(service["TimeoutStopSec"]) > 30  # longer than the default shutdown_grace_s
    assert int(service["LimitNOFILE"]) >= 4096
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"  # never give up restarting
    assert "systemctl enable --now forwarder.service" in script


def test_the_generated_configuration_loads(script: str, tmp_path: Path) -> None:
    config = tmp_path / "forwarder.toml"
    config.write_text(heredoc(script, "TOML") + "\n")
    environ: dict[str, Any] = dict(
        line.split("=", 1) for line in heredoc(script, "ENV").splitlines() if line
    )
    document = tomllib.loads(config.read_text())
    daemon = load_daemon_settings(document, environ)
    assert (daemon.source.type, daemon.source.stream_name) == ("kinesis", "cwl-stream")
    assert (daemon.checkpoint_store, daemon.checkpoint_table) == ("dynamodb", "checkpoints")
    settings = load_settings({**environ, "SPLUNK_HEC_TOKEN": "t"}, config)
    assert settings.backsplash.bucket == "backsplash-bucket"
    assert settings.backsplash.spool_dir == "/var/spool/forwarder"
    assert settings.hec.urls == ("https://hec.example.com:8088",)
