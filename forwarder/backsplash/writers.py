"""Backsplash writers: where undeliverable events are stored, in the layout of
:mod:`forwarder.backsplash.layout` and the record format of :mod:`forwarder.backsplash.codec`.

- :class:`Backsplash`: the S3 bucket (retried on top of botocore's own retries);
- :class:`LocalSpool`: a directory, same keys and bytes, for the daemon while S3 is
  unreachable;
- :class:`FallbackBacksplash`: S3, else the spool (the daemon's choice);
- :class:`NullBacksplash`: nothing configured: every write fails loudly;
- :class:`ReplayFailedBacksplash`: for re-delivered backsplash records (push, daemon,
  ``forwarder replay``): what fails again goes under ``replay-failed/``, never back where a
  notification or the replay would read it again, with ``replayAttempts`` counted;
- :class:`DestinationBacksplash`: a ``[destinations.NAME]``'s: any of the above, naming the
  destination in each record (and under its ``backsplash_prefix``).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import BacksplashSettings
from forwarder import aws
from forwarder.backsplash.codec import Failure, decode_records, encode_records
from forwarder.backsplash.layout import REPLAY_FAILED, SPLUNK_FAILED, object_key
from forwarder.errors import BacksplashError
from transforms.options import DEFAULT_DESTINATION
from transforms.records import EncodedEvent

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_log = structlog.get_logger("forwarder.backsplash.writers")


class BacksplashWriter(Protocol):
    """What the deliverer needs from a backsplash."""

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Store the events durably and return where (key); raise BacksplashError if not.

        Args:
            events: the events (one record each).
            failure: why they are stored, and what each record carries with it.
        """
        ...


