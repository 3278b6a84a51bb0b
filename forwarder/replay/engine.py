"""``forwarder replay``: re-deliver the S3 backsplash (Firehose's objects and ours), once.

What it reads (DESIGN.md §6), one JSON object per record, gzip or plain (magic bytes decide),
newline-separated or concatenated:

    ``splunk-failed/``      ``rawData`` is what was sent to HEC: event objects (concatenated) or
                            raw lines; our records also say ``endpoint`` and the raw metadata.
    ``processing-failed/``  ``rawData`` is the original CloudWatch Logs payload: transformed
                            first (``transforms.pipeline.transform_payload``), then sent.
    ``replay-failed/``      what failed again during an earlier replay (our format, with
                            ``replayAttempts``).

Objects are streamed (``StreamingBody.iter_chunks``) and records decoded as they arrive, so
memory follows the chunk size, not the object size. Events go through the
:class:`~forwarder.delivery.deliverer.Deliverer` (acks, retries, splitting), one per endpoint.
After every chunk (``chunk_bytes`` of payload) the deliverers are flushed: then each event is
acknowledged
or stored under ``<root>replay-failed/`` (never back under the kind being replayed), and only
then are the chunk's records written to the state file (:mod:`forwarder.replay.state`). An
interrupted run resumes after the last committed chunk; a second run skips finished objects
unread and sends nothing.

No loops: each replay-failed record carries ``replayAttempts`` (previous value + 1); records with
``replayAttempts >= max_attempts`` are skipped (counted, left in place). Objects are listed once
up front, so what this run writes is never read by it.

Selection: ``since``/``until`` by ``arrivalTimestamp`` (records without one: by the key's
``YYYY/MM/DD/HH`` hour); objects whose key hour ended before ``since`` (or starts more than
:data:`UNTIL_SLACK_S` after ``until``: Firehose writes failures up to its 2 h retry duration
after arrival) are not read at all. ``error_codes`` are exact codes or globs
(``Splunk.*``). Kinds come from the key (``.../splunk-failed/...``), else from the record
(``lambdaArn`` means processing-failed). ``limit`` caps the events sent (whole records).

An object is *done* when every record in it was handled; only done objects are archived
(copied under ``<root>replayed/``, then deleted) or deleted when asked. Objects with corrupt
lines, records not selected or records past ``max_attempts`` are never removed. Removal takes
exactly the object that was read: in a versioned bucket its ``VersionId``, otherwise its ETag
(a HEAD just before, then ``If-Match`` on the copy and the delete). An object rewritten under
the same key since it was read is left in place for the next run, counted
(``objects_changed``) and logged (``replay_object_kept``).

Concurrency: ``concurrency`` objects at once, one thread each with its own deliverers and state
connection; ``rate_limit`` (events/s) is shared by all.

Log events: ``replay_started``, ``replay_object_started`` (debug), ``replay_object_finished``,
``replay_object_skipped`` (debug: already done, or outside the time window),
``replay_object_failed`` (S3 read error), ``replay_record_corrupt``,
``replay_records_exhausted`` (skipped for ``max_attempts``), ``replay_object_archived``,
``replay_object_deleted``, ``replay_object_kept`` (removal asked, object not done),
``replay_progressed`` (non-TTY progress), ``replay_stopped`` (interrupt, limit, fatal) and
``replay_summarized``; the deliverers' ledgers are summed into one ``delivery_summarized``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import contextlib
import fnmatch
import json
import math
import os
import queue
import re
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TextIO

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from forwarder.backsplash.writers import Backsplash, encode_records, object_key, payload_event_id
from forwarder.delivery.ledger import Ledger
from forwarder.errors import BacksplashError
from forwarder.replay.state import HandledRecords, Outcome, ReplayState
from forwarder.status import ExitStatus
from transforms.errors import TransformError
from transforms.options import Endpoint, TransformOptions
from transforms.pipeline import transform_payload
from transforms.records import EncodedEvent, RawTarget

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from forwarder.delivery.deliverer import Deliverer

SPLUNK_FAILED: Final = "splunk-failed"
PROCESSING_FAILED: Final = "processing-failed"
REPLAY_FAILED: Final = "replay-failed"
REPLAYED: Final = "replayed"
KINDS: Final = (SPLUNK_FAILED, PROCESSING_FAILED, REPLAY_FAILED)
Kind = Literal["splunk-failed", "processing-failed", "replay-failed"]
AfterSuccess = Literal["keep", "archive", "delete"]

#: How much later than ``until`` an object's key hour may be and still hold records that
#: arrived before ``until`` (Firehose retries up to 7200 s, then buffers up to 900 s).
UNTIL_SLACK_S: Final = 3 * 3600
DEFAULT_CHUNK_BYTES: Final = 8 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS: Final = 3
READ_CHUNK_BYTES: Final = 1024 * 1024
#: A single record longer than this (in characters) is reported corrupt (``line_too_long``)
#: and skipped to the next newline as it streams, instead of being buffered further. Firehose
#: records hold at most 1,000 KiB (about 1.4 MB once base64-encoded), and ours one HEC event,
#: so 8 Mi characters leaves room while bounding memory (at most 4 bytes a character).
MAX_RECORD_CHARS: Final = 8 * 1024 * 1024
#: The decompression ceiling for one S3 object (gzip): what inflates past it fails the object
#: (like a broken gzip stream) after the records before that point. Far above any real object
#: (Firehose buffers at most 128 MiB, flow-log files 75 MB), it bounds the time a gzip bomb
#: costs; memory is bounded by streaming whatever the size.
MAX_OBJECT_INFLATED_BYTES: Final = 4 * 1024 * 1024 * 1024
CORRUPT_REPORT_LIMIT: Final = 100

_GZIP_MAGIC: Final = b"\x1f\x8b"
_HOUR_PATH: Final = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/")
_WHITESPACE: Final = re.compile(r"[ \t\r\n]*")
_DECODER: Final = json.JSONDecoder()
_RELATIVE: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_log = structlog.get_logger("forwarder.replay.engine")


class DelivererFactory(Protocol):
    """Builds a deliverer for one endpoint; ``settings.hec.endpoint`` is already set."""

    def __call__(self, settings: Settings, *, backsplash: ReplayFailedWriter) -> Deliverer:
        """A new deliverer writing its failures to ``backsplash``."""
        ...


def default_deliverer_factory(settings: Settings, *, backsplash: ReplayFailedWriter) -> Deliverer:
    """A plain :class:`~forwarder.delivery.deliverer.Deliverer`."""
    from forwarder.delivery.deliverer import Deliverer  # noqa: PLC0415 - requests only when sending

    return Deliverer(settings, backsplash=backsplash)


# ---------------------------------------------------------------------- options and report


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how (the CLI flags).

    Attributes:
        since: only records that arrived at or after this (aware datetime).
        until: only records that arrived before this.
        error_codes: exact codes or globs; empty means all.
        include: kinds to replay.
        exclude: kinds not to replay (wins over include).
        limit: at most this many events sent (whole records); None: no limit.
        dry_run: read and count, send and write nothing.
        max_attempts: records already replayed this many times are skipped.
        after_success: ``keep`` (default), ``archive`` or ``delete`` done objects.
        state_path: the SQLite state file.
        concurrency: objects replayed at once.
        rate_limit: events per second over all objects; None: unlimited.
        chunk_bytes: payload bytes per flush-and-commit step.
        failed_to: ``s3://bucket/prefix`` root for ``replay-failed/``; None: the source root.
    """

    since: datetime | None = None
    until: datetime | None = None
    error_codes: tuple[str, ...] = ()
    include: frozenset[str] = frozenset(KINDS)
    exclude: frozenset[str] = frozenset()
    limit: int | None = None
    dry_run: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    after_success: AfterSuccess = "keep"
    state_path: Path | None = None
    concurrency: int = 1
    rate_limit: float | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    failed_to: str | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            unknown = set(getattr(self, name)) - set(KINDS)
            if unknown:
                raise ValueError(f"unknown kind(s) in {name}: {', '.join(sorted(unknown))}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must not be negative")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive")
        if self.chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds selected."""
        return self.include - self.exclude


@dataclass
class CorruptLine:
    """A line that could not be replayed, and why."""

    key: str
    line: int
    reason: str


@dataclass
class ReplayReport:
    """What a replay run did (or, dry, would do). Counts are events unless named otherwise."""

    source: str
    dry_run: bool = False
    objects_listed: int = 0
    objects_selected: int = 0
    objects_already_done: int = 0
    objects_outside_window: int = 0
    objects_done: int = 0
    objects_partial: int = 0
    objects_failed: int = 0
    objects_archived: int = 0
    objects_deleted: int = 0
    objects_kept: int = 0
    objects_changed: int = 0
    bytes_listed: int = 0
    bytes_read: int = 0
    records_read: int = 0
    records_handled: int = 0
    records_already_handled: int = 0
    records_not_selected: int = 0
    records_exhausted: int = 0
    corrupt_total: int = 0
    events_sent: int = 0
    events_delivered: int = 0
    events_failed: int = 0
    events_dropped: int = 0
    payload_bytes: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    by_error_code: dict[str, dict[str, int]] = field(default_factory=dict)
    corrupt: list[CorruptLine] = field(default_factory=list)
    replay_failed_keys: list[str] = field(default_factory=list)
    dispose_failures: int = 0
    interrupted: bool = False
    limited: bool = False
    fatal: str | None = None
    backsplash_error: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    def count(self, kind: str, error_code: str, records: int, events: int, nbytes: int) -> None:
        """Add a selected record to the per-kind and per-error-code tables."""
        for table, name in ((self.by_kind, kind), (self.by_error_code, error_code)):
            row = table.setdefault(name, {"records": 0, "events": 0, "bytes": 0})
            row["records"] += records
            row["events"] += events
            row["bytes"] += nbytes

    def add_corrupt(self, key: str, line: int, reason: str) -> None:
        """Count a corrupt line; the first :data:`CORRUPT_REPORT_LIMIT` are kept in full."""
        self.corrupt_total += 1
        if len(self.corrupt) < CORRUPT_REPORT_LIMIT:
            self.corrupt.append(CorruptLine(key, line, reason))

    @property
    def exit_status(self) -> int:
        """The CLI exit status (``forwarder.cli.ExitStatus``) this run deserves."""

        if self.backsplash_error is not None:
            return ExitStatus.BACKSPLASH_FAILED
        if self.fatal is not None:
            return ExitStatus.HEC_FATAL
        if self.error is not None:
            return ExitStatus.FAILURE
        if self.interrupted:
            return ExitStatus.INTERRUPTED
        if self.events_failed or self.corrupt_total or self.records_exhausted:
            return ExitStatus.INCOMPLETE
        if self.error is not None or self.objects_failed or self.dispose_failures:
            return ExitStatus.FAILURE
        return ExitStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (``--json``)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["corrupt"] = [vars(line) for line in self.corrupt]
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["exit_status"] = int(self.exit_status)
        return data


# ---------------------------------------------------------------------- pure helpers


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into bucket and prefix.

    Raises:
        ValueError: not an ``s3://`` URI with a bucket.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix


def key_kind(key: str) -> tuple[Kind | None, str]:
    """The failure kind a key lives under and the root before it (``<root><kind>/...``)."""
    parts = key.split("/")
    for position, part in enumerate(parts[:-1]):
        if part in KINDS:
            root = "/".join(parts[:position])
            return part, (root + "/" if root else "")  # type: ignore[return-value]
    return None, ""


def source_root(prefix: str) -> str:
    """The root of a replayed prefix: before its kind folder, else its directory."""
    kind, root = key_kind(prefix if prefix.endswith("/") else prefix + "/x")
    if kind is not None:
        return root
    return prefix[: prefix.rfind("/") + 1]


def key_hour(key: str) -> datetime | None:
    """The UTC hour in a key's ``YYYY/MM/DD/HH/`` path, if it has a valid one."""
    match = _HOUR_PATH.search(key)
    if match is None:
        return None
    try:
        year, month, day, hour = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError:
        return None


