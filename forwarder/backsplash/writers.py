"""The backsplash: undeliverable events stored in Firehose's ``splunk-failed/`` layout.

Objects live under ``<prefix>splunk-failed/YYYY/MM/DD/HH/`` (UTC) and hold gzip JSON lines, one
per HEC event, with Firehose's fields (DESIGN.md §6): ``attemptsMade``, ``arrivalTimestamp``,
``errorCode``, ``errorMessage``, ``attemptEndingTimestamp``, ``rawData`` (base64 of the payload
sent to HEC: the JSON object, or the raw line) and ``EventId`` (the CloudWatch event id, else a
stable hash of the payload). We add ``endpoint`` and, for the raw endpoint, ``source``,
``sourcetype``, ``index`` and ``host``, so replay can send each event back exactly as it was
meant to go. One reader (:func:`decode_records`) takes Firehose's objects and ours.

Writers: :class:`Backsplash` (S3), :class:`LocalSpool` (a directory, same keys and bytes, for
the daemon while S3 is unreachable), :class:`FallbackBacksplash` (S3, else the spool) and
:class:`NullBacksplash` (nothing configured: every write fails loudly).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import structlog
import tenacity
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import BacksplashSettings
from forwarder.errors import BacksplashError
from transforms.records import EncodedEvent, RawTarget

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Endpoint = Literal["event", "raw"]
SPLUNK_FAILED: Final = "splunk-failed"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_DECODER: Final = json.JSONDecoder()
_log = structlog.get_logger("forwarder.backsplash.writers")


def payload_event_id(payload: bytes) -> str:
    """A stable id for an event without a CloudWatch id: a hash of its HEC payload."""
    return hashlib.sha256(payload).hexdigest()[:32]


def object_key(
    now: datetime,
    kind: str = SPLUNK_FAILED,
    *,
    prefix: str = "",
    unique: str | None = None,
) -> str:
    """The key for a new backsplash object: ``<prefix><kind>/YYYY/MM/DD/HH/<name>.gz``.

    The name starts with the UTC time to the microsecond, so keys sort by time within an
    hour's folder, and ends with a random part, so two writers never collide.

    Args:
        now: when the object is written (converted to UTC; naive means UTC).
        kind: ``splunk-failed`` (Firehose's folder for delivery failures).
        prefix: the bucket prefix, empty or ending with ``/``.
        unique: the random part (a uuid4 hex by default); tests pass a fixed one.

    Returns:
        The key.
    """
    when = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    unique = unique or uuid.uuid4().hex
    return (
        f"{prefix}{kind}/{when:%Y/%m/%d/%H}/"
        f"forwarder-{when:%Y-%m-%d-%H-%M-%S}-{when.microsecond:06d}-{unique}.gz"
    )


def encode_records(
    events: Sequence[EncodedEvent],
    *,
    error_code: str,
    error_message: str,
    attempts: int,
    endpoint: Endpoint,
    raw_target: RawTarget | None,
    arrival_ms: int,
    ending_ms: int,
    per_record: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """The gzip JSON-lines body of a backsplash object, one line per event.

    ``per_record`` (one mapping per event, optional) adds or overrides keys of each line;
    replay uses it to keep each event's ``arrivalTimestamp`` and count ``replayAttempts``.
    """
    common: dict[str, Any] = {
        "attemptsMade": attempts,
        "arrivalTimestamp": arrival_ms,
        "errorCode": error_code,
        "errorMessage": error_message,
        "attemptEndingTimestamp": ending_ms,
    }
    extra: dict[str, Any] = {"endpoint": endpoint}
    if endpoint == "raw" and raw_target is not None:
        extra.update({k: v for k, v in raw_target._asdict().items() if v is not None})
    if per_record is not None and len(per_record) != len(events):
        raise ValueError(f"{len(events)} events but {len(per_record)} per_record mappings")
    lines = [
        json.dumps(
            {
                **common,
                "rawData": base64.b64encode(event.payload).decode("ascii"),
                "EventId": event.event_id or payload_event_id(event.payload),
                **extra,
                **(per_record[position] if per_record is not None else {}),
            },
            separators=(",", ":"),
        )
        for position, event in enumerate(events)
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)


def decode_records(data: bytes) -> Iterator[dict[str, Any]]:
    """Read a backsplash object (ours or Firehose's, gzip or not): one dict per record.

    Records may be separated by newlines or simply concatenated, as Firehose writes them.

    Reads whole objects this process wrote (the spool) or tests; S3 objects named by
    notifications and replay go through the streaming reader
    (:func:`forwarder.replay.engine.iter_records`), where a bad line is that line's problem.

    Raises:
        ValueError: the bytes are not gzip/JSON records (invalid UTF-8, too deep, numbers
            Python refuses included).
        TypeError: a record is JSON but not an object.
    """
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"not a valid gzip object: {exc}") from None
    text = data.decode("utf-8")
    pos = 0
    end = len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if pos >= end:
            return
        try:
            record, pos = _DECODER.raw_decode(text, pos)
        except RecursionError:
            raise ValueError("a backsplash record is JSON nested too deeply to decode") from None
        if not isinstance(record, dict):
            raise TypeError("a backsplash record is not a JSON object")
        yield record


class BacksplashWriter(Protocol):
    """What the deliverer needs from a backsplash."""

    def write(
        self,
        events: Sequence[EncodedEvent],
        *,
        error_code: str,
        error_message: str,
        attempts: int,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        arrival_ms: int | None = None,
    ) -> str:
        """Store the events durably and return where (key); raise BacksplashError if not."""
        ...


class _ObjectWriter:
    """``write`` for writers that store one gzip JSON-lines object per call, keyed by time."""

    _clock: Callable[[], float]

    def object_key(self, now: datetime | None = None, kind: str = SPLUNK_FAILED) -> str:
        raise NotImplementedError

    def put_object(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def write(
        self,
        events: Sequence[EncodedEvent],
        *,
        error_code: str,
        error_message: str,
        attempts: int,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        arrival_ms: int | None = None,
    ) -> str:
        """Write one object holding these events.

        Args:
            events: the events (one record each).
            error_code: Firehose-style code, e.g. ``Splunk.AckTimeout``.
            error_message: what happened, in words (HEC's text and code when there was one).
            attempts: requests made for these events.
            endpoint: ``event`` or ``raw``.
            raw_target: raw-endpoint metadata, stored with each record.
            arrival_ms: when the events arrived (epoch ms); now when None.

        Returns:
            The object key.

        Raises:
            BacksplashError: the object could not be stored.
        """
        now = self._clock()
        key = self.object_key(datetime.fromtimestamp(now, UTC))
        ending_ms = int(now * 1000)
        self.put_object(
            key,
            encode_records(
                events,
                error_code=error_code,
                error_message=error_message,
                attempts=attempts,
                endpoint=endpoint,
                raw_target=raw_target,
                arrival_ms=ending_ms if arrival_ms is None else arrival_ms,
                ending_ms=ending_ms,
            ),
        )
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

    def write(
        self,
        events: Sequence[EncodedEvent],
        *,
        error_code: str,
        error_message: str,
        attempts: int,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        arrival_ms: int | None = None,
    ) -> str:
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

    def write(
        self,
        events: Sequence[EncodedEvent],
        *,
        error_code: str,
        error_message: str,
        attempts: int,
        endpoint: Endpoint,
        raw_target: RawTarget | None = None,
        arrival_ms: int | None = None,
    ) -> str:
        """Write to S3, else to the spool; returns the key (``spool:<key>`` when spooled).

        Raises:
            BacksplashError: both S3 and the spool refused.
        """
        arguments: dict[str, Any] = {
            "error_code": error_code,
            "error_message": error_message,
            "attempts": attempts,
            "endpoint": endpoint,
            "raw_target": raw_target,
            "arrival_ms": arrival_ms,
        }
        try:
            return self.primary.write(events, **arguments)
        except BacksplashError as exc:
            _log.error(
                "backsplash_failed",
                reason=exc.message,
                events=len(events),
                spooled=True,
                spool=str(self.spool.directory),
            )
            return "spool:" + self.spool.write(events, **arguments)

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


def put_under(writer: BacksplashWriter, kind: str, body: bytes) -> str:
    """Store an already encoded object under ``<prefix><kind>/`` of ``writer``.

    Used for objects that are not ``splunk-failed/`` (``processing-failed/``,
    ``replay-failed/``). Returns the key, ``spool:<key>`` when a fallback spooled it.

    Raises:
        BacksplashError: nowhere to store it (no bucket, or S3 and the spool refused).
    """
    if isinstance(writer, FallbackBacksplash):
        try:
            key = writer.primary.object_key(kind=kind)
            writer.primary.put_object(key, body)
        except BacksplashError:
            key = writer.spool.object_key(kind=kind)
            writer.spool.put_object(key, body)
            return "spool:" + key
        return key
    if isinstance(writer, Backsplash | LocalSpool):
        key = writer.object_key(kind=kind)
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
            import boto3  # noqa: PLC0415 - boto3 is only needed when a bucket is configured
            from botocore.config import Config  # noqa: PLC0415

            s3_client = boto3.client("s3", config=Config(retries={"mode": "standard"}))
        primary = Backsplash(s3_client, settings.bucket, settings.prefix)
        if use_spool and settings.spool_dir:
            return FallbackBacksplash(primary, LocalSpool(settings.spool_dir, settings.prefix))
        return primary
    if use_spool and settings.spool_dir:
        return LocalSpool(settings.spool_dir, settings.prefix)
    return NullBacksplash()
