"""Retry policy as data: ``RetrySettings`` -> a ``tenacity.Retrying`` (full-jitter backoff).

Stops at the retry duration (counted from a batch's first failure, like Firehose's
``RetryOptions``; ack waits are not retries), after ``max_attempts`` (0: unbounded), on shutdown
(``stop_event``) or when the caller's ``abort()`` says so. Waits are exponential with full
jitter, or HEC's ``Retry-After`` capped at ``retry_after_max_s``. Clock and sleep are
injectable, so no test sleeps. A batch's :class:`RetryBudget` travels with it across re-sends
after an ack timeout and into the halves of a split, so no path retries forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import tenacity
from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from config.settings import RetrySettings
from forwarder.errors import RetryableError

_log = structlog.get_logger("forwarder.delivery.retry")


@dataclass(slots=True)
class RetryBudget:
    """Retry bookkeeping for one batch, kept across ``Retrying`` runs.

    Attributes:
        attempts: requests made for this batch so far.
        started_at: clock time of its first failure (None until it fails once).
    """

    attempts: int = 0
    started_at: float | None = None

    def copy(self) -> RetryBudget:
        """An independent copy (for each half of a split batch)."""
        return RetryBudget(self.attempts, self.started_at)


def budget_exhausted(policy: RetrySettings, budget: RetryBudget, now: float) -> bool:
    """True when no further attempt is allowed for this budget.

    Args:
        policy: the retry settings.
        budget: the batch's attempts and first-failure time.
        now: the clock's time.
    """
    if policy.max_attempts and budget.attempts >= policy.max_attempts:
        return True
    return budget.started_at is not None and now - budget.started_at >= policy.duration_s


class stop_when_budget_exhausted(stop_base):
    """Stop when the retry duration (from the first failure) or the attempt cap is reached."""

    def __init__(
        self, policy: RetrySettings, budget: RetryBudget, clock: Callable[[], float]
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        now = self.clock()
        if self.budget.started_at is None:
            self.budget.started_at = now  # stop is consulted right after a failure
        return budget_exhausted(self.policy, self.budget, now)


class stop_when(stop_base):
    """Stop when a predicate says so (fatal error seen, flush deadline passed)."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate()


class wait_retry_after(wait_base):
    """Honour ``RetryableError.retry_after`` (capped); otherwise defer to another wait."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.cap)
        return float(self.fallback(retry_state))


def _log_retry_scheduled(retry_state: RetryCallState, log: Any) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None and outcome.failed else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    log.warning(
        "retry_scheduled",
        attempt=retry_state.attempt_number,
        wait_s=round(wait, 3),
        reason=getattr(exc, "message", None) or repr(exc),
        error_code=getattr(exc, "error_code", None),
        url=getattr(exc, "url", None),
    )


def build_retrying(
    policy: RetrySettings,
    stop_event: threading.Event | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
    budget: RetryBudget | None = None,
    abort: Callable[[], bool] | None = None,
    on_retry: Callable[[RetryCallState], None] | None = None,
    log: Any = None,
) -> tenacity.Retrying:
    """Turn the retry settings into a tenacity policy.

    Args:
        policy: duration, attempts, backoff base/max and the ``Retry-After`` cap.
        stop_event: set on shutdown: no new attempt starts and the backoff sleep ends early.
        clock: monotonic clock for the retry duration.
        sleep: how to wait (default: ``stop_event.wait`` or ``time.sleep``); tests record.
        budget: the batch's budget, shared across runs; None gives each run a fresh one
            (then the object must not be used by two threads at once).
        abort: extra stop condition checked after each failure.
        on_retry: called before each backoff sleep (e.g. to count retries).
        log: the structlog logger for ``retry_scheduled`` (bound context included).

    Returns:
        A ``Retrying`` that retries ``RetryableError`` only and re-raises the last error.
    """
    own_budget = budget is None
    shared = budget if budget is not None else RetryBudget()
    logger = log if log is not None else _log

    def before(retry_state: RetryCallState) -> None:
        if own_budget and retry_state.attempt_number == 1:
            shared.attempts = 0
            shared.started_at = None
        shared.attempts += 1

    def before_sleep(retry_state: RetryCallState) -> None:
        _log_retry_scheduled(retry_state, logger)
        if on_retry is not None:
            on_retry(retry_state)

    wait_for: Callable[[float], object] = (
        sleep if sleep is not None else stop_event.wait if stop_event is not None else time.sleep
    )

    def nap(seconds: float) -> None:
        wait_for(seconds)

    stop: stop_base = stop_when_budget_exhausted(policy, shared, clock)
    if stop_event is not None:
        stop = stop | tenacity.stop_when_event_set(stop_event)
    if abort is not None:
        stop = stop | stop_when(abort)
    return tenacity.Retrying(
        stop=stop,
        wait=wait_retry_after(
            tenacity.wait_random_exponential(
                multiplier=policy.backoff_base_s, max=policy.backoff_max_s
            ),
            policy.retry_after_max_s,
        ),
        retry=tenacity.retry_if_exception_type(RetryableError),
        sleep=nap,
        before=before,
        before_sleep=before_sleep,
        reraise=True,
    )