def archive_key(key: str, root: str) -> str:
    """Where ``--archive`` moves an object: ``<root>replayed/<rest of the key>``."""
    rest = key[len(root) :] if key.startswith(root) else key
    return f"{root}{REPLAYED}/{rest}"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive means UTC), epoch seconds, or a duration ago (``90m``, ``2h``).

    Raises:
        ValueError: none of those.
    """
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        base = now if now is not None else datetime.now(UTC)
        return base - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return datetime.fromtimestamp(float(value), UTC)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 like 2025-01-31T14:00Z, or 2h for 2 hours ago)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Selection:
    """The record filter, compiled from :class:`ReplayOptions` (pure)."""

    since_ms: int | None
    until_ms: int | None
    error_codes: tuple[str, ...]
    kinds: frozenset[str]

    @classmethod
    def of(cls, options: ReplayOptions) -> Selection:
        """Compile the options."""
        return cls(_ms(options.since), _ms(options.until), options.error_codes, options.kinds)

    def object_may_match(self, key: str) -> bool:
        """Whether an object can hold selected records, judged by its key alone."""
        kind, _ = key_kind(key)
        if kind is not None and kind not in self.kinds:
            return False
        if self.since_ms is None and self.until_ms is None:
            return True
        hour = key_hour(key)
        if hour is None:
            return True
        start_ms = int(hour.timestamp() * 1000)
        if self.since_ms is not None and start_ms + 3_600_000 <= self.since_ms:
            return False
        return not (self.until_ms is not None and start_ms >= self.until_ms + UNTIL_SLACK_S * 1000)

    def error_code_matches(self, code: str) -> bool:
        """Whether an ``errorCode`` is selected."""
        if not self.error_codes:
            return True
        return any(
            code == pattern or fnmatch.fnmatchcase(code, pattern) for pattern in self.error_codes
        )

    def time_matches(self, arrival_ms: int | None, key: str) -> bool:
        """Whether an arrival time (or, without one, the key hour) is inside the window."""
        if self.since_ms is None and self.until_ms is None:
            return True
        when = arrival_ms
        if when is None:
            hour = key_hour(key)
            if hour is None:
                return False
            when = int(hour.timestamp() * 1000)
        if self.since_ms is not None and when < self.since_ms:
            return False
        return not (self.until_ms is not None and when >= self.until_ms)


# ---------------------------------------------------------------------- streaming decode


@dataclass(slots=True)
class RawRecord:
    """One JSON record of an object: its position (0-based) and 1-based line number."""

    record_no: int
    line: int
    data: dict[str, Any]


@dataclass(slots=True)
class BadLine:
    """Bytes that are not a JSON record (or gzip that breaks off): line number and why."""

    line: int
    reason: str
    fatal: bool = False  # the rest of the object cannot be read


class _ByteCounter:
    """Counts the bytes a chunk iterator hands out (compressed bytes read from S3)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.total += len(chunk)
            yield chunk


