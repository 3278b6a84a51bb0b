"""The shaping keys of a ``[[routes]]`` table: time, drop, sample, redact (README "Shaping events").

Every error names the route and the key (``routes[2].drop[1].message``); patterns and time
formats are compiled here, so a bad one fails at start-up, never on the first event.
"""

from __future__ import annotations

import math
import re
from typing import Any

from config.errors import ConfigError
from transforms.event_time import check_strptime
from transforms.options import TIME_FORMATS, DropRule, RedactRule, Shaping
from transforms.rules import compile_message_pattern

#: Route keys read here.
SHAPING_KEYS = frozenset(
    (
        "time_field",
        "time_regex",
        "time_format",
        "drop",
        "sample",
        "sample_key",
        "redact",
        "redact_fields",
    )
)
_DROP_KEYS = frozenset(("message", "field", "equals"))
_REDACT_KEYS = frozenset(("pattern", "replace"))


def _string(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, "must be a non-empty string")
    return raw


def _regex(key: str, source: str) -> re.Pattern[str]:
    try:
        return re.compile(source)
    except re.error as exc:
        raise ConfigError(key, f"invalid regular expression: {exc}") from None


def _tables(key: str, raw: object, allowed: frozenset[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(key, "must be a list of inline tables ([{ ... }, { ... }])")
    for number, table in enumerate(raw, 1):
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(
                f"{key}[{number}].{unknown[0]}",
                f"unknown key; allowed: {', '.join(sorted(allowed))}",
            )
    return raw


def _drop_rule(key: str, table: dict[str, Any]) -> DropRule:
    message = field = None
    if "message" in table:
        message = _string(f"{key}.message", table["message"])
        if message.startswith("re:"):
            _regex(f"{key}.message", message[3:])
        else:
            compile_message_pattern(message)
    if "field" in table:
        field = _string(f"{key}.field", table["field"])
        if "equals" not in table:
            raise ConfigError(f"{key}.equals", "is required with field")
    equals = table.get("equals")
    if equals is not None and field is None:
        raise ConfigError(f"{key}.field", "is required with equals")
    if equals is not None and (
        not isinstance(equals, str | int | float | bool)
        or (isinstance(equals, float) and not math.isfinite(equals))
    ):
        raise ConfigError(f"{key}.equals", "must be a string, number or boolean")
    if message is None and field is None:
        raise ConfigError(key, "a drop rule needs message, or field and equals")
    return DropRule(message=message, field=field, equals=equals)


def _redact_rule(key: str, table: dict[str, Any]) -> RedactRule:
    if "pattern" not in table:
        raise ConfigError(f"{key}.pattern", "is required")
    pattern = _string(f"{key}.pattern", table["pattern"])
    if pattern.startswith("re:"):
        compiled = _regex(f"{key}.pattern", pattern[3:])
        if compiled.match(""):
            raise ConfigError(f"{key}.pattern", "must not match empty text")
    replace = table.get("replace", "****")
    if not isinstance(replace, str):
        raise ConfigError(f"{key}.replace", "must be a string")
    return RedactRule(pattern=pattern, replace=replace)


def route_shaping(where: str, table: dict[str, Any]) -> dict[str, Shaping]:
    """The ``shaping`` of one route table (``where`` names it: ``routes[2]``), or ``{}``.

    Raises:
        ConfigError: a shaping key is invalid; the message names the rule and key.
    """
    if not SHAPING_KEYS & set(table):
        return {}
    values: dict[str, Any] = {}
    for name in ("time_field", "time_regex", "sample_key"):
        if name in table:
            values[name] = _string(f"{where}.{name}", table[name])
    if "time_field" in values and "time_regex" in values:
        raise ConfigError(f"{where}.time_regex", "set time_field or time_regex, not both")
    if "time_regex" in values:
        compiled = _regex(f"{where}.time_regex", values["time_regex"])
        if compiled.groups and "time" not in compiled.groupindex and compiled.groups > 1:
            raise ConfigError(
                f"{where}.time_regex", "with several groups, name the time one (?P<time>...)"
            )
    if "time_format" in table:
        time_format = _string(f"{where}.time_format", table["time_format"])
        if time_format not in TIME_FORMATS:
            try:
                check_strptime(time_format)
            except ValueError as exc:
                raise ConfigError(f"{where}.time_format", str(exc)) from None
        if "time_field" not in values and "time_regex" not in values:
            raise ConfigError(f"{where}.time_format", "needs time_field or time_regex")
        values["time_format"] = time_format
    if "sample" in table:
        sample = table["sample"]
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
            raise ConfigError(f"{where}.sample", "must be a number from 0 to 1 (0.1 keeps 10%)")
        values["sample"] = float(sample)
    elif "sample_key" in values:
        raise ConfigError(f"{where}.sample_key", "needs sample")
    if "drop" in table:
        key = f"{where}.drop"
        tables = _tables(key, table["drop"], _DROP_KEYS)
        values["drop"] = tuple(_drop_rule(f"{key}[{n}]", t) for n, t in enumerate(tables, 1))
    if "redact" in table:
        key = f"{where}.redact"
        tables = _tables(key, table["redact"], _REDACT_KEYS)
        values["redact"] = tuple(_redact_rule(f"{key}[{n}]", t) for n, t in enumerate(tables, 1))
    if "redact_fields" in table:
        names = table["redact_fields"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(name, str) and name for name in names)
        ):
            raise ConfigError(f"{where}.redact_fields", "must be a list of key names")
        values["redact_fields"] = tuple(names)
    return {"shaping": Shaping(**values)}


def parse_dedup_field(key: str, raw: str) -> str:
    """An indexed field name for the dedup key (``event_id``)."""
    name = raw.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,99}", name):
        raise ConfigError(key, f"must be a field name such as event_id, got {raw[:80]!r}")
    return name


def parse_index_name(key: str, raw: str) -> str:
    """A Splunk index name (``SPLUNK_FALLBACK_INDEX``): lowercase letters, digits, ``_`` and
    ``-``, not starting with ``_`` or ``-`` (Splunk's own rule for index names)."""
    name = raw.strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,79}", name):
        raise ConfigError(
            key,
            f"must be a Splunk index name such as lastchance (a-z, 0-9, _ and -), got {raw[:80]!r}",
        )
    return name
