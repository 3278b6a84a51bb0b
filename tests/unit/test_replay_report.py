"""ReplayReport's exit status comes from forwarder.status.status_for, with replay's old order."""

from __future__ import annotations

from typing import Any

import pytest

from forwarder.replay.report import CORRUPT_REPORT_LIMIT, ReplayReport, format_summary
from forwarder.status import ExitStatus


@pytest.mark.parametrize(
    ("facts", "status"),
    [
        ({}, ExitStatus.OK),
        ({"backsplash_error": "s3 down", "fatal": "bad token"}, ExitStatus.BACKSPLASH_FAILED),
        ({"fatal": "bad token", "error": "boom"}, ExitStatus.HEC_FATAL),
        ({"error": "boom", "interrupted": True}, ExitStatus.FAILURE),
        ({"interrupted": True, "events_failed": 3}, ExitStatus.INTERRUPTED),
        ({"events_failed": 1, "objects_failed": 1}, ExitStatus.INCOMPLETE),
        ({"corrupt_total": 1}, ExitStatus.INCOMPLETE),
        ({"records_exhausted": 2}, ExitStatus.INCOMPLETE),
        ({"objects_failed": 1}, ExitStatus.FAILURE),
        ({"dispose_failures": 1}, ExitStatus.FAILURE),
        ({"limited": True, "events_dropped": 4}, ExitStatus.OK),
    ],
)
def test_exit_status_most_severe_fact_wins(facts: dict[str, Any], status: ExitStatus) -> None:
    report = ReplayReport(source="s3://b/p/", **facts)
    assert report.exit_status == status
    assert report.to_dict()["exit_status"] == int(status)
    assert f"status   {int(status)}" in format_summary(report)


def test_corrupt_lines_kept_up_to_the_limit_with_their_keys() -> None:
    report = ReplayReport(source="s3://b/p/")
    for n in range(CORRUPT_REPORT_LIMIT + 5):
        report.add_corrupt(f"p/splunk-failed/{n}.gz", n + 1, "not JSON")
    assert report.corrupt_total == CORRUPT_REPORT_LIMIT + 5
    assert len(report.corrupt) == CORRUPT_REPORT_LIMIT
    assert report.to_dict()["corrupt"][0] == {
        "key": "p/splunk-failed/0.gz",
        "line": 1,
        "reason": "not JSON",
    }
    assert "s3://b/p/splunk-failed/0.gz line 1: not JSON" in format_summary(report)
    assert "... and 5 more" in format_summary(report)
