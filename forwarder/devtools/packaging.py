"""Builds the reproducible Lambda zip (our packages + runtime dependencies) and uploads it.

The zip holds ``forwarder``, ``transforms`` and ``config`` copied from the source tree, less
the command line and these developer tools (``EXCLUDED_FROM_ZIP``; the copies are never
imported here; the running ``config`` only checks a ``--config`` file), an
optional ``forwarder.toml``, and the runtime dependencies installed by pip for the Lambda
runtime's Python and platform (``--arch arm64|x86_64``: the wheels of that instruction set,
every compiled extension checked against it), at the versions installed in the build
environment, so what ships is what the tests ran. Dependencies the Lambda Python runtime
already provides (boto3 and its stack) stay out. Entries are sorted and carry a fixed
timestamp and mode, so two builds from the same inputs are byte-identical.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import typing
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.daemon import TABLE_SETTINGS
from config.errors import ConfigError
from config.loader import KEYS, PACKAGED_CONFIG_NAME, load_settings, read_toml
from config.settings import Settings
from forwarder import aws
from forwarder.commands.context import CommandContext
from forwarder.status import ExitStatus, describe, status_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: The runtime the CloudFormation templates deploy by default (their ``Runtime`` parameter)
#: and the zip targets by default.
LAMBDA_RUNTIME = "python3.12"
LAMBDA_PYTHON_VERSION = "3.12"
#: Lambda's Python runtimes run Amazon Linux 2023 (glibc 2.34): manylinux2014 wheels load
#: there. Keyed by Lambda's ``Architectures`` value (the templates' ``Architecture``).
LAMBDA_PLATFORMS: dict[str, str] = {
    "arm64": "manylinux2014_aarch64",
    "x86_64": "manylinux2014_x86_64",
}
#: Graviton costs about 20% less per GB-second; the templates default to it too.
DEFAULT_ARCHITECTURE = "arm64"
#: The machine name a compiled extension's file name carries for each architecture
#: (``md.cpython-312-aarch64-linux-gnu.so``).
EXTENSION_MACHINES: dict[str, str] = {"arm64": "aarch64", "x86_64": "x86_64"}

#: Top-level packages of this project that the handlers need.
PACKAGES: tuple[str, ...] = ("forwarder", "transforms", "config")
#: Files copied from those packages (no tests, caches or data that the handlers do not read).
PACKAGE_FILE_SUFFIXES: tuple[str, ...] = (".py",)
PACKAGE_FILE_NAMES: tuple[str, ...] = ("py.typed",)
#: Parts of those packages the handlers never import (``transforms.firehose.handler``,
#: ``forwarder.push.handler`` and ``forwarder.drain.handler``, checked in a fresh interpreter
#: by the tests): the command line
#: and the developer tools stay out of the zip. Directories end with "/".
EXCLUDED_FROM_ZIP: tuple[str, ...] = (
    "forwarder/devtools/",
    "forwarder/commands/",
    "forwarder/cli.py",
    "forwarder/__main__.py",
)

#: Everything the handlers import at run time besides the stdlib and the runtime's boto3,
#: closed under requirements. urllib3 is shipped although the runtime's botocore brings one:
#: requests declares its own range, and the runtime's copy is an undeclared, unpinned
#: dependency that AWS may change; botocore accepts any urllib3 < 3, so ours serves both.
RUNTIME_DISTRIBUTIONS: tuple[str, ...] = (
    "requests",
    "charset-normalizer",
    "idna",
    "urllib3",
    "certifi",
    "tenacity",
    "structlog",
    "prometheus-client",
)
#: Provided by the Lambda Python runtime; never shipped.
PROVIDED_BY_RUNTIME: tuple[str, ...] = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
)

ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--
#: Lambda's limit on the unzipped size of a function's code (with layers). The templates take
#: the zip from S3, so the 50 MB limit of direct uploads does not apply.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024

DEFAULT_OUTPUT = Path("dist/lambda.zip")

_VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        out[name] = None\n"
    "print(json.dumps(out))\n"
)


class PackagingError(Exception):
    """The package could not be built or uploaded; the message says why."""


class PackagingUsageError(PackagingError):
    """A flag names something unusable (a missing or invalid ``--config`` file, a
    ``--source-root`` without the packages, a ``--python`` that cannot run): exit status 2."""


class SecretInConfigError(PackagingUsageError):
    """The ``--config`` file holds a secret, which would ship inside the zip (readable by
    anyone who may read the function's code). The message names the key, never the value."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__(
            f"--config {path}: {key} is a secret and would ship inside the zip; remove it and "
            "give it to the function through its environment or a secret store; no zip written"
        )
        self.key = key


