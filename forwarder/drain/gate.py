"""The drain's health gate: is HEC fit to take replayed events now, and how long to wait
when it is not.

:class:`HecGate` probes every HEC URL: ``GET /services/collector/health`` (code 17), the
token (an empty event request: 400 code 5 means accepted; :meth:`HecClient.probe_token`)
and, where acks are on, a round trip to the ack endpoint (an ackId never handed out answers
``false``; nothing is indexed), so a HEC whose ack service is down keeps the gate shut. A
token with acks off (code 14) is not unhealthy: delivery then counts on the 200 alone.

:class:`Backoff` is the bounded pause between two failed gates or troubled cycles: it
doubles from ``first_s`` up to ``max_s`` and resets after a good cycle (pure, no clock).
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from config.settings import Settings
from forwarder.errors import AckUnavailableError, DeliveryError
from forwarder.hec.client import HecClient


@dataclass(frozen=True, slots=True)
class GateResult:
    """A probe's verdict, with its reason in words (for ``drain_gate_closed``)."""

    healthy: bool
    reason: str


class HecGate:
    """Probes HEC's health, token and (with acks on) ack service, URL by URL.

    Args:
        settings: the HEC settings (URLs, token, acks, timeouts, TLS).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(self) -> GateResult:
        """Probe every URL; healthy only when all of them pass."""
        with requests.Session() as session:
            for url in self._settings.hec.urls:
                result = self._probe(HecClient(session, self._settings.hec, url))
                if not result.healthy:
                    return GateResult(False, f"{url}: {result.reason}")
        return GateResult(True, "healthy")

    def _probe(self, client: HecClient) -> GateResult:
        healthy, code, text = client.health()
        if not healthy:
            return GateResult(False, f"health {code if code is not None else '-'}: {text}")
        try:
            token = client.probe_token()
        except DeliveryError as exc:
            return GateResult(False, f"token probe: {exc.message}")
        if token.action != "ok":
            return GateResult(False, f"token probe: {token.reason}")
        if self._settings.acks.enabled:
            try:
                client.query_acks([0])
            except AckUnavailableError:
                pass  # acks off on this token: delivery counts on the 200 alone
            except DeliveryError as exc:
                return GateResult(False, f"ack endpoint: {exc.message}")
        return GateResult(True, "healthy")


class Backoff:
    """The pause after a closed gate or a troubled cycle: ``first_s``, doubling, at most
    ``max_s``; :meth:`reset` after a cycle that went well."""

    def __init__(self, first_s: float, max_s: float) -> None:
        if first_s <= 0 or max_s < first_s:
            raise ValueError("need 0 < first_s <= max_s")
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        """The pause to take now; the one after it is twice as long (bounded)."""
        pause = self._next
        self._next = min(self._next * 2, self.max_s)
        return pause

    def reset(self) -> None:
        """Back to the first pause."""
        self._next = self.first_s
