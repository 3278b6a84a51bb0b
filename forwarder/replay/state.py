"""Replay state: the interface the engine uses (:class:`StateStore`), and its local SQLite
implementation (:class:`ReplayState`); the shared DynamoDB one, with leases, is
:mod:`forwarder.replay.dynamo_state`.

The engine, per object: :meth:`~StateStore.is_done` (a done object is skipped unread),
:meth:`~StateStore.claim` (the object's row and, where the store has leases, its lease: an
object leased by another live owner is skipped), :meth:`~StateStore.handled` (records an
earlier run handled), then per chunk, after the deliverers flushed,
:meth:`~StateStore.record_chunk`; at the end :meth:`~StateStore.finish_object` and
:meth:`~StateStore.set_disposition`, or :meth:`~StateStore.release_lease` for an object left
partial. A store with leases (``lease_s`` not None) has them renewed every third of
``lease_s`` while the object is replayed (:class:`forwarder.replay.state_store.LeaseKeeper`);
a renewal or a write refused because another owner holds the lease now stops the object
(:class:`LeaseLostError`).

The SQLite file:

An object is identified by bucket, key and ETag (a rewritten object is a new object). While an
object is being replayed, every *handled* record (its events acknowledged by HEC, or stored
under ``replay-failed/``) gets a row with its record number (0-based position in the object)
and its ``EventId``; rows are written in one transaction per chunk, after the deliverer
flushed that chunk, so a crash loses at most the chunk in flight (which is then re-sent: at
least once). When every record of an object is handled the object is marked ``done`` and its
record rows are deleted: the ``objects`` row is what makes a second run skip it unread.

Schema (``PRAGMA user_version`` = 1)::

    objects(id INTEGER PRIMARY KEY, bucket, key, etag, size, kind,
            status 'partial'|'done', records_handled, events_delivered, events_failed,
            disposition 'kept'|'archived'|'deleted'|NULL, started_at, updated_at, finished_at,
            UNIQUE(bucket, key, etag))
    records(object_id, record_no, event_id, events,
            outcome 'delivered'|'handed-to-firehose'|'replay-failed'|'mixed',
            PRIMARY KEY(object_id, record_no)) WITHOUT ROWID

The file uses WAL journaling, so one connection per thread can work at once: every write is a
short autocommit statement or one ``BEGIN IMMEDIATE`` transaction, and each connection waits
up to :data:`BUSY_TIMEOUT_S` for another's write lock (``busy_timeout``).

Opening is the exception. Turning a new file into WAL needs an exclusive lock that SQLite
takes *without* calling the busy handler, so two connections opening a fresh file at once
(``--concurrency N`` workers starting together) could fail with "database is locked" whatever
the timeout. :meth:`ReplayState.__init__` therefore sets the file up (WAL, schema, version)
under a per-file lock for the threads of this process, and retries a busy setup until the
timeout for other processes.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

SCHEMA_VERSION: Final = 1
#: How long a connection waits for another's lock before "database is locked".
BUSY_TIMEOUT_S: Final = 30.0
_SETUP_RETRY_S: Final = 0.05
#: ``handed-to-firehose``: put into a Firehose stream (``--via-firehose``); Firehose's
#: at-least-once from there on, not Splunk's acknowledgment.
Outcome = Literal["delivered", "handed-to-firehose", "replay-failed", "mixed"]
#: A handled record: ``(record_no, event_id, events, outcome)``.
Row = tuple[int, str | None, int, Outcome]
#: A store's handle on an object (the SQLite row id, the DynamoDB partition key).
ObjectId = int | str
#: What :meth:`StateStore.claim` got: the lease (``taken``), an expired lease of another
#: owner (``taken-over``: what that owner sent but did not record is sent again), or nothing
#: because another owner holds a live lease (``held-elsewhere``).
LeaseStatus = Literal["taken", "taken-over", "held-elsewhere"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER,
    kind TEXT,
    status TEXT NOT NULL DEFAULT 'partial' CHECK (status IN ('partial', 'done')),
    records_handled INTEGER NOT NULL DEFAULT 0,
    events_delivered INTEGER NOT NULL DEFAULT 0,
    events_failed INTEGER NOT NULL DEFAULT 0,
    disposition TEXT,
    started_at REAL,
    updated_at REAL,
    finished_at REAL,
    UNIQUE (bucket, key, etag)
);
CREATE TABLE IF NOT EXISTS records (
    object_id INTEGER NOT NULL REFERENCES objects (id),
    record_no INTEGER NOT NULL,
    event_id TEXT,
    events INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (object_id, record_no)
) WITHOUT ROWID;
"""

_setup_locks_guard: Final = threading.Lock()
_setup_locks: dict[str, threading.Lock] = {}


def _setup_lock(path: str) -> threading.Lock:
    """The lock serialising this process's set-ups of one state file."""
    key = os.path.realpath(path)
    with _setup_locks_guard:
        return _setup_locks.setdefault(key, threading.Lock())


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool((code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED))
    return "locked" in str(exc) or "busy" in str(exc)


