"""Where the replay state lives (``--state PATH|dynamodb://TABLE``, :func:`parse_state_spec`,
:func:`open_state`), handled ranges merged from several writers, and the lease keeper."""

from __future__ import annotations

import argparse
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from config.errors import ConfigError
from forwarder.commands.context import CommandContext
from forwarder.commands.replay import add_arguments, options_from_args, run, why_nothing_sent
from forwarder.replay.options import (
    DEFAULT_LEASE_S,
    DynamoStateSpec,
    ReplayOptions,
    SqliteStateSpec,
    parse_state_spec,
)
from forwarder.replay.report import ReplayReport, format_summary
from forwarder.replay.state import HandledRecords, ReplayState
from forwarder.replay.state_store import LeaseKeeper, open_state
from forwarder.status import ExitStatus

ENVIRON = {"XDG_STATE_HOME": "/var/lib/x"}
DEFAULT_FILE = Path("/var/lib/x/firehose-splunk-forwarder/replay.sqlite")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, SqliteStateSpec(DEFAULT_FILE)),
        ("", SqliteStateSpec(DEFAULT_FILE)),
        ("/tmp/state.sqlite", SqliteStateSpec(Path("/tmp/state.sqlite"))),
        ("dynamodb://replay-state", DynamoStateSpec("replay-state", DEFAULT_LEASE_S)),
        ("DynamoDB://My_Table.v2", DynamoStateSpec("My_Table.v2", DEFAULT_LEASE_S)),
    ],
)
def test_state_specs(text: str | None, expected: object) -> None:
    assert parse_state_spec(text, ENVIRON) == expected


def test_a_lease_duration_goes_with_a_table() -> None:
    assert parse_state_spec("dynamodb://t-1", ENVIRON, lease_s=30) == DynamoStateSpec("t-1", 30)
    assert str(DynamoStateSpec("t-1")) == "dynamodb://t-1"
    assert str(SqliteStateSpec(Path("/a/b"))) == "/a/b"


@pytest.mark.parametrize(
    ("text", "lease_s", "message"),
    [
        ("dynamodb://", DEFAULT_LEASE_S, "expected dynamodb://TABLE"),
        ("dynamodb://ab", DEFAULT_LEASE_S, "3 to 255"),
        ("dynamodb://t/extra", DEFAULT_LEASE_S, "expected dynamodb://TABLE"),
        ("s3://bucket/state", DEFAULT_LEASE_S, "a SQLite file path or dynamodb://TABLE"),
        ("dynamodb://table", 0.0, "lease must be positive"),
    ],
)
def test_bad_state_specs_name_the_key(text: str, lease_s: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_state_spec(text, ENVIRON, lease_s=lease_s, key="[drain] state")
    assert caught.value.key == "[drain] state"


def test_options_give_one_state() -> None:
    """GIVEN the options WHEN asked where the state lives THEN state, else state_path, else the
    default file; both at once is refused."""
    table = DynamoStateSpec("t-1")
    assert ReplayOptions(state=table).state_spec(ENVIRON) == table
    assert ReplayOptions(state_path=Path("/s")).state_spec(ENVIRON) == SqliteStateSpec(Path("/s"))
    assert ReplayOptions().state_spec(ENVIRON) == SqliteStateSpec(DEFAULT_FILE)
    with pytest.raises(ValueError, match="not both"):
        ReplayOptions(state=table, state_path=Path("/s"))


def test_the_state_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["s3://b/", "--state", "dynamodb://shared", "--lease-s", "45"])
    assert options_from_args(args, ENVIRON).state == DynamoStateSpec("shared", 45.0)
    args = parser.parse_args(["s3://b/", "--state", "~/s.sqlite"])
    assert options_from_args(args, ENVIRON).state == SqliteStateSpec(
        Path("~/s.sqlite").expanduser()
    )
    args = parser.parse_args(["s3://b/"])
    assert options_from_args(args, ENVIRON).state == SqliteStateSpec(DEFAULT_FILE)


