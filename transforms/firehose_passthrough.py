"""The passthrough marker: a Firehose record that already holds a HEC event, put back into a
Firehose stream by ``forwarder replay --via-firehose``, which the transform hands on unchanged.

A ``splunk-failed`` record's ``rawData`` is what Firehose sent to HEC: an event the transform
already made. Put back as it is, the transform would take it for a JSON log line and wrap it
in a second HEC event. So replay wraps it in an envelope, one HEC event per Firehose record::

    {"forwarderHecEvent":{"endpoint":"event","data":"<the HEC event, as text>"}}
    {"forwarderHecEvent":{"endpoint":"raw","base64":"<the line>"}}   (bytes that are not UTF-8)

The marker key comes first, so a record is told by its first bytes (:data:`MARKER_PREFIX`)
without parsing every record. The transform answers such a record ``Ok`` with the event
exactly as it was (:func:`unwrap`), never shaped again; the envelope is never nested (wrapping
an envelope wraps the event inside it). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final, NamedTuple

from transforms.options import Endpoint

#: The envelope's one top-level key.
MARKER_KEY: Final = "forwarderHecEvent"
#: The first bytes of every envelope :func:`wrap` writes.
MARKER_PREFIX: Final = b'{"' + MARKER_KEY.encode() + b'":'


class Passthrough(NamedTuple):
    """An unwrapped envelope: the HEC event's bytes and the endpoint they were made for."""

    payload: bytes
    endpoint: Endpoint


def is_marked(data: bytes) -> bool:
    """Whether a record starts like an envelope (cheap; :func:`unwrap` decides)."""
    return data.startswith(MARKER_PREFIX)


def wrap(payload: bytes, endpoint: Endpoint) -> bytes:
    """The envelope of one HEC payload (an already wrapped payload is not wrapped again)."""
    inner = unwrap(payload)
    if inner is not None:
        payload, endpoint = inner
    body: dict[str, str]
    try:
        body = {"endpoint": endpoint, "data": payload.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"endpoint": endpoint, "base64": base64.b64encode(payload).decode("ascii")}
    return json.dumps({MARKER_KEY: body}, separators=(",", ":"), ensure_ascii=False).encode()


def unwrap(data: bytes) -> Passthrough | None:
    """The HEC payload inside an envelope; None when ``data`` is not a well-formed one."""
    if not is_marked(data):
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    body = document.get(MARKER_KEY) if isinstance(document, dict) else None
    if not isinstance(body, dict) or len(document) != 1:
        return None
    endpoint = body.get("endpoint")
    if endpoint not in ("event", "raw"):
        return None
    text, encoded = body.get("data"), body.get("base64")
    if isinstance(text, str):
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
            return None
    elif isinstance(encoded, str):
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        return None
    if not payload.strip():
        return None
    return Passthrough(payload, "event" if endpoint == "event" else "raw")
