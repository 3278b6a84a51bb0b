"""The drain's settings: the ``[drain]`` table of the TOML file, or ``DRAIN_<KEY>`` variables.

``forwarder drain``, the daemon's drainer thread (``[drain] enabled = true``) and the
scheduled drain Lambda (``forwarder.drain.handler``, environment only) read the same keys.
``DRAIN_<KEY>`` (upper case: ``DRAIN_STATE``, ``DRAIN_MAX_EVENTS_PER_S``) wins over the file;
the command's flags win over both. Every invalid value raises ``ConfigError`` naming the key
(``drain.max_attempts``). Stdlib only: the Lambda loads this without the daemon's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from config.errors import ConfigError
from config.loader import replay_state_path
from config.values import number_parser, table_bool

DrainAfterSuccess = Literal["delete", "archive"]

#: Attempts before an event goes to ``replay-failed/``: the drain's and ``replay``'s default.
DEFAULT_MAX_ATTEMPTS: Final = 3
#: Where the drain Lambda keeps a state file when ``DRAIN_STATE`` names none: Lambda's only
#: writable directory.
LAMBDA_STATE_HOME: Final = "/tmp"


def state_option(
    spec: str | None, environ: Mapping[str, str], *, scratch: str | None = None
) -> str:
    """The replay state for a ``--state`` / ``DRAIN_STATE`` value, as ``forwarder replay --state``
    takes it: ``dynamodb://TABLE`` (shared, with leases) unchanged, a file path expanded; None:
    replay's default file (under ``scratch``, Lambda's ``/tmp``, when ``XDG_STATE_HOME`` is
    unset and ``scratch`` is given)."""
    if spec:
        if spec.strip().lower().startswith("dynamodb://"):
            return spec.strip()
        return str(Path(spec).expanduser())
    if scratch is not None and not environ.get("XDG_STATE_HOME"):
        environ = {**environ, "XDG_STATE_HOME": scratch}
    return str(replay_state_path(environ))


@dataclass(frozen=True)
class DrainSettings:
    """How the drain runs.

    Attributes:
        enabled: the daemon runs a drainer thread beside its source (the daemon only).
        source: ``s3://BUCKET/PREFIX`` to drain; None: the backsplash bucket and prefix
            (``BACKSPLASH_BUCKET``, ``BACKSPLASH_PREFIX``).
        state: the replay state, given to the replay engine as ``forwarder replay --state``
            takes it; None: replay's default state file.
        max_events_per_s: at most this many events per second (a token bucket), so live
            traffic keeps priority.
        max_attempts: an event that failed this many replays goes to ``replay-failed/``:
            the only place the drain gives up.
        interval_s: wait between two cycles once the bucket is drained.
        concurrency: objects replayed at once.
        after_success: ``delete`` (the bucket empties) or ``archive`` (under ``replayed/``)
            fully replayed objects.
        pause_s: first wait after HEC looked unhealthy or a cycle met trouble; doubles on
            every further failure up to ``pause_max_s``, back to ``pause_s`` after a
            cycle without trouble.
        pause_max_s: the longest such wait.
        probe_interval_s: HEC's health is probed at least this often during a cycle.
        settle_s: after trouble, what is in flight gets this long to finish (retries, acks)
            before it is backsplashed (``Splunk.Deadline``) and goes back to the pool.
        chunk_mb: payload MB per flush-and-commit step.
        failure_queue: the URL of the push Lambda's on-failure SQS queue; each cycle with
            the gate open also replays its destination records through the push path
            (``forwarder replay sqs://QUEUE_URL``). None: the queue is not read.
    """

    enabled: bool = False
    source: str | None = None
    state: str | None = None
    max_events_per_s: float = 1000.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    interval_s: float = 60.0
    concurrency: int = 1
    after_success: DrainAfterSuccess = "delete"
    pause_s: float = 5.0
    pause_max_s: float = 300.0
    probe_interval_s: float = 10.0
    settle_s: float = 30.0
    chunk_mb: float = 1.0
    failure_queue: str | None = None


def _str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty string")
    return value.strip()


def _source(key: str, value: object) -> str:
    text = _str(key, value)
    if not text.startswith("s3://") or len(text) <= len("s3://"):
        raise ConfigError(key, f"expected s3://BUCKET/PREFIX, got {text!r}")
    return text


def _queue(key: str, value: object) -> str:
    text = _str(key, value)
    if text.startswith("sqs://"):
        text = text[len("sqs://") :]
    if not text.startswith(("https://", "http://")):
        raise ConfigError(key, f"expected an SQS queue URL (https://...), got {text!r}")
    return text


def _after(key: str, value: object) -> str:
    if not isinstance(value, str) or value.strip() not in ("delete", "archive"):
        raise ConfigError(key, f"expected delete or archive, got {value!r}")
    return value.strip()


KEYS: Final[Mapping[str, Callable[[str, object], object]]] = {
    "enabled": table_bool,
    "source": _source,
    "state": _str,
    "max_events_per_s": number_parser(float, 0.001, 10_000_000),
    "max_attempts": number_parser(int, 1, 1000),
    "interval_s": number_parser(float, 0.0, 86_400),
    "concurrency": number_parser(int, 1, 64),
    "after_success": _after,
    "pause_s": number_parser(float, 0.001, 3600),
    "pause_max_s": number_parser(float, 0.001, 86_400),
    "probe_interval_s": number_parser(float, 0.01, 3600),
    "settle_s": number_parser(float, 0.0, 3600),
    "chunk_mb": number_parser(float, 0.001, 1024),
    "failure_queue": _queue,
}


def load_drain_settings(
    document: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> DrainSettings:
    """Build ``DrainSettings`` from the ``[drain]`` table, ``DRAIN_<KEY>`` and flags.

    Args:
        document: the whole TOML document (only ``[drain]`` is read); None: none.
        environ: the environment (``DRAIN_<KEY>`` wins over the file).
        overrides: values from command-line flags (None values are ignored); win over both.

    Returns:
        Validated, frozen drain settings.

    Raises:
        ConfigError: a value is invalid; the key is named (``drain.max_attempts``).
    """
    table = (document or {}).get("drain", {})
    if not isinstance(table, dict):
        raise ConfigError("drain", "[drain] must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"drain.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(KEYS))}")
    raw: dict[str, object] = dict(table)
    env = environ or {}
    for key in KEYS:
        text = env.get(f"DRAIN_{key.upper()}", "")
        if text.strip():
            raw[key] = text
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    values = {key: KEYS[key](f"drain.{key}", value) for key, value in raw.items()}
    settings = DrainSettings(**cast(Any, values))
    if settings.pause_max_s < settings.pause_s:
        raise ConfigError("drain.pause_max_s", "must not be below pause_s")
    return settings