def decompressed(
    chunks: Iterable[bytes], *, max_bytes: int | None = MAX_OBJECT_INFLATED_BYTES
) -> Iterator[bytes]:
    """The object's bytes, gunzipped (multi-member too) when they start with gzip's magic.

    Each piece holds at most :data:`READ_CHUNK_BYTES` inflated bytes, so memory does not
    follow the compression ratio.

    Args:
        chunks: the stored bytes.
        max_bytes: the decompression ceiling (None: none); plain bytes are not counted.

    Raises:
        ValueError: broken or truncated gzip, or gzip inflating past ``max_bytes`` (the bytes
            that decoded before are yielded first).
    """
    iterator = iter(chunks)
    head = b""
    for chunk in iterator:
        head += chunk
        if len(head) >= 2:
            break
    if not head:
        return
    if head[:2] != _GZIP_MAGIC:
        yield head
        yield from iterator
        return
    member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    fed = False  # the current member has input
    inflated = 0

    def feed(data: bytes) -> Iterator[bytes]:
        nonlocal member, fed, inflated
        while data:
            fed = True
            try:
                out = member.decompress(data, READ_CHUNK_BYTES)
            except zlib.error as exc:
                raise ValueError(f"broken gzip: {exc}") from None
            if out:
                inflated += len(out)
                if max_bytes is not None and inflated > max_bytes:
                    raise ValueError(f"gzip inflates past the {max_bytes}-byte ceiling")
                yield out
            if member.eof:
                data = member.unused_data
                member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                fed = False
                if data and data[:2] != _GZIP_MAGIC:
                    if data.strip(b"\0"):
                        raise ValueError("bytes after the gzip data that are not gzip")
                    return
            else:
                data = member.unconsumed_tail

    yield from feed(head)
    for chunk in iterator:
        yield from feed(chunk)
    if fed and not member.eof:
        raise ValueError("gzip data ends early (truncated object)")


def iter_records(
    chunks: Iterable[bytes], *, max_inflated: int | None = MAX_OBJECT_INFLATED_BYTES
) -> Iterator[RawRecord | BadLine]:
    """Records of a backsplash object, streamed: JSON objects, newline-separated or not.

    A line that is not JSON (invalid UTF-8 included), JSON that is not an object, JSON nested
    too deeply to decode (``RecursionError``), a number Python refuses to convert, or a record
    longer than :data:`MAX_RECORD_CHARS` (``line_too_long``, skipped as it streams) yields a
    :class:`BadLine` and reading goes on at the next line: one bad line never stops the good
    ones before or after it. Memory: one read chunk plus at most :data:`MAX_RECORD_CHARS`.

    Args:
        chunks: the stored bytes (gzip or plain).
        max_inflated: the decompression ceiling (:func:`decompressed`); past it, a fatal
            :class:`BadLine`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    raw_decode = _DECODER.raw_decode
    skip_ws = _WHITESPACE.match
    buffer = ""
    line = 1
    record_no = 0
    skipping = False  # inside a corrupt line: drop text up to the next newline

    def consume(final: bool) -> Iterator[RawRecord | BadLine]:
        nonlocal buffer, line, record_no, skipping
        pos = 0
        end = len(buffer)
        while True:
            if skipping:
                newline = buffer.find("\n", pos)
                if newline < 0:
                    pos = end
                    break
                skipping = False
                pos = newline
            ws = skip_ws(buffer, pos)
            stop = ws.end() if ws is not None else pos
            line += buffer.count("\n", pos, stop)
            pos = stop
            if pos >= end:
                break
            reason: str | None = None
            try:
                obj, after = raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                newline = buffer.find("\n", pos)
                if newline < 0 and not final:
                    if end - pos <= MAX_RECORD_CHARS:
                        break  # probably a record cut by the chunk boundary: wait for more
                    reason = f"line_too_long: a record longer than {MAX_RECORD_CHARS} characters"
                else:
                    reason = f"not JSON: {exc.msg}"
            except RecursionError:
                reason = "not usable JSON: nested too deeply to decode"
            except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
                reason = f"not usable JSON: {str(exc)[:80]}"
            if reason is not None:
                yield BadLine(line, reason)
                newline = buffer.find("\n", pos)
                if newline < 0:
                    pos = end
                    skipping = not final
                    break
                pos = newline
                continue
            if after >= end and not final and not isinstance(obj, dict):
                break  # a number or literal could continue in the next chunk; objects cannot
            if not isinstance(obj, dict):
                yield BadLine(line, f"a JSON {type(obj).__name__}, not an object")
            else:
                yield RawRecord(record_no, line, obj)
                record_no += 1
            line += buffer.count("\n", pos, after)
            pos = after
        buffer = buffer[pos:]

    try:
        for chunk in decompressed(chunks, max_bytes=max_inflated):
            buffer += decoder.decode(chunk)
            yield from consume(final=False)
    except ValueError as exc:
        buffer += decoder.decode(b"", final=True)
        yield from consume(final=True)
        yield BadLine(line, str(exc), fatal=True)
        return
    buffer += decoder.decode(b"", final=True)
    yield from consume(final=True)


# ---------------------------------------------------------------------- record decoding


class CorruptRecordError(ValueError):
    """A record that is JSON but cannot be replayed (bad rawData, bad CloudWatch payload)."""


@dataclass(slots=True)
class DecodedRecord:
    """A record ready to send: its events for one endpoint, and what it was."""

    kind: str
    error_code: str
    arrival_ms: int | None
    replay_attempts: int
    endpoint: Endpoint
    events: Sequence[EncodedEvent]
    raw_target: RawTarget | None
    payload_bytes: int
    event_id: str | None
    control: bool = False


def record_kind(record: Mapping[str, Any], key_kind_: str | None) -> str:
    """The kind of a record: from its key, else ``lambdaArn`` means processing-failed."""
    if key_kind_ is not None:
        return key_kind_
    if "lambdaArn" in record and "endpoint" not in record:
        return PROCESSING_FAILED
    return SPLUNK_FAILED


_INT_LIMIT: Final = 2**63  # a timestamp or count past a signed 64-bit integer is not one


def _int_or_none(value: object) -> int | None:
    """An integer field read tolerantly: None for anything else (NaN, infinities, booleans,
    digits Python refuses, values past 64 bits)."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    elif isinstance(value, str) and len(value) <= 40 and value.strip().isdecimal():
        try:
            number = int(value.strip())
        except ValueError:  # decimal digits int() refuses
            return None
    if number is None or not -_INT_LIMIT < number < _INT_LIMIT:
        return None
    return number


def record_meta(record: Mapping[str, Any]) -> tuple[str, int | None, int]:
    """``(errorCode, arrivalTimestamp ms, replayAttempts)`` of a record, tolerantly."""
    code = record.get("errorCode")
    attempts = _int_or_none(record.get("replayAttempts")) or 0
    return (
        code if isinstance(code, str) and code else "Unknown",
        _int_or_none(record.get("arrivalTimestamp")),
        attempts,
    )


