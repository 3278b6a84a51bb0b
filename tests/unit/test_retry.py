"""build_retrying(): duration, attempts, shutdown, Retry-After, full jitter; no real sleep."""

from __future__ import annotations

import threading
import time as time_module

import pytest
import tenacity
from structlog.testing import capture_logs
from tenacity import RetryAction, RetryCallState

from config.settings import RetrySettings
from forwarder.delivery.retry import (
    RetryBudget,
    _log_retry_scheduled,
    budget_exhausted,
    build_retrying,
    wait_retry_after,
)
from forwarder.errors import RejectedBatchError, RetryableError


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(retrying: object, outcomes: list[Exception | str], time: FakeTime | None = None) -> str:
    """Drive a Retrying over a list of results: raise the exceptions, return the first str."""
    calls = iter(outcomes)
    for attempt in retrying:  # type: ignore[attr-defined]
        with attempt:
            item = next(calls)
            if time is not None:
                time.now += 0.1  # every request takes a little time
            if isinstance(item, Exception):
                raise item
            return item
    raise AssertionError("unreachable")


def busy(retry_after: float | None = None) -> RetryableError:
    return RetryableError("HEC 503 code 9: Server is busy", retry_after=retry_after, url="u")


def test_retries_until_success_with_full_jitter() -> None:
    """Waits stay within the exponential window [0, base * 2**n], capped by backoff_max."""
    time = FakeTime()
    policy = RetrySettings(duration_s=3600, backoff_base_s=1.0, backoff_max_s=4.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    assert run(retrying, [busy(), busy(), busy(), busy(), "ok"], time) == "ok"
    assert len(time.sleeps) == 4
    for n, wait in enumerate(time.sleeps):
        assert 0 <= wait <= min(1.0 * 2**n, 4.0)


def test_stops_at_the_retry_duration_from_the_first_failure() -> None:
    """The duration counts from the first failure; the last error is re-raised."""
    time = FakeTime()
    policy = RetrySettings(duration_s=10, backoff_base_s=3.0, backoff_max_s=3.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    with pytest.raises(RetryableError, match="busy"):
        run(retrying, [busy(3.0)] * 100, time)
    assert 10 <= time.now - 1000.0 <= 10 + 3.0 + 0.2


def test_max_attempts() -> None:
    time = FakeTime()
    budget = RetryBudget()
    policy = RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.01)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep, budget=budget)
    with pytest.raises(RetryableError):
        run(retrying, [busy()] * 10, time)
    assert budget.attempts == 3
    assert len(time.sleeps) == 2


def test_budget_carries_over_between_runs() -> None:
    """A shared budget (a batch re-sent after an ack timeout) keeps its attempts and clock."""
    time = FakeTime()
    budget = RetryBudget()
    policy = RetrySettings(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.01)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep, budget=budget)
    assert run(retrying, [busy(), "ok"], time) == "ok"
    with pytest.raises(RetryableError):
        run(retrying, [busy()] * 10, time)
    assert budget.attempts == 4
    assert budget.started_at == 1000.1
    assert budget_exhausted(policy, budget, time.now)


def test_zero_duration_means_one_attempt() -> None:
    time = FakeTime()
    retrying = build_retrying(RetrySettings(duration_s=0), clock=time.clock, sleep=time.sleep)
    with pytest.raises(RetryableError):
        run(retrying, [busy(), "ok"], time)
    assert time.sleeps == []


