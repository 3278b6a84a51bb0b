"""The ``kinesis`` source: every shard of a stream, checkpointed per shard.

Kinesis follows splits and merges: a child shard is read only once all its parents are read to
their end and that end is checkpointed (``SHARD_END``). Throttling (``ProvisionedThroughput
ExceededException``) backs the shard off exponentially. One daemon per stream (DESIGN.md §8).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.daemon import SourceSettings
from forwarder.sources.base import EndlessSource, SourceRecord, poll_wait
from forwarder.sources.checkpoints import SHARD_END, CheckpointStore, pin_position, pinned_at

_log = structlog.get_logger("forwarder.sources.kinesis")


@dataclass(slots=True, eq=False)
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool
    ending_seq: str | None = None
    iterator: str | None = None
    read_seq: str | None = None
    committed: str | None = None
    #: ``LATEST`` pinned: epoch seconds to re-read from (``AT_TIMESTAMP``) while no record
    #: of the shard is known (its first iterator expired, its first records were released,
    #: a restart); also in the checkpoint store until a sequence number replaces it.
    pin_s: float | None = None
    #: The first ``LATEST`` iterator was taken: from now on the pin stands for it.
    latest_taken: bool = False
    ended: bool = False
    finished: bool = False
    next_at: float = 0.0
    backoff_s: float = 0.0
    lag_ms: int | None = None
    #: Clock time of the last answered GetRecords (None: never read yet).
    read_at: float | None = None
    #: Clock time the shard became known (the lag of a shard not read yet runs from here).
    known_since: float = 0.0


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


#: A ``LATEST`` pin is set this long before the moment the shard is first seen, so a local
#: clock ahead of Kinesis' cannot make ``AT_TIMESTAMP`` skip records (a few older records may
#: come: duplicates-at-worst, never a gap).
LATEST_PIN_MARGIN_S: Final = 5.0


class KinesisSource(EndlessSource):
    """All shards of a stream (or a list and their descendants), checkpointed per shard.

    What must survive a crash is in the checkpoint store, never only in memory:

    - a shard read to its end is committed as ``SHARD_END`` as soon as nothing read from it is
      still in doubt: by :meth:`commit` when its last records are delivered, or by
      :meth:`poll` itself when the end comes on a read with no records and everything
      before it is already committed (a caught-up daemon, or a restart on a closed shard),
      so the children are read without waiting for a cycle that took records;
    - a shard started at ``LATEST`` is pinned first (:func:`~forwarder.sources.checkpoints.
      pin_position`): an iterator that expires before the first record, records released
      by a shutdown, or a restart before the first checkpoint, resume from that moment
      (``AT_TIMESTAMP``) instead of a new ``LATEST``.

    Args:
        client: a boto3 Kinesis client.
        settings: the ``[source]`` settings.
        checkpoints: where positions live.
        stop_event: set on shutdown; waits end early.
        clock: monotonic clock.
        wall_clock: epoch seconds (``LATEST`` pins).
    """

    def __init__(
        self,
        client: Any,
        settings: SourceSettings,
        checkpoints: CheckpointStore,
        *,
        stop_event: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        assert settings.stream_name is not None
        super().__init__(
            "kinesis", settings, stop_event=stop_event, clock=clock, wall_clock=wall_clock
        )
        self.stream_name = settings.stream_name
        self._client = client
        self._checkpoints = checkpoints
        self._shards: dict[str, _Shard] = {}
        self._positions: dict[str, str] = {}
        self._next_refresh = 0.0
        self._turn = 0

    def lag_seconds(self) -> float | None:
        """How far behind the stream the daemon is, in seconds (the largest over shards).

        A shard being read: its last ``MillisBehindLatest``, plus the time since that read
        beyond one ``poll_interval_s`` (a reader that stopped reading, whatever the cause,
        falls behind by the time it stopped). A shard not read yet (a child waiting for its
        parents, for instance): the time since it became known. A shard read to its end adds
        nothing itself (its children carry the lag). So a stall shows as a growing lag,
        never as 0.
        """
        now = self._clock()
        idle = self._settings.poll_interval_s
        lags: list[float] = []
        for shard in self._shards.values():
            if shard.finished or shard.ended:
                continue
            if shard.read_at is None:
                lags.append(max(now - shard.known_since, 0.0))
            else:
                behind = (shard.lag_ms or 0) / 1000.0
                lags.append(behind + max(now - shard.read_at - idle, 0.0))
        return max(lags) if lags else None

    def attach(self) -> None:
        """Load checkpoints and list the shards.

        Raises:
            ClientError, BotoCoreError: the stream cannot be described.
        """
        self._positions = self._checkpoints.load(self.stream_name)
        self._refresh()
        self._attached = True
        _log.info(
            "source_attached",
            source="kinesis",
            stream=self.stream_name,
            shards=len(self._shards),
            checkpoints=len(self._positions),
        )

    def _list_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            if token is None:
                page = self._client.list_shards(StreamName=self.stream_name)
            else:
                page = self._client.list_shards(NextToken=token)
            shards.extend(page.get("Shards", []))
            token = page.get("NextToken")
            if not token:
                return shards

    def _wanted(self, shard_id: str, parents: dict[str, tuple[str, ...]]) -> bool:
        configured = self._settings.shard_ids
        if not configured:
            return True
        seen: set[str] = set()
        pending = [shard_id]
        while pending:
            current = pending.pop()
            if current in configured:
                return True
            if current in seen:
                continue
            seen.add(current)
            pending.extend(parents.get(current, ()))
        return False

    def _refresh(self) -> None:
        listed = self._list_shards()
        parents = {
            item["ShardId"]: tuple(
                p for p in (item.get("ParentShardId"), item.get("AdjacentParentShardId")) if p
            )
            for item in listed
        }
        added: dict[str, _Shard] = {}
        fresh: list[_Shard] = []
        for item in listed:
            shard_id = item["ShardId"]
            ending = item.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            known = self._shards.get(shard_id)
            if known is not None:
                known.closed = ending is not None
                known.ending_seq = ending
                continue
            if not self._wanted(shard_id, parents):
                continue
            shard = _Shard(
                shard_id,
                parents[shard_id],
                ending is not None,
                ending,
                known_since=self._clock(),
            )
            position = self._positions.get(shard_id)
            pinned = pinned_at(position)
            if position == SHARD_END:
                shard.ended = shard.finished = True
                shard.committed = SHARD_END
            elif pinned is not None:
                shard.pin_s = pinned
                shard.latest_taken = True  # a restart: resume from the pin, not a new LATEST
            elif position:
                shard.committed = shard.read_seq = position
            else:
                fresh.append(shard)
            added[shard_id] = shard
        pins: dict[str, str] = {}
        for shard in fresh:
            if self._starts_at_latest(shard, {**self._shards, **added}):
                shard.pin_s = self._wall_clock() - LATEST_PIN_MARGIN_S
                pins[shard.shard_id] = pin_position(shard.pin_s)
        if pins:
            # Durable before the shards are known (so before their first read): a later
            # LATEST would skip what arrives meanwhile. If this fails, they stay unknown and
            # the next refresh (or attach) pins them again.
            self._checkpoints.save(self.stream_name, pins)
            self._positions.update(pins)
            _log.info("shard_pinned", stream=self.stream_name, shards=sorted(pins))
        for shard_id, shard in added.items():
            self._shards[shard_id] = shard
            _log.info(
                "shard_discovered",
                stream=self.stream_name,
                shard=shard_id,
                parents=list(shard.parents),
                closed=shard.closed,
                position=self._positions.get(shard_id),
            )
        self._next_refresh = self._clock() + self._settings.shard_refresh_interval_s

    def _starts_at_latest(self, shard: _Shard, shards: dict[str, _Shard]) -> bool:
        """A shard without a checkpoint that :meth:`_iterator` starts at ``LATEST`` (not a
        child of a shard we read)."""
        if self._settings.start_position != "LATEST":
            return False
        return not any(parent in shards for parent in shard.parents)

    def _ready(self, shard: _Shard) -> bool:
        """Not finished, and every parent we know is finished (parents before children)."""
        if shard.finished or shard.ended:
            return False
        return all(
            self._shards[parent].finished for parent in shard.parents if parent in self._shards
        )

    def _iterator(self, shard: _Shard) -> str:
        arguments: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard.shard_id}
        if shard.read_seq:
            arguments.update(
                ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=shard.read_seq
            )
        elif any(parent in self._shards for parent in shard.parents):
            arguments["ShardIteratorType"] = "TRIM_HORIZON"  # a child: from its very start
        elif shard.pin_s is not None and shard.latest_taken:
            # LATEST again would skip whatever arrived since the first iterator.
            arguments.update(
                ShardIteratorType="AT_TIMESTAMP",
                Timestamp=datetime.fromtimestamp(shard.pin_s, tz=UTC),
            )
        else:
            arguments["ShardIteratorType"] = self._settings.start_position
            shard.latest_taken = shard.pin_s is not None
        _log.debug(
            "shard_iterator_fetched", shard=shard.shard_id, kind=arguments["ShardIteratorType"]
        )
        iterator: str = self._client.get_shard_iterator(**arguments)["ShardIterator"]
        return iterator

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Read the shards that are due, round-robin, up to ``max_records`` records.

        When no shard is due, wait (interruptibly) until one is, at most ``poll_interval_s``
        (or ``wait_s`` when shorter).
        Writes to the checkpoint store (``SHARD_END`` of shards read to their end, pins) happen
        before any read, so a failing store raises with nothing read; a read that fails after
        other shards gave records ends the poll with those records (the failed shard is read
        again next time), so records read are never lost to an exception.

        Raises:
            ClientError, BotoCoreError, OSError: Kinesis or the checkpoint store failed before
                anything was read.
        """
        now = self._clock()
        if now >= self._next_refresh:
            self._refresh()
        self._finish_ended()
        ready = [shard for shard in self._shards.values() if self._ready(shard)]
        out: list[SourceRecord] = []
        if ready:
            start = self._turn % len(ready)
            self._turn += 1
            for shard in ready[start:] + ready[:start]:
                if len(out) >= max_records:
                    break
                if shard.next_at > self._clock():
                    continue
                try:
                    out.extend(self._read(shard, max_records - len(out)))
                except (ClientError, BotoCoreError) as exc:
                    if not out:
                        raise
                    shard.iterator = None
                    _log.warning(
                        "source_read_failed",
                        shard=shard.shard_id,
                        reason=f"{type(exc).__name__}: {exc}",
                    )
                    break
        if not out:
            due = [s.next_at for s in self._shards.values() if self._ready(s)]
            wait = poll_wait(self._settings.poll_interval_s, wait_s)
            if due:
                wait = min(wait, max(min(due) - self._clock(), 0.0))
            if wait > 0:
                self._stop.wait(wait)
        return out

    def _read(self, shard: _Shard, limit: int) -> list[SourceRecord]:
        settings = self._settings
        try:
            if shard.iterator is None:
                shard.iterator = self._iterator(shard)
            answer = self._client.get_records(
                ShardIterator=shard.iterator, Limit=min(limit, settings.max_records)
            )
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                shard.backoff_s = min(
                    max(shard.backoff_s * 2, settings.throttle_backoff_s),
                    settings.throttle_backoff_max_s,
                )
                shard.next_at = self._clock() + shard.backoff_s
                _log.warning(
                    "source_throttled", shard=shard.shard_id, code=code, backoff_s=shard.backoff_s
                )
                return []
            if code == "ExpiredIteratorException":
                shard.iterator = None  # fetched again from what was read (or the pin)
                _log.info("shard_iterator_expired", shard=shard.shard_id)
                return []
            if code == "ResourceNotFoundException":
                shard.iterator = None
                shard.next_at = self._clock() + settings.poll_interval_s
                self._next_refresh = 0.0
                _log.warning("source_read_failed", shard=shard.shard_id, code=code)
                return []
            raise
        shard.backoff_s = 0.0
        shard.read_at = self._clock()
        records = answer.get("Records", [])
        shard.lag_ms = answer.get("MillisBehindLatest")
        shard.iterator = answer.get("NextShardIterator")
        out: list[SourceRecord] = []
        previous = shard.read_seq
        for record in records:
            out.append(
                SourceRecord(payload=bytes(record["Data"]), position=(shard.shard_id, previous))
            )
            previous = record["SequenceNumber"]
        if records:
            shard.read_seq = records[-1]["SequenceNumber"]
            shard.next_at = 0.0
        else:
            shard.next_at = self._clock() + settings.poll_interval_s
        if shard.iterator is None or self._closed_and_drained(shard, bool(records)):
            shard.ended = True
            self._next_refresh = 0.0  # its children may be new to us
            _log.info("shard_ended", stream=self.stream_name, shard=shard.shard_id)
        return out

    def _finish_ended(self) -> None:
        """Commit ``SHARD_END`` for shards read to their end with nothing read from them in
        doubt (everything committed): the end came on a read with no records. No cycle with
        records has to do it (there may be none: the new records are in the children, which
        wait for this). Retried on every poll until the store takes it."""
        ended = [
            shard
            for shard in self._shards.values()
            if shard.ended and not shard.finished and shard.read_seq == shard.committed
        ]
        if not ended:
            return
        self._checkpoints.save(self.stream_name, {shard.shard_id: SHARD_END for shard in ended})
        for shard in ended:
            shard.committed = SHARD_END
            shard.finished = True
            _log.info("shard_end_committed", stream=self.stream_name, shard=shard.shard_id)

    def _closed_and_drained(self, shard: _Shard, got_records: bool) -> bool:
        """A closed shard read past its last sequence number (or empty and not behind).

        Kinesis says SHARD_END with a null NextShardIterator; this also covers servers
        (emulators) that keep handing out iterators for closed shards.
        """
        if not shard.closed:
            return False
        if shard.read_seq is not None and shard.ending_seq is not None:
            with contextlib.suppress(ValueError):
                if int(shard.read_seq) >= int(shard.ending_seq):
                    return True
        return not got_records and shard.lag_ms == 0

    def commit(self) -> int:
        """Checkpoint every shard past what it returned; ended shards become ``SHARD_END``."""
        positions: dict[str, str] = {}
        for shard in self._shards.values():
            if shard.finished:
                continue
            if shard.ended:
                positions[shard.shard_id] = SHARD_END
            elif shard.read_seq is not None and shard.read_seq != shard.committed:
                positions[shard.shard_id] = shard.read_seq
        if positions:
            self._checkpoints.save(self.stream_name, positions)
            for shard_id, position in positions.items():
                shard = self._shards[shard_id]
                shard.committed = position
                if position == SHARD_END:
                    shard.finished = True
        return len(positions)

    def release(self, records: Sequence[SourceRecord]) -> None:
        """Rewind each shard to just before its first record in ``records`` (not delivered):
        the next commit stops there and reading would resume there."""
        rewound: set[str] = set()
        for record in records:
            if record.position is None:
                continue
            shard_id, previous = record.position
            shard = self._shards.get(shard_id)
            if shard is None or shard_id in rewound:
                continue
            rewound.add(shard_id)
            shard.read_seq = previous
            shard.iterator = None
            shard.ended = False
        if rewound:
            _log.info("source_released", source="kinesis", shards=sorted(rewound))

    def close(self) -> None:
        """Nothing to release."""
