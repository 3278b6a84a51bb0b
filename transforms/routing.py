"""Routing: the sourcetype, index, source, host, indexed fields and flow format of a batch.

Rules come from configuration (``TransformOptions.routes``) and are evaluated in order, then
the built-in defaults of DESIGN.md §3. For each value the first matching rule that sets it
wins, so a user rule may set only ``index`` and keep the default sourcetype:

1. user rules, in order;
2. log groups: ``/aws/vpc*`` -> ``aws:cloudwatchlogs:vpcflow``; naming CloudTrail
   (case-insensitive) -> ``aws:cloudtrail``; ``/aws/lambda/*`` -> ``aws:cloudwatchlogs:lambda``;
3. then streams and origins: ``eni-*`` log streams (CloudWatch names flow-log streams after
   the interface) and flow logs sent straight to Firehose (origin ``direct``) ->
   ``aws:cloudwatchlogs:vpcflow``; log streams naming CloudTrail -> ``aws:cloudtrail``;
4. otherwise ``options.default_sourcetype``.

A destination is a flow log when its sourcetype is ``aws:cloudwatchlogs:vpcflow`` or a
matching rule sets ``flow_log_format``; its format is the first such rule's, else
``options.flow_log_format``, else version 2. Patterns are shell globs (case-sensitive), or
regular expressions searched anywhere in the value when prefixed with ``re:``.

``source`` and ``host`` values may use ``{log_group}``, ``{log_stream}``, ``{account}`` and
``{origin}``. The default source is ``<logGroup>:<logStream>``, or whichever of the two is
known alone (``forward`` and ``transform`` name a local file's log stream after its path);
``s3://<bucket>/<key>`` for S3 objects (``log_group`` = bucket, ``log_stream`` = key);
``firehose:<origin>`` for Firehose and Kinesis records with neither (flows sent straight to
Firehose, plain text). See :func:`default_source`.

Resolution is cached per options and per (log group, log stream, account, origin), so
``resolve`` costs a dictionary lookup once warm.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from transforms.errors import RoutePatternError
from transforms.options import (
    DEFAULT_DESTINATION,
    NO_SHAPING,
    EventFormat,
    Route,
    Shaping,
    TransformOptions,
)
from transforms.records import Origin
from transforms.rules import JsonMode, compile_shaper
from transforms.vpc_flow import DEFAULT_FIELDS, addon_understands

VPCFLOW_SOURCETYPE = "aws:cloudwatchlogs:vpcflow"
CLOUDTRAIL_SOURCETYPE = "aws:cloudtrail"
LAMBDA_SOURCETYPE = "aws:cloudwatchlogs:lambda"

#: The defaults of DESIGN.md §3, evaluated after the user's rules.
BUILTIN_ROUTES: tuple[Route, ...] = (
    # Log group names first: they are what users choose and see.
    Route(log_group="/aws/vpc*", sourcetype=VPCFLOW_SOURCETYPE),
    Route(log_group="re:(?i)cloudtrail", sourcetype=CLOUDTRAIL_SOURCETYPE),
    Route(log_group="/aws/lambda/*", sourcetype=LAMBDA_SOURCETYPE),
    # Then what the services name their streams and records.
    Route(log_stream="eni-*", sourcetype=VPCFLOW_SOURCETYPE),
    Route(log_stream="re:(?i)cloudtrail", sourcetype=CLOUDTRAIL_SOURCETYPE),
    Route(origin="direct", sourcetype=VPCFLOW_SOURCETYPE),
)

_CACHE_SIZE = 4096
_PLACEHOLDER = re.compile(r"\{(log_group|log_stream|account|origin)\}")

Matcher = Callable[[str | None], bool]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where and how a batch goes: HEC metadata plus the flow-log format, if any.

    ``flow_fields`` is None for anything that is not a flow log. ``event_format`` is resolved:
    ``raw`` or ``json`` for flow logs (``auto`` already decided), ``raw`` (the message as a
    string) for everything else unless a route sets ``json`` or ``auto`` (``json_mode``).
    ``shaping`` merges the matching routes' shaping rules (``transforms.rules``).
    ``delivery`` names the ``[destinations.NAME]`` the events go to (the first matching rule
    that names one, else ``default``: the top-level HEC settings).
    """

    sourcetype: str
    index: str | None = None
    source: str | None = None
    host: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    flow_fields: tuple[str, ...] | None = None
    event_format: EventFormat = "raw"
    shaping: Shaping = NO_SHAPING
    json_mode: JsonMode = None
    delivery: str = DEFAULT_DESTINATION

    @property
    def is_flow(self) -> bool:
        """Whether events are flow-log lines."""
        return self.flow_fields is not None


