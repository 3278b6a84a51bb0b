"""Adaptive request concurrency: how many requests to keep on the wire, learnt from HEC's answers.

The idea is Vector's adaptive request concurrency (AIMD, as TCP's congestion control):

- answers are looked at in *windows* about one round trip long (the smoothed round-trip time,
  at least ``min_window_s``);
- at the end of a window in which HEC pushed back (503, 429 or 504, a timeout or a dropped
  connection), the limit is multiplied by ``decrease_ratio`` (at least 1);
- else, when that window's mean round trip rose past the smoothed baseline by more than its
  usual spread (``deviation_scale`` times the smoothed deviation, and at least ``min_rise`` of
  the baseline), the limit is decreased the same way: requests queue up at the server;
- else, when the deliverer wanted more requests on the wire than the limit allowed during the
  window (:meth:`AdaptiveLimit.saturated`), the limit grows by one, up to ``ceiling``.

Pure: the clock is injected and the answers are told to it; nothing here sends or sleeps. The
deliverer keeps one per instance and uses it from its own thread only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog

#: What one answer says about the load: ``ok`` (its round trip counts), ``overload`` (HEC
#: pushed back), ``ignore`` (says nothing about load: a refused event, a cancelled request).
Signal = Literal["ok", "overload", "ignore"]

#: The ceiling of an adaptive limit unless configured otherwise: each request in flight uses a
#: channel and a connection of its own, made up front.
DEFAULT_CEILING: Final = 16


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    """The adaptive limit's numbers (see the module notes).

    Attributes:
        ceiling: the highest limit.
        initial: the limit to start from.
        decrease_ratio: the factor applied on pushback or rising latency.
        ewma_alpha: weight of the newest window in the smoothed round trip and deviation.
        deviation_scale: how many smoothed deviations above the baseline count as rising.
        min_rise: the smallest relative rise that counts (round trips on a quiet network
            vary by more than their smoothed deviation suggests).
        min_window_s: the shortest window.
    """

    ceiling: int = DEFAULT_CEILING
    initial: int = 1
    decrease_ratio: float = 0.5
    ewma_alpha: float = 0.4
    deviation_scale: float = 2.5
    min_rise: float = 0.25
    min_window_s: float = 0.01

    def __post_init__(self) -> None:
        if not 1 <= self.initial <= self.ceiling:
            raise ValueError("need 1 <= initial <= ceiling")
        if not 0 < self.decrease_ratio < 1 or not 0 < self.ewma_alpha <= 1:
            raise ValueError("decrease_ratio must be in (0, 1) and ewma_alpha in (0, 1]")


class AdaptiveLimit:
    """An AIMD limit on requests in flight, between 1 and ``policy.ceiling``.

    Args:
        policy: the numbers.
        clock: a monotonic clock (the windows).
        log: a structlog logger; limit changes are logged at debug as
            ``concurrency_limit_changed`` (limit, previous, reason).
    """

    def __init__(
        self,
        policy: AimdPolicy | None = None,
        *,
        clock: Callable[[], float],
        log: Any = None,
    ) -> None:
        self.policy = policy or AimdPolicy()
        self._clock = clock
        self._log = log if log is not None else structlog.get_logger(__name__)
        self.limit = self.policy.initial
        #: Smoothed mean round trip of past windows (seconds), and its smoothed deviation.
        self.baseline_s: float | None = None
        self.deviation_s = 0.0
        self._window_end: float | None = None
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._overload = False
        self._saturated = False

    @property
    def ceiling(self) -> int:
        return self.policy.ceiling

    def saturated(self) -> None:
        """The deliverer had a request ready and the limit held it back (room to grow)."""
        self._saturated = True

    def observe(self, signal: Signal, rtt_s: float | None = None) -> None:
        """Count one answer: ``signal`` and, for ``ok``, its round trip in seconds."""
        now = self._clock()
        if self._window_end is None:
            self._window_end = now + self._window_s()
        if signal == "overload":
            self._overload = True
        elif signal == "ok" and rtt_s is not None and math.isfinite(rtt_s) and rtt_s >= 0:
            self._rtt_sum += rtt_s
            self._rtt_count += 1
        if now >= self._window_end:
            self._end_window(now)

    def _window_s(self) -> float:
        return max(self.baseline_s or 0.0, self.policy.min_window_s)

    def _end_window(self, now: float) -> None:
        policy = self.policy
        mean = self._rtt_sum / self._rtt_count if self._rtt_count else None
        baseline = self.baseline_s
        if self._overload:
            self._decrease("pushback")
        elif mean is not None and baseline is not None and mean > baseline + self._tolerance():
            self._decrease("latency_rising")
        elif self._saturated and mean is not None and self.limit < policy.ceiling:
            self._change(self.limit + 1, "latency_held")
        if mean is not None:
            if baseline is None:
                self.baseline_s = mean
            else:
                alpha = policy.ewma_alpha
                self.deviation_s = (1 - alpha) * self.deviation_s + alpha * abs(mean - baseline)
                self.baseline_s = (1 - alpha) * baseline + alpha * mean
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._overload = self._saturated = False
        self._window_end = now + self._window_s()

    def _tolerance(self) -> float:
        baseline = self.baseline_s or 0.0
        policy = self.policy
        return max(policy.deviation_scale * self.deviation_s, policy.min_rise * baseline)

    def _decrease(self, reason: str) -> None:
        self._change(max(1, math.floor(self.limit * self.policy.decrease_ratio)), reason)

    def _change(self, limit: int, reason: str) -> None:
        if limit == self.limit:
            return
        previous, self.limit = self.limit, limit
        self._log.debug(
            "concurrency_limit_changed",
            limit=limit,
            previous=previous,
            reason=reason,
            baseline_ms=None if self.baseline_s is None else round(self.baseline_s * 1000, 3),
        )
