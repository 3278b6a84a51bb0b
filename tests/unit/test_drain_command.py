"""``forwarder drain``'s flags and exit statuses (the cycles themselves: test_drain.py and the
integration tests)."""

from __future__ import annotations

import pytest

from config.drain import DrainSettings, load_drain_settings
from forwarder import cli
from forwarder.commands.drain import overrides_from_args, status_of
from forwarder.drain.drainer import CycleResult
from forwarder.replay.report import ReplayReport
from forwarder.status import ExitStatus


def parse(*words: str) -> object:
    return cli.build_parser("drain").parse_args(["drain", *words])


def test_flags_override_the_drain_table() -> None:
    args = parse(
        "s3://b/p/",
        "--state",
        "/tmp/s.sqlite",
        "--max-events-per-s",
        "25",
        "--max-attempts",
        "5",
        "--interval-s",
        "2",
        "--concurrency",
        "2",
        "--archive",
        "--failure-queue",
        "sqs://https://sqs.eu-west-1.amazonaws.com/123456789012/push-failures",
        "--once",
    )
    settings = load_drain_settings(
        {"drain": {"max_attempts": 9, "pause_s": 1}},
        {},
        overrides_from_args(args),  # type: ignore[arg-type]
    )
    assert settings == DrainSettings(
        source="s3://b/p/",
        state="/tmp/s.sqlite",
        max_events_per_s=25.0,
        max_attempts=5,
        interval_s=2.0,
        concurrency=2,
        after_success="archive",
        pause_s=1.0,
        failure_queue="https://sqs.eu-west-1.amazonaws.com/123456789012/push-failures",
    )


def test_no_flags_leave_the_table_alone() -> None:
    overrides = overrides_from_args(parse())  # type: ignore[arg-type]
    assert load_drain_settings({"drain": {"max_attempts": 9}}, {}, overrides).max_attempts == 9


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (CycleResult("closed", "health 18"), ExitStatus.FAILURE),
        (CycleResult("troubled", "busy", ReplayReport("s3://b/")), ExitStatus.INCOMPLETE),
        (CycleResult("empty", "nothing", ReplayReport("s3://b/")), ExitStatus.OK),
        (
            CycleResult("drained", "ok", ReplayReport("s3://b/", events_failed=2)),
            ExitStatus.INCOMPLETE,
        ),
        (
            CycleResult("failed", "token", ReplayReport("s3://b/", fatal="403")),
            ExitStatus.HEC_FATAL,
        ),
    ],
)
def test_once_exit_statuses(result: CycleResult, status: ExitStatus) -> None:
    assert status_of(result) == status