def split_hec_payload(payload: bytes, endpoint: str | None = None) -> tuple[Endpoint, list[bytes]]:
    """The events in a payload that was sent to HEC, and the endpoint it was meant for.

    With ``endpoint`` given (our records say it) it is trusted: an event payload is one
    object, a raw payload is split into lines. Without it: one or more concatenated JSON
    objects, each with an ``event`` key, are event-endpoint events; anything else is raw
    lines (non-empty lines, line breaks removed).
    """
    if endpoint == "event":
        return "event", [payload.strip()] if payload.strip() else []
    if endpoint != "raw":
        stripped = payload.strip()
        if stripped[:1] == b"{":
            events = _event_objects(stripped)
            if events is not None:
                return "event", events
    lines = [line.rstrip(b"\r") for line in payload.split(b"\n")]
    return "raw", [line for line in lines if line.strip()]


def _event_objects(payload: bytes) -> list[bytes] | None:
    """The concatenated event objects of a payload; None when it is not only those (invalid
    UTF-8, JSON nested too deeply or with numbers Python refuses: raw lines, then)."""
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            return None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    else:
        return [payload] if isinstance(obj, dict) and "event" in obj else None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    events: list[bytes] = []
    pos = 0
    end = len(text)
    while pos < end:
        try:
            obj, after = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or "event" not in obj:
            return None
        events.append(text[pos:after].encode("utf-8"))
        ws = _WHITESPACE.match(text, after)
        pos = ws.end() if ws is not None else after
    return events


def decode_record(record: Mapping[str, Any], kind: str, options: TransformOptions) -> DecodedRecord:
    """Turn one backsplash record into events for HEC.

    Whatever the record holds, this raises nothing but :class:`CorruptRecordError`: a
    hostile record is that record's problem only.

    Args:
        record: the JSON record.
        kind: from :func:`record_kind`.
        options: transform options, for processing-failed payloads.

    Raises:
        CorruptRecordError: no usable ``rawData``, or a payload the transform refuses.
    """
    try:
        return _decode_record(record, kind, options)
    except CorruptRecordError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # The decoders below catch what they expect; this keeps anything else (deep nesting,
        # numbers out of range) one record's problem instead of the whole object's.
        raise CorruptRecordError(f"undecodable record: {type(exc).__name__}") from None


