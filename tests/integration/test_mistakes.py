"""The mistake matrix: every subcommand, driven as a user drives it (``python -m forwarder``),
through each mistake that applies to it, ends with the README's exit status for a usage or
configuration error, one line naming the thing on stderr, and no traceback (one is shown only
with ``--log-level debug``).

AWS is the moto server on loopback, or a stub that refuses everything (AccessDenied); "no
credentials" runs with no credential anywhere and every AWS endpoint on a closed loopback
port, the instance metadata service off, so nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from forwarder.devtools import packaging
from tests.conftest import boto_client
from tests.integration.cli_runs import ROOT, clean_environ, forwarder

README = ROOT / "README.md"
MISSING_BUCKET = "no-such-backsplash"


def readme_exit_statuses() -> dict[int, str]:
    """The README's exit-status table: status -> meaning."""
    section = README.read_text(encoding="utf-8").split("### Exit statuses", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section, flags=re.MULTILINE)
    return {int(status): meaning for status, meaning in rows}


def readme_status(meaning: str) -> int:
    """The status the README's table gives for the row whose meaning starts with ``meaning``."""
    found = [s for s, text in readme_exit_statuses().items() if text.startswith(meaning)]
    assert len(found) == 1, f"README's exit-status table has no single row for {meaning!r}"
    return found[0]


USAGE = readme_status("usage or configuration error")


@dataclass(frozen=True)
class Mistake:
    """One mistake: the command line, what the environment adds or removes, and what the
    one-line message on stderr must name. ``{tmp}`` in an argument is the test's directory."""

    argv: tuple[str, ...]
    names: str
    environ: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    aws: str = "none"  # none | moto | denied
    label: str = ""

    @property
    def id(self) -> str:
        words = " ".join(self.argv).replace("{tmp}/", "")
        return f"{words} [{self.label}]" if self.label else words


REPLAY = ("replay", f"s3://{MISSING_BUCKET}/", "--no-progress")
MISTAKES = [
    # an unknown flag, for every command; a missing argument
    *(
        Mistake((*argv, "--no-such-flag"), "unrecognized arguments: --no-such-flag")
        for argv in (
            ("forward", "{tmp}/in.log"),
            ("check",),
            ("transform", "{tmp}/in.log"),
            ("daemon",),
            REPLAY,
            ("package",),
            ("hec-emulator",),
            ("demo",),
            ("routes", "check"),
        )
    ),
    Mistake(("routes",), "the following arguments are required"),
    Mistake(("routes", "check"), "--config: name the settings file", label="no file"),
    *(
        Mistake((command,), "the following arguments are required")
        for command in ("forward", "transform", "replay")
    ),
    # an input file that is not there, or is a directory
    Mistake(("forward", "{tmp}/missing.log"), "missing.log: no such file"),
    Mistake(("transform", "{tmp}/missing.log"), "missing.log: no such file"),
    Mistake(("forward", "{tmp}/a-directory"), "a-directory: is a directory"),
    Mistake(("transform", "{tmp}/a-directory"), "a-directory: is a directory"),
    # a settings file that is not TOML, from the flag or the environment
    Mistake(("forward", "--config", "{tmp}/bad.toml", "{tmp}/in.log"), "--config: "),
    Mistake(("check", "--config", "{tmp}/bad.toml"), "--config: "),
    Mistake(("transform", "--config", "{tmp}/bad.toml", "{tmp}/in.log"), "--config: "),
    Mistake(("daemon", "--config", "{tmp}/bad.toml"), "--config: "),
    Mistake((*REPLAY, "--config", "{tmp}/bad.toml"), "--config: "),
    Mistake(("package", "--config", "{tmp}/bad.toml"), "--config: "),
    Mistake(("routes", "check", "--config", "{tmp}/bad.toml"), "--config: "),
    Mistake(("routes", "check"), "FORWARDER_CONFIG: ", {"FORWARDER_CONFIG": "bad.toml"}),
    Mistake(("forward", "{tmp}/in.log"), "FORWARDER_CONFIG: ", {"FORWARDER_CONFIG": "bad.toml"}),
    Mistake(("check",), "FORWARDER_CONFIG: ", {"FORWARDER_CONFIG": "bad.toml"}),
    Mistake(("package", "--config", "{tmp}/missing.toml"), "--config: no such file"),
    # a route with an unknown key: numbered from 1, as the README shows them
    *(
        Mistake((*argv, "--config", "{tmp}/badroute.toml"), "routes[1].indx")
        for argv in (
            ("forward", "{tmp}/in.log"),
            ("check",),
            ("transform", "{tmp}/in.log"),
            ("daemon",),
            REPLAY,
            ("package",),
            ("routes", "check"),
        )
    ),
    # a bad or missing HEC URL
    *(
        Mistake((*argv, "--hec-url", "ftp://splunk.example.com"), "SPLUNK_HEC_URL")
        for argv in (("forward", "{tmp}/in.log"), ("check",), ("daemon",), REPLAY)
    ),
    *(
        Mistake(argv, "SPLUNK_HEC_URL: is required", unset=("SPLUNK_HEC_URL",), label="no HEC URL")
        for argv in (("forward", "{tmp}/in.log"), ("check",), ("daemon",), REPLAY)
    ),
    # the daemon reading a file that is not there
    Mistake(("daemon", "--config", "{tmp}/files.toml"), "source.paths"),
    # replay's own flags
    Mistake((*REPLAY, "--since", "yesterday"), "--since: not a time"),
    Mistake(("replay", "https://bucket/prefix"), "expected s3://BUCKET/PREFIX"),
    # package's own flags
    Mistake(("package", "--upload", "s3://bucket"), "--upload"),
    Mistake(("package", "--source-root", "{tmp}/a-directory"), "--source-root"),
    Mistake(("package", "--python", "{tmp}/no-python"), "--python"),
    # AWS: a bucket that does not exist, no credentials, no permission
    *(
        Mistake(
            argv,
            f"S3 bucket {MISSING_BUCKET} does not exist",
            aws="moto",
            label="missing bucket",
        )
        for argv in ((*REPLAY, "--dry-run"), REPLAY)
    ),
    *(
        Mistake(argv, "Unable to locate credentials", label="no credentials")
        for argv in ((*REPLAY, "--dry-run"), REPLAY)
    ),
    Mistake((*REPLAY, "--dry-run"), "AccessDenied", aws="denied", label="access denied"),
    # the emulator on a port that is taken; the demo with nothing to do
    Mistake(("hec-emulator", "--port", "{busy_port}"), ":{busy_port}: address already in use"),
    Mistake(("demo", "--batches", "0"), "--batches: must be at least 1"),
]


