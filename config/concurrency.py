"""``SPLUNK_HEC_CONCURRENCY``: how many requests a deliverer keeps on the wire at once."""

from __future__ import annotations

from typing import Final

from config.errors import ConfigError
from config.settings import Concurrency

#: The value that asks for an adaptive limit (``forwarder.delivery.concurrency``).
ADAPTIVE: Final = "adaptive"
#: A fixed concurrency above this is a typo, not a plan: each request in flight is a channel
#: and a connection of its own.
MAX_CONCURRENCY: Final = 256


def parse_concurrency(key: str, raw: str) -> Concurrency:
    """A positive whole number of requests, or ``adaptive``.

    Raises:
        ConfigError: anything else, naming ``key``.
    """
    text = raw.strip().lower()
    if text == ADAPTIVE:
        return ADAPTIVE
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise ConfigError(
            key, f"expected a whole number from 1 to {MAX_CONCURRENCY} or adaptive, got {shown!r}"
        )
    return value
