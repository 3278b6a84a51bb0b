"""Opening the replay state a :data:`~forwarder.replay.options.StateSpec` names
(:func:`open_state`), and keeping an object's lease alive while it is replayed
(:class:`LeaseKeeper`).

``forwarder replay`` and ``forwarder drain`` both call::

    spec = parse_state_spec(args.state, environ, lease_s=args.lease_s)  # ConfigError if bad
    store = open_state(spec, readonly=dry_run)                         # one per thread

The DynamoDB store (:mod:`forwarder.replay.dynamo_state`) is imported only when a
``dynamodb://`` spec is opened, so a SQLite run never loads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from forwarder import aws
from forwarder.replay.options import DynamoStateSpec, SqliteStateSpec, StateSpec
from forwarder.replay.state import ObjectId, ReplayState, StateStore

_log = structlog.get_logger("forwarder.replay.state_store")

#: Renewals per lease duration: a lease survives two failed renewals in a row.
RENEWALS_PER_LEASE: Final = 3


def open_state(
    spec: StateSpec,
    *,
    readonly: bool = False,
    clock: Callable[[], float] = time.time,
    client_factory: aws.ClientFactory = aws.client,
    owner: str | None = None,
) -> StateStore:
    """Open the state ``spec`` names (open one per thread; close it when done).

    Args:
        spec: from :func:`forwarder.replay.options.parse_state_spec`.
        readonly: dry runs: nothing is written (a missing SQLite file reads as empty).
        clock: wall clock, epoch seconds (time stamps; lease expiry).
        client_factory: builds the DynamoDB client (endpoint and region from the environment).
        owner: the lease owner id (DynamoDB; default: host, pid and a random part).

    Raises:
        ValueError: a SQLite file with a newer schema.
        sqlite3.Error, OSError: the SQLite file cannot be opened.
    """
    if isinstance(spec, SqliteStateSpec):
        return ReplayState(spec.path, readonly=readonly, clock=clock)
    assert isinstance(spec, DynamoStateSpec)
    from forwarder.replay.dynamo_state import (  # noqa: PLC0415 - loads botocore; DynamoDB only
        DynamoReplayState,
    )

    return DynamoReplayState(
        spec.table,
        client=client_factory("dynamodb"),
        lease_s=spec.lease_s,
        readonly=readonly,
        clock=clock,
        owner=owner,
    )


class LeaseKeeper:
    """Renews one object's lease from a daemon thread every ``interval_s`` until stopped.

    A renewal the store refuses (another owner holds the lease now) sets :attr:`lost` and
    ends the thread; the replay then stops the object and records nothing more. A renewal
    that fails (the store unreachable) is logged (``replay_lease_renew_failed``) and tried
    again at the next interval: the chunk commit, conditional on the lease, decides.

    Args:
        renew: one renewal; False when the lease is lost.
        interval_s: seconds between renewals (a third of the lease).
        key: the object's key, for the log.
    """

    def __init__(self, renew: Callable[[], bool], interval_s: float, *, key: str) -> None:
        self._renew = renew
        self._interval = interval_s
        self._key = key
        self._stopping = threading.Event()
        self.lost = threading.Event()
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name="replay-lease", daemon=True)

    @classmethod
    def for_store(cls, store: StateStore, object_id: ObjectId, *, key: str) -> LeaseKeeper:
        """A keeper renewing ``object_id``'s lease in ``store`` (a store with leases)."""
        lease_s = store.lease_s
        assert lease_s is not None
        return cls(lambda: store.renew_lease(object_id), lease_s / RENEWALS_PER_LEASE, key=key)

    def start(self) -> LeaseKeeper:
        """Start renewing."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (waits for a renewal in flight)."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                kept = self._renew()
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                _log.warning("replay_lease_renew_failed", key=self._key, error=str(exc))
                continue
            if not kept:
                self.lost.set()
                return
            self.renewals += 1
