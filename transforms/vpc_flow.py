"""VPC and Transit Gateway flow logs: the field table, format strings, line parsing.

The field table follows the "Available fields" tables of the AWS documentation pages
"Flow log records" (Amazon VPC User Guide, versions 2 to 10) and "Transit Gateway Flow Log
records" (Amazon VPC Transit Gateways guide, version 6 fields). Each field carries the version
that introduced it, whether its values are integers (``INT_32``/``INT_64`` in the Parquet
column of those tables) and the name the Splunk Add-on for AWS gives it (DESIGN.md §3).

A flow-log line is one record: values separated by spaces, ``-`` for "no value". Records from
CloudWatch Logs and Firehose carry no header, so the format comes from configuration (default:
version 2); files on S3 start with a header line naming the fields.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from json.encoder import encode_basestring
from operator import itemgetter
from types import MappingProxyType

from transforms.errors import FlowLogFormatError, FlowLogParseError
from transforms.records import FlowLogRecord


@dataclass(frozen=True, slots=True)
class FlowField:
    """One documented flow-log field."""

    name: str
    version: int
    is_int: bool
    splunk_name: str
    transit_gateway: bool  # True for the fields only Transit Gateway flow logs have


#: The Splunk Add-on for AWS names for the version 2 fields that it renames (DESIGN.md §3);
#: every other field keeps its AWS name with ``-`` replaced by ``_``.
_ADDON_RENAMES: Mapping[str, str] = {
    "srcaddr": "src_ip",
    "dstaddr": "dest_ip",
    "srcport": "src_port",
    "dstport": "dest_port",
    "protocol": "protocol_code",
    "start": "start_time",
    "end": "end_time",
    "action": "vpcflow_action",
    "log-status": "log_status",
}

#: (name, version, is_int, Transit Gateway only), VPC fields in the documented table order,
#: then the Transit Gateway-only fields in their table order.
_TABLE: tuple[tuple[str, int, bool, bool], ...] = (
    ("version", 2, True, False),
    ("account-id", 2, False, False),
    ("interface-id", 2, False, False),
    ("srcaddr", 2, False, False),
    ("dstaddr", 2, False, False),
    ("srcport", 2, True, False),
    ("dstport", 2, True, False),
    ("protocol", 2, True, False),
    ("packets", 2, True, False),
    ("bytes", 2, True, False),
    ("start", 2, True, False),
    ("end", 2, True, False),
    ("action", 2, False, False),
    ("log-status", 2, False, False),
    ("vpc-id", 3, False, False),
    ("subnet-id", 3, False, False),
    ("instance-id", 3, False, False),
    ("tcp-flags", 3, True, False),
    ("type", 3, False, False),
    ("pkt-srcaddr", 3, False, False),
    ("pkt-dstaddr", 3, False, False),
    ("region", 4, False, False),
    ("az-id", 4, False, False),
    ("sublocation-type", 4, False, False),
    ("sublocation-id", 4, False, False),
    ("pkt-src-aws-service", 5, False, False),
    ("pkt-dst-aws-service", 5, False, False),
    ("flow-direction", 5, False, False),
    ("traffic-path", 5, True, False),
    ("ecs-cluster-arn", 7, False, False),
    ("ecs-cluster-name", 7, False, False),
    ("ecs-container-instance-arn", 7, False, False),
    ("ecs-container-instance-id", 7, False, False),
    ("ecs-container-id", 7, False, False),
    ("ecs-second-container-id", 7, False, False),
    ("ecs-service-name", 7, False, False),
    ("ecs-task-definition-arn", 7, False, False),
    ("ecs-task-arn", 7, False, False),
    ("ecs-task-id", 7, False, False),
    ("reject-reason", 8, False, False),
    ("resource-id", 9, False, False),
    ("encryption-status", 10, True, False),
    # Transit Gateway flow logs (all version 6).
    ("resource-type", 6, False, True),
    ("tgw-id", 6, False, True),
    ("tgw-attachment-id", 6, False, True),
    ("tgw-src-vpc-account-id", 6, False, True),
    ("tgw-dst-vpc-account-id", 6, False, True),
    ("tgw-src-vpc-id", 6, False, True),
    ("tgw-dst-vpc-id", 6, False, True),
    ("tgw-src-subnet-id", 6, False, True),
    ("tgw-dst-subnet-id", 6, False, True),
    ("tgw-src-eni", 6, False, True),
    ("tgw-dst-eni", 6, False, True),
    ("tgw-src-az-id", 6, False, True),
    ("tgw-dst-az-id", 6, False, True),
    ("tgw-pair-attachment-id", 6, False, True),
    ("packets-lost-no-route", 6, True, True),
    ("packets-lost-blackhole", 6, True, True),
    ("packets-lost-mtu-exceeded", 6, True, True),
    ("packets-lost-ttl-expired", 6, True, True),
)

#: Every documented field by AWS name, in table order.
FIELDS: Mapping[str, FlowField] = MappingProxyType(
    {
        name: FlowField(
            name=name,
            version=version,
            is_int=is_int,
            splunk_name=_ADDON_RENAMES.get(name, name.replace("-", "_")),
            transit_gateway=tgw,
        )
        for name, version, is_int, tgw in _TABLE
    }
)

#: The default format: every version 2 field in table order ("Flow log records", Default format).
DEFAULT_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS.values() if f.version == 2)

#: Every field of versions 2 to 5 in documented order: a layout the Splunk add-on understands.
V5_FIELDS: tuple[str, ...] = tuple(
    f.name for f in FIELDS.values() if f.version <= 5 and not f.transit_gateway
)

#: The same fields in alphabetical order, as the console writes them when every v5 field is
#: ticked: the other v5 layout the Splunk add-on understands.
V5_FIELDS_ALPHABETICAL: tuple[str, ...] = tuple(sorted(V5_FIELDS))

#: Every VPC field through the latest version, in documented order.
ALL_VPC_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS.values() if not f.transit_gateway)

#: The Transit Gateway default format: all its version 2 to 6 fields, in its table's order.
TGW_DEFAULT_FIELDS: tuple[str, ...] = (
    "version",
    "resource-type",
    "account-id",
    "tgw-id",
    "tgw-attachment-id",
    "tgw-src-vpc-account-id",
    "tgw-dst-vpc-account-id",
    "tgw-src-vpc-id",
    "tgw-dst-vpc-id",
    "tgw-src-subnet-id",
    "tgw-dst-subnet-id",
    "tgw-src-eni",
    "tgw-dst-eni",
    "tgw-src-az-id",
    "tgw-dst-az-id",
    "tgw-pair-attachment-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "log-status",
    "type",
    "packets-lost-no-route",
    "packets-lost-blackhole",
    "packets-lost-mtu-exceeded",
    "packets-lost-ttl-expired",
    "tcp-flags",
    "region",
    "flow-direction",
    "pkt-src-aws-service",
    "pkt-dst-aws-service",
)

_ADDON_LAYOUTS = frozenset({DEFAULT_FIELDS, V5_FIELDS, V5_FIELDS_ALPHABETICAL})

#: Epoch values above this are milliseconds (1e11 seconds is the year 5138).
_MS_THRESHOLD = 100_000_000_000
_FIELD_TOKEN = re.compile(r"\$\{([^${}\s]*)\}")


def addon_understands(fields: tuple[str, ...]) -> bool:
    """Whether the Splunk Add-on for AWS extracts fields from raw lines of this layout.

    True for the default version 2 layout, the version 5 layout in documented order and the
    version 5 all-fields layout in alphabetical order (DESIGN.md §3); ``EVENT_FORMAT=auto``
    sends those raw and every other layout as JSON.
    """
    return fields in _ADDON_LAYOUTS


def parse_format(spec: str) -> tuple[str, ...]:
    """The field names of a flow-log format.

    Accepts the ``--log-format`` syntax (``${version} ${srcaddr} ...``) and the plain
    space-separated list of an S3 file's header line (``version srcaddr ...``).

    Args:
        spec: the format string.

    Returns:
        The AWS field names, in order.

    Raises:
        FlowLogFormatError: empty, malformed, duplicated or unknown fields; the message names
            them and says how to fix the format.
    """
    names: list[str] = []
    malformed: list[str] = []
    for token in spec.split():
        match = _FIELD_TOKEN.fullmatch(token)
        if match is not None:
            names.append(match.group(1))
        elif "$" in token or "{" in token or "}" in token:
            malformed.append(token)
        else:
            names.append(token)
    if malformed:
        raise FlowLogFormatError(
            f"malformed flow-log format token(s) {', '.join(map(repr, malformed))}: write each "
            "field as ${name}, separated by single spaces, e.g. '${version} ${account-id} "
            "${interface-id}' (the LogFormat of `aws ec2 describe-flow-logs`)"
        )
    if not names:
        raise FlowLogFormatError(
            "empty flow-log format: name at least one field, e.g. '${version} ${srcaddr}', or "
            "leave the setting unset for the default version 2 format"
        )
    unknown = [name for name in names if name not in FIELDS]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.lower(), FIELDS, n=1)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise FlowLogFormatError(
            f"unknown flow-log field(s) {', '.join(hints)}: use the field names of the AWS "
            "'Flow log records' and 'Transit Gateway Flow Log records' tables, spelled exactly "
            "(lower case, with hyphens); copy the LogFormat of `aws ec2 describe-flow-logs` "
            f"to be sure. Known fields: {' '.join(FIELDS)}"
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FlowLogFormatError(
            f"flow-log field(s) {', '.join(map(repr, duplicates))} appear more "
            "than once in the format: name each field once"
        )
    return tuple(names)


def is_header_line(line: str) -> bool:
    """Whether a line is the header of an S3 flow-log file: nothing but known field names."""
    tokens = line.split()
    return bool(tokens) and all(token in FIELDS for token in tokens)


def fields_from_header(line: str) -> tuple[str, ...]:
    """The fields a header line names.

    Raises:
        FlowLogFormatError: the header names an unknown or duplicated field.
    """
    return parse_format(line)


#: Flow-log integers are at most 64-bit (``bytes``, ``packets``): 20 digits. A longer digit run
#: is not a flow-log value, and converting it would cost quadratic time or overflow a float.
MAX_INT_DIGITS = 20


def is_flow_int(value: str) -> bool:
    """Whether ``value`` is a flow-log integer: 1 to 20 ASCII digits."""
    return len(value) <= MAX_INT_DIGITS and value.isascii() and value.isdigit()


def parse_flow_log(line: str, fields: tuple[str, ...] = DEFAULT_FIELDS) -> FlowLogRecord:
    """Parse one flow-log line.

    Values are separated by runs of whitespace (a double space is tolerated); ``-`` becomes
    ``None``. NODATA and SKIPDATA lines parse like any other.

    Args:
        line: one record, without its newline.
        fields: the format's field names (``parse_format``); default version 2.

    Returns:
        The record, values kept as the strings AWS wrote (``to_splunk_fields`` types them).

    Raises:
        FlowLogParseError: wrong number of values, or a non-integer value in an integer field.
    """
    values = line.split()
    if len(values) != len(fields):
        raise FlowLogParseError(
            f"flow-log line has {len(values)} values but its format has {len(fields)} fields "
            f"(line starts {line[:40]!r}); check the flow-log format configured for this source"
        )
    for name, value in zip(fields, values, strict=True):
        if value != "-" and FIELDS[name].is_int and not is_flow_int(value):
            raise FlowLogParseError(
                f"flow-log field {name!r} should be an integer or '-', got {value[:20]!r}"
            )
    return FlowLogRecord(fields, tuple(None if value == "-" else value for value in values))


def epoch_seconds(value: str) -> int | float:
    """Seconds from a ``start``/``end`` value; values above 1e11 are milliseconds.

    Raises:
        ValueError: ``value`` is not a flow-log integer (``is_flow_int``).
    """
    if not is_flow_int(value):
        raise ValueError(f"not a flow-log integer: {value[:20]!r}")
    number = int(value)
    if number > _MS_THRESHOLD:
        return number // 1000 if number % 1000 == 0 else number / 1000
    return number


def to_splunk_fields(record: FlowLogRecord) -> dict[str, object]:
    """The record with the Splunk Add-on for AWS field names (DESIGN.md §3).

    Integers become numbers (``start``/``end`` in seconds, milliseconds converted); fields
    without a value (``-``) are omitted.
    """
    out: dict[str, object] = {}
    for name, value in zip(record.fields, record.values, strict=True):
        if value is None:
            continue
        field = FIELDS[name]
        if name in ("start", "end"):
            out[field.splunk_name] = epoch_seconds(value)
        elif field.is_int:
            out[field.splunk_name] = int(value)
        else:
            out[field.splunk_name] = value
    return out


@dataclass(frozen=True, slots=True)
class FlowFormat:
    """A format compiled for the hot path: where ``start`` is, and a JSON encoder.

    Built once per format by ``compile_format``; the pipeline uses it instead of creating a
    ``FlowLogRecord`` per line.
    """

    fields: tuple[str, ...]
    start_index: int | None
    #: On a single-spaced line, ``line.rsplit(" ", start_maxsplit)[start_pick]`` (when
    #: ``start_from_end``) or ``line.split(" ", start_maxsplit)[start_pick]`` is ``start``:
    #: the fewest splits that reach it.
    start_from_end: bool
    start_maxsplit: int
    start_pick: int
    #: Per field: ``(json key prefix, kind)``; kind 0 string, 1 integer, 2 epoch time.
    plan: tuple[tuple[str, int], ...]
    #: The ``start`` and ``end`` values of a line's values (a tuple), if the format has them.
    time_values: Callable[[list[str]], tuple[str, ...]] | None
    #: Positions of the integer fields (``start`` and ``end`` among them), in order.
    integer_positions: tuple[int, ...]
    #: Positions of ``start`` and ``end``, the fields whose integers may be milliseconds.
    time_positions: tuple[int, ...]
    #: Templates by which values are ``-`` (see ``json_template``), filled on demand.
    _templates: dict[tuple[int, ...], JsonTemplate] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def size(self) -> int:
        """Number of fields."""
        return len(self.fields)

    def to_json(self, values: list[str]) -> str | None:
        """The add-on-named JSON object for a line's values, or None if a value is invalid.

        Same result as ``json.dumps(to_splunk_fields(parse_flow_log(line)))`` without the
        intermediate objects; ``values`` must have one value per field.
        """
        parts = []
        for (prefix, kind), value in zip(self.plan, values, strict=True):
            if value == "-":
                continue
            if kind == 0:
                parts.append(prefix + encode_basestring(value))
            elif not is_flow_int(value):
                return None
            elif kind == 2 and len(value) > 11:
                parts.append(prefix + repr(epoch_seconds(value)))
            elif value[0] == "0" and len(value) > 1:
                parts.append(prefix + str(int(value)))  # JSON numbers have no leading zeros
            else:
                parts.append(prefix + value)
        return "{" + ",".join(parts) + "}"

    def json_template(self, dashes: tuple[int, ...] = ()) -> JsonTemplate:
        """The ``%`` template of the JSON object for lines with ``-`` at positions ``dashes``.

        For lines that need no escaping and whose integers are plain (checked by the caller),
        ``template % values(line_values)`` is ``to_json(line_values)``.
        """
        found = self._templates.get(dashes)
        if found is None:
            kept = [i for i in range(len(self.fields)) if i not in dashes]
            pieces = [self.plan[i][0] + ("%s" if self.plan[i][1] else '"%s"') for i in kept]
            found = JsonTemplate(
                template="{" + ",".join(pieces) + "}",  # add-on names have no "%"
                values=_tuple_getter(kept),
                integers=_tuple_getter([i for i in kept if self.plan[i][1]]),
            )
            if len(self._templates) < _TEMPLATE_CACHE_SIZE:
                self._templates[dashes] = found
        return found


@dataclass(frozen=True, slots=True)
class JsonTemplate:
    """A ``%`` template for the add-on JSON of lines with one pattern of ``-`` values."""

    template: str
    #: The values the template takes, from a line's values.
    values: Callable[[list[str]], tuple[str, ...]]
    #: The integer values among them (to check before trusting the template).
    integers: Callable[[list[str]], tuple[str, ...]]


def _tuple_getter(indices: list[int]) -> Callable[[list[str]], tuple[str, ...]]:
    """``itemgetter(*indices)`` that always returns a tuple (also for 0 or 1 index)."""
    if len(indices) >= 2:
        return itemgetter(*indices)
    if len(indices) == 1:
        (index,) = indices

        def one(values: list[str]) -> tuple[str, ...]:
            return (values[index],)

        return one

    def none(values: list[str]) -> tuple[str, ...]:
        return ()

    return none


_TEMPLATE_CACHE_SIZE = 4096


@lru_cache(maxsize=256)
def compile_format(fields: tuple[str, ...]) -> FlowFormat:
    """The compiled form of a format (cached per format)."""
    plan = []
    for name in fields:
        field = FIELDS[name]
        kind = 2 if name in ("start", "end") else 1 if field.is_int else 0
        plan.append((encode_basestring(field.splunk_name) + ":", kind))
    start_index = fields.index("start") if "start" in fields else None
    from_end, maxsplit, pick = False, 0, 0
    if start_index is not None:
        after = len(fields) - 1 - start_index
        if after < start_index:
            from_end, maxsplit, pick = True, after + 1, 1  # [head, start, *after]
        else:
            maxsplit, pick = start_index + 1, start_index
    time_indices = [i for i, name in enumerate(fields) if name in ("start", "end")]
    return FlowFormat(
        fields=fields,
        time_values=_tuple_getter(time_indices) if time_indices else None,
        integer_positions=tuple(i for i, (_, kind) in enumerate(plan) if kind),
        time_positions=tuple(time_indices),
        start_index=start_index,
        start_from_end=from_end,
        start_maxsplit=maxsplit,
        start_pick=pick,
        plan=tuple(plan),
    )
