"""``replay --delete`` and ``--archive`` remove only the object that was replayed (moto server).

An object rewritten under the same key between its read and its removal is never removed:
by ETag (HEAD, then ``If-Match``) in an unversioned bucket, by ``VersionId`` in a versioned
one. It is counted (``objects_changed``), logged, and replayed by the next run.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from config.settings import Settings
from forwarder.backsplash.writers import ReplayFailedBacksplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.devtools.emulator import HecEmulator
from forwarder.replay.engine import replay
from forwarder.replay.options import AfterSuccess, ReplayOptions
from forwarder.replay.report import ReplayReport
from forwarder.replay.worker import default_deliverer_factory
from tests.integration.conftest import BUCKET, delivery_settings
from tests.integration.test_replay import (
    ROOT,
    SOURCE,
    event_ids,
    firehose_record,
    hec_event,
    hour_key,
    keys_under,
    put_object,
)
from transforms.records import EncodedEvent, RawTarget

pytestmark = pytest.mark.integration

KEY = hour_key("splunk-failed", "rewritten.gz")
NEW_BODY = gzip.compress((json.dumps(firehose_record(hec_event("new"), 9)) + "\n").encode())


class RewritingFactory:
    """Deliverers that, on the first submit (the object is read by then), write new content
    under the key being replayed: a writer racing the replay."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.rewritten = False

    def __call__(self, settings: Settings, *, backsplash: ReplayFailedBacksplash) -> Deliverer:
        deliverer = default_deliverer_factory(settings, backsplash=backsplash)
        original = deliverer.submit

        def submit(events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
            if not self.rewritten:
                self.s3.put_object(Bucket=BUCKET, Key=KEY, Body=NEW_BODY)
                self.rewritten = True
            original(events, raw_target)

        deliverer.submit = submit  # type: ignore[method-assign]
        return deliverer


def run(
    emulator: HecEmulator, s3: Any, state: Path, after: AfterSuccess, factory: Any = None
) -> ReplayReport:
    options = ReplayOptions(state_path=state, after_success=after)
    extra = {"deliverer_factory": factory} if factory is not None else {}
    return replay(delivery_settings(emulator.url), SOURCE, options, s3_client=s3, **extra)


@pytest.mark.parametrize("after", ["delete", "archive"])
def test_an_object_rewritten_after_its_read_is_not_removed(
    emulator: HecEmulator, s3: Any, tmp_path: Path, after: AfterSuccess
) -> None:
    """GIVEN an unversioned bucket and an object rewritten while it is replayed
    WHEN replay --delete/--archive finishes it THEN the new object stays (nothing archived),
    the run counts and logs it, and the next run replays the new one and removes it."""
    put_object(s3, KEY, [firehose_record(hec_event("old"), 0)])
    factory = RewritingFactory(s3)
    with structlog.testing.capture_logs() as logs:
        report = run(emulator, s3, tmp_path / "state.sqlite", after, factory)
    assert factory.rewritten
    assert event_ids(emulator) == ["old"]
    assert keys_under(s3, KEY) == [KEY]  # the new object was not removed ...
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == NEW_BODY
    assert keys_under(s3, f"{ROOT}replayed/") == []  # ... nor archived
    assert (report.objects_changed, report.objects_kept) == (1, 1)
    assert (report.objects_deleted, report.objects_archived, report.dispose_failures) == (0, 0, 0)
    (kept,) = [e for e in logs if e["event"] == "replay_object_kept"]
    assert kept["key"] == KEY
    assert "rewritten since it was read" in kept["reason"]

    again = run(emulator, s3, tmp_path / "state.sqlite", after)
    assert event_ids(emulator) == ["old", "new"]
    assert again.objects_changed == 0
    assert keys_under(s3, f"{ROOT}splunk-failed/") == []
    assert (again.objects_deleted, again.objects_archived) == (
        (1, 0) if after == "delete" else (0, 1)
    )


@pytest.mark.parametrize("after", ["delete", "archive"])
def test_versioned_bucket_removes_only_the_version_replayed(
    emulator: HecEmulator, s3: Any, tmp_path: Path, after: AfterSuccess
) -> None:
    """GIVEN a versioned bucket and an object rewritten while it is replayed
    WHEN replay --delete/--archive finishes it THEN exactly the version read is removed (and,
    archiving, is what lands under replayed/), the new version stays the object under the
    key, and no delete marker hides it."""
    bucket_versioning = {"Status": "Enabled"}
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration=bucket_versioning)
    put_object(s3, KEY, [firehose_record(hec_event("old"), 0)])
    (first,) = s3.list_object_versions(Bucket=BUCKET, Prefix=KEY)["Versions"]
    old_body = s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()

    report = run(emulator, s3, tmp_path / "state.sqlite", after, RewritingFactory(s3))

    assert event_ids(emulator) == ["old"]
    assert report.objects_changed == 0
    assert (report.objects_deleted, report.objects_archived) == (
        (1, 0) if after == "delete" else (0, 1)
    )
    if after == "archive":
        (archived,) = keys_under(s3, f"{ROOT}replayed/")
        assert s3.get_object(Bucket=BUCKET, Key=archived)["Body"].read() == old_body
    listing = s3.list_object_versions(Bucket=BUCKET, Prefix=KEY)
    versions = listing.get("Versions", [])
    assert [v["VersionId"] for v in versions] != [first["VersionId"]]
    assert len(versions) == 1 and versions[0]["IsLatest"]
    assert listing.get("DeleteMarkers", []) == []
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == NEW_BODY


def test_unchanged_object_is_still_deleted(emulator: HecEmulator, s3: Any, tmp_path: Path) -> None:
    put_object(s3, KEY, [firehose_record(hec_event("only"), 0)])
    report = run(emulator, s3, tmp_path / "state.sqlite", "delete")
    assert (report.objects_deleted, report.objects_changed) == (1, 0)
    assert keys_under(s3, f"{ROOT}splunk-failed/") == []
    assert event_ids(emulator) == ["only"]
