"""Exit statuses, and the one place that maps an outcome to one (the README lists them)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, NamedTuple

from config.errors import ConfigError


class ExitStatus(IntEnum):
    """Exit statuses; the README lists them. 0 means everything delivered and acknowledged."""

    OK = 0
    FAILURE = 1
    USAGE = 2  # also every configuration error (DESIGN.md section 7)
    HEC_FATAL = 4  # token or channel refused by HEC; data went to the backsplash
    INCOMPLETE = 5  # some events were backsplashed or dropped as unparsable input
    BACKSPLASH_FAILED = 6  # events could be neither delivered nor stored: see the log
    INTERRUPTED = 130


class RunOutcome(NamedTuple):
    """The facts of a finished run that decide its exit status (the flags are independent).

    ``backsplash_failed``: events could be neither delivered nor stored, or the ledger does
    not balance. ``hec_fatal``: HEC refused the token or channel. ``error``: the run itself
    failed (an unexpected exception, an unreadable bucket). ``interrupted``: a stop signal
    ended it early (a daemon's graceful stop is not an interruption). ``incomplete``: some
    events were backsplashed or dropped for a reason other than control messages.
    ``partial_failure``: some units (objects, files) failed while the events were accounted for.

    A NamedTuple rather than a dataclass: ``forwarder --help`` imports this module, and
    ``dataclasses`` (through ``inspect``) would be most of its import time.
    """

    backsplash_failed: bool = False
    hec_fatal: bool = False
    error: bool = False
    interrupted: bool = False
    incomplete: bool = False
    partial_failure: bool = False


#: Drop reasons that are not a loss: CloudWatch Logs' own control messages carry no log data.
#: Nor are events a route's ``drop`` and ``sample`` rules remove (``filtered``, ``sampled``).
NOT_A_LOSS: frozenset[str] = frozenset({"control_message", "filtered", "sampled"})


def incomplete(summary: Mapping[str, Any]) -> bool:
    """Whether a ledger summary shows events backsplashed or dropped for a real reason."""
    dropped: Mapping[str, int] = summary.get("dropped", {})
    lost = any(count for reason, count in dropped.items() if reason not in NOT_A_LOSS)
    return bool(summary.get("backsplashed")) or lost


#: The status each fact of a :class:`RunOutcome` calls for, the most severe first.
_BY_SEVERITY: Mapping[str, ExitStatus] = {
    "backsplash_failed": ExitStatus.BACKSPLASH_FAILED,
    "hec_fatal": ExitStatus.HEC_FATAL,
    "error": ExitStatus.FAILURE,
    "interrupted": ExitStatus.INTERRUPTED,
    "incomplete": ExitStatus.INCOMPLETE,
    "partial_failure": ExitStatus.FAILURE,
}


def status_for(outcome: RunOutcome | BaseException) -> ExitStatus:
    """The one mapping from an outcome, or an exception that ended a command, to a status.

    The most severe fact wins: 6 (data neither delivered nor stored), then 4 (HEC refused us),
    then 1 (the run failed), 130 (interrupted), 5 (incomplete), 1 (some units failed), 0.
    """
    if isinstance(outcome, BaseException):
        if isinstance(outcome, ConfigError):
            return ExitStatus.USAGE
        if isinstance(outcome, KeyboardInterrupt):
            return ExitStatus.INTERRUPTED
        return ExitStatus.FAILURE
    for fact, status in _BY_SEVERITY.items():
        if getattr(outcome, fact):
            return status
    return ExitStatus.OK