@pytest.mark.parametrize(
    "flags", [["--state", "redis://x"], ["--state", "dynamodb://t", "--lease-s", "-1"]]
)
def test_a_bad_state_is_a_usage_error(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN a state the command cannot use WHEN run THEN exit 2 before any I/O, one line on
    stderr naming --state."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["s3://b/", *flags])
    assert run(args, CommandContext(args, ENVIRON, io.StringIO())) == ExitStatus.USAGE
    assert "forwarder replay: --state: " in capsys.readouterr().err


def test_open_state_opens_sqlite_without_leases(tmp_path: Path) -> None:
    store = open_state(SqliteStateSpec(tmp_path / "s.sqlite"))
    try:
        assert isinstance(store, ReplayState)
        assert store.lease_s is None
        claim = store.claim("b", "k", "e", 1, None)
        assert (claim.lease, claim.done) == ("taken", False)
        assert claim.object_id is not None
        assert store.renew_lease(claim.object_id) is True
        store.release_lease(claim.object_id)
    finally:
        store.close()


def test_handled_records_from_ranges_merge() -> None:
    handled = HandledRecords.from_ranges([(10, 12), (0, 3), (4, 4), (11, 15), (20, 20)])
    assert handled.ranges == [(0, 4), (10, 15), (20, 20)]
    assert len(handled) == 12
    assert 15 in handled and 16 not in handled and 20 in handled
    assert HandledRecords.from_ranges([]).ranges == []


def results(*outcomes: bool | Exception) -> Iterator[bool | Exception]:
    yield from outcomes
    while True:
        yield True


def test_the_keeper_renews_until_the_lease_is_lost() -> None:
    """GIVEN renewals that succeed, fail once (store unreachable), succeed, then are refused
    WHEN the keeper runs THEN the failure is logged and retried, and the refusal sets lost
    and ends the thread."""
    outcomes = results(True, OSError("unreachable"), True, False)
    calls = []

    def renew() -> bool:
        outcome = next(outcomes)
        calls.append(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with capture_logs() as logs:
        keeper = LeaseKeeper(renew, 0.001, key="k").start()
        assert keeper.lost.wait(30)
        keeper.stop()
    assert calls[:4] == [True, calls[1], True, False]
    assert keeper.renewals == 2
    failed = [entry for entry in logs if entry["event"] == "replay_lease_renew_failed"]
    assert failed == [
        {"event": "replay_lease_renew_failed", "key": "k", "error": "unreachable",
         "log_level": "warning"}
    ]  # fmt: skip


def test_a_stopped_keeper_renews_no_more() -> None:
    renewed = threading.Event()

    def renew() -> bool:
        renewed.set()
        return True

    keeper = LeaseKeeper(renew, 0.001, key="k").start()
    assert renewed.wait(30)
    keeper.stop()
    count = keeper.renewals
    keeper.stop()  # idempotent
    assert keeper.renewals == count
    assert not keeper.lost.is_set()


def test_objects_leased_elsewhere_say_why_nothing_was_sent() -> None:
    """GIVEN a run whose objects were all leased by another live owner or already done in the
    table WHEN it sent nothing THEN the reasons name the table; the summary shows the lease
    counts."""
    done = ReplayReport(
        source="s3://bucket/", objects_listed=3, objects_selected=3, objects_already_done=1,
        objects_leased_elsewhere=2, leases_taken_over=4, leases_lost=5,
    )  # fmt: skip
    why = why_nothing_sent(done, ReplayOptions(state=DynamoStateSpec("shared")))
    assert why == (
        "1 objects were already replayed (the state table dynamodb://shared records them; "
        "--state elsewhere to replay them again); 2 objects are being replayed by another "
        "replay or drainer (their leases in dynamodb://shared are live)"
    )
    summary = format_summary(done)
    assert "leased elsewhere 2  leases taken over 4  leases lost 5" in summary
    data = done.to_dict()
    assert (data["objects_leased_elsewhere"], data["leases_taken_over"], data["leases_lost"]) == (
        2,
        4,
        5,
    )
    assert "leased elsewhere" not in format_summary(ReplayReport(source="s3://bucket/"))
