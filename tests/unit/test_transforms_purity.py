"""transforms/ stays pure: stdlib only, and never boto3, botocore or requests at import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import transforms

PACKAGE = Path(transforms.__file__).parent
#: Every other module is pure: stdlib and transforms.* only. These may import a little more:
#: the Lambda adapter reads the settings and logs, the invocation core logs, and re-ingestion is
#: the one boto3 user (its stubs are imported for type checking only).
ADAPTERS = {
    "firehose": {"config", "structlog"},
    "firehose_invocation": {"structlog"},
    "reingest": {
        "boto3",
        "botocore",
        "structlog",
        "tenacity",
        "mypy_boto3_firehose",
        "mypy_boto3_kinesis",
    },
}
FORBIDDEN = {"boto3", "botocore", "requests"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every import in a module, at any depth (lazy imports included)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_pure_modules_import_only_the_standard_library() -> None:
    """Everything in transforms/ imports the stdlib and transforms only, but for what the
    adapters are allowed on top."""
    allowed = set(sys.stdlib_module_names) | {"transforms", "__future__"}
    for path in sorted(PACKAGE.glob("*.py")):
        extra = imported_roots(path) - allowed - ADAPTERS.get(path.stem, set())
        assert not extra, f"{path.name} imports {sorted(extra)}"


def test_only_the_lambda_adapter_reads_config() -> None:
    """Settings reach transforms/ through firehose.py alone; the rest takes options."""
    readers = [p.name for p in sorted(PACKAGE.glob("*.py")) if "config" in imported_roots(p)]
    assert readers == ["firehose.py"]


def test_no_module_but_reingest_mentions_boto3_or_requests() -> None:
    """Not even lazily: only reingest.py may import boto3, botocore or requests."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "reingest":
            continue
        assert not imported_roots(path) & FORBIDDEN, f"{path.name} imports an AWS/HTTP client"


def test_importing_transforms_loads_no_aws_or_http_client() -> None:
    """In a fresh interpreter, importing every module but reingest leaves boto3 unloaded."""
    modules = sorted(f"transforms.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "reingest")
    assert "transforms.firehose" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = [m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