#: A bucket the denying stub lists (one object) but whose objects it refuses to hand out.
LISTABLE_BUCKET = "listable-backsplash"
LISTED_KEY = "splunk-failed/2026/12/01/00/forwarder-x.gz"


class _Denied(BaseHTTPRequestHandler):
    """Answers every request as S3 answers a caller without permission, but the listing of
    :data:`LISTABLE_BUCKET` (s3:ListBucket granted, s3:GetObject not)."""

    def do_GET(self) -> None:
        if self.path.startswith(f"/{LISTABLE_BUCKET}?") and "list-type=2" in self.path:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
                f"<Name>{LISTABLE_BUCKET}</Name><Prefix></Prefix><KeyCount>1</KeyCount>"
                "<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
                f"<Contents><Key>{LISTED_KEY}</Key><ETag>&quot;e&quot;</ETag><Size>10</Size>"
                "<LastModified>2026-12-01T00:00:00.000Z</LastModified></Contents>"
                "</ListBucketResult>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._deny()

    def _deny(self) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message><RequestId>0</RequestId></Error>"
        )
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_PUT = do_POST = do_HEAD = do_DELETE = _deny

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(name="denying_s3", scope="module")
def fixture_denying_s3() -> Iterator[str]:
    """An S3 endpoint on loopback that refuses every request with AccessDenied."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture(name="workdir")
def fixture_workdir(tmp_path: Path) -> Path:
    """The files the mistakes name: a bad TOML file, a bad route, a daemon reading a missing
    file, a good input file, a directory."""
    (tmp_path / "bad.toml").write_text("splunk_index = [\n", encoding="utf-8")
    (tmp_path / "badroute.toml").write_text(
        '[[routes]]\nlog_group = "/aws/vpc/*"\nindx = "network"\n', encoding="utf-8"
    )
    (tmp_path / "files.toml").write_text(
        f'[source]\ntype = "files"\npaths = ["{tmp_path / "missing.log"}"]\n\n'
        '[daemon]\nmetrics_enabled = false\ncheckpoint_store = "none"\n',
        encoding="utf-8",
    )
    (tmp_path / "in.log").write_text("hello\n", encoding="utf-8")
    (tmp_path / "a-directory").mkdir()
    return tmp_path


@pytest.fixture(name="mistake_environ")
def fixture_mistake_environ(
    request: pytest.FixtureRequest, workdir: Path
) -> Iterator[tuple[Mistake, dict[str, str]]]:
    """The environment a mistake runs in, with the AWS endpoint it asks for."""
    mistake: Mistake = request.param
    environ = {**clean_environ(workdir), **mistake.environ}
    for name in mistake.unset:
        environ.pop(name, None)
    if mistake.aws != "none":
        environ.update(
            {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto's
        )
        endpoint = request.getfixturevalue("moto_server" if mistake.aws == "moto" else "denying_s3")
        environ["AWS_ENDPOINT_URL"] = endpoint
    yield mistake, environ


@pytest.mark.parametrize("mistake_environ", MISTAKES, ids=[m.id for m in MISTAKES], indirect=True)
def test_each_mistake_exits_with_the_documented_status_and_one_line(
    mistake_environ: tuple[Mistake, dict[str, str]], workdir: Path
) -> None:
    mistake, environ = mistake_environ
    with _busy_port() as port:
        argv = [
            arg.replace("{tmp}", str(workdir)).replace("{busy_port}", str(port))
            for arg in mistake.argv
        ]
        names = mistake.names.replace("{busy_port}", str(port))
        proc = forwarder(argv, environ, workdir)
    assert proc.returncode == USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert names in proc.stderr
    named = [line for line in proc.stderr.splitlines() if names in line]
    assert len(named) == 1, proc.stderr  # one line names it (argparse adds its usage above)


def test_debug_shows_the_traceback_and_keeps_the_status(workdir: Path, moto_server: str) -> None:
    environ = {
        **clean_environ(workdir),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    proc = forwarder([*REPLAY, "--dry-run", "--log-level", "debug"], environ, workdir)
    assert proc.returncode == USAGE
    assert "Traceback" in proc.stderr
    assert f"S3 bucket {MISSING_BUCKET} does not exist" in proc.stderr.splitlines()[-1]


def test_a_replay_that_selects_nothing_says_why(workdir: Path, aws_endpoint: str) -> None:
    """GIVEN a backsplash object from an hour long past WHEN a dry run asks for the last
    hour THEN the summary says every object is outside the time window, and the status is 0."""
    s3 = boto_client("s3", aws_endpoint)
    s3.create_bucket(Bucket="old-failures")
    s3.put_object(
        Bucket="old-failures",
        Key="splunk-failed/2020/01/01/00/firehose-1",
        Body=b'{"rawData": "e30=", "errorCode": "Splunk.ServerError"}\n',
    )
    environ = {
        **clean_environ(workdir),
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    argv = ["replay", "s3://old-failures/", "--dry-run", "--no-progress", "--since", "1h"]
    proc = forwarder(argv, environ, workdir)
    assert proc.returncode == readme_status("everything delivered"), proc.stderr
    assert "nothing would be sent: 1 of 1 objects are outside the time window" in proc.stdout
    assert "--since" in proc.stdout


def test_the_readme_table_lists_every_exit_status_the_code_has() -> None:
    from forwarder.status import ExitStatus

    assert sorted(readme_exit_statuses()) == sorted(int(status) for status in ExitStatus)


class _busy_port:
    """A loopback port held (listening) for the duration of the block."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


