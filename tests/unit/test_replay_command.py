"""``forwarder replay``'s own logic: flag errors name the flag, and a run that sends nothing
says why."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from forwarder.commands import replay as command
from forwarder.replay.options import ReplayOptions
from forwarder.replay.report import ReplayReport

SINCE = datetime(2026, 11, 26, 9, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="forwarder replay")
    command.add_arguments(parser)
    return parser.parse_args(["s3://bucket/", *argv])


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_bad_time_names_its_flag(flag: str) -> None:
    with pytest.raises(ValueError, match=f"^{flag}: not a time: 'yesterday'"):
        command.options_from_args(parse(flag, "yesterday"), {})


def report(**counts: int) -> ReplayReport:
    return ReplayReport(source="s3://bucket/prefix/", dry_run=True, **counts)  # type: ignore[arg-type]


def test_an_empty_prefix() -> None:
    why = command.why_nothing_sent(report(), ReplayOptions())
    assert why == "no objects under s3://bucket/prefix/"


def test_every_object_outside_the_time_window() -> None:
    why = command.why_nothing_sent(
        report(objects_listed=3, objects_outside_window=3), ReplayOptions(since=SINCE)
    )
    assert why == (
        "3 of 3 objects are outside the time window (--since 2026-11-26T09:00:00+00:00) "
        "(by the hour in their keys)"
    )


def test_records_filtered_out_and_already_replayed(tmp_path: Path) -> None:
    options = ReplayOptions(
        error_codes=("Splunk.AckTimeout",),
        include=frozenset({"splunk-failed"}),
        state_path=tmp_path / "state.sqlite",
    )
    why = command.why_nothing_sent(
        report(
            objects_listed=2,
            objects_selected=2,
            objects_already_done=1,
            records_read=5,
            records_not_selected=4,
            records_already_handled=1,
        ),
        options,
    )
    assert why is not None
    assert "1 objects were already replayed (the state file" in why
    assert str(tmp_path / "state.sqlite") in why
    assert "4 records are not selected by --error-code Splunk.AckTimeout, the kinds" in why
    assert "1 records were already replayed" in why


def test_objects_with_no_records() -> None:
    why = command.why_nothing_sent(report(objects_listed=1, objects_selected=1), ReplayOptions())
    assert why == "the selected objects hold no records"


@pytest.mark.parametrize("stopped", [{"events_sent": 1}, {"interrupted": True}, {"limited": True}])
def test_no_reason_when_something_was_sent_or_the_run_stopped_early(
    stopped: dict[str, int | bool],
) -> None:
    done = ReplayReport(source="s3://bucket/", **stopped)  # type: ignore[arg-type]
    assert command.why_nothing_sent(done, ReplayOptions()) is None
