"""The channels a deliverer sends on: over its HEC URLs, taking turns, resting when unwell.

One :class:`Route` per channel: its :class:`~forwarder.hec.client.HecClient` (URL and
channel), the acks pending on it and its health. With ``SPLUNK_HEC_CONCURRENCY`` at 1 there is
one route per URL; with N (or the adaptive ceiling) above the number of URLs, N routes spread
over the URLs in turn (:func:`build_routes`), each with a session of its own so that their
requests can be on the wire together. :class:`Routes` hands them out round-robin; a URL with
connection errors or an unhealthy answer (503 codes 18-20) leaves the rotation, all its
channels with it, for the cool-down, and comes back after a passing health probe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from config.settings import Settings
from forwarder.delivery.acks import AckTracker
from forwarder.delivery.work import Work
from forwarder.hec.client import HecClient

#: A health probe of one URL: (healthy, HEC code, reason).
Probe = Callable[["Route"], tuple[bool, int | None, str]]


def _idle(route: Route) -> bool:
    return False


@dataclass(slots=True, eq=False)
class Route:
    """One channel to one HEC URL: its client, its pending acks, its health."""

    client: HecClient
    acks: AckTracker[Work]
    acks_on: bool
    unhealthy_until: float | None = None
    #: The session the client uses when it has one of its own (None: the deliverer's).
    session: requests.Session | None = None

    @property
    def url(self) -> str:
        return self.client.url


def build_routes(
    settings: Settings,
    shared: requests.Session,
    channels: int,
    gzip_level: int,
    *,
    own_sessions: bool,
) -> list[Route]:
    """``channels`` routes (at least one per URL) over the URLs in turn.

    Args:
        settings: HEC and ack settings.
        shared: the session routes use unless they have their own.
        channels: how many; fewer than the URLs means one per URL.
        gzip_level: zlib level of the clients.
        own_sessions: give each route a session of its own (:attr:`Route.session`; the
            caller closes them), so that their requests can be on the wire together.
    """
    hec, acks = settings.hec, settings.acks
    urls = hec.urls
    routes = []
    for index in range(max(channels, len(urls))):
        own = requests.Session() if own_sessions else None
        routes.append(
            Route(
                HecClient(
                    own if own is not None else shared,
                    hec,
                    urls[index % len(urls)],
                    gzip_level=gzip_level,
                ),
                AckTracker(
                    timeout_s=acks.timeout_s,
                    poll_interval_s=acks.poll_interval_s,
                    max_pending=acks.max_pending,
                ),
                acks_on=acks.enabled,
                session=own,
            )
        )
    return routes


class Routes:
    """The channels in rotation order.

    Args:
        routes: one per channel; the URLs take turns among them.
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
        return tuple(dict.fromkeys(route.url for route in self._routes))

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

    def next_with_room(
        self, busy: Callable[[Route], bool] = _idle
    ) -> tuple[Route | None, list[Route]]:
        """The next channel in rotation with room for another unacknowledged request and no
        request on the wire (None: all usable ones are full or ``busy``), and the usable
        ones: those in rotation, or all when none is.

        A busy channel's URL is not probed through it (its session is taken): it counts as
        in rotation unless its URL is resting.
        """
        now = self._clock()
        routes = self._routes
        healthy = [
            route
            for route in routes
            if (route.unhealthy_until is None if busy(route) else self._in_rotation(route, now))
        ]
        candidates = healthy or routes  # all unwell: keep trying, the backoff paces us
        count = len(routes)
        for step in range(count):
            index = (self._next + step) % count
            route = routes[index]
            if route in candidates and not route.acks.full and not busy(route):
                self._next = index + 1
                return route, candidates
        return None, candidates

    def has_room(self, busy: Callable[[Route], bool]) -> bool:
        """Whether some channel has room and no request on the wire (health aside)."""
        return any(not route.acks.full and not busy(route) for route in self._routes)

    def _siblings(self, route: Route) -> list[Route]:
        """The channels to ``route``'s URL (health is the URL's)."""
        return [other for other in self._routes if other.url == route.url]

    def _in_rotation(self, route: Route, now: float) -> bool:
        if route.unhealthy_until is None:
            return True
        if now < route.unhealthy_until:
            return False
        healthy, code, reason = self._probe(route)
        siblings = self._siblings(route)
        if healthy:
            for other in siblings:
                other.unhealthy_until = None
            self._log.info("hec_url_recovered", url=route.url, code=code)
            return True
        until = self._clock() + self._cooldown
        for other in siblings:
            other.unhealthy_until = until
        self._log.debug("hec_url_probe_failed", url=route.url, code=code, reason=reason)
        return False

    def mark_unhealthy(self, route: Route, reason: str) -> None:
        """Take ``route``'s URL, all its channels, out of the rotation for the cool-down
        (logged once per spell)."""
        if route.unhealthy_until is None:
            self._log.warning(
                "hec_url_unhealthy", url=route.url, reason=reason, cooldown_s=self._cooldown
            )
        until = self._clock() + self._cooldown
        for other in self._siblings(route):
            other.unhealthy_until = until