def _decode_record(
    record: Mapping[str, Any], kind: str, options: TransformOptions
) -> DecodedRecord:
    error_code, arrival_ms, attempts = record_meta(record)
    raw_data = record.get("rawData")
    if not isinstance(raw_data, str):
        raise CorruptRecordError("no rawData string")
    try:
        payload = base64.b64decode(raw_data, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptRecordError("rawData is not base64") from None
    record_id = record.get("EventId")
    event_id = record_id if isinstance(record_id, str) and record_id else None
    stated = record.get("endpoint")
    if kind == PROCESSING_FAILED and stated not in ("event", "raw"):
        try:
            batch = transform_payload(payload, options)
        except TransformError as exc:
            raise CorruptRecordError(f"processing-failed payload: {exc}") from None
        events = [
            event
            if event.event_id
            else EncodedEvent(event.payload, payload_event_id(event.payload))
            for event in batch.events
        ]
        return DecodedRecord(
            kind=kind,
            error_code=error_code,
            arrival_ms=arrival_ms,
            replay_attempts=attempts,
            endpoint=batch.endpoint,
            events=events,
            raw_target=batch.raw_target,
            payload_bytes=sum(len(event.payload) for event in events),
            event_id=event_id,
            control=batch.is_control,
        )
    endpoint, payloads = split_hec_payload(payload, stated if isinstance(stated, str) else None)
    raw_target = None
    if endpoint == "raw":
        values = [record.get(name) for name in ("source", "sourcetype", "index", "host")]
        if any(isinstance(value, str) for value in values):
            raw_target = RawTarget(*(v if isinstance(v, str) else None for v in values))
    if len(payloads) == 1:
        ids: list[str] = [event_id or payload_event_id(payloads[0])]
    else:
        ids = [
            f"{event_id}:{position}" if event_id else payload_event_id(item)
            for position, item in enumerate(payloads)
        ]
    return DecodedRecord(
        kind=kind,
        error_code=error_code,
        arrival_ms=arrival_ms,
        replay_attempts=attempts,
        endpoint=endpoint,
        events=[EncodedEvent(item, ids[i]) for i, item in enumerate(payloads)],
        raw_target=raw_target,
        payload_bytes=sum(map(len, payloads)),
        event_id=event_id,
    )


# ---------------------------------------------------------------------- replay-failed writer


@dataclass(slots=True)
class _EventOrigin:
    record_no: int
    arrival_ms: int | None
    replay_attempts: int
    source: str


class ReplayFailedWriter:
    """The deliverers' backsplash during replay: ``<root>replay-failed/YYYY/MM/DD/HH/``.

    Each line is our usual backsplash record plus ``replayAttempts`` (the event's previous
    count + 1) and ``replaySource`` (the object it came from); ``arrivalTimestamp`` stays the
    event's original one, so ``--since/--until`` select it the same way next time.

    Args:
        s3_client: the S3 client.
        bucket: where to write.
        root: key prefix, empty or ending with ``/``; objects go under ``<root>replay-failed/``.
        clock: wall clock.
    """

    def __init__(
        self,
        s3_client: S3Client,
        bucket: str,
        root: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._target = Backsplash(s3_client, bucket, root, clock=clock)
        self.bucket = bucket
        self.root = root
        self._clock = clock
        self._origins: dict[str, _EventOrigin] = {}
        self.failed_records: dict[int, int] = {}  # record_no -> events failed, this chunk
        self.keys: list[str] = []
        self.events_written = 0

    def expect(self, events: Sequence[EncodedEvent], origin: _EventOrigin) -> None:
        """Remember where these (submitted) events came from."""
        for event in events:
            if event.event_id is not None:
                self._origins[event.event_id] = origin

    def next_chunk(self) -> None:
        """Forget the finished chunk's events."""
        self._origins.clear()
        self.failed_records.clear()

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
        """Store events that failed again (the ``BacksplashWriter`` protocol).

        Raises:
            BacksplashError: S3 refused the write.
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
                self.failed_records[origin.record_no] = (
                    self.failed_records.get(origin.record_no, 0) + 1
                )
            per_record.append(extra)
        key = object_key(datetime.fromtimestamp(now, UTC), REPLAY_FAILED, prefix=self.root)
        ending_ms = int(now * 1000)
        self._target.put_object(
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
                per_record=per_record,
            ),
        )
        self.keys.append(key)
        self.events_written += len(events)
        return key


# ---------------------------------------------------------------------- rate limit, progress


class RateLimiter:
    """Events per second over all threads: a token bucket one second deep that may go into
    debt (a record's events are taken at once), repaid by sleeping."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = rate
        self._last = clock()

    def acquire(self, count: int) -> float:
        """Take ``count`` tokens, sleeping as long as needed; returns the time slept."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= count
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class Progress(Protocol):
    """Receives the report as it changes (the CLI draws a bar or logs lines)."""

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """The report changed (or the run ended, ``final``)."""
        ...


class TtyProgress:
    """A one-line progress bar on a terminal (stderr): objects, events, bytes, rate, ETA."""

    def __init__(
        self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic, width: int = 24
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._last = 0.0
        self._width = width

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """Redraw at most ten times a second, and once at the end."""
        now = self._clock()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        total = max(report.bytes_listed, 1)
        done_fraction = min(report.bytes_read / total, 1.0)
        filled = int(done_fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        rate = report.events_sent / elapsed
        eta = (
            (elapsed / done_fraction - elapsed) if 0 < done_fraction < 1 else 0.0
        )  # by compressed bytes, the only total known up front
        finished = report.objects_done + report.objects_partial + report.objects_failed
        line = (
            f"\r[{bar}] {done_fraction * 100:5.1f}%  objects {finished}/{report.objects_selected}"
            f"  events {report.events_sent:,}  {report.bytes_read / 1e6:,.1f}/"
            f"{report.bytes_listed / 1e6:,.1f} MB  {rate:,.0f} ev/s  ETA {_duration(eta)}"
        )
        self._stream.write(line + ("\n" if final else ""))
        self._stream.flush()


class LogProgress:
    """``replay_progressed`` log lines, at most every ``interval_s`` (not on a terminal)."""

    def __init__(
        self, *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last = clock()

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """Log when the interval has passed (never on ``final``: the summary follows)."""
        now = self._clock()
        if final or now - self._last < self._interval:
            return
        self._last = now
        _log.info(
            "replay_progressed",
            objects_done=report.objects_done,
            objects_selected=report.objects_selected,
            events_sent=report.events_sent,
            events_delivered=report.events_delivered,
            events_failed=report.events_failed,
            bytes_read=report.bytes_read,
            bytes_listed=report.bytes_listed,
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ---------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class _Object:
    key: str
    etag: str
    size: int


@dataclass(slots=True)
class _Shared:
    """What the worker threads share (report under ``lock``)."""

    settings: Settings
    options: ReplayOptions
    selection: Selection
    bucket: str
    root: str
    failed_bucket: str
    failed_root: str
    s3: S3Client
    report: ReplayReport
    state_path: Path
    deliverer_factory: DelivererFactory
    stop: threading.Event
    limiter: RateLimiter | None
    progress: Progress | None
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    lock: threading.Lock = field(default_factory=threading.Lock)
    events_reserved: int = 0
    ledger: Ledger = field(default_factory=Ledger)


def replay(
    settings: Settings,
    s3_uri: str,
    options: ReplayOptions,
    *,
    s3_client: S3Client,
    deliverer_factory: DelivererFactory = default_deliverer_factory,
    stop_event: threading.Event | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
) -> ReplayReport:
    """Replay the backsplash objects under ``s3_uri``.

    Args:
        settings: delivery settings (HEC, acks, retry, batching, transform).
        s3_uri: ``s3://bucket/prefix`` to replay.
        options: selection and behaviour.
        s3_client: a boto3 S3 client.
        deliverer_factory: builds one deliverer per endpoint and thread.
        stop_event: set it to stop after the chunk in flight (state stays consistent).
        progress: told about every chunk and object.
        clock: monotonic clock (elapsed time, rate limit).
        wall_clock: epoch seconds (replay-failed keys, state timestamps).
        sleep: rate-limit sleeps.

    Returns:
        The report; its ``exit_status`` is the CLI's.

    Raises:
        ValueError: a malformed ``s3_uri`` or ``options.failed_to``.
    """
    bucket, prefix = parse_s3_uri(s3_uri)
    root = source_root(prefix)
    if options.failed_to:
        failed_bucket, failed_root = parse_s3_uri(options.failed_to)
        if failed_root and not failed_root.endswith("/"):
            failed_root += "/"
    else:
        failed_bucket, failed_root = bucket, root
    report = ReplayReport(source=s3_uri, dry_run=options.dry_run)
    started = clock()
    shared = _Shared(
        settings=settings,
        options=options,
        selection=Selection.of(options),
        bucket=bucket,
        root=root,
        failed_bucket=failed_bucket,
        failed_root=failed_root,
        s3=s3_client,
        report=report,
        state_path=options.state_path or default_state_path(os.environ),
        deliverer_factory=deliverer_factory,
        stop=stop_event if stop_event is not None else threading.Event(),
        limiter=(
            RateLimiter(options.rate_limit, clock=clock, sleep=sleep)
            if options.rate_limit
            else None
        ),
        progress=progress,
        clock=clock,
        wall_clock=wall_clock,
    )
    _log.info(
        "replay_started",
        source=s3_uri,
        dry_run=options.dry_run,
        state=str(shared.state_path),
        failed_to=f"s3://{failed_bucket}/{failed_root}{REPLAY_FAILED}/",
        concurrency=options.concurrency,
    )
    objects = _list_objects(shared, prefix)
    work: queue.Queue[_Object] = queue.Queue()
    for obj in objects:
        work.put(obj)
    threads = [
        threading.Thread(target=_worker, args=(shared, work), name=f"replay-{n}", daemon=True)
        for n in range(min(options.concurrency, max(len(objects), 1)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        shared.stop.set()
        report.interrupted = True
        for thread in threads:
            thread.join()
    if (
        shared.stop.is_set()
        and not report.limited
        and report.fatal is None
        and report.backsplash_error is None
        and report.error is None
    ):
        report.interrupted = True  # stopped from outside (signal, caller)
    report.elapsed_s = clock() - started
    if progress is not None:
        progress.update(report, final=True)
    if not options.dry_run:
        shared.ledger.log_summary(_log, replay=True, fatal=report.fatal is not None)
    _log.info(
        "replay_summarized",
        **{k: v for k, v in report.to_dict().items() if k not in ("corrupt", "replay_failed_keys")},
    )
    return report


def default_state_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/firehose-splunk-forwarder/replay.sqlite`` (``~/.local/state``)."""
    base = environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "firehose-splunk-forwarder" / "replay.sqlite"


def _list_objects(shared: _Shared, prefix: str) -> list[_Object]:
    """Every object to look at, listed once up front (so nothing written now is re-read)."""
    report = shared.report
    selected: list[_Object] = []
    paginator = shared.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=shared.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            rest = key[len(shared.root) :] if key.startswith(shared.root) else key
            if rest.split("/", 1)[0] == REPLAYED:
                continue  # already replayed and archived
            report.objects_listed += 1
            if not shared.selection.object_may_match(key):
                report.objects_outside_window += 1
                _log.debug("replay_object_skipped", key=key, reason="not selected by its key")
                continue
            selected.append(_Object(key, item.get("ETag", "").strip('"'), item.get("Size", 0)))
    report.objects_selected = len(selected)
    report.bytes_listed = sum(obj.size for obj in selected)
    return selected


class _Stop(Exception):
    """Leave the object after the chunk in flight."""


class _Worker:
    """One thread's deliverers, state connection and replay-failed writer."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        options = shared.options
        self.state = ReplayState(
            shared.state_path, readonly=options.dry_run, clock=shared.wall_clock
        )
        self.writer = ReplayFailedWriter(
            shared.s3, shared.failed_bucket, shared.failed_root, clock=shared.wall_clock
        )
        self.deliverers: dict[str, Deliverer] = {}

    def deliverer(self, endpoint: Endpoint) -> Deliverer:
        found = self.deliverers.get(endpoint)
        if found is None:
            settings = self.shared.settings
            settings = replace(settings, hec=replace(settings.hec, endpoint=endpoint))
            found = self.shared.deliverer_factory(settings, backsplash=self.writer)
            self.deliverers[endpoint] = found
        return found

    def fatal(self) -> str | None:
        for deliverer in self.deliverers.values():
            if deliverer.fatal is not None:
                return deliverer.fatal.message
        return None

    def close(self, *, flush: bool = True) -> None:
        """Close the deliverers (``flush=False`` after a failed chunk: nothing more is sent,
        so nothing is delivered that the state does not record) and the state."""
        try:
            for deliverer in self.deliverers.values():
                if flush:
                    deliverer.close(summarize=False)
                else:
                    deliverer.release()  # stop its I/O thread; the chunk is retried next run
                summary = deliverer.ledger.summary()
                self.shared.ledger.add(
                    **{
                        name: value
                        for name, value in summary.items()
                        if isinstance(value, int)
                        and not isinstance(value, bool)
                        and name != "in_flight"
                    }
                )
        finally:
            self.state.close()


def _worker(shared: _Shared, work: queue.Queue[_Object]) -> None:
    worker: _Worker | None = None
    clean = False
    try:
        worker = _Worker(shared)
        while not shared.stop.is_set():
            try:
                obj = work.get_nowait()
            except queue.Empty:
                break
            _replay_object(worker, obj)
        clean = True
    except BacksplashError as exc:
        with shared.lock:
            shared.report.backsplash_error = exc.message
        shared.stop.set()
        _log.critical("replay_stopped", reason="replay-failed write failed", error=exc.message)
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        with shared.lock:
            shared.report.error = shared.report.error or f"{type(exc).__name__}: {exc}"
        shared.stop.set()
        _log.error("replay_stopped", reason="unexpected error", error=str(exc))
    finally:
        if worker is not None:
            try:
                worker.close(flush=clean)
            except BacksplashError as exc:
                with shared.lock:
                    shared.report.backsplash_error = exc.message
                shared.stop.set()


_Row = tuple[int, str | None, int, Outcome]


@dataclass(slots=True)
class _Chunk:
    """Records between two commits. Events are buffered per endpoint and raw target and
    handed to the deliverers a batch's worth at a time (one ``submit`` per record would cost
    more than the send); ``rows`` are the records whose events were all submitted."""

    rows: list[_Row] = field(default_factory=list)
    events: int = 0  # submitted
    nbytes: int = 0  # payload bytes, submitted or buffered
    pending_rows: list[_Row] = field(default_factory=list)
    pending_events: int = 0
    pending_bytes: int = 0
    groups: dict[tuple[Endpoint, RawTarget | None], list[EncodedEvent]] = field(
        default_factory=dict
    )


def _replay_object(worker: _Worker, obj: _Object) -> None:
    shared = worker.shared
    report = shared.report
    options = shared.options
    log = _log.bind(key=obj.key)
    if worker.state.is_done(shared.bucket, obj.key, obj.etag):
        with shared.lock:
            report.objects_already_done += 1
        log.debug("replay_object_skipped", reason="already replayed")
        return
    handled = worker.state.handled(shared.bucket, obj.key, obj.etag)
    kind_from_key, _ = key_kind(obj.key)
    object_id = (
        None
        if options.dry_run
        else worker.state.begin_object(shared.bucket, obj.key, obj.etag, obj.size, kind_from_key)
    )
    log.debug("replay_object_started", size=obj.size, resumed=len(handled))
    complete = True  # every record handled (so far)
    stopped = False
    read_error: str | None = None
    crash: str | None = None
    chunk = _Chunk()
    counter: _ByteCounter | None = None
    source = f"s3://{shared.bucket}/{obj.key}"
    version_id: str | None = None
    try:
        response = shared.s3.get_object(Bucket=shared.bucket, Key=obj.key, IfMatch=obj.etag)
        version = response.get("VersionId")
        version_id = version if version and version != "null" else None
        counter = _ByteCounter(response["Body"].iter_chunks(READ_CHUNK_BYTES))
        for item in iter_records(counter):
            if isinstance(item, BadLine):
                complete = False
                with shared.lock:
                    report.add_corrupt(obj.key, item.line, item.reason)
                log.warning("replay_record_corrupt", line=item.line, reason=item.reason)
                continue
            if shared.stop.is_set():
                stopped = True
                complete = False
                break
            status = _replay_record(
                worker,
                obj,
                item,
                handled=handled,
                chunk=chunk,
                kind_from_key=kind_from_key,
                source=source,
            )
            if status == "stop":
                stopped = True
                complete = False
                break
            if status == "skipped":
                complete = False
            if worker.deliverers and worker.fatal() is not None:
                stopped = True
                complete = False
                break
            if chunk.nbytes >= options.chunk_bytes:
                _commit(worker, object_id, chunk)
                chunk = _Chunk()
                _tick(shared, counter)
                if worker.fatal() is not None:
                    stopped = True
                    complete = False
                    break
    except BacksplashError:
        raise  # the chunk cannot be committed: its events are neither delivered nor stored
    except (BotoCoreError, ClientError, OSError) as exc:
        read_error = f"{type(exc).__name__}: {exc}"
        complete = False
    except Exception as exc:  # noqa: BLE001 - any bug: commit what was sent, stop the run
        crash = f"{type(exc).__name__}: {exc}"
        complete = False
    # Whatever happened, what was submitted is flushed and recorded, so a resumed run
    # neither re-sends it nor skips the rest (after a crash, buffered events are dropped
    # unsent and their records stay unhandled).
    _commit(worker, object_id, chunk, submit=crash is None)
    _tick(shared, counter)
    if crash is not None:
        with shared.lock:
            report.error = report.error or f"{obj.key}: {crash}"
        shared.stop.set()
        log.error("replay_stopped", reason="unexpected error", error=crash)
        return
    fatal = worker.fatal()
    if fatal is not None:
        with shared.lock:
            report.fatal = report.fatal or fatal
        shared.stop.set()
        complete = False
        log.error("replay_stopped", reason="HEC refused delivery", error=fatal)
    if read_error is not None:
        with shared.lock:
            report.objects_failed += 1
        log.error("replay_object_failed", error=read_error)
        return
    with shared.lock:
        if complete:
            report.objects_done += 1
        else:
            report.objects_partial += 1
    log.info("replay_object_finished", complete=complete, stopped=stopped)
    if options.dry_run or object_id is None:
        return
    if complete:
        worker.state.finish_object(object_id)
        _dispose(worker, obj, object_id, version_id)
    elif options.after_success != "keep":
        with shared.lock:
            report.objects_kept += 1
        log.warning(
            "replay_object_kept",
            reason="not every record was replayed (corrupt, not selected, exhausted or stopped)",
            after_success=options.after_success,
        )


def _tick(shared: _Shared, counter: _ByteCounter | None) -> None:
    if counter is not None:
        with shared.lock:
            shared.report.bytes_read += counter.total
        counter.total = 0
    if shared.progress is not None:
        with shared.lock:
            shared.progress.update(shared.report)


def _replay_record(
    worker: _Worker,
    obj: _Object,
    item: RawRecord,
    *,
    handled: HandledRecords,
    chunk: _Chunk,
    kind_from_key: str | None,
    source: str,
) -> Literal["sent", "skipped", "done", "stop"]:
    """Send one record (or count it, dry); what became of it."""
    shared = worker.shared
    report = shared.report
    options = shared.options
    selection = shared.selection
    record = item.data
    with shared.lock:
        report.records_read += 1
    if item.record_no in handled:
        with shared.lock:
            report.records_already_handled += 1
        return "done"
    kind = record_kind(record, kind_from_key)
    error_code, arrival_ms, attempts = record_meta(record)
    if (
        kind not in selection.kinds
        or not selection.error_code_matches(error_code)
        or not selection.time_matches(arrival_ms, obj.key)
    ):
        with shared.lock:
            report.records_not_selected += 1
        return "skipped"
    if attempts >= options.max_attempts:
        with shared.lock:
            report.records_exhausted += 1
        _log.warning(
            "replay_records_exhausted",
            key=obj.key,
            line=item.line,
            replay_attempts=attempts,
            max_attempts=options.max_attempts,
        )
        return "skipped"
    try:
        decoded = decode_record(record, kind, shared.settings.transform)
    except CorruptRecordError as exc:
        with shared.lock:
            report.add_corrupt(obj.key, item.line, str(exc))
        _log.warning("replay_record_corrupt", key=obj.key, line=item.line, reason=str(exc))
        return "skipped"
    count = len(decoded.events)
    if options.limit is not None:
        with shared.lock:
            if shared.events_reserved >= options.limit or (
                shared.events_reserved and shared.events_reserved + count > options.limit
            ):
                if not report.limited:
                    report.limited = True
                    _log.info("replay_stopped", reason="limit reached", limit=options.limit)
                shared.stop.set()
                return "stop"
            shared.events_reserved += count
    with shared.lock:
        report.count(decoded.kind, decoded.error_code, 1, count, decoded.payload_bytes)
        report.payload_bytes += decoded.payload_bytes
        if decoded.control:
            report.events_dropped += 1
    if options.dry_run:
        with shared.lock:
            report.events_sent += count
        return "sent"
    if count:
        if shared.limiter is not None:
            shared.limiter.acquire(count)
        worker.writer.expect(
            decoded.events,
            _EventOrigin(item.record_no, decoded.arrival_ms, decoded.replay_attempts, source),
        )
        chunk.groups.setdefault((decoded.endpoint, decoded.raw_target), []).extend(decoded.events)
    chunk.pending_rows.append((item.record_no, decoded.event_id, count, "delivered"))
    chunk.pending_events += count
    chunk.pending_bytes += decoded.payload_bytes
    chunk.nbytes += decoded.payload_bytes
    if chunk.pending_bytes >= shared.settings.batching.max_bytes:
        _submit(worker, chunk)
    return "sent"


def _submit(worker: _Worker, chunk: _Chunk) -> None:
    """Hand the buffered events to the deliverers (full batches go out now)."""
    groups, rows, count = chunk.groups, chunk.pending_rows, chunk.pending_events
    chunk.groups, chunk.pending_rows = {}, []
    chunk.pending_events = chunk.pending_bytes = 0
    for (endpoint, raw_target), events in groups.items():
        worker.deliverer(endpoint).submit(events, raw_target)
    chunk.rows.extend(rows)
    chunk.events += count
    with worker.shared.lock:
        worker.shared.report.events_sent += count


def _commit(worker: _Worker, object_id: int | None, chunk: _Chunk, *, submit: bool = True) -> None:
    """Submit what is buffered, flush the deliverers, then record the records as handled."""
    shared = worker.shared
    if shared.options.dry_run or object_id is None:
        return
    if submit:
        _submit(worker, chunk)
    for deliverer in worker.deliverers.values():
        deliverer.flush()
    failed_records = dict(worker.writer.failed_records)
    failed = sum(failed_records.values())
    rows: list[tuple[int, str | None, int, Outcome]] = []
    for record_no, event_id, events, _ in chunk.rows:
        lost = failed_records.get(record_no, 0)
        outcome: Outcome = (
            "delivered" if not lost else "replay-failed" if lost >= events else "mixed"
        )
        rows.append((record_no, event_id, events, outcome))
    if rows:
        worker.state.record_chunk(
            object_id, rows, delivered=max(chunk.events - failed, 0), failed=failed
        )
    with shared.lock:
        shared.report.records_handled += len(rows)
        shared.report.events_delivered += max(chunk.events - failed, 0)
        shared.report.events_failed += failed
        new_keys = [
            key for key in worker.writer.keys if key not in shared.report.replay_failed_keys
        ]
        shared.report.replay_failed_keys.extend(new_keys)
    worker.writer.next_chunk()


class _ChangedError(Exception):
    """The object under the key is no longer the one replayed (rewritten since it was read)."""


_PRECONDITION_FAILED: Final = frozenset({"PreconditionFailed", "412"})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _verify_unchanged(s3: S3Client, bucket: str, obj: _Object, version_id: str | None) -> None:
    """Before removing an unversioned object: a HEAD must still show the ETag read.

    Raises:
        _ChangedError: the key holds another object now, or none.
        ClientError, BotoCoreError: S3 refused.
    """
    if version_id is not None:
        return  # the removal names the version read: nothing newer can be touched
    try:
        current = s3.head_object(Bucket=bucket, Key=obj.key)["ETag"].strip('"')
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise _ChangedError("deleted since it was read") from None
        raise
    if current != obj.etag:
        raise _ChangedError("rewritten since it was read (ETag differs)")


def _remove(s3: S3Client, bucket: str, obj: _Object, version_id: str | None) -> None:
    """Delete exactly the object that was replayed, never a newer one under the same key:
    in a versioned bucket that version (``VersionId`` from the read), otherwise only while
    its ETag matches (``If-Match``; after :func:`_verify_unchanged`, for S3 implementations
    without conditional deletes).

    Raises:
        _ChangedError: S3 refused the condition (rewritten since it was read).
        ClientError, BotoCoreError: S3 refused.
    """
    if version_id is not None:
        s3.delete_object(Bucket=bucket, Key=obj.key, VersionId=version_id)
        return
    try:
        s3.delete_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
    except ClientError as exc:
        if _error_code(exc) in _PRECONDITION_FAILED:
            raise _ChangedError("rewritten since it was read (If-Match failed)") from None
        if _error_code(exc) != "NotImplemented":
            raise
        s3.delete_object(Bucket=bucket, Key=obj.key)  # no conditional delete: the HEAD said


def _dispose(worker: _Worker, obj: _Object, object_id: int, version_id: str | None) -> None:
    """Archive or delete a done object, as asked: only the object that was replayed (by its
    version, else its ETag); one rewritten since it was read is left in place, counted
    (``objects_changed``) and logged (``replay_object_kept``)."""
    shared = worker.shared
    after = shared.options.after_success
    if after == "keep":
        worker.state.set_disposition(object_id, "kept")
        return
    _, root = key_kind(obj.key)
    root = root if key_kind(obj.key)[0] is not None else shared.root
    try:
        _verify_unchanged(shared.s3, shared.bucket, obj, version_id)
        if after == "archive":
            target = archive_key(obj.key, root)
            source: dict[str, str] = {"Bucket": shared.bucket, "Key": obj.key}
            if version_id is not None:
                source["VersionId"] = version_id
            try:
                shared.s3.copy_object(
                    Bucket=shared.bucket,
                    Key=target,
                    CopySource=source,  # type: ignore[arg-type]
                    CopySourceIfMatch=f'"{obj.etag}"',
                )
            except ClientError as exc:
                if _error_code(exc) in _PRECONDITION_FAILED:
                    raise _ChangedError(
                        "rewritten since it was read (copy If-Match failed)"
                    ) from None
                raise
            _remove(shared.s3, shared.bucket, obj, version_id)
            worker.state.set_disposition(object_id, "archived")
            with shared.lock:
                shared.report.objects_archived += 1
            _log.info("replay_object_archived", key=obj.key, to=target)
        else:
            _remove(shared.s3, shared.bucket, obj, version_id)
            worker.state.set_disposition(object_id, "deleted")
            with shared.lock:
                shared.report.objects_deleted += 1
            _log.info("replay_object_deleted", key=obj.key, version_id=version_id)
    except _ChangedError as exc:
        worker.state.set_disposition(object_id, "kept")
        with shared.lock:
            shared.report.objects_changed += 1
            shared.report.objects_kept += 1
        _log.warning(
            "replay_object_kept", key=obj.key, after_success=after, reason=str(exc), etag=obj.etag
        )
    except (BotoCoreError, ClientError) as exc:
        with shared.lock:
            shared.report.dispose_failures += 1
        _log.error("replay_object_failed", key=obj.key, action=after, error=str(exc))


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``forwarder replay`` flags (``--hec-url``/``--token`` map to settings overrides)."""
    parser.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="backsplash objects to replay")
    parser.add_argument("--hec-url", help="HEC URL(s) to replay into ($SPLUNK_HEC_URL)")
    parser.add_argument(
        "--token", help="HEC token; prefer $SPLUNK_HEC_TOKEN, which other users cannot see in ps"
    )
    select = parser.add_argument_group("selection")
    select.add_argument(
        "--since", metavar="TIME", help="records that arrived at/after TIME (ISO 8601 or 2h)"
    )
    select.add_argument("--until", metavar="TIME", help="records that arrived before TIME")
    select.add_argument(
        "--error-code",
        action="append",
        default=[],
        metavar="CODE",
        help="only this errorCode (glob allowed, e.g. 'Splunk.*'); repeatable",
    )
    select.add_argument(
        "--include", action="append", choices=KINDS, help="only these kinds; repeatable"
    )
    select.add_argument("--exclude", action="append", choices=KINDS, default=[], help="skip kinds")
    select.add_argument("--limit", type=int, metavar="N", help="send at most N events")
    behave = parser.add_argument_group("behaviour")
    behave.add_argument(
        "--dry-run", action="store_true", help="count what would be sent; send nothing"
    )
    behave.add_argument(
        "--state",
        metavar="PATH",
        help="SQLite replay state (default: $XDG_STATE_HOME/firehose-splunk-forwarder/"
        "replay.sqlite)",
    )
    behave.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"skip records already replayed N times (default {DEFAULT_MAX_ATTEMPTS})",
    )
    behave.add_argument(
        "--failed-to",
        metavar="s3://BUCKET/PREFIX",
        help="root for replay-failed/ objects (default: the replayed prefix's root)",
    )
    after = behave.add_mutually_exclusive_group()
    after.add_argument(
        "--archive", action="store_true", help="move fully replayed objects under replayed/"
    )
    after.add_argument("--delete", action="store_true", help="delete fully replayed objects")
    behave.add_argument("--concurrency", type=int, default=1, metavar="N", help="objects at once")
    behave.add_argument("--rate-limit", type=float, metavar="EPS", help="events per second")
    behave.add_argument(
        "--chunk-mb",
        type=float,
        default=DEFAULT_CHUNK_BYTES / 1024 / 1024,
        metavar="MB",
        help="payload MB per flush-and-commit step (memory and re-send bound)",
    )
    behave.add_argument("--json", action="store_true", help="print the report as JSON")
    behave.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ReplayOptions:
    """Build :class:`ReplayOptions` from parsed flags.

    Raises:
        ValueError: an invalid value (the message says which).
    """
    include = frozenset(args.include) if args.include else frozenset(KINDS)
    after: AfterSuccess = "archive" if args.archive else "delete" if args.delete else "keep"
    return ReplayOptions(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        error_codes=tuple(args.error_code),
        include=include,
        exclude=frozenset(args.exclude),
        limit=args.limit,
        dry_run=args.dry_run,
        max_attempts=args.max_attempts,
        after_success=after,
        state_path=Path(args.state).expanduser() if args.state else default_state_path(environ),
        concurrency=args.concurrency,
        rate_limit=args.rate_limit,
        chunk_bytes=max(int(args.chunk_mb * 1024 * 1024), 1),
        failed_to=args.failed_to,
    )


