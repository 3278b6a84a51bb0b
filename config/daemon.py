"""The daemon's own settings: the ``[daemon]`` and ``[source]`` tables of the TOML file (and
``[drain]``, parsed by :mod:`config.drain`).

HEC, acks, retries, batching and the backsplash come from ``config.loader.load_settings`` as
for every other mode; this module only adds what a long-running process needs (where to read,
where to checkpoint, how to shut down, where to serve metrics). Each key may also be set in
the environment as ``FORWARDER_DAEMON_<KEY>`` / ``FORWARDER_SOURCE_<KEY>`` (upper case), which
wins over the file. Every invalid value raises ``ConfigError`` naming the key
(``source.stream_name``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, cast

from config.drain import DrainSettings, load_drain_settings
from config.errors import ConfigError
from config.loader import replay_state_path
from config.values import number_parser, table_bool

SourceType = Literal["kinesis", "sqs-s3", "files", "stdin", "firehose-http"]
StartPosition = Literal["TRIM_HORIZON", "LATEST"]
CheckpointStore = Literal["file", "dynamodb", "none"]


@dataclass(frozen=True)
class SourceSettings:
    """Where the daemon reads (``[source]``)."""

    type: SourceType = "stdin"
    # kinesis
    stream_name: str | None = None
    shard_ids: tuple[str, ...] = ()
    start_position: StartPosition = "TRIM_HORIZON"
    max_records: int = 1000
    poll_interval_s: float = 1.0
    shard_refresh_interval_s: float = 30.0
    throttle_backoff_s: float = 1.0
    throttle_backoff_max_s: float = 30.0
    # sqs-s3
    queue_url: str | None = None
    visibility_timeout_s: int = 300
    wait_time_s: int = 10
    max_messages: int = 10
    chunk_lines: int = 5000
    # files / stdin
    paths: tuple[str, ...] = ()
    log_group: str | None = None
    # firehose-http
    host: str = "127.0.0.1"
    port: int = 8443
    access_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = 16 << 20
    max_in_flight: int = 4
    max_connections: int = 1024
    request_timeout_s: float = 30.0
    answer_timeout_s: float = 150.0
    tls_cert_path: str | None = None
    tls_key_path: str | None = None


@dataclass(frozen=True)
class DaemonSettings:
    """How the daemon runs (``[daemon]``) and what it reads (``[source]``)."""

    source: SourceSettings = SourceSettings()
    #: The ``[drain]`` table (config.drain); enabled, its ``state`` defaults to replay's file.
    drain: DrainSettings = field(default_factory=DrainSettings)
    checkpoint_store: CheckpointStore = "file"
    checkpoint_path: str = "forwarder-checkpoints.json"
    checkpoint_table: str | None = None
    checkpoint_interval_s: float = 5.0
    checkpoint_max_records: int = 5000
    shutdown_grace_s: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    metrics_enabled: bool = True
    spool_drain_interval_s: float = 30.0
    health_check_interval_s: float = 15.0
    #: A failing source operation (attach, poll, commit, release) is retried after a backoff
    #: drawn from [0, min(max, base * 2**attempt)] (full jitter), for as long as it fails.
    source_retry_backoff_s: float = 1.0
    source_retry_backoff_max_s: float = 60.0


#: The TOML tables this module reads, and the settings class each fills.
TABLE_SETTINGS: Final[Mapping[str, type[Any]]] = {
    "daemon": DaemonSettings,
    "source": SourceSettings,
}


# --- parsers: (key, value from TOML or env) -> value -----------------------------------------


def _str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "must be a non-empty string")
    return value.strip()


def _list(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(key, "must be a list of strings (or a comma-separated string)")
    return tuple(item for item in items if item)


def _choice(*allowed: str) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        if not isinstance(value, str) or value.strip() not in allowed:
            raise ConfigError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value.strip()

    return parse


_SOURCE_KEYS: Final[Mapping[str, Callable[[str, object], object]]] = {
    "type": _choice("kinesis", "sqs-s3", "files", "stdin", "firehose-http"),
    "stream_name": _str,
    "shard_ids": _list,
    "start_position": _choice("TRIM_HORIZON", "LATEST"),
    "max_records": number_parser(int, 1, 10_000),
    "poll_interval_s": number_parser(float, 0.0, 300),
    "shard_refresh_interval_s": number_parser(float, 0.1, 3600),
    "throttle_backoff_s": number_parser(float, 0.001, 60),
    "throttle_backoff_max_s": number_parser(float, 0.001, 600),
    "queue_url": _str,
    "visibility_timeout_s": number_parser(int, 2, 43_200),
    "wait_time_s": number_parser(int, 0, 20),
    "max_messages": number_parser(int, 1, 10),
    "chunk_lines": number_parser(int, 1, 1_000_000),
    "paths": _list,
    "log_group": _str,
    "host": _str,
    "port": number_parser(int, 0, 65535),
    "access_key": _str,
    "max_body_bytes": number_parser(int, 1024, 1 << 30),
    "max_in_flight": number_parser(int, 1, 1000),
    "max_connections": number_parser(int, 1, 100_000),
    "request_timeout_s": number_parser(float, 0.1, 600),
    # Firehose waits 3 minutes for an answer; the receiver's last resort comes 15 s after this.
    "answer_timeout_s": number_parser(float, 0.1, 160),
    "tls_cert_path": _str,
    "tls_key_path": _str,
}

_DAEMON_KEYS: Final[Mapping[str, Callable[[str, object], object]]] = {
    "checkpoint_store": _choice("file", "dynamodb", "none"),
    "checkpoint_path": _str,
    "checkpoint_table": _str,
    "checkpoint_interval_s": number_parser(float, 0.0, 3600),
    "checkpoint_max_records": number_parser(int, 1, 1_000_000),
    "shutdown_grace_s": number_parser(float, 0.0, 3600),
    "metrics_host": _str,
    "metrics_port": number_parser(int, 0, 65535),
    "metrics_enabled": table_bool,
    "spool_drain_interval_s": number_parser(float, 0.01, 86_400),
    "health_check_interval_s": number_parser(float, 0.01, 3600),
    "source_retry_backoff_s": number_parser(float, 0.001, 600),
    "source_retry_backoff_max_s": number_parser(float, 0.001, 3600),
}


def _table(
    document: Mapping[str, Any],
    name: str,
    keys: Mapping[str, Callable[[str, object], object]],
    environ: Mapping[str, str],
) -> dict[str, object]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(name, f"[{name}] must be a table")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(keys))}"
        )
    raw: dict[str, object] = dict(table)
    for key in keys:
        env_name = f"FORWARDER_{name.upper()}_{key.upper()}"
        if environ.get(env_name, "").strip():
            raw[key] = environ[env_name]
    return {key: keys[key](f"{name}.{key}", value) for key, value in raw.items()}


def load_daemon_settings(
    document: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> DaemonSettings:
    """Build ``DaemonSettings`` from a parsed TOML document (``config.loader.read_toml``).

    Args:
        document: the whole TOML document; only ``[daemon]`` and ``[source]`` are read.
        environ: environment (``FORWARDER_DAEMON_*`` / ``FORWARDER_SOURCE_*`` override).

    Returns:
        Validated, frozen daemon settings.

    Raises:
        ConfigError: a value is missing or invalid; the key is named (``source.stream_name``).
    """
    env = environ if environ is not None else {}
    source_values = _table(document, "source", _SOURCE_KEYS, env)
    daemon_values = _table(document, "daemon", _DAEMON_KEYS, env)
    source = SourceSettings(**cast(Any, source_values))
    drain = load_drain_settings(document, env)
    if drain.enabled and drain.state is None:  # the drainer's state: replay's default file
        drain = replace(drain, state=str(replay_state_path(env)))
    settings = DaemonSettings(source=source, drain=drain, **cast(Any, daemon_values))
    if source.type == "kinesis" and not source.stream_name:
        raise ConfigError("source.stream_name", "is required for a kinesis source")
    if source.type == "sqs-s3" and not source.queue_url:
        raise ConfigError("source.queue_url", "is required for an sqs-s3 source")
    if source.type == "files" and not source.paths:
        raise ConfigError("source.paths", "is required for a files source")
    if source.type == "firehose-http" and not source.access_key:
        raise ConfigError(
            "source.access_key",
            "is required for a firehose-http source (or FORWARDER_SOURCE_ACCESS_KEY)",
        )
    if bool(source.tls_cert_path) != bool(source.tls_key_path):
        missing = "tls_key_path" if source.tls_cert_path else "tls_cert_path"
        raise ConfigError(f"source.{missing}", "tls_cert_path and tls_key_path go together")
    if source.throttle_backoff_max_s < source.throttle_backoff_s:
        raise ConfigError("source.throttle_backoff_max_s", "must not be below throttle_backoff_s")
    if settings.source_retry_backoff_max_s < settings.source_retry_backoff_s:
        raise ConfigError(
            "daemon.source_retry_backoff_max_s", "must not be below source_retry_backoff_s"
        )
    if settings.checkpoint_store == "dynamodb" and not settings.checkpoint_table:
        raise ConfigError("daemon.checkpoint_table", "is required with checkpoint_store dynamodb")
    return settings
