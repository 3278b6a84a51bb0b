"""The one exit-status mapping: severity order and the exception cases."""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from forwarder.status import ExitStatus, RunOutcome, incomplete, status_for


def test_a_clean_run_is_ok() -> None:
    assert status_for(RunOutcome()) is ExitStatus.OK


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (RunOutcome(backsplash_failed=True, hec_fatal=True, incomplete=True), 6),
        (RunOutcome(hec_fatal=True, error=True, interrupted=True), 4),
        (RunOutcome(error=True, interrupted=True, incomplete=True), 1),
        (RunOutcome(interrupted=True, incomplete=True), 130),
        (RunOutcome(incomplete=True, partial_failure=True), 5),
        (RunOutcome(partial_failure=True), 1),
    ],
)
def test_the_most_severe_fact_wins(outcome: RunOutcome, expected: int) -> None:
    assert status_for(outcome) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConfigError("SPLUNK_HEC_URL", "missing"), 2),
        (KeyboardInterrupt(), 130),
        (OSError("disk"), 1),
    ],
)
def test_exceptions_map_to_their_status(exc: BaseException, expected: int) -> None:
    assert status_for(exc) == expected


def test_control_messages_are_not_a_loss_but_other_drops_are() -> None:
    assert not incomplete({"backsplashed": 0, "dropped": {"control_message": 3}})
    assert incomplete({"backsplashed": 0, "dropped": {"line_too_long": 1}})
    assert incomplete({"backsplashed": 2, "dropped": {}})


@pytest.mark.parametrize("fact", RunOutcome._fields)
def test_every_fact_alone_is_a_failure_status(fact: str) -> None:
    """The severity table names every fact: none of them alone reads as success."""
    assert status_for(RunOutcome(**{fact: True})) is not ExitStatus.OK
