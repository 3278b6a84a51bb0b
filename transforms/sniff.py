"""What an input is: the one sniffer behind ``forwarder forward``, ``forwarder transform`` and
the push Lambda, so that they never disagree about the same bytes.

Pure: bytes (or a parsed JSON document) in, a description out. The readers that act on the
description (streaming, bounded) live in :mod:`forwarder.intake.inputs`.

An input is, told by its first bytes (:func:`sniff`):

- ``payload``: gzip whose first inflated byte opens a JSON object: a CloudWatch Logs
  subscription payload (DESIGN.md section 2);
- ``json``: plain bytes opening with ``{``: one JSON document (an event, below) or JSON
  lines; which one is told once the whole input is read (:func:`read_document`);
- ``text``: anything else (plain or gzip): lines, a flow-log file when its first line is a
  header naming flow-log fields.

A JSON document is an event when :func:`event_shape` names its shape: a push-Lambda
CloudWatch Logs event (``awslogs``), a Firehose transformation event (``firehose``), a Kinesis
event source batch (``kinesis``) or an SQS batch (``sqs``, the push Lambda's S3 notices).
JSON lines that are all ``{"message": "<line>"}`` are flow logs sent straight to Firehose
(:func:`direct_messages`); other JSON is text.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from transforms.cloudwatch import GZIP_MAGIC, direct_messages

__all__ = [
    "SNIFF_BYTES",
    "EventShape",
    "InputKind",
    "Sniffed",
    "direct_messages",
    "event_payloads",
    "event_shape",
    "read_document",
    "sniff",
]

#: How many leading bytes :func:`sniff` looks at (more are ignored).
SNIFF_BYTES: Final = 64 * 1024
#: Inflated bytes looked at to tell a gzip JSON payload from gzip text.
_INFLATED_HEAD: Final = 256

InputKind = Literal["payload", "json", "text"]
EventShape = Literal["awslogs", "firehose", "kinesis", "sqs"]


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the first bytes of an input say it is.

    Attributes:
        kind: ``payload``, ``json`` or ``text`` (see the module docstring).
        gzip: the bytes are gzip-compressed.
    """

    kind: InputKind
    gzip: bool


def sniff(head: bytes) -> Sniffed:
    """Tell what an input is from its first bytes (up to :data:`SNIFF_BYTES` of them).

    Args:
        head: the input's first bytes (the whole input when shorter).

    Returns:
        The input's kind; empty input is ``text`` (no lines).
    """
    head = head[:SNIFF_BYTES]
    if head.startswith(GZIP_MAGIC):
        try:
            start = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _INFLATED_HEAD)
        except zlib.error:
            return Sniffed("text", gzip=True)  # the line reader reports the broken stream
        return Sniffed("payload" if start.lstrip()[:1] == b"{" else "text", gzip=True)
    if head.lstrip()[:1] == b"{":
        return Sniffed("json", gzip=False)
    return Sniffed("text", gzip=False)


def read_document(data: bytes) -> Any | None:
    """The one JSON document ``data`` holds, or None (JSON lines, text, nesting too deep)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def event_shape(document: Any) -> EventShape | None:
    """Which AWS event a parsed JSON document is, or None for any other document.

    - ``awslogs``: ``{"awslogs": {"data": "<base64>"}}``;
    - ``firehose``: ``{"records": [...]}`` (a Firehose transformation event);
    - ``kinesis``: ``{"Records": [{"kinesis": {...}}, ...]}`` (``eventSource`` ``aws:kinesis``
      or absent, as in a saved record list);
    - ``sqs``: ``{"Records": [{"eventSource": "aws:sqs", "body": ...}, ...]}``.
    """
    if not isinstance(document, Mapping):
        return None
    awslogs = document.get("awslogs")
    if isinstance(awslogs, Mapping) and isinstance(awslogs.get("data"), str):
        return "awslogs"
    if isinstance(document.get("records"), list):
        return "firehose"
    records = document.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        first = records[0]
        source = first.get("eventSource") or first.get("EventSource")
        if source in (None, "aws:kinesis") and isinstance(first.get("kinesis"), Mapping):
            return "kinesis"
        if source == "aws:sqs" and "body" in first:
            return "sqs"
    return None


def event_payloads(document: Mapping[str, Any], shape: EventShape) -> list[str | None]:
    """The base64 ``data`` of each record of an ``awslogs``, ``firehose`` or ``kinesis``
    event, in order; None for a record without a base64 string.

    Raises:
        ValueError: ``shape`` is ``sqs`` (its records name S3 objects, not payloads).
    """

    def data_of(record: Any) -> str | None:
        data = record.get("data") if isinstance(record, Mapping) else None
        return data if isinstance(data, str) else None

    if shape == "awslogs":
        return [data_of(document["awslogs"])]
    if shape == "firehose":
        return [data_of(record) for record in document["records"]]
    if shape == "kinesis":
        return [
            data_of(record.get("kinesis")) if isinstance(record, Mapping) else None
            for record in document["Records"]
        ]
    raise ValueError(f"{shape} events carry no payloads")
