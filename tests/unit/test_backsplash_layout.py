"""The one key classifier (``key_kind``) over every key form the two old ones handled."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from forwarder.backsplash.layout import (
    KINDS,
    PROCESSING_FAILED,
    REPLAY_FAILED,
    SPLUNK_FAILED,
    archive_key,
    key_kind,
    kind_from_key,
    object_key,
    source_root,
)

# (key, kind, root). Forms from the old path-component classifier (replay) and the old
# substring classifiers (push, daemon sources), which now agree.
KEY_FORMS = [
    # Firehose's and our layout, with and without a prefix (both old classifiers)
    ("splunk-failed/2026/01/01/00/x.gz", SPLUNK_FAILED, ""),
    ("fh/splunk-failed/2025/11/24/16/stream-1.gz", SPLUNK_FAILED, "fh/"),
    ("daemon/splunk-failed/2026/01/01/00/x.gz", SPLUNK_FAILED, "daemon/"),
    ("a/b/processing-failed/x.gz", PROCESSING_FAILED, "a/b/"),
    ("processing-failed/x.gz", PROCESSING_FAILED, ""),
    ("root/replay-failed/2026/x.gz", REPLAY_FAILED, "root/"),
    # an archived object keeps its kind; its root is the archive folder
    ("root/replayed/splunk-failed/2026/01/01/00/x.gz", SPLUNK_FAILED, "root/replayed/"),
    # the loop guard: replay-failed wins wherever it stands (substring classifiers)
    ("root/splunk-failed/replay-failed/x.gz", REPLAY_FAILED, "root/splunk-failed/"),
    ("other/splunk-failed/replay-failed/2026/01/01/00/x.gz", REPLAY_FAILED, "other/splunk-failed/"),
    ("replay-failed/processing-failed/x.gz", REPLAY_FAILED, ""),
    # a Firehose prefix without a trailing slash (only the substring classifiers saw these)
    ("fhsplunk-failed/2026/01/01/00/x.gz", SPLUNK_FAILED, "fh"),
    ("logs/fh-processing-failed/2026/x.gz", PROCESSING_FAILED, "logs/fh-"),
    # not backsplash: no kind folder (both old classifiers)
    ("AWSLogs/1/vpcflowlogs/x.log.gz", None, ""),
    ("a/b.gz", None, ""),
    ("splunk-failed.gz", None, ""),
    ("root/x-replay-failed", None, ""),  # the object's name is not a folder
    ("splunk-failed-archive/x.gz", None, ""),  # a folder that only starts with a kind
    ("", None, ""),
]


@pytest.mark.parametrize(
    ("key", "kind", "root"), KEY_FORMS, ids=[k or "empty" for k, *_ in KEY_FORMS]
)
def test_key_kind_over_every_documented_form(key: str, kind: str | None, root: str) -> None:
    assert key_kind(key) == (kind, root)
    assert kind_from_key(key) == kind


@pytest.mark.parametrize("prefix", ["", "backsplash/", "a/b/c/"])
@pytest.mark.parametrize("kind", KINDS)
def test_keys_we_write_classify_back_to_their_kind_and_prefix(prefix: str, kind: str) -> None:
    key = object_key(datetime(2026, 1, 2, 3, tzinfo=UTC), kind, prefix=prefix, unique="u")
    assert key_kind(key) == (kind, prefix)
    assert source_root(key) == prefix


def test_archive_key_stays_under_the_root_and_keeps_the_kind() -> None:
    key = "fh/splunk-failed/2026/01/01/00/x.gz"
    kind, root = key_kind(key)
    archived = archive_key(key, root)
    assert archived == "fh/replayed/splunk-failed/2026/01/01/00/x.gz"
    assert key_kind(archived) == (kind, "fh/replayed/")


def test_source_root_of_prefixes() -> None:
    assert source_root("fh/splunk-failed/2025/") == "fh/"
    assert source_root("fh/splunk-failed") == "fh/"
    assert source_root("fhsplunk-failed/2025/") == "fh"
    assert source_root("fh/") == "fh/"
    assert source_root("fh/spl") == "fh/"
    assert source_root("") == ""