def compile_pattern(pattern: str, *, what: str = "pattern") -> Matcher:
    """A matcher for a glob, or for a regular expression prefixed with ``re:``.

    Raises:
        RoutePatternError: the regular expression does not compile.
    """
    if pattern.startswith("re:"):
        try:
            search = re.compile(pattern[3:]).search
        except re.error as exc:
            raise RoutePatternError(
                f"routing {what} {pattern!r} is not a valid regular expression: {exc}"
            ) from None
    else:
        search = re.compile(fnmatch.translate(pattern)).match

    def matches(value: str | None) -> bool:
        return value is not None and search(value) is not None

    return matches


#: What rules match on: (log group, log stream, account, origin).
RouteKey = tuple[str | None, str | None, str | None, Origin]


@dataclass(frozen=True, slots=True)
class _Rule:
    matchers: tuple[tuple[int, Matcher], ...]  # (position in the key, matcher)
    route: Route

    def matches(self, key: RouteKey) -> bool:
        return all(matcher(key[position]) for position, matcher in self.matchers)


def _compile_rule(route: Route, number: int | None) -> _Rule:
    where = f"rule {number}" if number is not None else "built-in rule"
    if not route.shaping.is_empty:
        try:
            compile_shaper(route.shaping)
        except RoutePatternError as exc:
            raise RoutePatternError(f"routing {where}: {exc}") from None
    matchers = []
    for position, (name, pattern) in enumerate(
        (
            ("log_group", route.log_group),
            ("log_stream", route.log_stream),
            ("account", route.account),
            ("origin", route.origin),
        )
    ):
        if pattern is not None:
            matchers.append((position, compile_pattern(pattern, what=f"{where} {name}")))
    return _Rule(tuple(matchers), route)


def _fill(template: str, key: RouteKey) -> str:
    values = dict(zip(("log_group", "log_stream", "account", "origin"), key, strict=True))
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)] or "", template)


def default_source(origin: Origin, log_group: str | None, log_stream: str | None) -> str:
    """The ``source`` of a batch no rule names one for (README, "Routing").

    ``s3://<bucket>/<key>`` for S3 objects (origin ``s3``: ``log_group`` is the bucket,
    ``log_stream`` the key); otherwise ``<logGroup>:<logStream>`` when both are known, the
    one that is known alone (a local file's log stream is its path); ``firehose:<origin>``
    for Firehose and Kinesis records that name neither. Never a scheme without a host.
    """
    if origin == "s3" and log_group and log_stream and not log_group.startswith("/"):
        return f"s3://{log_group}/{log_stream}"  # a bucket name never starts with "/"
    if log_group and log_stream:
        return f"{log_group}:{log_stream}"
    return log_group or log_stream or f"firehose:{origin}"


