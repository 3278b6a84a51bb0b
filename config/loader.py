"""Turns environment variables, an optional TOML file and CLI flags into one ``Settings``.

This is the only module that knows key names. Precedence: CLI flag > environment > TOML >
default. TOML keys are the environment names in lower case (``splunk_hec_url = "..."``),
plus ``[[routes]]`` tables. Every invalid value raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from config.concurrency import parse_concurrency
from config.destinations import (
    destination_endpoints,
    destination_warnings,
    parse_destinations,
    require_tokens,
)
from config.errors import ConfigError
from config.settings import (
    LAMBDA_RESPONSE_LIMIT_BYTES,
    AckSettings,
    BacksplashSettings,
    BatchSettings,
    FirehoseSettings,
    HecSettings,
    LogSettings,
    RetrySettings,
    Settings,
)
from config.shaping import SHAPING_KEYS, parse_dedup_field, parse_index_name, route_shaping
from config.values import (
    parse_bool,
    parse_existing_file,
    parse_hec_urls,
    parse_prefix,
    parse_token,
    shown,
)
from transforms.options import Route, TransformOptions

T = TypeVar("T")

#: Acks below this are accepted with a warning: indexers flush partial batches after about
#: two minutes, so a shorter timeout re-sends data that is merely slow to index.
RECOMMENDED_MIN_ACK_TIMEOUT_S = 180.0

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# --- value parsers: (key, raw) -> value, raising ConfigError --------------------------------


def _number(
    kind: Callable[[str], T], low: float | None = None, high: float | None = None
) -> Callable[[str, str], T]:
    def parse(key: str, raw: str) -> T:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(key, f"expected a number, got {shown(raw)}") from None
        number = cast(float, value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {shown(raw)}")
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(key, f"must be {bounds}, got {shown(raw)}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(key: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {shown(raw)}")
        return value

    return parse


def _text(key: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(key, "must not be empty")
    return value


def parse_bucket(key: str, raw: str) -> str:
    """Check an S3 bucket name against S3's naming rules."""
    name = raw.strip()
    if name.startswith("s3://"):
        raise ConfigError(key, f"give the bucket name only, without s3://, got {shown(raw)}")
    if not _BUCKET_NAME.match(name) or ".." in name:
        raise ConfigError(
            key,
            f"not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-'): {shown(raw)}",
        )
    return name


def parse_flow_format(key: str, raw: str) -> tuple[str, ...]:
    """A VPC flow log format (``${version} ${account-id} ...``) checked against known fields."""
    from transforms.errors import FlowLogFormatError  # noqa: PLC0415 - keep start-up light
    from transforms.vpc_flow import parse_format  # noqa: PLC0415

    try:
        return parse_format(raw)
    except FlowLogFormatError as exc:
        raise ConfigError(key, str(exc)) from None