def test_retry_after_is_honoured_and_capped() -> None:
    time = FakeTime()
    policy = RetrySettings(backoff_base_s=0.01, backoff_max_s=0.01, retry_after_max_s=5.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    assert run(retrying, [busy(2.0), busy(60.0), "ok"], time) == "ok"
    assert time.sleeps == [2.0, 5.0]


def test_shutdown_stops_retrying() -> None:
    """With the stop event set, the failed attempt is the last one."""
    time = FakeTime()
    stop = threading.Event()
    stop.set()
    retrying = build_retrying(RetrySettings(), stop, clock=time.clock, sleep=time.sleep)
    with pytest.raises(RetryableError):
        run(retrying, [busy(), "ok"], time)
    assert time.sleeps == []


def test_abort_predicate_stops_retrying() -> None:
    time = FakeTime()
    retrying = build_retrying(
        RetrySettings(), clock=time.clock, sleep=time.sleep, abort=lambda: True
    )
    with pytest.raises(RetryableError):
        run(retrying, [busy(), "ok"], time)


def test_other_errors_are_not_retried() -> None:
    time = FakeTime()
    retrying = build_retrying(RetrySettings(), clock=time.clock, sleep=time.sleep)
    with pytest.raises(RejectedBatchError):
        run(retrying, [RejectedBatchError("HEC 400 code 6"), "ok"], time)
    assert time.sleeps == []


def test_retry_scheduled_is_logged_and_counted() -> None:
    """before_sleep logs retry_scheduled with the reason and calls on_retry."""
    time = FakeTime()
    counted: list[int] = []
    retrying = build_retrying(
        RetrySettings(backoff_base_s=0.01, backoff_max_s=0.01),
        clock=time.clock,
        sleep=time.sleep,
        on_retry=lambda state: counted.append(state.attempt_number),
    )
    with capture_logs() as logs:
        run(retrying, [busy(), "ok"], time)
    (entry,) = [e for e in logs if e["event"] == "retry_scheduled"]
    assert entry["reason"] == "HEC 503 code 9: Server is busy"
    assert entry["attempt"] == 1
    assert entry["log_level"] == "warning"
    assert counted == [1]


def test_default_sleep_is_interrupted_by_shutdown() -> None:
    """Without an injected sleep, the backoff waits on the stop event: shutdown ends it early."""
    stop = threading.Event()
    policy = RetrySettings(backoff_base_s=30.0, backoff_max_s=30.0, retry_after_max_s=30.0)
    retrying = build_retrying(policy, stop)
    timer = threading.Timer(0.05, stop.set)
    calls = 0
    started = time_module.monotonic()
    timer.start()
    try:
        with pytest.raises(RetryableError):
            for attempt in retrying:
                with attempt:
                    calls += 1
                    raise busy(retry_after=30.0)
    finally:
        timer.cancel()
    assert calls == 2  # the attempt after the interrupted sleep is the last
    assert time_module.monotonic() - started < 5


# Fields and branches that mutation testing showed unpinned (make mutation).


class RecordingLog:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.warnings.append((event, fields))


def failed_state(exc: BaseException | None, sleep: float | None) -> RetryCallState:
    """A tenacity call state after one attempt (failed with exc, or no outcome when None)."""
    state = RetryCallState(tenacity.Retrying(), None, (), {})
    if exc is not None:
        state.set_exception((type(exc), exc, None))
    if sleep is not None:
        state.next_action = RetryAction(sleep)
    return state


def test_budget_copy_is_equal_and_independent() -> None:
    """Each half of a split batch keeps the attempts and first-failure time, separately."""
    budget = RetryBudget(attempts=3, started_at=12.5)
    copy = budget.copy()
    assert (copy.attempts, copy.started_at) == (3, 12.5)
    copy.attempts += 1
    copy.started_at = 99.0
    assert (budget.attempts, budget.started_at) == (3, 12.5)


def test_budget_exhausted_at_exactly_the_duration_and_the_attempt_cap() -> None:
    policy = RetrySettings(duration_s=10, max_attempts=3)
    assert not budget_exhausted(policy, RetryBudget(2, 100.0), 109.9)
    assert budget_exhausted(policy, RetryBudget(2, 100.0), 110.0)
    assert budget_exhausted(policy, RetryBudget(3, 100.0), 100.0)
    assert not budget_exhausted(policy, RetryBudget(2, None), 1e9)  # never failed yet
    unbounded = RetrySettings(duration_s=10, max_attempts=0)
    assert not budget_exhausted(unbounded, RetryBudget(10_000, 100.0), 100.0)


def test_a_retry_after_of_zero_or_less_means_no_wait() -> None:
    time = FakeTime()
    policy = RetrySettings(backoff_base_s=9.0, backoff_max_s=9.0, retry_after_max_s=5.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    assert run(retrying, [busy(0.0), busy(-3.0), busy(0.25), "ok"], time) == "ok"
    assert time.sleeps == [0.0, 0.0, 0.25]


def test_wait_retry_after_without_an_outcome_falls_back() -> None:
    wait = wait_retry_after(tenacity.wait_fixed(7), cap=5.0)
    assert wait(failed_state(None, None)) == 7.0
    assert wait(failed_state(busy(3.0), None)) == 3.0
    assert wait(failed_state(busy(30.0), None)) == 5.0
    assert wait(failed_state(ValueError("x"), None)) == 7.0


def test_backoff_is_scaled_by_the_base() -> None:
    """Full jitter in [0, base * 2**n]: a small base keeps every wait small."""
    time = FakeTime()
    policy = RetrySettings(duration_s=3600, backoff_base_s=0.001, backoff_max_s=100.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    outcomes: list[Exception | str] = [busy() for _ in range(8)]
    assert run(retrying, [*outcomes, "ok"], time) == "ok"
    assert len(time.sleeps) == 8
    for n, wait in enumerate(time.sleeps):
        assert 0 <= wait <= 0.001 * 2**n


def test_without_a_budget_each_run_starts_afresh() -> None:
    """A Retrying built without a budget gives every run the full number of attempts."""
    time = FakeTime()
    policy = RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.01)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep)
    calls: list[int] = []
    for _ in range(2):
        with pytest.raises(RetryableError):
            for attempt in retrying:
                with attempt:
                    calls.append(1)
                    raise busy()
    assert len(calls) == 6


def test_default_sleep_without_a_stop_event_is_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time_module, "sleep", slept.append)
    policy = RetrySettings(backoff_base_s=0.01, backoff_max_s=0.01, retry_after_max_s=5.0)
    retrying = build_retrying(policy)
    assert run(retrying, [busy(1.5), "ok"]) == "ok"
    assert slept == [1.5]


