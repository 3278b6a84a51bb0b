"""Two-stage stop on SIGINT/SIGTERM, written once for every long-running command.

The first signal asks for a graceful stop: stop reading, finish or hand back what is in
flight (``stop`` is set and ``on_first`` runs). The second means "now": ``on_second`` runs,
which by default raises :class:`KeyboardInterrupt` in the main thread (exit status 130).
Handlers are installed only in the main thread (Python's rule) and the previous ones are
restored on exit, so tests and embedding callers are left as they were.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """What the handlers record: the stop event and how many signals arrived."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signals = 0

    @property
    def interrupted(self) -> bool:
        """True once at least one stop signal arrived."""
        return self.signals > 0


def _raise_interrupt(signum: int) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def two_stage_stop(
    *,
    on_first: Callable[[int], None] | None = None,
    on_second: Callable[[int], None] = _raise_interrupt,
    stop: threading.Event | None = None,
) -> Iterator[StopRequest]:
    """Install the two-stage handlers for the duration of the ``with`` block."""
    request = StopRequest()
    if stop is not None:
        request.stop = stop
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        request.signals += 1
        if request.signals > 1:
            on_second(signum)
            return
        request.stop.set()
        if on_first is not None:
            on_first(signum)

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
