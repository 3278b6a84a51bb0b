"""Running ``python -m forwarder`` as a user does, in an environment that cannot reach AWS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_TOKEN, free_port

ROOT = Path(__file__).resolve().parents[2]


def clean_environ(tmp_path: Path) -> dict[str, str]:
    """An environment with HEC settings and no AWS credential anywhere; every AWS endpoint
    and HEC on a closed loopback port, the instance metadata service off."""
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
        "LOG_FORMAT": "json",
        "SPLUNK_HEC_URL": closed,
        "SPLUNK_HEC_TOKEN": TEST_TOKEN,
        "AWS_ENDPOINT_URL": closed,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_MAX_ATTEMPTS": "1",
    }


def forwarder(
    argv: list[str], environ: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -m forwarder ARGV`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *argv],
        capture_output=True,
        text=True,
        env={**environ, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
