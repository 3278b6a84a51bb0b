"""``[destinations.NAME]`` tables: several Splunks from one deployment (README "Destinations").

Each table is a full set of HEC settings: the top-level ones (the ``default`` destination)
with the table's keys replaced, so a destination inherits timeouts, gzip and the rest.
``hec_url`` and a token (``token`` or ``token_secret_arn``) are required. A route names one
with ``destination = "NAME"``; a name no table defines is an error naming the rule. Every
error names the destination and the key (``destinations.security.endpoint``); a token given
here is registered with the log redactor at once, so it never reaches a log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from config.concurrency import ADAPTIVE, MAX_CONCURRENCY
from config.errors import ConfigError
from config.logs import register_secret
from config.settings import AckSettings, Concurrency, DestinationSettings, HecSettings
from config.values import parse_bool, parse_existing_file, parse_hec_urls, parse_prefix, parse_token
from transforms.options import DEFAULT_DESTINATION, Endpoint, Route

#: The keys of a ``[destinations.NAME]`` table.
DESTINATION_KEYS = frozenset(
    (
        "hec_url",
        "token",
        "token_secret_arn",
        "endpoint",
        "ack",
        "concurrency",
        "verify_tls",
        "ca_bundle",
        "backsplash_prefix",
    )
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _string(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(key, "must be a non-empty string")
    return raw


def _bool(key: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    return parse_bool(key, _string(key, raw))


def _urls(key: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, list):
        if not raw or not all(isinstance(url, str) for url in raw):
            raise ConfigError(key, "must be a URL or a list of URLs")
        return parse_hec_urls(key, ",".join(raw))
    return parse_hec_urls(key, _string(key, raw))


def _concurrency(key: str, raw: object) -> Concurrency:
    if raw == ADAPTIVE:
        return ADAPTIVE
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_CONCURRENCY:
        raise ConfigError(key, f'must be a number from 1 to {MAX_CONCURRENCY}, or "adaptive"')
    return raw


def _destination(
    name: str, table: Mapping[str, Any], hec: HecSettings, acks: AckSettings
) -> DestinationSettings:
    where = f"destinations.{name}"
    unknown = sorted(set(table) - DESTINATION_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}",
            f"unknown destination key; allowed: {', '.join(sorted(DESTINATION_KEYS))}",
        )
    if "hec_url" not in table:
        raise ConfigError(f"{where}.hec_url", "is required")
    values: dict[str, Any] = {"urls": _urls(f"{where}.hec_url", table["hec_url"])}
    if ("token" in table) == ("token_secret_arn" in table):
        raise ConfigError(f"{where}.token", "set token or token_secret_arn (one of them)")
    if "token" in table:
        # The token is never echoed: parse_token's errors hide it.
        token = table["token"]
        if not isinstance(token, str):
            raise ConfigError(f"{where}.token", "must be a string (value hidden)")
        values["token"] = parse_token(f"{where}.token", token)
        register_secret(values["token"])
        values["token_secret_arn"] = None
    else:
        values["token"] = None
        values["token_secret_arn"] = _string(
            f"{where}.token_secret_arn", table["token_secret_arn"]
        ).strip()
    if "endpoint" in table:
        endpoint = table["endpoint"]
        if endpoint not in ("event", "raw"):
            raise ConfigError(f"{where}.endpoint", "must be event or raw")
        values["endpoint"] = endpoint
    if "verify_tls" in table:
        values["verify_tls"] = _bool(f"{where}.verify_tls", table["verify_tls"])
    if "ca_bundle" in table:
        key = f"{where}.ca_bundle"
        values["ca_bundle"] = parse_existing_file(key, _string(key, table["ca_bundle"]))
    dest_acks = acks
    if "ack" in table:
        dest_acks = replace(acks, enabled=_bool(f"{where}.ack", table["ack"]))
    prefix = None
    if "backsplash_prefix" in table:
        key = f"{where}.backsplash_prefix"
        raw_prefix = table["backsplash_prefix"]
        if not isinstance(raw_prefix, str):
            raise ConfigError(key, "must be a string")
        prefix = parse_prefix(key, raw_prefix)
    if "concurrency" in table:
        values["concurrency"] = _concurrency(f"{where}.concurrency", table["concurrency"])
    return DestinationSettings(
        name=name,
        hec=replace(hec, **values),
        acks=dest_acks,
        backsplash_prefix=prefix,
    )


def parse_destinations(
    raw: object, hec: HecSettings, acks: AckSettings, routes: tuple[Route, ...]
) -> tuple[DestinationSettings, ...]:
    """The ``[destinations.NAME]`` tables of a settings file, checked against the routes.

    Args:
        raw: the document's ``destinations`` value (``{}`` when absent).
        hec: the top-level HEC settings (the ``default`` destination), which each table
            starts from.
        acks: the top-level ack settings, likewise.
        routes: the ``[[routes]]`` rules, whose ``destination`` must name a table (or
            ``default``).

    Raises:
        ConfigError: a table or key is invalid (named ``destinations.NAME.key``), or a route
            names a destination no table defines (named ``routes[N].destination``).
    """
    if not isinstance(raw, dict):
        raise ConfigError("destinations", "use [destinations.NAME] tables")
    found: list[DestinationSettings] = []
    for name, table in raw.items():
        where = f"destinations.{name}"
        if name == DEFAULT_DESTINATION:
            raise ConfigError(
                where, "default is the top-level HEC settings (splunk_hec_url, ...); rename it"
            )
        if not _NAME.fullmatch(name):
            raise ConfigError(where, "a name is letters, digits, '_' and '-' (up to 64)")
        if not isinstance(table, dict):
            raise ConfigError(where, "must be a table ([destinations.NAME])")
        found.append(_destination(name, table, hec, acks))
    known = (DEFAULT_DESTINATION, *(dest.name for dest in found))
    for number, route in enumerate(routes, 1):
        if route.destination is not None and route.destination not in known:
            raise ConfigError(
                f"routes[{number}].destination",
                f"no [destinations.{route.destination}] table; known: {', '.join(known)}",
            )
    return tuple(found)


def destination_endpoints(
    destinations: tuple[DestinationSettings, ...], endpoint: Endpoint
) -> tuple[tuple[str, Endpoint], ...]:
    """``TransformOptions.destination_endpoints``: the destinations whose endpoint is not the
    top-level ``endpoint`` (their events are shaped for their own)."""
    return tuple((d.name, d.hec.endpoint) for d in destinations if d.hec.endpoint != endpoint)


def require_tokens(destinations: tuple[DestinationSettings, ...]) -> None:
    """Check that every destination has its token (after ``token_secret_arn`` was read).

    Raises:
        ConfigError: naming ``destinations.NAME.token``.
    """
    for dest in destinations:
        if not dest.hec.token:
            raise ConfigError(
                f"destinations.{dest.name}.token",
                "is required to deliver to Splunk (read token_secret_arn first)",
            )


def destination_warnings(destinations: tuple[DestinationSettings, ...]) -> list[str]:
    """What ``warnings_for`` says of the destinations: acknowledgment or TLS checks off."""
    found = []
    for dest in destinations:
        if not dest.acks.enabled:
            found.append(
                f"destinations.{dest.name}.ack=false: HEC's 200 counts as delivered; events "
                "an indexer loses after that go unnoticed and are never re-sent"
            )
        if not dest.hec.verify_tls:
            found.append(
                f"destinations.{dest.name}.verify_tls=false: HEC's certificate is not checked"
            )
    return found


def require_single_destination(routes: tuple[Route, ...]) -> None:
    """The Firehose transform's check: Firehose delivers to one Splunk, so a route naming a
    destination other than ``default`` is a start-up error.

    Raises:
        ConfigError: naming ``routes[N].destination``.
    """
    for number, route in enumerate(routes, 1):
        if route.destination not in (None, DEFAULT_DESTINATION):
            raise ConfigError(
                f"routes[{number}].destination",
                f"the Firehose transform has one destination (Firehose's own); "
                f"{route.destination!r} is for push, daemon, forward and replay",
            )
