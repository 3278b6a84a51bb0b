"""The HEC URLs a deliverer sends to: one channel each, taking turns, resting when unwell.

One :class:`Route` per URL: its :class:`~forwarder.hec.client.HecClient` (channel), the acks
pending on it and its health. :class:`Routes` hands them out round-robin; a URL with
connection errors or an unhealthy answer (503 codes 18-20) leaves the rotation for the
cool-down and comes back after a passing health probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from forwarder.delivery.acks import AckTracker
from forwarder.delivery.work import Work
from forwarder.hec.client import HecClient

#: A health probe of one URL: (healthy, HEC code, reason).
Probe = Callable[["Route"], tuple[bool, int | None, str]]


@dataclass(slots=True, eq=False)
class Route:
    """One HEC URL: its client (channel), its pending acks, its health."""

    client: HecClient
    acks: AckTracker[Work]
    acks_on: bool
    unhealthy_until: float | None = None

    @property
    def url(self) -> str:
        return self.client.url


class Routes:
    """The URLs in rotation order.

    Args:
        routes: one per URL, in the configured order.
        cooldown_s: how long an unwell URL stays out of the rotation before a probe.
        clock: monotonic clock.
        probe: asks a URL's health (a request: the caller bounds it).
        log: a structlog logger.
    """

    def __init__(
        self,
        routes: list[Route],
        *,
        cooldown_s: float,
        clock: Callable[[], float],
        probe: Probe,
        log: Any,
    ) -> None:
        self._routes = routes
        self._next = 0
        self._cooldown = cooldown_s
        self._clock = clock
        self._probe = probe
        self._log = log

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(route.url for route in self._routes)

    def pending(self) -> int:
        """Requests awaiting their ack over all URLs."""
        return sum(len(route.acks) for route in self._routes)

    def next_ack_event(self) -> float | None:
        """Clock time of the next due ack poll or expiry over all URLs, or None."""
        times = [
            t
            for route in self._routes
            for t in (route.acks.next_poll_at(), route.acks.next_expiry_at())
            if t is not None
        ]
        return min(times) if times else None

    def next_with_room(self) -> tuple[Route | None, list[Route]]:
        """The next URL in rotation with room for another unacknowledged request (None: all
        usable ones are full), and the usable ones: those in rotation, or all when none is.
        """
        now = self._clock()
        routes = self._routes
        healthy = [route for route in routes if self._in_rotation(route, now)]
        candidates = healthy or routes  # all unwell: keep trying, the backoff paces us
        count = len(routes)
        for step in range(count):
            index = (self._next + step) % count
            route = routes[index]
            if route in candidates and not route.acks.full:
                self._next = index + 1
                return route, candidates
        return None, candidates

    def _in_rotation(self, route: Route, now: float) -> bool:
        if route.unhealthy_until is None:
            return True
        if now < route.unhealthy_until:
            return False
        healthy, code, reason = self._probe(route)
        if healthy:
            route.unhealthy_until = None
            self._log.info("hec_url_recovered", url=route.url, code=code)
            return True
        route.unhealthy_until = self._clock() + self._cooldown
        self._log.debug("hec_url_probe_failed", url=route.url, code=code, reason=reason)
        return False

    def mark_unhealthy(self, route: Route, reason: str) -> None:
        """Take ``route`` out of the rotation for the cool-down (logged once per spell)."""
        if route.unhealthy_until is None:
            self._log.warning(
                "hec_url_unhealthy", url=route.url, reason=reason, cooldown_s=self._cooldown
            )
        route.unhealthy_until = self._clock() + self._cooldown