class HandledRecords:
    """Which record numbers of an object are handled, as sorted disjoint ranges.

    Built once per object from the state; costs memory per *gap*, not per record, so a
    resumed huge object stays cheap (an uninterrupted run leaves one range).
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, numbers: Iterable[int] = ()) -> None:
        starts: list[int] = []
        ends: list[int] = []  # inclusive
        for number in numbers:  # ascending
            if ends and number == ends[-1] + 1:
                ends[-1] = number
            elif not ends or number > ends[-1]:
                starts.append(number)
                ends.append(number)
        self._starts = starts
        self._ends = ends

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> HandledRecords:
        """From inclusive ranges in any order, overlapping or touching ones merged."""
        handled = cls()
        for start, end in sorted(ranges):
            if handled._ends and start <= handled._ends[-1] + 1:
                handled._ends[-1] = max(handled._ends[-1], end)
            else:
                handled._starts.append(start)
                handled._ends.append(end)
        return handled

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int) or not self._starts:
            return False
        position = bisect.bisect_right(self._starts, number) - 1
        return position >= 0 and number <= self._ends[position]

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in zip(self._starts, self._ends, strict=True))

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The handled ranges, inclusive."""
        return list(zip(self._starts, self._ends, strict=True))


class LeaseLostError(Exception):
    """Another owner holds the object's lease now: nothing more is recorded for it."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What :meth:`StateStore.claim` found.

    Attributes:
        object_id: the handle for the other writes (None when ``held-elsewhere``).
        lease: see :data:`LeaseStatus`.
        done: the object was finished meanwhile (its lease is released again).
        previous_owner: the owner whose expired lease was taken over.
    """

    object_id: ObjectId | None
    lease: LeaseStatus = "taken"
    done: bool = False
    previous_owner: str | None = None


