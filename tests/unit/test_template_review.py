"""What a reviewer reads in the templates besides IAM: checkov skips carry reasons (and the
README lists the same ones), and the Serverless Application Repository metadata matches the
package (setup.cfg, forwarder.__version__)."""

from __future__ import annotations

import re
from configparser import ConfigParser
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode  # type: ignore[import-untyped]

import forwarder

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "cloudformation"
TEMPLATE_NAMES = ("firehose-to-splunk.yaml", "push-to-splunk.yaml", "daemon.yaml")
#: The templates published to the Serverless Application Repository, by application name.
PUBLISHED = {
    "firehose-to-splunk.yaml": "firehose-to-splunk",
    "push-to-splunk.yaml": "push-to-splunk",
}
CHECK_ID = re.compile(r"^CKV2?_AWS_\d+$")
#: A reason a reviewer can weigh says what happens instead: a few words are not one.
MIN_REASON_WORDS = 15
#: A row of cloudformation/README.md's skip table: | `template` | `Resource` | `CKV_AWS_n` | why |
README_SKIP_ROW = re.compile(
    r"^\|\s*`([\w.-]+\.yaml)`\s*\|\s*`(\w+)`\s*\|\s*`(CKV2?_AWS_\d+)`\s*\|"
)


def load(name: str) -> dict[str, Any]:
    template, matches = decode(str(TEMPLATES / name))
    assert not matches, matches
    return dict(template)


def skips(name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(resource, skip entry)`` for every checkov skip in a template's resource Metadata."""
    found = []
    for logical_id, resource in load(name)["Resources"].items():
        checkov = resource.get("Metadata", {}).get("checkov", {})
        found += [(logical_id, entry) for entry in checkov.get("skip", [])]
    return found


def test_every_checkov_skip_has_an_id_and_a_reason() -> None:
    """GIVEN every `checkov: skip:` entry WHEN counted THEN each names one check and gives a
    reason of some length; the total is what the README documents (a new skip without a
    reason, or without a README row, fails here)."""
    entries = [(name, r, e) for name in TEMPLATE_NAMES for r, e in skips(name)]
    without_reason = [
        (name, resource, entry.get("id"))
        for name, resource, entry in entries
        if len(str(entry.get("comment", "")).split()) < MIN_REASON_WORDS
    ]
    assert without_reason == []
    for name, resource, entry in entries:
        assert set(entry) == {"id", "comment"}, (name, resource, entry)
        assert CHECK_ID.match(entry["id"]), (name, resource, entry["id"])
    documented = {
        match.groups()
        for line in (TEMPLATES / "README.md").read_text().splitlines()
        if (match := README_SKIP_ROW.match(line))
    }
    assert {(name, resource, entry["id"]) for name, resource, entry in entries} == documented
    assert len(entries) == len(documented) == 7


def test_skips_live_in_metadata_only() -> None:
    """No skip hides in a global place: the Makefile's checkov call skips nothing itself."""
    makefile = (ROOT / "Makefile").read_text()
    (command,) = [line for line in makefile.splitlines() if "/bin/checkov " in line]
    assert "--skip-check" not in command and "--soft-fail" not in command
    assert "-d cloudformation" in command and "--framework cloudformation" in command


def _setup_cfg() -> ConfigParser:
    config = ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    return config


@pytest.mark.parametrize("name", PUBLISHED)
def test_serverless_repo_metadata_matches_the_package(name: str) -> None:
    """GIVEN a published template WHEN its AWS::ServerlessRepo::Application metadata is read
    THEN the name, licence, version and description are the package's and the README exists."""
    app = load(name)["Metadata"]["AWS::ServerlessRepo::Application"]
    metadata = _setup_cfg()["metadata"]
    assert app["Name"] == PUBLISHED[name]
    assert metadata["version"] == "attr: forwarder.__version__"
    assert app["SemanticVersion"] == forwarder.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", app["SemanticVersion"])
    assert app["SpdxLicenseId"] == metadata["license"]
    assert " ".join(app["Description"].split()).startswith(metadata["description"])
    assert len(app["Description"]) <= 256  # the repository's limit
    assert (TEMPLATES / app["ReadmeUrl"]).is_file()  # a path next to the template
    assert app["Author"]
    assert all(re.fullmatch(r"[a-zA-Z0-9+\-_:/@]{1,127}", label) for label in app["Labels"])


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_the_readme_documents_every_parameter(name: str) -> None:
    """GIVEN a template's parameters THEN each is named (in backticks) in the README."""
    readme = (TEMPLATES / "README.md").read_text()
    missing = [p for p in load(name)["Parameters"] if f"`{p}`" not in readme]
    assert missing == []
