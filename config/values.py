"""Value parsers shared by the settings loader and the ``[destinations.NAME]`` tables:
``(key, raw) -> value``, each raising ``ConfigError`` naming the key (never echoing a token)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from config.errors import ConfigError

_COLLECTOR_PATH = re.compile(r"/services/collector(/(event|raw|ack|health)(/1\.0)?)?/?$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def shown(raw: str) -> str:
    """``raw`` for an error message, cut to 80 characters."""
    return repr(raw if len(raw) <= 80 else raw[:77] + "...")


def parse_bool(key: str, raw: str) -> bool:
    """Parse true/false, 1/0, yes/no, on/off (any case)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(key, f"expected true or false, got {shown(raw)}")


def parse_hec_urls(key: str, raw: str) -> tuple[str, ...]:
    """Split a comma-separated list of HEC base URLs, dropping any collector path."""
    urls = []
    for part in raw.split(","):
        url = part.strip()
        if not url:
            continue
        pieces = urlsplit(url)
        if pieces.scheme not in ("http", "https") or not pieces.hostname:
            raise ConfigError(
                key, f"each URL must look like https://splunk.example.com:8088, got {shown(url)}"
            )
        if pieces.username or pieces.password:
            raise ConfigError(key, "credentials do not belong in the URL; use SPLUNK_HEC_TOKEN")
        path = _COLLECTOR_PATH.sub("", pieces.path).rstrip("/")
        urls.append(f"{pieces.scheme}://{pieces.netloc}{path}")
    if not urls:
        raise ConfigError(key, "must name at least one URL")
    return tuple(dict.fromkeys(urls))


def parse_token(key: str, raw: str) -> str:
    """Accept a HEC token without ever echoing it back in an error."""
    token = raw.strip()
    if not token:
        raise ConfigError(key, "must not be empty")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise ConfigError(key, "must not contain spaces or control characters (value hidden)")
    return token


def parse_prefix(key: str, raw: str) -> str:
    """Normalise an S3 key prefix so that it is empty or ends with '/'."""
    prefix = raw.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def parse_existing_file(key: str, raw: str) -> str:
    """A path that must name a readable file (CA bundles)."""
    try:
        path = Path(raw.strip()).expanduser()
        found = path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a NUL, ~nobody
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(key, f"cannot use {shown(raw)}: {reason}") from None
    if not found:
        raise ConfigError(key, f"no such file: {shown(raw)}")
    return str(path)


def number_parser(
    kind: type[int] | type[float], low: float, high: float
) -> Callable[[str, object], int | float]:
    """A parser of a TOML or environment number of ``kind`` between ``low`` and ``high``
    (inclusive); it raises ``ConfigError`` naming the key for anything else (a bool, a
    fraction where a whole number is wanted, out of range)."""

    def parse(key: str, value: object) -> int | float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            number = kind(value.strip()) if isinstance(value, str) else kind(cast(Any, value))
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(key, f"expected a whole number, got {value!r}")
        if not low <= number <= high:
            raise ConfigError(key, f"must be between {low:g} and {high:g}, got {number!r}")
        return number

    return parse


def table_bool(key: str, value: object) -> bool:
    """A TOML boolean, or a string as :func:`parse_bool` reads it (an environment value).

    Raises:
        ConfigError: anything else, naming ``key``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(key, value)
    raise ConfigError(key, f"expected true or false, got {value!r}")