def test_retry_scheduled_goes_to_the_given_logger_with_every_field() -> None:
    time = FakeTime()
    log = RecordingLog()
    policy = RetrySettings(retry_after_max_s=60.0)
    retrying = build_retrying(policy, clock=time.clock, sleep=time.sleep, log=log)
    error = RetryableError(
        "HEC 503 code 9: Server is busy",
        error_code="Splunk.ServerError",
        retry_after=1.23456,
        url="https://hec.example:8088",
    )
    assert run(retrying, [error, "ok"], time) == "ok"
    assert log.warnings == [
        (
            "retry_scheduled",
            {
                "attempt": 1,
                "wait_s": 1.235,
                "reason": "HEC 503 code 9: Server is busy",
                "error_code": "Splunk.ServerError",
                "url": "https://hec.example:8088",
            },
        )
    ]


def test_retry_scheduled_for_a_foreign_error_or_no_outcome() -> None:
    """Anything tenacity hands over is logged without crashing: repr for foreign errors."""
    log = RecordingLog()
    _log_retry_scheduled(failed_state(ValueError("boom"), 2.0), log)
    _log_retry_scheduled(failed_state(None, None), log)
    assert log.warnings == [
        (
            "retry_scheduled",
            {
                "attempt": 1,
                "wait_s": 2.0,
                "reason": "ValueError('boom')",
                "error_code": None,
                "url": None,
            },
        ),
        (
            "retry_scheduled",
            {"attempt": 1, "wait_s": 0.0, "reason": "None", "error_code": None, "url": None},
        ),
    ]
