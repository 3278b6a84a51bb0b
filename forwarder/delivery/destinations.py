"""Several Splunks from one deployment: one :class:`Deliverer` per ``[destinations.NAME]``.

:func:`build_delivery` is how every mode makes its delivery: with no ``[destinations.NAME]``
table it is the one :class:`Deliverer`, exactly as before (no facade, no overhead); with some,
a :class:`Destinations` holding one deliverer per destination (``default``, the top-level
HEC settings, first), each with its own channels, acks, retries, backsplash prefix and
ledger row. :func:`member` picks the deliverer of a batch's destination from either, so a
caller writes ``member(delivery, batch.destination).submit(batch.events, batch.raw_target)``.

The facade has the deliverer's public API (submit, service, next_wakeup, flush, close,
set_deadline, abort, release, fatal, ledger and use_ledger, pending_acks, urls), each
applied to every destination. Counting: the caller's ledger is the one it always was;
each destination counts on its row (``Ledger.destination``), which adds up into it, so
``delivery_summarized`` keeps its name and totals and gains ``destinations``.

A fatal token error stops only its destination: that deliverer backsplashes what it holds
and everything submitted to it later (each record naming the destination), while the others
go on. :attr:`Destinations.fatal` is the first destination's fatal error (exit status
``HEC_FATAL``, as with one deliverer); :func:`keeps_delivering` tells a caller that stops on
a fatal error whether some destination still delivers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from config.settings import Settings
from forwarder.backsplash.writers import BacksplashWriter, DestinationBacksplash
from forwarder.delivery.deliverer import Deliverer
from forwarder.delivery.ledger import Ledger
from forwarder.errors import FatalHecError
from transforms.options import DEFAULT_DESTINATION
from transforms.records import EncodedEvent, RawTarget

_log = structlog.get_logger("forwarder.delivery.destinations")


class Destinations:
    """One deliverer per destination, behind the deliverer's public API.

    Not thread-safe, like a deliverer: one thread submits, flushes and closes.

    Args:
        members: the deliverers by destination name, ``default`` first.
        log: a structlog logger for the summary (``delivery_summarized``).
    """

    def __init__(self, members: Mapping[str, Deliverer], *, log: Any = None) -> None:
        if DEFAULT_DESTINATION not in members:
            raise ValueError("the default destination is required")
        self._members = dict(members)
        self._log = log if log is not None else _log
        self._ledger = Ledger()
        self.use_ledger(self._ledger)
        self._closed = False

    # ------------------------------------------------------------------ the destinations

    @property
    def names(self) -> tuple[str, ...]:
        """The destinations' names, ``default`` first."""
        return tuple(self._members)

    def member(self, name: str) -> Deliverer:
        """The deliverer of destination ``name``.

        Raises:
            KeyError: no destination has that name.
        """
        return self._members[name]

    @property
    def members(self) -> dict[str, Deliverer]:
        """The deliverers by destination name."""
        return dict(self._members)

    @property
    def fatal_destinations(self) -> dict[str, FatalHecError]:
        """The destinations stopped by a fatal HEC error, with it."""
        return {
            name: deliverer.fatal
            for name, deliverer in self._members.items()
            if deliverer.fatal is not None
        }

    # ------------------------------------------------------------------ the deliverer's API

    @property
    def ledger(self) -> Ledger:
        """The ledger every destination counts on (through its row)."""
        return self._ledger

    def use_ledger(self, ledger: Ledger) -> None:
        """Count the next unit of work on ``ledger``, each destination on its row of it."""
        self._ledger = ledger
        for name, deliverer in self._members.items():
            deliverer.use_ledger(ledger.destination(name))

    @property
    def fatal(self) -> FatalHecError | None:
        """The fatal HEC error of the first destination that has one (exit status
        ``HEC_FATAL``); the other destinations may still deliver (:func:`keeps_delivering`)."""
        for deliverer in self._members.values():
            if deliverer.fatal is not None:
                return deliverer.fatal
        return None

    @property
    def pending_acks(self) -> int:
        """Requests sent and not yet acknowledged, over every destination."""
        return sum(deliverer.pending_acks for deliverer in self._members.values())

    @property
    def concurrency(self) -> int:
        """Requests that may be on the wire now, over every destination."""
        return sum(deliverer.concurrency for deliverer in self._members.values())

    @property
    def urls(self) -> tuple[str, ...]:
        """Every destination's HEC URLs (``default``'s first)."""
        return tuple(url for deliverer in self._members.values() for url in deliverer.urls)

    @property
    def deadline(self) -> float | None:
        """The deadline set by :meth:`set_deadline`, or None."""
        return self._members[DEFAULT_DESTINATION].deadline

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called."""
        return all(deliverer.aborted for deliverer in self._members.values())

    def set_deadline(self, deadline: float | None) -> None:
        """Set every destination's deadline (see ``Deliverer.set_deadline``)."""
        for deliverer in self._members.values():
            deliverer.set_deadline(deadline)

    def abort(
        self, reason_code: str = "Splunk.Shutdown", message: str = "delivery aborted"
    ) -> None:
        """Abort every destination (see ``Deliverer.abort``); safe from any thread."""
        for deliverer in self._members.values():
            deliverer.abort(reason_code, message)

    def submit(
        self,
        events: Sequence[EncodedEvent],
        raw_target: RawTarget | None = None,
        destination: str = DEFAULT_DESTINATION,
    ) -> None:
        """Hand events to their destination's deliverer (see ``Deliverer.submit``).

        Raises:
            KeyError: no destination has that name.
            BacksplashError: events had to be backsplashed and the write failed.
        """
        self._members[destination].submit(events, raw_target)

    def service(self) -> None:
        """Do what is due in every destination, without waiting."""
        for deliverer in self._members.values():
            deliverer.service()

    def next_wakeup(self) -> float | None:
        """The earliest time a destination has something to do, or None."""
        due = [
            wakeup
            for wakeup in (deliverer.next_wakeup() for deliverer in self._members.values())
            if wakeup is not None
        ]
        return min(due) if due else None

    def flush(self, deadline: float | None = None) -> None:
        """Flush every destination (see ``Deliverer.flush``): each first sends what is due,
        so none waits for its acks while another flushes.

        Raises:
            BacksplashError: a backsplash write failed.
        """
        for deliverer in self._members.values():
            deliverer.service()
        for deliverer in self._members.values():
            deliverer.flush(deadline)

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        """Flush and close every destination, then log the ledger (``delivery_summarized``,
        with a row per destination).

        Raises:
            BacksplashError: a backsplash write failed while flushing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(deadline)
            for deliverer in self._members.values():
                deliverer.close(deadline, summarize=False)
        except BaseException:
            # As a deliverer's close after a failed flush: nothing more is sent or stored,
            # what is left stays counted in flight, and the I/O threads stop.
            for deliverer in self._members.values():
                deliverer.release()
            raise
        finally:
            if summarize:
                self._ledger.log_summary(self._log, fatal=self.fatal is not None)

    def release(self) -> None:
        """Release every destination (see ``Deliverer.release``)."""
        self._closed = True
        for deliverer in self._members.values():
            deliverer.release()

    def __enter__(self) -> Destinations:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: What :func:`build_delivery` makes: the one deliverer, or one per destination.
Delivery = Deliverer | Destinations


def build_delivery(
    settings: Settings,
    *,
    backsplash: BacksplashWriter | None,
    log: Any = None,
    **options: Any,
) -> Delivery:
    """The delivery for ``settings``: one :class:`Deliverer` when there is no
    ``[destinations.NAME]`` table, else :class:`Destinations`.

    Args:
        settings: the settings (``settings.for_destination(name)`` for each destination).
        backsplash: the backsplash; each named destination writes through a
            :class:`DestinationBacksplash` (its name in each record, its prefix).
        log: a structlog logger; each destination's is bound with ``destination=NAME``.
        options: passed to every :class:`Deliverer` (clock, sleep, stop_event, ...); a
            ``session`` to the default destination's only.
    """
    if not settings.destinations:
        return Deliverer(settings, backsplash=backsplash, log=log, **options)
    logger = log if log is not None else _log
    members: dict[str, Deliverer] = {}
    for name in settings.destination_names:
        own = settings.for_destination(name)
        writer = backsplash
        if name != DEFAULT_DESTINATION and backsplash is not None:
            prefix = next(d.backsplash_prefix for d in settings.destinations if d.name == name)
            writer = DestinationBacksplash(backsplash, name, prefix)
        # A session given is the default destination's: requests.Session is not for two
        # deliverers' I/O threads at once, so the others make their own.
        mine = options if name == DEFAULT_DESTINATION else _without(options, "session")
        members[name] = Deliverer(own, backsplash=writer, log=logger.bind(destination=name), **mine)
    return Destinations(members, log=logger)


def _without(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != name}


def member(delivery: Delivery, destination: str) -> Deliverer:
    """The deliverer for events bound to ``destination`` (a batch's ``destination``): the
    one deliverer itself when there are no destinations (the settings allow no other name).

    Raises:
        KeyError: a facade has no destination of that name.
    """
    if isinstance(delivery, Destinations):
        return delivery.member(destination)
    return delivery


def keeps_delivering(delivery: Delivery) -> bool:
    """Whether some destination still delivers although another hit a fatal error: a caller
    that stops on ``fatal`` goes on while this holds (False for a single deliverer)."""
    if isinstance(delivery, Destinations):
        return any(deliverer.fatal is None for deliverer in delivery.members.values())
    return False