@pytest.mark.parametrize(
    ("credentials", "line"),
    [
        (True, f"upload to s3://{MISSING_BUCKET}/lambda.zip failed: S3 bucket {MISSING_BUCKET}"),
        (False, "failed: AWS: Unable to locate credentials"),
    ],
)
def test_package_upload_mistakes_are_usage_errors(
    credentials: bool,
    line: str,
    *,
    tmp_path: Path,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a built zip WHEN uploading it to a bucket that does not exist, or without
    credentials THEN ``package`` exits with the usage status and one line naming it (the
    build itself is replaced: it runs pip, which has nothing to do with the upload)."""
    zipped = tmp_path / "lambda.zip"
    zipped.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    report = packaging.PackageReport(zipped, zipped.stat().st_size, 0, 0, "0" * 64, ())
    monkeypatch.setattr(packaging, "build_lambda_zip", lambda *args, **kwargs: report)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # no credentials cached in-process
    for name, value in clean_environ(tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    if credentials:
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    args = argparse.Namespace(
        upload=f"s3://{MISSING_BUCKET}/lambda.zip",
        output=zipped,
        source_root=ROOT,
        python=sys.executable,
        python_version="3.12",
        config=None,
    )
    assert packaging.package(args) == USAGE
    err = capsys.readouterr().err
    assert line in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_object_read_aws_refuses_is_a_usage_error_naming_the_object(
    workdir: Path, denying_s3: str, dry_run: bool
) -> None:
    """GIVEN a bucket that may be listed but not read (s3:GetObject missing) WHEN replayed
    THEN status 2, no traceback, and the summary names the object and AWS's refusal."""
    environ = {
        **clean_environ(workdir),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": denying_s3,
        "SPLUNK_HEC_URL": "http://127.0.0.1:9",
        "SPLUNK_HEC_TOKEN": "00000000-0000-0000-0000-000000000000",
    }
    argv = ["replay", f"s3://{LISTABLE_BUCKET}/", "--no-progress"]
    proc = forwarder([*argv, "--dry-run"] if dry_run else argv, environ, workdir)
    assert proc.returncode == USAGE, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    status_line, why = proc.stdout.splitlines()[-2:]
    assert LISTED_KEY in status_line and "AccessDenied" in status_line, proc.stdout
    assert "1 objects could not be read" in why, proc.stdout