class _ObjectWriter:
    """``write`` for writers that store one gzip JSON-lines object per call, keyed by time."""

    _clock: Callable[[], float]

    def object_key(self, now: datetime | None = None, kind: str = SPLUNK_FAILED) -> str:
        raise NotImplementedError

    def put_object(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Write one object holding these events (see :class:`BacksplashWriter`).

        Returns:
            The object key.

        Raises:
            BacksplashError: the object could not be stored.
        """
        now = self._clock()
        key = self.object_key(datetime.fromtimestamp(now, UTC))
        self.put_object(key, encode_records(events, failure, ending_ms=int(now * 1000)))
        return key


class Backsplash(_ObjectWriter):
    """The S3 backsplash bucket.

    Args:
        s3_client: a boto3 S3 client (botocore ``standard`` retries recommended); None means
            nothing is configured and every write raises ``BacksplashError``.
        bucket: the bucket; None or empty as above.
        prefix: key prefix, empty or ending with ``/``.
        attempts: tries per write on top of botocore's own retries.
        backoff_s: first wait between those tries (exponential, full jitter, capped at 5 s).
        clock: wall clock (epoch seconds) for keys and timestamps.
        sleep: how to wait between tries; tests pass a no-op.
    """

    def __init__(
        self,
        s3_client: S3Client | None,
        bucket: str | None,
        prefix: str = "",
        *,
        attempts: int = 3,
        backoff_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._s3 = s3_client
        self.bucket = bucket or None
        self.prefix = prefix
        self._clock = clock
        self._sleep = sleep
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(attempts, 1)),
            wait=tenacity.wait_random_exponential(multiplier=backoff_s, max=5.0),
            retry=tenacity.retry_if_exception_type((BotoCoreError, ClientError)),
            sleep=self._nap,
            reraise=True,
        )

    def _nap(self, seconds: float) -> None:
        self._sleep(seconds)

    def __repr__(self) -> str:
        return f"Backsplash(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def object_key(self, now: datetime | None = None, kind: str = SPLUNK_FAILED) -> str:
        """A fresh key under this backsplash's prefix (see :func:`object_key`)."""
        when = now if now is not None else datetime.fromtimestamp(self._clock(), UTC)
        return object_key(when, kind, prefix=self.prefix)

    def _require(self) -> tuple[S3Client, str]:
        if self._s3 is None or self.bucket is None:
            raise BacksplashError("no backsplash bucket configured (BACKSPLASH_BUCKET)")
        return self._s3, self.bucket

    def put_object(self, key: str, data: bytes) -> None:
        """Store bytes under a key, retried.

        Raises:
            BacksplashError: S3 refused after botocore's retries and ours.
        """
        s3, bucket = self._require()
        try:
            for attempt in self._retrying.copy():
                with attempt:
                    s3.put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise BacksplashError(
                f"backsplash write to s3://{bucket}/{key} failed: {type(exc).__name__}: {exc}"
            ) from None

    def read_bytes(self, key: str) -> bytes:
        """The stored bytes of an object.

        Raises:
            BacksplashError: S3 refused the read.
        """
        s3, bucket = self._require()
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise BacksplashError(
                f"backsplash read of s3://{bucket}/{key} failed: {type(exc).__name__}: {exc}"
            ) from None

    def read(self, key: str) -> Iterator[dict[str, Any]]:
        """The records of an object (ours or Firehose's)."""
        return decode_records(self.read_bytes(key))

    def list_keys(self, kind: str = SPLUNK_FAILED) -> Iterator[str]:
        """Every object key under ``<prefix><kind>/``, in key (time) order."""
        s3, bucket = self._require()
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{self.prefix}{kind}/"):
            for item in page.get("Contents", []):
                yield item["Key"]


class NullBacksplash:
    """No backsplash configured: every write fails, so nothing is lost silently."""

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Raise BacksplashError: there is nowhere to put the events."""
        raise BacksplashError("no backsplash bucket configured (BACKSPLASH_BUCKET)")


class LocalSpool(_ObjectWriter):
    """A directory holding backsplash objects under the same keys and bytes as S3 would.

    Files are written to a temporary name, fsynced and renamed, and the directory fsynced,
    so a crash never leaves a half-written object behind and a power loss never loses one
    already reported stored.

    Args:
        directory: the spool directory (created if missing).
        prefix: key prefix, as for the bucket, so drained objects land where S3 ones would.
        clock: wall clock (epoch seconds).
    """

    def __init__(
        self, directory: str | Path, prefix: str = "", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalSpool(directory={str(self.directory)!r})"

    def object_key(self, now: datetime | None = None, kind: str = SPLUNK_FAILED) -> str:
        """A fresh key (see :func:`object_key`)."""
        when = now if now is not None else datetime.fromtimestamp(self._clock(), UTC)
        return object_key(when, kind, prefix=self.prefix)

    def _path(self, key: str) -> Path:
        path = (self.directory / key).resolve()
        if not path.is_relative_to(self.directory.resolve()):
            raise ValueError(f"key escapes the spool directory: {key!r}")
        return path

    def put_object(self, key: str, data: bytes) -> None:
        """Store bytes under a key, durably: the file is fsynced before its rename, and the
        directory after it (and each directory created for it, in its parent), so the object
        survives a power loss once this returns.

        Raises:
            BacksplashError: the file system refused.
        """
        try:
            path = self._path(key)
            self._make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_directory(path.parent)  # the rename itself
        except OSError as exc:
            raise BacksplashError(f"spool write to {self.directory} failed: {exc}") from None

    @staticmethod
    def _make_dirs(directory: Path) -> None:
        """Create ``directory`` and missing parents, each new entry made durable."""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for new in reversed(missing):
            new.mkdir(exist_ok=True)
            _fsync_directory(new.parent)

    def list_keys(self) -> list[str]:
        """Every spooled key, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.relative_to(self.directory).as_posix()
            for path in self.directory.rglob("*.gz")
            if path.is_file()
        )

    def read_bytes(self, key: str) -> bytes:
        """The stored bytes of a spooled object."""
        return self._path(key).read_bytes()

    def read(self, key: str) -> Iterator[dict[str, Any]]:
        """The records of a spooled object."""
        return decode_records(self.read_bytes(key))

    def remove(self, key: str) -> None:
        """Delete a spooled object (after it reached S3)."""
        self._path(key).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """fsync a directory, so the entries created or renamed in it are durable (POSIX)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(directory, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FallbackBacksplash:
    """Write to S3; if S3 stays unreachable, to the local spool (the daemon's choice).

    :meth:`drain` moves spooled objects to S3 under their original keys once it is back.
    """

    def __init__(self, primary: Backsplash, spool: LocalSpool) -> None:
        self.primary = primary
        self.spool = spool

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Write to S3, else to the spool; returns the key (``spool:<key>`` when spooled).

        Raises:
            BacksplashError: both S3 and the spool refused.
        """
        try:
            return self.primary.write(events, failure)
        except BacksplashError as exc:
            _log.error(
                "backsplash_failed",
                reason=exc.message,
                events=len(events),
                spooled=True,
                spool=str(self.spool.directory),
            )
            return "spool:" + self.spool.write(events, failure)

    def drain(self) -> int:
        """Upload spooled objects to S3 (oldest first), removing each once stored.

        Returns:
            How many objects moved.

        Raises:
            BacksplashError: S3 is still unreachable (what moved so far stays moved).
        """
        moved = 0
        for key in self.spool.list_keys():
            self.primary.put_object(key, self.spool.read_bytes(key))
            self.spool.remove(key)
            moved += 1
        return moved


@dataclass(frozen=True, slots=True)
class EventOrigin:
    """Where a re-delivered event came from: its record, that record's ``arrivalTimestamp``
    and ``replayAttempts``, the object (``s3://bucket/key``), and the ``[destinations.NAME]``
    it was for (None or ``default``: not written)."""

    record_no: int
    arrival_ms: int | None
    replay_attempts: int
    source: str
    destination: str | None = None


class ReplayFailedBacksplash:
    """The backsplash of deliverers that re-deliver backsplash records: the wrapped writer's
    bucket (or spool) and prefix, under ``replay-failed/``, never ``splunk-failed/``.

    Each line is our usual record plus ``replayAttempts``: the event's previous count + 1
    when :meth:`expect` told where it came from (``forwarder replay``, which also keeps the
    original ``arrivalTimestamp`` and adds ``replaySource``), else 1 (push, daemon). Objects
    under ``replay-failed/`` are never re-delivered automatically; ``forwarder replay``
    counts ``replayAttempts`` and stops at ``--max-attempts``.

    Args:
        writer: the ordinary backsplash (S3, spool, or S3 with the spool behind it).
        clock: wall clock (epoch seconds), for keys and timestamps.
        tracked: remember per chunk the keys written and the events failed per record
            (:attr:`keys`, :attr:`failed_records`, cleared by :meth:`next_chunk`), as replay
            needs to commit a chunk.

    ``requeue_below`` (0: off; set by ``forwarder drain``, :mod:`forwarder.drain`): events
    whose new ``replayAttempts`` is below it go back under ``splunk-failed/``, the pool the
    drain reads again on its next cycle (:attr:`events_requeued`); the others go under
    ``replay-failed/`` as usual, where automation gives up (:attr:`events_abandoned`,
    logged ``events_abandoned``).
    """

    def __init__(
        self,
        writer: BacksplashWriter,
        *,
        clock: Callable[[], float] = time.time,
        tracked: bool = False,
    ) -> None:
        self.writer = writer
        self._clock = clock
        self._tracked = tracked
        self._origins: dict[str, EventOrigin] = {}
        self.failed_records: dict[int, int] = {}  # record_no -> events failed, this chunk
        self.keys: list[str] = []  # written this chunk
        self.events_written = 0
        self.requeue_below = 0
        self.events_requeued = 0
        self.events_abandoned = 0

    def __repr__(self) -> str:
        return f"ReplayFailedBacksplash({self.writer!r})"

    def expect(self, events: Sequence[EncodedEvent], origin: EventOrigin) -> None:
        """Remember where these (submitted) events came from."""
        for event in events:
            if event.event_id is not None:
                self._origins[event.event_id] = origin

    def next_chunk(self) -> None:
        """Forget the finished chunk's events and keys."""
        self._origins.clear()
        self.failed_records.clear()
        self.keys.clear()

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Store events that failed again under ``replay-failed/`` (the
        ``BacksplashWriter`` protocol).

        Raises:
            BacksplashError: the object could not be stored.
        """
        now = self._clock()
        per_record: list[dict[str, Any]] = []
        for event in events:
            origin = self._origins.get(event.event_id or "")
            extra: dict[str, Any] = {"replayAttempts": 1}
            if origin is not None:
                extra["replayAttempts"] = origin.replay_attempts + 1
                extra["replaySource"] = origin.source
                if origin.arrival_ms is not None:
                    extra["arrivalTimestamp"] = origin.arrival_ms
                if origin.destination not in (None, DEFAULT_DESTINATION):
                    extra["destination"] = origin.destination
                self.failed_records[origin.record_no] = (
                    self.failed_records.get(origin.record_no, 0) + 1
                )
            per_record.append(extra)
        if not self.requeue_below:
            return self._put(REPLAY_FAILED, events, failure, per_record, now)
        groups: dict[str, tuple[list[EncodedEvent], list[dict[str, Any]]]] = {}
        for event, extra in zip(events, per_record, strict=True):
            kind = SPLUNK_FAILED if extra["replayAttempts"] < self.requeue_below else REPLAY_FAILED
            group = groups.setdefault(kind, ([], []))
            group[0].append(event)
            group[1].append(extra)
        key = ""
        for kind, (group_events, group_extra) in groups.items():
            key = self._put(kind, group_events, failure, group_extra, now)
            if kind == SPLUNK_FAILED:
                self.events_requeued += len(group_events)
            else:
                self.events_abandoned += len(group_events)
                _log.warning(
                    "events_abandoned",
                    key=key,
                    events=len(group_events),
                    max_attempts=self.requeue_below,
                    reason="failed again after the last automatic attempt; "
                    "run forwarder replay on replay-failed/ by hand",
                )
        return key

    def _put(
        self,
        kind: str,
        events: Sequence[EncodedEvent],
        failure: Failure,
        per_record: list[dict[str, Any]],
        now: float,
    ) -> str:
        body = encode_records(events, failure, ending_ms=int(now * 1000), per_record=per_record)
        key = put_under(self.writer, kind, body, now=datetime.fromtimestamp(now, UTC))
        if self._tracked:
            self.keys.append(key)
        self.events_written += len(events)
        return key


class DestinationBacksplash:
    """The backsplash of one ``[destinations.NAME]``: each record names the destination
    (``destination``), so replay sends it back there; objects go under the destination's
    ``backsplash_prefix`` when it has one (:func:`with_prefix`).

    Args:
        writer: the backsplash to write through.
        destination: the destination's name.
        prefix: its ``backsplash_prefix``; None: the writer's own.
    """

    def __init__(self, writer: BacksplashWriter, destination: str, prefix: str | None) -> None:
        self.writer = writer if prefix is None else with_prefix(writer, prefix)
        self.destination = destination

    def __repr__(self) -> str:
        return f"DestinationBacksplash({self.writer!r}, destination={self.destination!r})"

    def write(self, events: Sequence[EncodedEvent], failure: Failure) -> str:
        """Write the events with the destination named in each record.

        Raises:
            BacksplashError: the object could not be stored.
        """
        return self.writer.write(events, replace(failure, destination=self.destination))


def with_prefix(writer: BacksplashWriter, prefix: str) -> BacksplashWriter:
    """``writer`` writing under ``prefix`` (a destination's ``backsplash_prefix``): a copy of
    an S3 bucket, spool or S3-with-spool writer with that prefix; any other writer (nothing
    configured, replay-failed) as it is, since its keys follow its own rules."""
    if isinstance(writer, Backsplash | LocalSpool):
        moved = copy.copy(writer)
        moved.prefix = prefix
        return moved
    if isinstance(writer, FallbackBacksplash):
        primary = copy.copy(writer.primary)
        primary.prefix = prefix
        spool = copy.copy(writer.spool)
        spool.prefix = prefix
        return FallbackBacksplash(primary, spool)
    return writer


def put_under(
    writer: BacksplashWriter, kind: str, body: bytes, *, now: datetime | None = None
) -> str:
    """Store an already encoded object under ``<prefix><kind>/`` of ``writer``.

    Used for objects that are not ``splunk-failed/`` (``processing-failed/``,
    ``replay-failed/``). Returns the key, ``spool:<key>`` when a fallback spooled it.

    Args:
        writer: the backsplash to store it in.
        kind: the kind's folder.
        body: the encoded object (:func:`~forwarder.backsplash.codec.encode_records`).
        now: the time in the key; the writer's clock when None.

    Raises:
        BacksplashError: nowhere to store it (no bucket, or S3 and the spool refused).
    """
    if isinstance(writer, FallbackBacksplash):
        try:
            key = writer.primary.object_key(now, kind)
            writer.primary.put_object(key, body)
        except BacksplashError:
            key = writer.spool.object_key(now, kind)
            writer.spool.put_object(key, body)
            return "spool:" + key
        return key
    if isinstance(writer, Backsplash | LocalSpool):
        key = writer.object_key(now, kind)
        writer.put_object(key, body)
        return key
    raise BacksplashError(
        f"cannot store {kind}/ objects: no backsplash bucket configured (BACKSPLASH_BUCKET)"
    )


def backsplash_from_settings(
    settings: BacksplashSettings, *, s3_client: S3Client | None = None, use_spool: bool = False
) -> BacksplashWriter:
    """Build the configured backsplash.

    Args:
        settings: bucket, prefix and spool directory.
        s3_client: the S3 client (built with botocore standard retries when None).
        use_spool: with a spool directory set, fall back to it when S3 fails (daemon only: a
            Lambda must fail its invocation instead, so AWS retries it).

    Returns:
        S3, S3-with-spool, spool only, or the null backsplash when nothing is configured.
    """
    if settings.bucket:
        if s3_client is None:
            s3_client = aws.client("s3")
        primary = Backsplash(s3_client, settings.bucket, settings.prefix)
        if use_spool and settings.spool_dir:
            return FallbackBacksplash(primary, LocalSpool(settings.spool_dir, settings.prefix))
        return primary
    if use_spool and settings.spool_dir:
        return LocalSpool(settings.spool_dir, settings.prefix)
    return NullBacksplash()