class StateStore(Protocol):
    """What the replay engine needs of its state (one store per worker thread)."""

    @property
    def lease_s(self) -> float | None:
        """How long a lease lasts unless renewed; None: the store has no leases."""
        ...

    def is_done(self, bucket: str, key: str, etag: str) -> bool:
        """Whether this object (this ETag) was fully replayed."""
        ...

    def handled(self, bucket: str, key: str, etag: str) -> HandledRecords:
        """The record numbers of this object already handled."""
        ...

    def claim(self, bucket: str, key: str, etag: str, size: int, kind: str | None) -> Claim:
        """Create the object's row on first sight and take its lease."""
        ...

    def renew_lease(self, object_id: ObjectId) -> bool:
        """Extend the lease; False when another owner holds it now.

        Raises:
            Exception: the store could not be reached (try again later).
        """
        ...

    def release_lease(self, object_id: ObjectId) -> None:
        """Give the lease up (an object left partial), if still ours."""
        ...

    def record_chunk(
        self, object_id: ObjectId, rows: Sequence[Row], *, delivered: int, failed: int
    ) -> None:
        """Mark records handled (after the flush), at once.

        Raises:
            LeaseLostError: another owner holds the lease; nothing was recorded.
        """
        ...

    def finish_object(self, object_id: ObjectId) -> None:
        """Mark the object done (releasing its lease) and forget its handled records.

        Raises:
            LeaseLostError: another owner holds the lease; nothing was recorded.
        """
        ...

    def set_disposition(self, object_id: ObjectId, disposition: str) -> None:
        """Record what happened to a done object: ``kept``, ``archived`` or ``deleted``."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class ReplayState:
    """One connection to the state file (open one per thread); a :class:`StateStore`
    without leases (one machine replays from a file).

    Args:
        path: the SQLite file (parent directories are created), or ``:memory:``.
        readonly: open without writing (dry runs); a missing file reads as empty.
        clock: wall clock for the timestamps.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        self.lease_s: float | None = None
        self._clock = clock
        self._conn: sqlite3.Connection | None
        if readonly:
            if self.path != ":memory:" and not Path(self.path).is_file():
                self._conn = None
                return
            uri = f"file:{Path(self.path).resolve()}?mode=ro" if self.path != ":memory:" else ""
            self._conn = (
                sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
                if uri
                else sqlite3.connect(":memory:", timeout=BUSY_TIMEOUT_S)
            )
            return
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if self.path == ":memory:":
                _set_up(conn, self.path)
            else:
                with _setup_lock(self.path):
                    _set_up_retrying(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ReplayState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tables_exist(self) -> bool:
        if self._conn is None:
            return False
        row = self._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='objects'"
        ).fetchone()
        return bool(row[0])

    def _write_conn(self) -> sqlite3.Connection:
        if self._conn is None or self.readonly:
            raise RuntimeError("the replay state is open read-only")
        return self._conn

    # ------------------------------------------------------------------ reads

    def is_done(self, bucket: str, key: str, etag: str) -> bool:
        """Whether this object (this ETag) was fully replayed."""
        if not self._tables_exist():
            return False
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT status FROM objects WHERE bucket=? AND key=? AND etag=?", (bucket, key, etag)
        ).fetchone()
        return row is not None and row[0] == "done"

    def handled(self, bucket: str, key: str, etag: str) -> HandledRecords:
        """The record numbers of this object already handled by earlier runs."""
        if not self._tables_exist():
            return HandledRecords()
        assert self._conn is not None
        cursor = self._conn.execute(
            "SELECT r.record_no FROM records r JOIN objects o ON o.id = r.object_id "
            "WHERE o.bucket=? AND o.key=? AND o.etag=? ORDER BY r.record_no",
            (bucket, key, etag),
        )
        return HandledRecords(row[0] for row in cursor)

    def objects(self) -> list[dict[str, object]]:
        """Every object row, for reports and tests."""
        if not self._tables_exist():
            return []
        assert self._conn is not None
        cursor = self._conn.execute("SELECT * FROM objects ORDER BY bucket, key")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def record_rows(self, bucket: str, key: str) -> list[tuple[int, str | None, int, str]]:
        """``(record_no, event_id, events, outcome)`` rows of an object's current versions."""
        if not self._tables_exist():
            return []
        assert self._conn is not None
        return list(
            self._conn.execute(
                "SELECT r.record_no, r.event_id, r.events, r.outcome FROM records r "
                "JOIN objects o ON o.id = r.object_id WHERE o.bucket=? AND o.key=? "
                "ORDER BY r.record_no",
                (bucket, key),
            )
        )

    # ------------------------------------------------------------------ writes

    def claim(self, bucket: str, key: str, etag: str, size: int, kind: str | None) -> Claim:
        """The object's row (created on first sight); no lease to take."""
        return Claim(self.begin_object(bucket, key, etag, size, kind))

    def renew_lease(self, object_id: ObjectId) -> bool:
        """No leases here: always ours."""
        del object_id
        return True

    def release_lease(self, object_id: ObjectId) -> None:
        """No leases here: nothing to release."""
        del object_id

    def begin_object(self, bucket: str, key: str, etag: str, size: int, kind: str | None) -> int:
        """The object's row id, creating the row (status ``partial``) on first sight."""
        conn = self._write_conn()
        now = self._clock()
        conn.execute(
            "INSERT INTO objects (bucket, key, etag, size, kind, started_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key, etag) DO NOTHING",
            (bucket, key, etag, size, kind, now, now),
        )
        row = conn.execute(
            "SELECT id FROM objects WHERE bucket=? AND key=? AND etag=?", (bucket, key, etag)
        ).fetchone()
        return int(row[0])

    def record_chunk(
        self,
        object_id: ObjectId,
        rows: Sequence[Row],
        *,
        delivered: int,
        failed: int,
    ) -> None:
        """Mark records handled, in one transaction.

        Args:
            object_id: from :meth:`begin_object`.
            rows: ``(record_no, event_id, events, outcome)`` per handled record.
            delivered: events of these records HEC acknowledged.
            failed: events of these records stored under ``replay-failed/``.
        """
        conn = self._write_conn()
        with _transaction(conn):
            conn.executemany(
                "INSERT OR REPLACE INTO records (object_id, record_no, event_id, events, outcome) "
                "VALUES (?, ?, ?, ?, ?)",
                ((object_id, *row) for row in rows),
            )
            conn.execute(
                "UPDATE objects SET records_handled = records_handled + ?, "
                "events_delivered = events_delivered + ?, events_failed = events_failed + ?, "
                "updated_at = ? WHERE id = ?",
                (len(rows), delivered, failed, self._clock(), object_id),
            )

    def finish_object(self, object_id: ObjectId) -> None:
        """Mark the object done and forget its per-record rows."""
        conn = self._write_conn()
        now = self._clock()
        with _transaction(conn):
            conn.execute(
                "UPDATE objects SET status='done', finished_at=?, updated_at=? WHERE id=?",
                (now, now, object_id),
            )
            conn.execute("DELETE FROM records WHERE object_id=?", (object_id,))

    def set_disposition(self, object_id: ObjectId, disposition: str) -> None:
        """Record what happened to a done object: ``kept``, ``archived`` or ``deleted``."""
        self._write_conn().execute(
            "UPDATE objects SET disposition=?, updated_at=? WHERE id=?",
            (disposition, self._clock(), object_id),
        )


def _set_up_retrying(conn: sqlite3.Connection, path: str) -> None:
    """:func:`_set_up`, retried while another process holds the lock it needs."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            _set_up(conn, path)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        else:
            return
        time.sleep(_SETUP_RETRY_S)


def _set_up(conn: sqlite3.Connection, path: str) -> None:
    """WAL journaling, then the schema and its version in one transaction.

    Raises:
        ValueError: the file's schema is newer than this forwarder's.
        sqlite3.OperationalError: e.g. "database is locked" by another process.
    """
    # WAL is a property of the file: switch only a new (or rollback-journal) file; the switch
    # needs an exclusive lock that SQLite does not wait for.
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a power cut may forget the last chunks (re-sent: at least once),
    # never corrupt the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    with _transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(
                f"{path}: replay state schema {version} is newer than this forwarder "
                f"({SCHEMA_VERSION})"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