class Router:
    """Compiled rules for one ``TransformOptions``, with a bounded cache of resolutions."""

    def __init__(self, options: TransformOptions) -> None:
        self._options = options
        self._user = tuple(
            _compile_rule(route, number) for number, route in enumerate(options.routes, 1)
        )
        self._builtin = tuple(_compile_rule(route, None) for route in BUILTIN_ROUTES)
        self._cache: dict[tuple[RouteKey, tuple[str, ...] | None], Destination] = {}

    def resolve(self, key: RouteKey, header_fields: tuple[str, ...] | None = None) -> Destination:
        """The destination for a batch's (log group, log stream, account, origin) and, for
        an S3 file, the fields its header names (see the module docstring)."""
        cache_key = (key, header_fields)
        found = self._cache.get(cache_key)
        if found is None:
            found = self._resolve(key, header_fields)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = found
        return found

    def _resolve(self, key: RouteKey, header_fields: tuple[str, ...] | None) -> Destination:
        options = self._options
        # A file's header names its fields: the data is a flow log whatever the name says,
        # so the built-in name-based rules do not apply and the header beats configuration.
        rules = self._user if header_fields is not None else self._user + self._builtin
        sourcetype = index = source = host = None
        configured_fields: tuple[str, ...] | None = None
        chosen: EventFormat | None = None
        route_fields: tuple[tuple[str, str], ...] = ()
        shapings: list[Shaping] = []
        delivery: str | None = None
        for rule in rules:
            if not rule.matches(key):
                continue
            route = rule.route
            sourcetype = sourcetype if sourcetype is not None else route.sourcetype
            index = index if index is not None else route.index
            source = source if source is not None else route.source
            host = host if host is not None else route.host
            configured_fields = configured_fields or route.flow_log_format
            chosen = chosen or route.event_format
            route_fields = route_fields or route.fields
            delivery = delivery or route.destination
            if not route.shaping.is_empty:
                shapings.append(route.shaping)

        flow_fields = header_fields or configured_fields
        if flow_fields is None and sourcetype == VPCFLOW_SOURCETYPE:
            flow_fields = options.flow_log_format or DEFAULT_FIELDS
        if sourcetype is None:
            sourcetype = VPCFLOW_SOURCETYPE if flow_fields else options.default_sourcetype

        event_format: EventFormat = "raw"
        json_mode: JsonMode = None
        if flow_fields is None and chosen in ("json", "auto"):
            json_mode = "json" if chosen == "json" else "auto"
        if flow_fields is not None:
            chosen = chosen or options.event_format
            if chosen == "auto":
                event_format = "raw" if addon_understands(flow_fields) else "json"
            else:
                event_format = chosen

        fields = dict(options.extra_fields)
        fields.update(route_fields)
        log_group, log_stream, _, origin = key
        return Destination(
            sourcetype=sourcetype,
            index=index if index is not None else options.default_index,
            source=(
                _fill(source, key)
                if source is not None
                else default_source(origin, log_group, log_stream)
            ),
            host=_fill(host, key) if host is not None else None,
            fields=tuple(fields.items()),
            flow_fields=flow_fields,
            event_format=event_format,
            shaping=merge_shaping(shapings),
            json_mode=json_mode,
            delivery=delivery or DEFAULT_DESTINATION,
        )


def merge_shaping(shapings: list[Shaping]) -> Shaping:
    """The shaping of a destination from its matching routes' (in order): the time rule
    (``time_field`` or ``time_regex``, with its ``time_format``) comes from the first route
    that sets one, ``sample`` and ``sample_key`` likewise; ``drop``, ``redact`` and
    ``redact_fields`` add up, so a narrower route never undoes a wider one's redaction."""
    if not shapings:
        return Shaping()
    if len(shapings) == 1:
        return shapings[0]
    timed = next((s for s in shapings if s.time_field or s.time_regex), Shaping())
    sampled = next((s for s in shapings if s.sample is not None), Shaping())
    return Shaping(
        time_field=timed.time_field,
        time_regex=timed.time_regex,
        time_format=timed.time_format,
        drop=tuple(rule for s in shapings for rule in s.drop),
        sample=sampled.sample,
        sample_key=sampled.sample_key,
        redact=tuple(dict.fromkeys(rule for s in shapings for rule in s.redact)),
        redact_fields=tuple(dict.fromkeys(name for s in shapings for name in s.redact_fields)),
    )


@lru_cache(maxsize=16)
def router_for(options: TransformOptions) -> Router:
    """The compiled router for some options (compiled once, then cached).

    Raises:
        RoutePatternError: a rule's pattern does not compile; call this at start-up to fail
            early with the rule's number.
    """
    return Router(options)


_last: dict[str, tuple[TransformOptions, Router]] = {}


def resolve(
    options: TransformOptions,
    *,
    log_group: str | None,
    log_stream: str | None,
    account: str | None,
    origin: Origin,
    flow_fields: tuple[str, ...] | None = None,
) -> Destination:
    """The destination of a batch.

    Args:
        options: routing rules and defaults.
        log_group: the payload's ``logGroup`` (the bucket for S3 files), if any.
        log_stream: the payload's ``logStream`` (the object key for S3 files), if any.
        account: the payload's ``owner``, if any.
        origin: where the batch came from.
        flow_fields: the fields an S3 file's header names: the batch is a flow log with
            exactly these fields.

    Returns:
        The destination (cached: equal inputs give the same object).
    """
    last = _last.get("router")
    if last is not None and last[0] is options:
        router = last[1]
    else:
        router = router_for(options)
        _last["router"] = (options, router)
    return router.resolve((log_group, log_stream, account, origin), flow_fields)
