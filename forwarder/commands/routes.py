"""``forwarder routes check``: validate a settings file's routes offline and say what they do.

Nothing is sent and nothing is read but the file (and the environment, which the commands
that run apply on top of it). The settings are loaded exactly as ``forward``, ``daemon`` and
the Lambdas load them, so an error here is the error they would stop with at start-up: one
line naming the rule and key, exit status 2. A valid file is printed back in plain words,
route by route in the order they are tried.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from config.daemon import load_daemon_settings
from config.errors import ConfigError
from config.loader import config_path, load_settings, read_toml, warnings_for
from config.settings import Settings
from forwarder.commands.context import CommandContext
from forwarder.status import ExitStatus
from transforms.options import DropRule, Route, Shaping
from transforms.routing import BUILTIN_ROUTES

_MATCH_NAMES = (
    ("log_group", "log group"),
    ("log_stream", "log stream"),
    ("account", "account"),
    ("origin", "origin"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder routes``: the action, and the file."""
    parser.add_argument(
        "action", choices=["check"], help="check: validate the file and print its routes"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML settings file with [[routes]] tables (default: $FORWARDER_CONFIG)",
    )


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """Validate the file (raising ``ConfigError``, exit 2, on the first mistake) and print
    its routes, the built-in defaults after them, and the settings that shape every event."""
    path = config_path(ctx.environ, Path(args.config) if args.config else None)
    if path is None:
        raise ConfigError("--config", "name the settings file to check (or set FORWARDER_CONFIG)")
    origin = "--config" if args.config else "FORWARDER_CONFIG"
    document = read_toml(path, origin)
    settings = load_settings(ctx.environ, path, document=document)
    if "daemon" in document or "source" in document:
        load_daemon_settings(document, ctx.environ)
    out = ctx.out
    out.write(f"{path}: valid\n")
    for line in describe_settings(settings):
        out.write(f"{line}\n")
    for warning in warnings_for(settings):
        out.write(f"warning: {warning}\n")
    return ExitStatus.OK


def describe_settings(settings: Settings) -> list[str]:
    """The routes in the order they are tried, then what applies to every event."""
    options = settings.transform
    lines: list[str] = []
    if options.routes:
        lines.append("routes, in order (for each value, the first matching route that sets it):")
        lines.extend(
            f"  {number}. {describe_route(route)}"
            for number, route in enumerate(options.routes, start=1)
        )
    else:
        lines.append("no routes: only the built-in defaults apply")
    lines.append("then the built-in defaults:")
    lines.extend(f"  {describe_route(route)}" for route in BUILTIN_ROUTES)
    lines.append(f"  anything else: sourcetype {options.default_sourcetype}")
    index = options.default_index or "the token's default"
    lines.append(
        f"every event: endpoint {options.endpoint}; index when no route sets one: {index}; "
        f"dedup field: {options.dedup_field or 'off'}; "
        f"fallback index for code 7: {settings.hec.fallback_index or 'off'}"
    )
    for dest in settings.destinations:  # tokens are never shown
        hec = dest.hec
        lines.append(
            f"destination {dest.name}: {', '.join(hec.urls)}; endpoint {hec.endpoint}; "
            f"acks {'on' if dest.acks.enabled else 'off'}; "
            f"backsplash prefix {dest.backsplash_prefix or settings.backsplash.prefix or '(none)'}"
        )
    return lines


def describe_route(route: Route) -> str:
    """One route in plain words: ``log group /aws/vpc* (glob): sourcetype ...; ...``."""
    matches = [
        f"{name} {_pattern(value)}"
        for key, name in _MATCH_NAMES
        if (value := getattr(route, key)) is not None
    ]
    when = " and ".join(matches) if matches else "every batch"
    actions = [
        f"{key} {value}"
        for key in ("sourcetype", "index", "source", "host")
        if (value := getattr(route, key)) is not None
    ]
    if route.fields:
        actions.append("indexed fields " + ", ".join(f"{k}={v}" for k, v in route.fields))
    if route.flow_log_format is not None:
        actions.append("flow-log fields " + " ".join(route.flow_log_format))
    if route.event_format is not None:
        actions.append(f"event format {route.event_format}")
    actions.extend(_shaping(route.shaping))
    if route.destination is not None:
        actions.append(f"deliver to destination {route.destination}")
    return f"{when}: {'; '.join(actions)}"


def _pattern(value: str) -> str:
    if value.startswith("re:"):
        return f"matching the regular expression {value[3:]}"
    return f"{value} (glob)" if any(ch in value for ch in "*?[") else value


def _shaping(shaping: Shaping) -> list[str]:
    said: list[str] = []
    time_format = f" read as {shaping.time_format}" if shaping.time_format else ""
    if shaping.time_field:
        said.append(f"time from the JSON field {shaping.time_field}{time_format}")
    if shaping.time_regex:
        said.append(f"time from the message by {shaping.time_regex}{time_format}")
    said.extend(f"drop events {_drop(rule)}" for rule in shaping.drop)
    if shaping.sample is not None:
        key = shaping.sample_key or "event_id"
        said.append(f"keep {shaping.sample * 100:g}% of the rest, chosen by {key}")
    said.extend(f"mask {_text(rule.pattern)} with {rule.replace!r}" for rule in shaping.redact)
    if shaping.redact_fields:
        said.append("mask the JSON keys " + ", ".join(shaping.redact_fields))
    return said


def _drop(rule: DropRule) -> str:
    conditions: list[str] = []
    if rule.message is not None:
        conditions.append(f"whose message {_message(rule.message)}")
    if rule.field is not None:
        conditions.append(f"whose field {rule.field} equals {rule.equals!r}")
    return " and ".join(conditions)


def _message(pattern: str) -> str:
    if pattern.startswith("re:"):
        return f"matches the regular expression {pattern[3:]}"
    return f"is like {pattern}"


def _text(pattern: str) -> str:
    if pattern.startswith("re:"):
        return f"the regular expression {pattern[3:]}"
    return f"the text {pattern!r}"
