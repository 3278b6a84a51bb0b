"""The Lambda package: reproducible, complete without boto3, and runnable from a clean venv."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import boto3
import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]
from moto import mock_aws

from forwarder.commands.context import CommandContext
from forwarder.devtools import packaging
from forwarder.devtools.packaging import (
    LAMBDA_PLATFORMS,
    LAMBDA_PYTHON_VERSION,
    LAMBDA_RUNTIME,
    PackageReport,
    PackagingError,
    PackagingUsageError,
    build_lambda_zip,
    upload,
)
from forwarder.status import ExitStatus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "cloudformation"
# The test interpreter runs the zip, so the wheels are chosen for it; the default build
# targets LAMBDA_PYTHON_VERSION the same way.
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
# ...and for this machine's architecture, so the zip's compiled extensions load here.
THIS_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
# What the Lambda Python runtime provides besides the stdlib (botocore brings urllib3 too).
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")
SHIPPED_TOP_LEVEL = (
    "forwarder",
    "transforms",
    "config",
    "requests",
    "charset_normalizer",
    "idna",
    "urllib3",
    "certifi",
    "tenacity",
    "structlog",
    "prometheus_client",
)
NOT_SHIPPED_TOP_LEVEL = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "bin")

# Runs inside the clean venv with PYTHONPATH=<unzipped package>:<runtime's boto3 stack>, as
# Lambda's /var/task and /var/runtime. Prints one JSON object for the test to check.
HANDLER_SCRIPT = r"""
import base64, gzip, http.server, json, sys, threading

import forwarder.push
import transforms.firehose


class Context:
    function_name = "forwarder-test"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:forwarder-test"
    memory_limit_in_mb = 512
    aws_request_id = "c0ffee00-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/forwarder-test"
    log_stream_name = "2026/11/26/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self):
        return 300_000


def cwl(message_type, events):
    payload = {
        "messageType": message_type,
        "owner": "123456789012",
        "logGroup": "/aws/lambda/orders",
        "logStream": "2026/11/26/[$LATEST]abcdef",
        "subscriptionFilters": ["to-splunk"],
        "logEvents": events,
    }
    return gzip.compress(json.dumps(payload).encode())