def _secret_fields(cls: type[Any]) -> frozenset[str]:
    """Fields ``config`` marks secret: those kept out of ``repr`` (``field(repr=False)``)."""
    return frozenset(field.name for field in dataclasses.fields(cls) if not field.repr)


@cache
def secret_setting_names() -> frozenset[str]:
    """Every settings-file key that holds a secret, as written in TOML (``splunk_hec_token``,
    ``source.access_key``): derived from ``config``'s own marks, so a new secret is covered."""
    sections = typing.get_type_hints(Settings)
    names = {
        key.env.lower() for key in KEYS if key.attribute in _secret_fields(sections[key.section])
    }
    for table, cls in TABLE_SETTINGS.items():
        names.update(f"{table}.{name}" for name in _secret_fields(cls))
    return frozenset(names)


def secrets_in(document: Mapping[str, Any]) -> list[str]:
    """The secret keys a parsed settings file sets (to a non-empty value), as written.

    Top-level names are matched in any case: ``SPLUNK_HEC_TOKEN = "..."`` is still a token.
    """
    secret = secret_setting_names()
    found: list[str] = []
    for name, value in document.items():
        table = value if name in TABLE_SETTINGS else None
        if isinstance(table, Mapping):
            found.extend(
                f"{name}.{key}"
                for key, inner in table.items()
                if f"{name}.{str(key).lower()}" in secret and _holds_value(inner)
            )
        elif name.lower() in secret and _holds_value(value):
            found.append(name)
    return found