def _log_level(key: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(key, f"must be one of {', '.join(_LOG_LEVELS)}; got {shown(raw)}")
    return level


@dataclass(frozen=True)
class Key:
    """One setting: its environment name, where it lands, how it is parsed, what it means."""

    env: str
    section: str
    attribute: str
    parse: Callable[[str, str], Any]
    help: str


KEYS: tuple[Key, ...] = (
    Key("SPLUNK_HEC_URL", "hec", "urls", parse_hec_urls,
        "HEC base URL(s), comma-separated; load is spread across them"),
    Key("SPLUNK_HEC_TOKEN", "hec", "token", parse_token, "HEC token (never logged)"),
    Key("SPLUNK_HEC_TOKEN_SECRET_ARN", "hec", "token_secret_arn", _text,
        "Secrets Manager ARN holding the token (Lambda), instead of SPLUNK_HEC_TOKEN"),
    Key("SPLUNK_HEC_ENDPOINT", "hec", "endpoint", _choice("event", "raw"), "event or raw"),
    Key("SPLUNK_HEC_GZIP", "hec", "gzip", parse_bool, "gzip request bodies"),
    Key("SPLUNK_HEC_VERIFY_TLS", "hec", "verify_tls", parse_bool, "verify HEC's certificate"),
    Key("SPLUNK_HEC_CA_BUNDLE", "hec", "ca_bundle", parse_existing_file,
        "CA bundle (PEM) to verify HEC's certificate"),
    Key("SPLUNK_HEC_CONNECT_TIMEOUT", "hec", "connect_timeout_s", _number(float, 0.1, 300),
        "seconds to wait for a TCP/TLS connection"),
    Key("SPLUNK_HEC_READ_TIMEOUT", "hec", "read_timeout_s", _number(float, 0.1, 900),
        "seconds to wait for HEC's answer"),
    Key("SPLUNK_HEC_UNHEALTHY_COOLDOWN", "hec", "unhealthy_cooldown_s",
        _number(float, 0.01, 3600), "seconds an unhealthy URL stays out of rotation"),
    Key("SPLUNK_FALLBACK_INDEX", "hec", "fallback_index", parse_index_name,
        "index for events HEC refuses with code 7 (incorrect index), re-sent once"),
    Key("SPLUNK_HEC_CONCURRENCY", "hec", "concurrency", parse_concurrency,
        "requests on the wire at once (a number, or adaptive)"),
    Key("SPLUNK_HEC_ACK", "acks", "enabled", parse_bool, "use indexer acknowledgment"),
    Key("SPLUNK_HEC_ACK_TIMEOUT", "acks", "timeout_s", _number(float, 0.01, 86400),
        "seconds to wait for an ack before re-sending (180+ in production)"),
    Key("SPLUNK_HEC_ACK_POLL_INTERVAL", "acks", "poll_interval_s", _number(float, 0.01, 600),
        "seconds between ack polls"),
    Key("SPLUNK_HEC_MAX_PENDING_ACKS", "acks", "max_pending", _number(int, 1, 100_000),
        "unacknowledged requests per channel before sending waits"),
    Key("SPLUNK_HEC_RETRY_DURATION", "retry", "duration_s", _number(float, 0, 7200),
        "seconds to keep retrying a batch before backsplashing it (0-7200)"),
    Key("SPLUNK_HEC_RETRY_MAX_ATTEMPTS", "retry", "max_attempts", _number(int, 0, 1_000_000),
        "attempts per batch before backsplashing it (0: bounded by duration only)"),
    Key("SPLUNK_HEC_RETRY_BACKOFF_BASE", "retry", "backoff_base_s", _number(float, 0.001, 60),
        "first backoff step in seconds (exponential, full jitter)"),
    Key("SPLUNK_HEC_RETRY_BACKOFF_MAX", "retry", "backoff_max_s", _number(float, 0.001, 600),
        "longest backoff step in seconds"),
    Key("SPLUNK_HEC_RETRY_AFTER_MAX", "retry", "retry_after_max_s", _number(float, 0, 3600),
        "cap in seconds on a Retry-After header HEC sends"),
    Key("SPLUNK_HEC_BATCH_MAX_BYTES", "batching", "max_bytes", _number(int, 1024, 100_000_000),
        "bytes per HEC request before gzip (Splunk Cloud caps at 1 MB)"),
    Key("SPLUNK_HEC_BATCH_MAX_EVENTS", "batching", "max_events", _number(int, 1, 10_000_000),
        "events per HEC request"),
    Key("SPLUNK_HEC_BATCH_LINGER", "batching", "linger_s", _number(float, 0, 600),
        "seconds a partial batch may wait for more events"),
    Key("SPLUNK_INDEX", "transform", "default_index", _text,
        "index for events no route names one (default: the token's)"),
    Key("SPLUNK_SOURCETYPE", "transform", "default_sourcetype", _text,
        "sourcetype for events no route names one"),
    Key("VPC_FLOW_LOG_FORMAT", "transform", "flow_log_format", parse_flow_format,
        "flow-log format string (${field} ...); default: version 2"),
    Key("EVENT_FORMAT", "transform", "event_format", _choice("auto", "raw", "json"),
        "flow-log event shape: auto, raw or json"),
    Key("SPLUNK_DEDUP_FIELD", "transform", "dedup_field", parse_dedup_field,
        "indexed field carrying each event's dedup key (off by default)"),
    Key("MAX_DECOMPRESSED_BYTES", "transform", "max_decompressed_bytes",
        _number(int, 1_048_576, 2**34), "ceiling on one decompressed payload"),
    Key("FIREHOSE_RESPONSE_LIMIT_BYTES", "firehose", "response_limit_bytes",
        _number(int, 1024, LAMBDA_RESPONSE_LIMIT_BYTES),
        "bytes the transform's answer may take (Lambda's limit is 6291456)"),
    Key("BACKSPLASH_BUCKET", "backsplash", "bucket", parse_bucket,
        "S3 bucket for undeliverable events"),
    Key("BACKSPLASH_PREFIX", "backsplash", "prefix", parse_prefix, "key prefix in that bucket"),
    Key("BACKSPLASH_SPOOL_DIR", "backsplash", "spool_dir", _text,
        "local directory used while the bucket is unreachable (daemon)"),
    Key("LOG_LEVEL", "log", "level", _log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Key("LOG_FORMAT", "log", "format", _choice("auto", "json", "console"),
        "auto (console on a TTY), json or console"),
)  # fmt: skip

KEYS_BY_ENV = {key.env: key for key in KEYS}
#: Tables read elsewhere: [[routes]] here, [daemon] and [source] by config.daemon, [drain] by
#: config.drain, [destinations.NAME] by config.destinations.
_TABLES = ("routes", "daemon", "source", "destinations", "drain")
_ROUTE_PATTERN_KEYS = ("log_group", "log_stream", "account", "origin")
_ROUTE_VALUE_KEYS = ("sourcetype", "index", "source", "host", "destination")
_ROUTE_KEYS = (
    frozenset(
        (*_ROUTE_PATTERN_KEYS, *_ROUTE_VALUE_KEYS, "fields", "flow_log_format", "event_format")
    )
    | SHAPING_KEYS
)


def _toml_scalar(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    raise ConfigError(key, f"expected a string, number or boolean, got {type(value).__name__}")


def read_toml(path: Path, origin: str = "FORWARDER_CONFIG") -> dict[str, Any]:
    """Read a TOML settings file, naming the file, and ``origin`` (where its path came from:
    ``--config``, ``FORWARDER_CONFIG``), in every error."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(origin, f"no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(origin, f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(origin, f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(origin, f"{path} nests arrays or tables too deeply") from None
    except (OSError, ValueError) as exc:  # a directory, a name too long, a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(origin, f"cannot read {str(path)[:200]}: {reason}") from None


def _route(number: int, table: object) -> Route:
    """The ``number``-th ``[[routes]]`` table (counted from 1, as the README shows them)."""
    where = f"routes[{number}]"
    if not isinstance(table, dict):
        raise ConfigError(where, "each [[routes]] entry must be a table")
    unknown = sorted(set(table) - _ROUTE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}", f"unknown route key; allowed: {', '.join(sorted(_ROUTE_KEYS))}"
        )
    values: dict[str, Any] = {}
    for name in (*_ROUTE_PATTERN_KEYS, *_ROUTE_VALUE_KEYS):
        if name in table:
            raw = table[name]
            if not isinstance(raw, str) or not raw:
                raise ConfigError(f"{where}.{name}", "must be a non-empty string")
            if name in _ROUTE_PATTERN_KEYS and raw.startswith("re:"):
                try:
                    re.compile(raw[3:])
                except re.error as exc:
                    raise ConfigError(
                        f"{where}.{name}", f"invalid regular expression: {exc}"
                    ) from None
            values[name] = raw
    if "fields" in table:
        fields = table["fields"]
        if not isinstance(fields, dict) or not all(
            isinstance(v, str | int | float | bool) for v in fields.values()
        ):
            raise ConfigError(f"{where}.fields", "must be a table of string values")
        values["fields"] = tuple((str(k), str(v)) for k, v in fields.items())
    if "flow_log_format" in table:
        values["flow_log_format"] = parse_flow_format(
            f"{where}.flow_log_format", str(table["flow_log_format"])
        )
    if "event_format" in table:
        values["event_format"] = _choice("auto", "raw", "json")(
            f"{where}.event_format", str(table["event_format"])
        )
    values.update(route_shaping(where, table))
    if not any(
        name in values
        for name in (*_ROUTE_VALUE_KEYS, "fields", "flow_log_format", "event_format", "shaping")
    ):
        raise ConfigError(where, "a route must set at least one value (sourcetype, index, ...)")
    return Route(**values)


#: ``forwarder package --config`` ships the settings file here, at the zip's root.
PACKAGED_CONFIG_NAME = "forwarder.toml"


def _packaged_config(env: Mapping[str, str]) -> Path | None:
    """In Lambda, a settings file shipped in the package is used without FORWARDER_CONFIG."""
    task_root = env.get("LAMBDA_TASK_ROOT")
    if not task_root:
        return None
    packaged = Path(task_root) / PACKAGED_CONFIG_NAME
    try:
        return packaged if packaged.is_file() else None
    except (OSError, ValueError):  # a LAMBDA_TASK_ROOT no file can be under
        return None


def config_path(
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Path | None:
    """The settings file to read: ``path``, else ``FORWARDER_CONFIG`` (a flag's override, then
    the environment), else (in Lambda) a ``forwarder.toml`` shipped at the package's root."""
    located = _config_source(environ, path, overrides)
    return located[0] if located is not None else None


def _config_source(
    environ: Mapping[str, str] | None, path: Path | None, overrides: Mapping[str, str] | None
) -> tuple[Path, str] | None:
    """:func:`config_path`, and the name of where it came from, for errors: ``--config``
    (``path`` is the flag's value), ``FORWARDER_CONFIG``, or the packaged file's name."""
    if path is not None:
        return path, "--config"
    env = os.environ if environ is None else environ
    location = (overrides or {}).get("FORWARDER_CONFIG") or env.get("FORWARDER_CONFIG")
    if location:
        return Path(location), "FORWARDER_CONFIG"
    packaged = _packaged_config(env)
    return (packaged, PACKAGED_CONFIG_NAME) if packaged is not None else None


def read_document(
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The parsed settings file (:func:`config_path`), or ``{}`` when there is none.

    Read it once and hand it to :func:`load_settings` and ``config.daemon.load_daemon_settings``
    both: the file is the same for both, whatever changes on disk in between.
    """
    located = _config_source(environ, path, overrides)
    return read_toml(*located) if located is not None else {}


def load_settings(
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    *,
    document: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the one ``Settings`` object.

    Args:
        environ: environment variables (``os.environ`` when None); tests pass a dict.
        path: TOML file (the ``--config`` flag: errors name it); defaults to
            ``FORWARDER_CONFIG`` when set, else (in Lambda) a
            ``forwarder.toml`` shipped at the package's root (``$LAMBDA_TASK_ROOT``).
        overrides: values from CLI flags, keyed by environment name; they win over all else.
        document: the settings file already parsed (:func:`read_document`); ``path`` is then
            not read again.

    Returns:
        Validated, frozen settings.

    Raises:
        ConfigError: a value is missing or invalid; the message names the key.
    """
    env = os.environ if environ is None else environ
    overrides = overrides or {}
    located = _config_source(env, path, overrides)
    where = located[0] if located is not None else None
    if document is None:
        document = read_toml(*located) if located is not None else {}

    layered: dict[str, str] = {}
    for name, value in document.items():
        if name in _TABLES:
            continue
        key = KEYS_BY_ENV.get(name.upper())
        if key is None or name != name.lower():
            raise ConfigError(name, f"unknown setting in {where}; see README for the keys")
        layered[key.env] = _toml_scalar(name, value)
    for source in (env, overrides):
        for name, value in source.items():
            if name in KEYS_BY_ENV and value is not None:
                layered[name] = value

    sections: dict[str, dict[str, Any]] = {
        "hec": {}, "acks": {}, "retry": {}, "batching": {}, "backsplash": {},
        "transform": {}, "firehose": {}, "log": {},
    }  # fmt: skip
    for name, raw in layered.items():
        key = KEYS_BY_ENV[name]
        if raw.strip() == "" and name not in ("BACKSPLASH_PREFIX",):
            continue  # an empty variable means "unset", as CloudFormation leaves optional ones
        sections[key.section][key.attribute] = key.parse(name, raw)

    routes_table = document.get("routes", [])
    if not isinstance(routes_table, list):
        raise ConfigError("routes", "use [[routes]] tables")
    routes = tuple(_route(n, table) for n, table in enumerate(routes_table, start=1))

    hec, acks = HecSettings(**sections["hec"]), AckSettings(**sections["acks"])
    destinations = parse_destinations(document.get("destinations", {}), hec, acks, routes)
    transform = TransformOptions(
        routes=routes,
        endpoint=hec.endpoint,
        destination_endpoints=destination_endpoints(destinations, hec.endpoint),
        **sections["transform"],
    )
    settings = Settings(
        hec=hec,
        acks=acks,
        retry=RetrySettings(**sections["retry"]),
        batching=BatchSettings(**sections["batching"]),
        backsplash=BacksplashSettings(**sections["backsplash"]),
        transform=transform,
        firehose=FirehoseSettings(**sections["firehose"]),
        log=LogSettings(**sections["log"]),
        destinations=destinations,
    )
    if settings.retry.backoff_max_s < settings.retry.backoff_base_s:
        raise ConfigError(
            "SPLUNK_HEC_RETRY_BACKOFF_MAX", "must not be below SPLUNK_HEC_RETRY_BACKOFF_BASE"
        )
    return settings


def warnings_for(
    settings: Settings, *, delivers: bool = True, backsplash: bool = True, spool: bool = False
) -> list[str]:
    """Settings that are valid but lose part of the safety net, or are not what production
    wants; one line each, naming the setting. Logged as ``settings_warning`` at start-up.

    Args:
        settings: the loaded settings.
        delivers: the caller sends to HEC (acknowledgment off matters to it, and so does
            the backsplash); without a HEC URL nothing is sent, and neither is said.
        backsplash: what the caller cannot deliver goes to ``BACKSPLASH_BUCKET`` (not so
            for replay, whose failures go under replay-failed/ of the replayed bucket).
        spool: ``BACKSPLASH_SPOOL_DIR`` alone keeps what cannot be delivered (the daemon).
    """
    found = []
    delivering = delivers and bool(settings.hec.urls)  # no URL: a ConfigError follows
    if (
        delivering
        and backsplash
        and not settings.backsplash.bucket
        and not (spool and settings.backsplash.spool_dir)
    ):
        found.append(
            "BACKSPLASH_BUCKET is not set: events HEC does not take within "
            f"SPLUNK_HEC_RETRY_DURATION ({settings.retry.duration_s:g}s) have nowhere to go "
            "and are lost"
        )
    if delivering and not settings.acks.enabled:
        found.append(
            "SPLUNK_HEC_ACK=false: HEC's 200 counts as delivered; events an indexer loses "
            "after that go unnoticed and are never re-sent"
        )
    if settings.acks.enabled and settings.acks.timeout_s < RECOMMENDED_MIN_ACK_TIMEOUT_S:
        found.append(
            f"SPLUNK_HEC_ACK_TIMEOUT={settings.acks.timeout_s:g}s is below "
            f"{RECOMMENDED_MIN_ACK_TIMEOUT_S:g}s; indexers may ack later than that and batches "
            "would be re-sent (fine for tests)"
        )
    if settings.hec.fallback_index and settings.hec.endpoint == "raw":
        found.append("SPLUNK_FALLBACK_INDEX is not used on the raw endpoint (no indexed fields)")
    if not settings.hec.verify_tls:
        found.append("SPLUNK_HEC_VERIFY_TLS=false: HEC's certificate is not checked")
    if settings.batching.max_bytes > 1_000_000:
        found.append("SPLUNK_HEC_BATCH_MAX_BYTES above 1 MB is refused by Splunk Cloud")
    if delivering:
        found.extend(destination_warnings(settings.destinations))
    insecure = [url for url in settings.hec.urls if _plain_http_off_host(url)]
    if insecure:
        found.append(
            "SPLUNK_HEC_URL uses plain HTTP to another host: the token and events cross the "
            f"network unencrypted: {', '.join(insecure)}"
        )
    return found


def _plain_http_off_host(url: str) -> bool:
    """Whether ``url`` is plain HTTP to a host other than this one (loopback is fine)."""
    pieces = urlsplit(url)
    if pieces.scheme != "http":
        return False
    host = (pieces.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere


#: CLI flags (argparse destinations) that override a setting, and the setting each names.
FLAG_KEYS: Mapping[str, str] = {
    "hec_url": "SPLUNK_HEC_URL",
    "token": "SPLUNK_HEC_TOKEN",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
}


def flag_overrides(flags: Mapping[str, object]) -> dict[str, str]:
    """The overrides (by environment name) that the given flag values make; unset flags
    (None or absent) override nothing. ``flags`` is ``vars(args)``."""
    return {env: str(flags[flag]) for flag, env in FLAG_KEYS.items() if flags.get(flag) is not None}


def hec_token_from_environ(environ: Mapping[str, str]) -> str | None:
    """The raw ``SPLUNK_HEC_TOKEN`` of ``environ`` (None when unset), unchecked: the HEC
    emulator's default token, which need not be a valid one."""
    return environ.get("SPLUNK_HEC_TOKEN")


def replay_state_path(environ: Mapping[str, str]) -> Path:
    """Where ``forwarder replay`` keeps its state by default:
    ``$XDG_STATE_HOME/firehose-splunk-forwarder/replay.sqlite`` (``~/.local/state``)."""
    base = environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "firehose-splunk-forwarder" / "replay.sqlite"


def require_hec(settings: Settings) -> Settings:
    """Check that delivery is possible: a URL and a token."""
    if not settings.hec.urls:
        raise ConfigError("SPLUNK_HEC_URL", "is required to deliver to Splunk")
    if not settings.hec.token:
        raise ConfigError("SPLUNK_HEC_TOKEN", "is required to deliver to Splunk")
    require_tokens(settings.destinations)
    return settings


def with_token(settings: Settings, token: str) -> Settings:
    """A copy of ``settings`` with the token set (from Secrets Manager or a CLI flag)."""
    return replace(
        settings, hec=replace(settings.hec, token=parse_token("SPLUNK_HEC_TOKEN", token))
    )