EVENTS = [
    {"id": "37969271630432051123456789012345678901234567890123456", "timestamp": 1764150000000,
     "message": "order 1 created"},
    {"id": "37969271630432051123456789012345678901234567890123457", "timestamp": 1764150000500,
     "message": "order 2 shipped"},
]
CONTROL = [{"id": "", "timestamp": 1764150000000,
            "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]

firehose_event = {
    "invocationId": "00540a87-5050-496a-84e4-e7d92bbaf5e2",
    "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/to-splunk",
    "region": "us-east-1",
    "records": [
        {"recordId": "r-data", "approximateArrivalTimestamp": 1764150001000,
         "data": base64.b64encode(cwl("DATA_MESSAGE", EVENTS)).decode()},
        {"recordId": "r-control", "approximateArrivalTimestamp": 1764150001000,
         "data": base64.b64encode(cwl("CONTROL_MESSAGE", CONTROL)).decode()},
    ],
}
firehose_result = transforms.firehose.handler(firehose_event, Context())

bodies = []


class Hec(http.server.BaseHTTPRequestHandler):
    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"text": "HEC is healthy", "code": 17})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        bodies.append(raw.decode("utf-8", "replace"))
        self._reply({"text": "Success", "code": 0})

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hec)
threading.Thread(target=server.serve_forever, daemon=True).start()
import os
os.environ["SPLUNK_HEC_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
push_event = {"awslogs": {"data": base64.b64encode(cwl("DATA_MESSAGE", EVENTS)).decode()}}
push_result = forwarder.push.handler(push_event, Context())
server.shutdown()
server.server_close()

import boto3, requests
print(json.dumps({
    "firehose": firehose_result,
    "push_result": repr(push_result),
    "hec_bodies": bodies,
    "files": {
        m.__name__: m.__file__ for m in (transforms.firehose, forwarder.push, requests, boto3)
    },
}))
"""


#: Shipped with --config: the handlers must find and apply it through FORWARDER_CONFIG.
PACKAGED_SETTINGS = '[[routes]]\nlog_group = "/aws/lambda/orders"\nindex = "orders_idx"\n'


@pytest.fixture(name="settings_file", scope="module")
def fixture_settings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("settings") / "forwarder.toml"
    path.write_text(PACKAGED_SETTINGS)
    return path


@pytest.fixture(name="package", scope="module")
def fixture_package(tmp_path_factory: pytest.TempPathFactory, settings_file: Path) -> PackageReport:
    """The zip, built once for this module, with a settings file."""
    output = tmp_path_factory.mktemp("dist") / "lambda.zip"
    return build_lambda_zip(
        output,
        source_root=ROOT,
        python_version=THIS_PYTHON,
        architecture=THIS_ARCH,
        config_file=settings_file,
    )


def test_two_builds_are_byte_identical(
    package: PackageReport, settings_file: Path, tmp_path: Path
) -> None:
    """GIVEN a built zip WHEN the same sources build again THEN the bytes are the same."""
    again = build_lambda_zip(
        tmp_path / "again.zip",
        source_root=ROOT,
        python_version=THIS_PYTHON,
        architecture=THIS_ARCH,
        config_file=settings_file,
    )
    assert again.path.read_bytes() == package.path.read_bytes()
    assert again.sha256 == package.sha256


def test_zip_holds_our_packages_and_runtime_dependencies_only(package: PackageReport) -> None:
    """GIVEN the zip THEN entries are sorted, stamped 1980-01-01, mode 0644, with our packages
    and their runtime dependencies but nothing the Lambda runtime provides, no caches, no bin/."""
    with zipfile.ZipFile(package.path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    top_level = {name.split("/", 1)[0] for name in names}
    assert set(SHIPPED_TOP_LEVEL) <= top_level
    assert not top_level & set(NOT_SHIPPED_TOP_LEVEL)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    for package_name in ("forwarder", "transforms", "config"):
        assert f"{package_name}/__init__.py" in names
        assert f"{package_name}/py.typed" in names
        own = [n for n in names if n.startswith(f"{package_name}/")]
        assert all(n.endswith((".py", "py.typed")) for n in own), own
    assert {name for name, _ in package.distributions} == set(packaging.RUNTIME_DISTRIBUTIONS)
    for left_out in ("forwarder/devtools/", "forwarder/commands/"):
        assert not [n for n in names if n.startswith(left_out)], left_out
    assert "forwarder/cli.py" not in names
    assert "forwarder/__main__.py" not in names
    assert "forwarder/push.py" in names  # the handlers' own modules are all there
    assert "forwarder/drain/__init__.py" in names  # the drain Lambda (forwarder.drain.handler)
    assert "forwarder/drain/drainer.py" in names and "forwarder/replay/engine.py" in names


def test_the_handlers_import_nothing_the_zip_leaves_out() -> None:
    """GIVEN a fresh interpreter WHEN the handlers are imported THEN no module the zip leaves
    out (EXCLUDED_FROM_ZIP: the command line, the developer tools) was loaded."""
    script = (
        "import json, sys\n"
        "import transforms.firehose, forwarder.push, forwarder.drain\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = [name.replace(".", "/") for name in json.loads(proc.stdout)]
    excluded = [
        name
        for name in loaded
        for left_out in packaging.EXCLUDED_FROM_ZIP
        if f"{name}/".startswith(left_out) or f"{name}.py" == left_out
    ]
    assert excluded == []
    assert "forwarder/push" in loaded
    assert "forwarder/drain" in loaded


def test_report_describes_the_zip(package: PackageReport) -> None:
    """GIVEN the report THEN size, file count and digest are the zip's."""
    import hashlib

    data = package.path.read_bytes()
    with zipfile.ZipFile(package.path) as archive:
        infos = archive.infolist()
    assert package.size_bytes == len(data)
    assert package.file_count == len(infos)
    assert package.unzipped_bytes == sum(info.file_size for info in infos)
    assert package.sha256 == hashlib.sha256(data).hexdigest()
    assert str(package.path) in package.summary()
    assert f"{package.file_count} files" in package.summary()


def _runtime_dir(tmp_path: Path) -> Path:
    """A directory with only what Lambda's Python runtime adds: boto3 and its dependencies."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for module in RUNTIME_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (runtime / source.name).symlink_to(source, target_is_directory=source.is_dir())
    return runtime


def test_handlers_run_from_the_zip_in_a_clean_venv(package: PackageReport, tmp_path: Path) -> None:
    """GIVEN the zip unpacked and a venv with nothing installed, plus only the runtime's boto3
    WHEN both handlers run on sample events THEN the transform answers every record and the
    push handler delivers the events to a local HEC."""
    unzipped = tmp_path / "task"
    with zipfile.ZipFile(package.path) as archive:
        archive.extractall(unzipped)
    runtime = _runtime_dir(tmp_path)
    clean = tmp_path / "venv"
    venv.create(clean, with_pip=False, symlinks=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(unzipped), str(runtime)]),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Lambda's environment, with AWS pointed at a closed port so nothing leaves the host.
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_LAMBDA_FUNCTION_NAME": "forwarder-test",
        # What the templates set (firehose-to-splunk.yaml and push-to-splunk.yaml defaults).
        "SPLUNK_HEC_ENDPOINT": "event",
        "EVENT_FORMAT": "auto",
        "LOG_LEVEL": "INFO",
        "SPLUNK_HEC_TOKEN": "00000000-test-token-0000-000000000000",
        "SPLUNK_HEC_ACK": "false",
        "SPLUNK_HEC_RETRY_DURATION": "0",
        "SPLUNK_HEC_VERIFY_TLS": "true",
        "BACKSPLASH_BUCKET": "backsplash-test",
        "BACKSPLASH_PREFIX": "push/",
        "LAMBDA_TASK_ROOT": str(unzipped),  # where the packaged forwarder.toml is found
    }
    proc = subprocess.run(
        [str(clean / "bin" / "python"), "-c", HANDLER_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    files = result["files"]
    for module in ("transforms.firehose", "forwarder.push", "requests"):
        assert Path(files[module]).is_relative_to(unzipped), files
    assert Path(files["boto3"]).parent.parent == runtime

    records = {r["recordId"]: r for r in result["firehose"]["records"]}
    assert len(result["firehose"]["records"]) == 2
    assert set(records) == {"r-data", "r-control"}
    assert records["r-data"]["result"] == "Ok"
    import base64

    shaped = base64.b64decode(records["r-data"]["data"]).decode()
    assert "order 1 created" in shaped
    assert "order 2 shipped" in shaped
    assert '"index":"orders_idx"' in shaped  # the packaged forwarder.toml's route
    assert records["r-control"]["result"] == "Dropped"

    delivered = "".join(result["hec_bodies"])
    assert "order 1 created" in delivered
    assert "order 2 shipped" in delivered


def test_templates_deploy_the_runtime_the_zip_targets() -> None:
    """GIVEN every Lambda function in the templates THEN its runtime and architecture come
    from parameters offering exactly what `forwarder package` builds, with the same defaults."""
    assert f"python{LAMBDA_PYTHON_VERSION}" == LAMBDA_RUNTIME
    assert set(LAMBDA_PLATFORMS) == {"arm64", "x86_64"}
    functions = 0
    for template_path in sorted(TEMPLATES.glob("*.yaml")):
        template, matches = decode(str(template_path))
        assert not matches
        for resource in template["Resources"].values():
            if resource["Type"] == "AWS::Lambda::Function":
                functions += 1
                assert resource["Properties"]["Runtime"] == {"Ref": "Runtime"}
                assert resource["Properties"]["Architectures"] == [{"Ref": "Architecture"}]
                parameters = template["Parameters"]
                assert parameters["Runtime"]["Default"] == LAMBDA_RUNTIME
                assert set(parameters["Runtime"]["AllowedValues"]) == {"python3.12", "python3.13"}
                assert parameters["Architecture"]["Default"] == packaging.DEFAULT_ARCHITECTURE
                assert set(parameters["Architecture"]["AllowedValues"]) == set(LAMBDA_PLATFORMS)
    assert functions == 4  # transform, push, and the drain in both Lambda templates


def test_invalid_settings_file_is_refused_before_pip_runs(tmp_path: Path) -> None:
    """GIVEN a settings file with a bad route WHEN packaging THEN it fails naming the key."""
    bad = tmp_path / "forwarder.toml"
    bad.write_text('[[routes]]\nlog_group = "/a"\nindx = "x"\n')
    with pytest.raises(PackagingUsageError, match=r"routes\[1\]\.indx"):  # usage: exit 2
        build_lambda_zip(tmp_path / "x.zip", source_root=ROOT, config_file=bad)
    assert not (tmp_path / "x.zip").exists()


SECRET_VALUE = "5d3b1c6e-0000-4000-8000-shipped-token"

#: Settings files that hold a secret, and the key the refusal must name.
SECRET_FILES = {
    "token": (f'splunk_hec_token = "{SECRET_VALUE}"\n' + PACKAGED_SETTINGS, "splunk_hec_token"),
    "token_upper_case": (f'SPLUNK_HEC_TOKEN = "{SECRET_VALUE}"\n', "SPLUNK_HEC_TOKEN"),
    "token_among_valid_keys": (
        f'splunk_index = "main"\nsplunk_hec_token = "{SECRET_VALUE}"\nlog_level = "INFO"\n',
        "splunk_hec_token",
    ),
    "firehose_http_access_key": (
        f'[source]\ntype = "firehose-http"\naccess_key = "{SECRET_VALUE}"\n',
        "source.access_key",
    ),
}


def test_every_setting_config_marks_secret_is_refused() -> None:
    """The refused keys come from config's own marks (fields kept out of repr)."""
    assert packaging.secret_setting_names() == {"splunk_hec_token", "source.access_key"}


@pytest.mark.parametrize(("text", "key"), SECRET_FILES.values(), ids=SECRET_FILES.keys())
def test_package_refuses_a_settings_file_holding_a_secret(
    text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN `forwarder package --config FILE` with a secret in FILE THEN exit 2, one line
    naming the key (never the value), and no zip."""
    settings_file = tmp_path / "forwarder.toml"
    settings_file.write_text(text)
    args = _args(tmp_path, None)
    args.config = settings_file

    status = packaging.run(args, _ctx(args))

    out, err = capsys.readouterr()
    assert status == ExitStatus.USAGE
    assert int(status) == 2
    assert len(err.splitlines()) == 1 and key in err and "secret" in err
    assert SECRET_VALUE not in out + err
    assert not (tmp_path / "dist").exists()  # no zip, not even its directory


def test_forwarder_package_command_refuses_a_token_with_exit_2(tmp_path: Path) -> None:
    """The console command: exit status 2, the key named, the token in no output, no zip."""
    settings_file = tmp_path / "forwarder.toml"
    settings_file.write_text(SECRET_FILES["token"][0])
    output = tmp_path / "out" / "lambda.zip"

    proc = subprocess.run(
        [sys.executable, "-m", "forwarder", "package", "--config", str(settings_file),
         "--output", str(output)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert proc.returncode == 2, proc.stderr
    assert "splunk_hec_token" in proc.stderr
    assert SECRET_VALUE not in proc.stdout + proc.stderr
    assert not output.exists() and not output.parent.exists()


def test_an_empty_token_key_holds_no_secret(tmp_path: Path) -> None:
    """An empty value means unset (as the loader reads it): nothing to leak, not refused."""
    settings_file = tmp_path / "forwarder.toml"
    settings_file.write_text('splunk_hec_token = ""\n' + PACKAGED_SETTINGS)
    packaging._check_config(settings_file)


def test_missing_package_is_reported_before_pip_runs(tmp_path: Path) -> None:
    """GIVEN a source root without our packages WHEN building THEN PackagingError names it."""
    with pytest.raises(PackagingError, match="no package 'forwarder'"):
        build_lambda_zip(tmp_path / "x.zip", source_root=tmp_path)
    assert not (tmp_path / "x.zip").exists()


def test_upload_returns_the_object_version(
    package: PackageReport, aws_env: None, tmp_path: Path
) -> None:
    """GIVEN a versioned bucket WHEN the zip is uploaded THEN the object is the zip and its
    version id comes back (for LambdaCodeS3ObjectVersion)."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        try:
            s3.create_bucket(Bucket="code")
            s3.put_bucket_versioning(Bucket="code", VersioningConfiguration={"Status": "Enabled"})
            version = upload(package.path, "code", "forwarder/lambda.zip", s3)
            assert version
            body = s3.get_object(Bucket="code", Key="forwarder/lambda.zip", VersionId=version)
            assert body["Body"].read() == package.path.read_bytes()
        finally:
            s3.close()


def _ctx(args: argparse.Namespace) -> CommandContext:
    return CommandContext(args, {}, sys.stdout)


def _args(tmp_path: Path, upload_uri: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    packaging.add_arguments(parser)
    argv = [
        "--output",
        str(tmp_path / "dist" / "lambda.zip"),
        "--python-version",
        THIS_PYTHON,
        "--arch",
        THIS_ARCH,
    ]
    if upload_uri is not None:
        argv += ["--upload", upload_uri]
    return parser.parse_args(argv)


@pytest.mark.parametrize("uri", ["code/lambda.zip", "s3://code", "s3://code/", "s3:///key"])
def test_run_rejects_a_bad_upload_uri_before_building(
    uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN --upload that is not s3://BUCKET/KEY WHEN run THEN exit 2 and nothing built."""
    args = _args(tmp_path, uri)
    assert packaging.run(args, _ctx(args)) == ExitStatus.USAGE
    assert "--upload" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_run_builds_reports_and_uploads(
    tmp_path: Path, aws_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN `forwarder package --upload s3://code/lambda.zip` WHEN run THEN the zip is built,
    its size and file count are printed, and the object is in the bucket."""
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        try:
            s3.create_bucket(Bucket="code")
            args = _args(tmp_path, "s3://code/releases/lambda.zip")
            status = packaging.run(args, _ctx(args))
            out = capsys.readouterr().out
            assert status == ExitStatus.OK, out
            built = tmp_path / "dist" / "lambda.zip"
            assert "files" in out and "MiB zipped" in out
            assert "uploaded s3://code/releases/lambda.zip" in out
            stored = s3.get_object(Bucket="code", Key="releases/lambda.zip")["Body"].read()
            assert stored == built.read_bytes()
        finally:
            s3.close()