def run(args: argparse.Namespace, ctx: Any) -> int:
    """``forwarder replay``: the CLI entry (``ctx``: a ``CommandContext``)."""
    from config.loader import require_hec  # noqa: PLC0415

    try:
        options = options_from_args(args, ctx.environ)
        parse_s3_uri(args.uri)
    except ValueError as exc:
        print(f"forwarder replay: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    settings = ctx.settings()
    if not options.dry_run:
        require_hec(settings)
    import boto3  # noqa: PLC0415 - only the replay command needs S3
    from botocore.config import Config  # noqa: PLC0415

    s3 = boto3.client("s3", config=Config(retries={"mode": "standard"}))
    stop = threading.Event()
    progress: Progress | None
    if args.no_progress:
        progress = None
    elif sys.stderr.isatty():
        progress = TtyProgress(sys.stderr)
    else:
        progress = LogProgress()
    with _stop_on_signals(stop):
        report = replay(
            settings, args.uri, options, s3_client=s3, stop_event=stop, progress=progress
        )
    if args.json:
        ctx.out.write(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        ctx.out.write(format_summary(report))
    return report.exit_status


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish the chunk in flight and stop; the second: interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _log.warning("replay_stopped", reason=f"signal {signum}; finishing the chunk in flight")

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def format_summary(report: ReplayReport) -> str:
    """The human summary table printed at the end."""
    lines = [
        f"replay {report.source}" + ("  (dry run: nothing sent)" if report.dry_run else ""),
        f"  objects  listed {report.objects_listed}  selected {report.objects_selected}  "
        f"done {report.objects_done}  partial {report.objects_partial}  "
        f"already done {report.objects_already_done}  failed {report.objects_failed}  "
        f"archived {report.objects_archived}  deleted {report.objects_deleted}"
        + (f"  changed (kept) {report.objects_changed}" if report.objects_changed else ""),
        "",
        f"  {'kind / error code':<32}{'records':>10}{'events':>12}{'bytes':>14}",
    ]
    for title, table in (("", report.by_kind), ("", report.by_error_code)):
        for name, row in sorted(table.items()):
            lines.append(
                f"  {title}{name:<32}{row['records']:>10,}{row['events']:>12,}{row['bytes']:>14,}"
            )
        lines.append("")
    verb = "would send" if report.dry_run else "sent"
    lines.append(
        f"  events   {verb} {report.events_sent:,}  delivered {report.events_delivered:,}  "
        f"failed again (replay-failed/) {report.events_failed:,}  "
        f"dropped (control) {report.events_dropped:,}"
    )
    lines.append(
        f"  records  read {report.records_read:,}  already handled "
        f"{report.records_already_handled:,}  not selected {report.records_not_selected:,}  "
        f"past max attempts {report.records_exhausted:,}  corrupt {report.corrupt_total:,}"
    )
    for bad in report.corrupt:
        lines.append(
            f"    corrupt: s3://{_bucket_of(report.source)}/{bad.key} line {bad.line}: {bad.reason}"
        )
    if report.corrupt_total > len(report.corrupt):
        lines.append(f"    ... and {report.corrupt_total - len(report.corrupt)} more")
    for key in report.replay_failed_keys[:20]:
        lines.append(f"    replay-failed: {key}")
    notes = []
    if report.limited:
        notes.append("stopped at --limit")
    if report.interrupted:
        notes.append("interrupted: run again to resume")
    if report.fatal:
        notes.append(f"HEC refused delivery: {report.fatal}")
    if report.backsplash_error:
        notes.append(f"could not write replay-failed/: {report.backsplash_error}")
    lines.append(
        f"  status   {int(report.exit_status)}  {report.elapsed_s:.1f}s"
        + (f"  ({'; '.join(notes)})" if notes else "")
    )
    return "\n".join(lines) + "\n"


def _bucket_of(uri: str) -> str:
    return parse_s3_uri(uri)[0]
