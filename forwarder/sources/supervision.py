"""Supervision of the daemon's source operations.

Source failures are supervised: any error of the source's ``attach``, ``poll``, ``commit`` or
``release`` but a configuration error (an AWS endpoint unreachable or refusing for a while, a
DynamoDB checkpoint write failing, an ``OSError``) is retried after a capped, full-jitter
exponential backoff (``source_retry_backoff_s`` .. ``source_retry_backoff_max_s``) for as long
as it fails; every failure is counted (``forwarder_source_errors_total{operation,kind}``) and
logged (``source_operation_failed``), ``/readyz`` says not ready until an operation succeeds
again (``source_recovered``), and the deliverers keep being serviced during the backoff. Nothing
read is lost: a failed commit leaves the checkpoint where it was (retried), and a failed Kinesis
poll re-attaches the source from its last checkpoint (a poll can fail after reading some shards:
those records are read again, duplicates, never a gap). A :class:`~config.loader.ConfigError`
(a ``files`` source naming a missing path) is not retried: the daemon logs ``daemon_stopped``
with the problem and exits 2.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Final, TypeVar

import structlog
import tenacity
from botocore.exceptions import ClientError

from config.errors import ConfigError
from forwarder.delivery.metrics import DaemonState
from forwarder.errors import BacksplashError

#: A backoff after a source failure is slept in slices this long, servicing the deliverers
#: (ack polls, retries) between them.
BACKOFF_SLICE_S: Final = 0.5

_T = TypeVar("_T")

_log = structlog.get_logger("forwarder.daemon")


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a failure: the AWS error code, else the exception's type."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, for a log line."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)
class SourceSupervisor:
    """Runs source operations, retrying their failures (see the module docstring).

    Args:
        state: the daemon's health state (failures counted, readiness).
        stop_event: set on shutdown: no further retry, a backoff ends at once.
        backoff_s: the first backoff (``source_retry_backoff_s``).
        backoff_max_s: the cap (``source_retry_backoff_max_s``).
        source_name: the current source's name (for the log lines).
        service: called between slices of a backoff (heartbeat, deliverers serviced).
        clock: monotonic clock.
    """

    state: DaemonState
    stop_event: threading.Event
    _: KW_ONLY
    backoff_s: float
    backoff_max_s: float
    source_name: Callable[[], str]
    service: Callable[[], None]
    clock: Callable[[], float] = time.monotonic

    def run(self, operation: str, call: Callable[[], _T]) -> _T:
        """Run one source operation; retry any failure but a configuration error.

        Backoff: full jitter, exponential from ``backoff_s``, capped at ``backoff_max_s``; no
        attempt cap (the daemon waits for the endpoint to come back), but a stop request ends
        the retries. Each failure is counted and logged (``source_operation_failed``) and
        makes ``/readyz`` not ready until an operation succeeds (``source_recovered``).

        Raises:
            ConfigError: not retried.
            BacksplashError: from servicing the deliverers during a backoff.
            Exception: the last failure, once a stop is requested.
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_when_event_set(self.stop_event),
            wait=tenacity.wait_random_exponential(
                multiplier=self.backoff_s, max=self.backoff_max_s
            ),
            retry=tenacity.retry_if_exception(
                lambda exc: not isinstance(exc, (ConfigError, BacksplashError))
            ),
            sleep=self._backoff,
            before_sleep=lambda retry_state: self._failed(operation, retry_state),
            reraise=True,
        )
        try:
            result = retrying(call)
        except (ConfigError, BacksplashError):
            raise
        except Exception as exc:  # stopped while failing: count and log this last failure too
            self.state.source_failed(operation, error_kind(exc), describe(exc))
            _log.error(
                "source_operation_failed",
                source=self.source_name(),
                operation=operation,
                kind=error_kind(exc),
                retry_in_s=None,
                reason=f"{describe(exc)}; not retried: shutting down",
            )
            raise
        if self.state.source_error is not None:
            self.state.source_recovered()
            _log.info("source_recovered", source=self.source_name(), operation=operation)
        return result

    def _failed(self, operation: str, retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if exc is None:
            return
        kind = error_kind(exc)
        reason = describe(exc)
        self.state.source_failed(operation, kind, reason)
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        _log.error(
            "source_operation_failed",
            source=self.source_name(),
            operation=operation,
            kind=kind,
            attempt=retry_state.attempt_number,
            retry_in_s=round(wait, 3),
            reason=reason,
        )

    def _backoff(self, seconds: float) -> None:
        """Wait ``seconds`` (less if a stop comes), servicing meanwhile."""
        end = self.clock() + seconds
        while not self.stop_event.is_set():
            remaining = end - self.clock()
            if remaining <= 0:
                return
            self.stop_event.wait(min(remaining, BACKOFF_SLICE_S))
            self.service()
