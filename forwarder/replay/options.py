"""What ``forwarder replay`` is asked to do: :class:`ReplayOptions` (the flags, validated),
their compiled record filter :class:`Selection`, and the parsers of its time and S3 values.

Selection: ``since``/``until`` by ``arrivalTimestamp`` (records without one: by the key's
``YYYY/MM/DD/HH`` hour); objects whose key hour ended before ``since`` (or starts more than
:data:`UNTIL_SLACK_S` after ``until``: Firehose writes failures up to its 2 h retry duration
after arrival) are not read at all. ``error_codes`` are exact codes or globs
(``Splunk.*``). Kinds come from the key (``.../splunk-failed/...``), else from the record
(``lambdaArn`` means processing-failed). ``limit`` caps the events sent (whole records).

Where the state lives: :func:`parse_state_spec` turns ``--state`` (a SQLite path, or
``dynamodb://TABLE``) into a :data:`StateSpec`; :func:`forwarder.replay.state_store.open_state`
opens it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from config.drain import DEFAULT_MAX_ATTEMPTS
from config.errors import ConfigError
from config.loader import replay_state_path
from forwarder.backsplash.layout import KINDS, key_hour, key_kind

AfterSuccess = Literal["keep", "archive", "delete"]

#: How much later than ``until`` an object's key hour may be and still hold records that
#: arrived before ``until`` (Firehose retries up to 7200 s, then buffers up to 900 s).
UNTIL_SLACK_S: Final = 3 * 3600
DEFAULT_CHUNK_BYTES: Final = 8 * 1024 * 1024
#: How long a DynamoDB lease on an object lasts unless renewed (``--lease-s``).
DEFAULT_LEASE_S: Final = 120.0
#: The scheme of a shared state table: ``dynamodb://TABLE``.
DYNAMODB_SCHEME: Final = "dynamodb://"
#: DynamoDB's table name rule.
_TABLE_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_RELATIVE: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class SqliteStateSpec:
    """The replay state in a local SQLite file (one machine; no leases)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class DynamoStateSpec:
    """The replay state in a DynamoDB table, shared by replays and drainers anywhere, with a
    lease per object (:mod:`forwarder.replay.dynamo_state`).

    Attributes:
        table: the table name (key schema: string ``pk`` and string ``sk``).
        lease_s: how long a lease lasts unless renewed (renewed every third of it).
    """

    table: str
    lease_s: float = DEFAULT_LEASE_S

    def __str__(self) -> str:
        return f"{DYNAMODB_SCHEME}{self.table}"


#: Where the replay state lives.
StateSpec = SqliteStateSpec | DynamoStateSpec


def parse_state_spec(
    text: str | None,
    environ: Mapping[str, str],
    *,
    lease_s: float = DEFAULT_LEASE_S,
    key: str = "--state",
) -> StateSpec:
    """Parse a state location: ``dynamodb://TABLE``, a SQLite file path, or nothing (the
    default file, ``$XDG_STATE_HOME/firehose-splunk-forwarder/replay.sqlite``).

    Args:
        text: the value given (None or empty: the default file).
        environ: for the default file's location.
        lease_s: the lease duration, for a DynamoDB table (positive).
        key: the flag or setting named in errors.

    Raises:
        ConfigError: an unknown scheme (``s3://...``), a bad table name, a bad lease.
    """
    value = (text or "").strip()
    if not value:
        return SqliteStateSpec(replay_state_path(environ))
    if value.lower().startswith(DYNAMODB_SCHEME):
        table = value[len(DYNAMODB_SCHEME) :]
        if not _TABLE_NAME.fullmatch(table):
            raise ConfigError(
                key,
                f"{value!r}: expected dynamodb://TABLE, a DynamoDB table name of 3 to 255 "
                "letters, digits, '_', '-' or '.'",
            )
        if not lease_s > 0:
            raise ConfigError(key, f"the lease must be positive seconds, got {lease_s}")
        return DynamoStateSpec(table, lease_s)
    if "://" in value:
        raise ConfigError(key, f"{value!r}: expected a SQLite file path or dynamodb://TABLE")
    return SqliteStateSpec(Path(value).expanduser())


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
        state_path: the SQLite state file (None: ``state``, else the default file).
        state: where the state lives (:func:`parse_state_spec`); give this or
            ``state_path``, not both.
        concurrency: objects replayed at once.
        rate_limit: events per second over all objects; None: unlimited.
        chunk_bytes: payload bytes per flush-and-commit step.
        failed_to: ``s3://bucket/prefix`` root for ``replay-failed/``; None: the source root.
        via_firehose: put records into this Firehose delivery stream instead of sending
            them to HEC (:mod:`forwarder.replay.firehose`); None: to HEC.
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
    state: StateSpec | None = None
    concurrency: int = 1
    rate_limit: float | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    failed_to: str | None = None
    via_firehose: str | None = None

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
        if self.via_firehose is not None and not self.via_firehose.strip():
            raise ValueError("via_firehose must name a delivery stream")
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if self.state is not None and self.state_path is not None:
            raise ValueError("give state or state_path, not both")

    def state_spec(self, environ: Mapping[str, str]) -> StateSpec:
        """Where the state lives: ``state``, else the ``state_path`` file, else the default."""
        if self.state is not None:
            return self.state
        return SqliteStateSpec(self.state_path or replay_state_path(environ))

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds selected."""
        return self.include - self.exclude


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

    def record_matches(self, kind: str, error_code: str, arrival_ms: int | None, key: str) -> bool:
        """Whether a record of this kind, ``errorCode`` and arrival time (in object ``key``)
        is selected."""
        return (
            kind in self.kinds
            and self.error_code_matches(error_code)
            and self.time_matches(arrival_ms, key)
        )

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