def _holds_value(value: object) -> bool:
    return not (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class PackageReport:
    """What `build_lambda_zip` produced.

    Attributes:
        path: The zip file.
        size_bytes: Size of the zip.
        unzipped_bytes: Total size of the files inside (Lambda limits it to 250 MB).
        file_count: Number of files in the zip.
        sha256: Hex SHA-256 of the zip.
        distributions: ``(name, version)`` of every dependency inside, sorted.
        architecture: Lambda architecture the wheels were chosen for (``arm64``/``x86_64``).
    """

    path: Path
    size_bytes: int
    unzipped_bytes: int
    file_count: int
    sha256: str
    distributions: tuple[tuple[str, str], ...]
    architecture: str = DEFAULT_ARCHITECTURE

    @property
    def code_sha256(self) -> str:
        """The digest as Lambda reports it (``CodeSha256``: base64 of the SHA-256)."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode("ascii")

    def summary(self) -> str:
        """One human line: path, sizes, file count and digest."""
        deps = ", ".join(f"{name}=={version}" for name, version in self.distributions)
        return (
            f"{self.path} ({self.architecture}): {_mib(self.size_bytes)} zipped, "
            f"{_mib(self.unzipped_bytes)} unzipped, {self.file_count} files, "
            f"sha256 {self.sha256}\n  dependencies: {deps}"
        )


def build_lambda_zip(
    output: Path,
    *,
    source_root: Path,
    python: str = sys.executable,
    python_version: str = LAMBDA_PYTHON_VERSION,
    architecture: str = DEFAULT_ARCHITECTURE,
    config_file: Path | None = None,
) -> PackageReport:
    """Build the Lambda zip at ``output``.

    Args:
        output: Where to write the zip (parent directories are created; replaced atomically).
        source_root: Directory containing the ``forwarder``, ``transforms`` and ``config``
            package directories (a checkout's root, or a site-packages directory).
        python: Interpreter whose environment pins the dependency versions and whose pip
            installs them.
        python_version: ``X.Y`` of the Lambda runtime the wheels are chosen for.
        architecture: Lambda architecture (``arm64`` or ``x86_64``) the wheels are chosen for.
        config_file: a TOML settings file (routes, formats) shipped as ``forwarder.toml`` at
            the zip's root, where the handlers find it without ``FORWARDER_CONFIG``.

    Returns:
        A `PackageReport` with the zip's size, file count and digest.

    Raises:
        SecretInConfigError: ``config_file`` holds a secret (before anything is written).
        PackagingError: A package directory or dependency is missing, pip failed, a compiled
            extension is for another machine, the settings file is invalid, or the result
            exceeds Lambda's unzipped size limit.
    """
    if architecture not in LAMBDA_PLATFORMS:
        raise PackagingError(
            f"unknown architecture {architecture!r}; one of {', '.join(LAMBDA_PLATFORMS)}"
        )
    package_files = dict(_package_files(source_root))
    if config_file is not None:
        _check_config(config_file)
    pins = installed_versions(python, RUNTIME_DISTRIBUTIONS)
    with tempfile.TemporaryDirectory(prefix="lambda-deps-") as tmp:
        deps_dir = Path(tmp) / "deps"
        _pip_install(
            python,
            deps_dir,
            pins,
            python_version=python_version,
            platform=LAMBDA_PLATFORMS[architecture],
        )
        _check_extensions(deps_dir, architecture)
        # pip puts console scripts in bin/ with the build machine's interpreter in their
        # shebang: the handlers never run them, so they are not shipped.
        entries = dict(_tree_files(deps_dir, skip_top_level=frozenset({"bin"})))
        clash = sorted(name for name in entries if name.split("/", 1)[0] in PACKAGES)
        if clash:
            raise PackagingError(f"a dependency ships files inside our packages: {clash[:3]}")
        entries.update(package_files)
        if config_file is not None:
            entries[PACKAGED_CONFIG_NAME] = config_file
        return _write_zip(output, entries, pins, architecture)


def _check_extensions(deps_dir: Path, architecture: str) -> None:
    """Every compiled extension pip installed must be built for ``architecture``'s machine
    (pip falls back to a pure wheel, never to another machine's; this guards the flags)."""
    machine = EXTENSION_MACHINES[architecture]
    wrong = sorted(
        path.relative_to(deps_dir).as_posix()
        for path in deps_dir.rglob("*.so")
        if f"-{machine}-" not in path.name and ".abi3." not in path.name
    )
    if wrong:
        raise PackagingError(f"compiled extensions not built for {machine}: {wrong[:3]}")


def _check_config(path: Path) -> None:
    """Refuse to ship a settings file that holds a secret, or that the Lambda would reject at
    its first invocation.

    Raises:
        SecretInConfigError: it sets a secret (the HEC token, or any other key ``config``
            marks secret); the message names the first such key.
        PackagingUsageError: it is missing or invalid.
    """
    try:
        document = read_toml(path, "--config")
        secrets = secrets_in(document)
        if secrets:
            raise SecretInConfigError(path, secrets[0])
        load_settings(environ={}, path=path, document=document)
    except ConfigError as exc:
        message = str(exc) if exc.key == "--config" else f"--config {path}: {exc}"
        raise PackagingUsageError(message) from None


def installed_versions(python: str, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Versions of ``names`` installed in ``python``'s environment, in the given order.

    Raises:
        PackagingError: The interpreter cannot be run or a distribution is not installed.
    """
    try:
        proc = subprocess.run(
            [python, "-c", _VERSIONS_SCRIPT, *names],
            capture_output=True,
            text=True,
            check=True,
        )
    except OSError as exc:
        raise PackagingUsageError(f"--python {python}: cannot run it: {exc.strerror}") from exc
    except subprocess.CalledProcessError as exc:
        raise PackagingError(f"cannot read installed versions with {python}: {exc}") from exc
    found: dict[str, str | None] = json.loads(proc.stdout)
    missing = [name for name in names if not found.get(name)]
    if missing:
        raise PackagingError(
            f"not installed in {python}'s environment: {', '.join(missing)} "
            "(install the project first: pip install -e .)"
        )
    return tuple((name, str(found[name])) for name in names)


def upload(path: Path, bucket: str, key: str, s3_client: S3Client) -> str | None:
    """Upload the zip to ``s3://bucket/key``.

    Args:
        path: The zip.
        bucket: Destination bucket.
        key: Destination key.
        s3_client: A boto3 S3 client.

    Returns:
        The object's version id when the bucket is versioned (for the templates'
        ``LambdaCodeS3ObjectVersion`` parameter), else None.
    """
    with path.open("rb") as body:
        response = s3_client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/zip"
        )
    return response.get("VersionId")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises:
        ValueError: ``uri`` is not of that form or has no key.
    """
    prefix = "s3://"
    if not uri.startswith(prefix):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(prefix) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"expected s3://BUCKET/KEY (a key, not a prefix): {uri!r}")
    return bucket, key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``forwarder package`` options to ``parser``."""
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the zip (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--upload",
        metavar="s3://BUCKET/KEY",
        help="upload the zip there after building it (default: no upload)",
    )
    parser.add_argument(
        "--source-root",
        type=Path,
        default=_default_source_root(),
        help="directory holding the forwarder, transforms and config packages "
        "(default: the one this forwarder runs from)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter whose environment pins the dependency versions (default: this one)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings (routes, flow-log formats) to ship as forwarder.toml at the "
        "zip's root; the handlers read it without FORWARDER_CONFIG",
    )
    parser.add_argument(
        "--python-version",
        default=LAMBDA_PYTHON_VERSION,
        help=f"Lambda runtime Python the wheels are chosen for (default: {LAMBDA_PYTHON_VERSION})",
    )
    parser.add_argument(
        "--arch",
        choices=tuple(LAMBDA_PLATFORMS),
        default=DEFAULT_ARCHITECTURE,
        help="Lambda architecture the wheels are chosen for; deploy with the same value as the "
        f"templates' Architecture parameter (default: {DEFAULT_ARCHITECTURE})",
    )


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder package``: build, report, optionally upload (see :func:`package`)."""
    return package(args)


def package(args: argparse.Namespace) -> ExitStatus:
    """Build the zip the flags describe, print its report, upload it when asked.

    Returns:
        0 when built (and uploaded); 2 for a flag naming something unusable (a bad
        ``--upload`` URI, a missing or invalid ``--config`` file or one holding a secret, a
        ``--source-root`` without the packages, a ``--python`` that cannot run) and for an
        upload the user must fix (no such bucket, no credentials, access denied), through
        :func:`forwarder.status.status_for`; 1 when building or uploading failed otherwise.
    """
    target: tuple[str, str] | None = None
    if args.upload is not None:
        try:
            target = parse_s3_uri(args.upload)
        except ValueError as exc:
            print(f"forwarder package: --upload: {exc}", file=sys.stderr)
            return ExitStatus.USAGE
    try:
        report = build_lambda_zip(
            args.output,
            source_root=args.source_root,
            python=args.python,
            python_version=args.python_version,
            architecture=getattr(args, "arch", DEFAULT_ARCHITECTURE),
            config_file=getattr(args, "config", None),
        )
    except PackagingUsageError as exc:
        print(f"forwarder package: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except PackagingError as exc:
        print(f"forwarder package: {exc}", file=sys.stderr)
        return ExitStatus.FAILURE
    print(report.summary())
    if target is None:
        return ExitStatus.OK
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - boto3 on use

    bucket, key = target
    s3_client = aws.client("s3")
    try:
        version = upload(report.path, bucket, key, s3_client)
    except (BotoCoreError, ClientError) as exc:
        reason = describe(exc) or str(exc)
        print(f"forwarder package: upload to s3://{bucket}/{key} failed: {reason}", file=sys.stderr)
        return status_for(exc)
    finally:
        s3_client.close()
    suffix = f" (version {version})" if version else ""
    print(f"uploaded s3://{bucket}/{key}{suffix}")
    return ExitStatus.OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m forwarder.devtools.packaging``: the same as ``forwarder package``."""
    parser = argparse.ArgumentParser(prog="forwarder package", description=__doc__)
    add_arguments(parser)
    return package(parser.parse_args(argv))


def _default_source_root() -> Path:
    # forwarder/devtools/packaging.py -> the directory holding forwarder/, transforms/ and config/,
    # whether that is a checkout or site-packages.
    return Path(__file__).resolve().parents[2]


def _package_files(source_root: Path) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        package_dir = source_root / package
        if not (package_dir / "__init__.py").is_file():
            raise PackagingUsageError(f"--source-root {source_root}: no package {package!r} there")
        for arcname, path in _tree_files(package_dir, prefix=f"{package}/"):
            if arcname.startswith(EXCLUDED_FROM_ZIP):
                continue
            if path.suffix in PACKAGE_FILE_SUFFIXES or path.name in PACKAGE_FILE_NAMES:
                yield arcname, path


def _tree_files(
    root: Path, prefix: str = "", skip_top_level: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Path]]:
    """Regular files under ``root`` as ``(zip name, path)``, without bytecode caches."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        skipped = skip_top_level if rel == Path() else frozenset()
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and d not in skipped)
        for filename in sorted(filenames):
            if filename.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / filename
            if path.is_symlink() or not path.is_file():
                continue
            yield prefix + (rel / filename).as_posix(), path


def _pip_install(
    python: str,
    target: Path,
    pins: Sequence[tuple[str, str]],
    *,
    python_version: str,
    platform: str,
) -> None:
    # --no-deps: the pins are the closure already (RUNTIME_DISTRIBUTIONS), and pip must not
    # pull boto3's stack back in. --only-binary with --platform/--python-version selects the
    # wheels for the Lambda runtime, whatever machine builds. pip honours PIP_INDEX_URL,
    # PIP_FIND_LINKS and PIP_NO_INDEX for offline or mirrored builds.
    command = [
        python,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-compile",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        platform,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        *(f"{name}=={version}" for name, version in pins),
    ]
    try:
        subprocess.run(command, capture_output=True, text=True, check=True)
    except OSError as exc:
        raise PackagingError(f"cannot run pip with {python}: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or "").strip().splitlines()[-10:])
        raise PackagingError(f"pip install failed (exit {exc.returncode}):\n{tail}") from exc
    for provided in PROVIDED_BY_RUNTIME:
        module = provided.replace("python-", "")
        if (target / module).exists() or (target / f"{module}.py").exists():
            raise PackagingError(f"{provided} ended up in the package; the runtime provides it")


def _write_zip(
    output: Path, entries: dict[str, Path], pins: Sequence[tuple[str, str]], architecture: str
) -> PackageReport:
    output.parent.mkdir(parents=True, exist_ok=True)
    unzipped = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        with zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for arcname in sorted(entries):
                data = entries[arcname].read_bytes()
                unzipped += len(data)
                info = zipfile.ZipInfo(arcname, date_time=ZIP_TIMESTAMP)
                info.create_system = 3  # Unix, so external_attr carries the mode
                info.external_attr = ZIP_FILE_MODE << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data, compresslevel=9)
        if unzipped > LAMBDA_UNZIPPED_LIMIT:
            raise PackagingError(
                f"{_mib(unzipped)} unzipped is over Lambda's {_mib(LAMBDA_UNZIPPED_LIMIT)} limit"
            )
        tmp_path.chmod(0o644)
        tmp_path.replace(output)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    return PackageReport(
        path=output,
        size_bytes=output.stat().st_size,
        unzipped_bytes=unzipped,
        file_count=len(entries),
        sha256=digest,
        distributions=tuple(sorted(pins)),
        architecture=architecture,
    )


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


if __name__ == "__main__":
    raise SystemExit(main())
