"""Code 7 (incorrect index): one event re-addressed to ``SPLUNK_FALLBACK_INDEX``, exactly.

Pure: bytes in, bytes out. The event endpoint's payload is one JSON object; only ``index``
and the indexed field ``orig_index`` change. Everything else is written back as the
transform wrote it (compact separators, UTF-8, lone surrogates as their ``\\udXXX`` escape),
so a re-encoded event differs from the original in those two values alone.
"""

from __future__ import annotations

import json
from typing import Final

from transforms.records import WIRE_ERRORS, EncodedEvent

#: The indexed field that keeps the index HEC refused.
ORIG_INDEX_FIELD: Final = "orig_index"


def reindex(event: EncodedEvent, fallback: str) -> EncodedEvent | None:
    """``event`` sent to ``fallback`` instead, its refused index kept in ``fields.orig_index``.

    Args:
        event: an event-endpoint payload (one JSON object) and its event id.
        fallback: the index to send it to.

    Returns:
        The re-addressed event (same event id), or None when there is nothing to re-send:
        the payload is not a JSON object, its ``fields`` are not an object, or it already
        names ``fallback`` (a re-send would meet the same refusal).
    """
    try:
        obj = json.loads(event.payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    original = obj.get("index")
    if original == fallback:
        return None
    fields = obj.get("fields")
    if fields is None:
        fields = {}
    elif not isinstance(fields, dict):
        return None
    obj["index"] = fallback
    if isinstance(original, str):
        fields[ORIG_INDEX_FIELD] = original
    if fields:
        obj["fields"] = fields
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return EncodedEvent(text.encode("utf-8", WIRE_ERRORS), event.event_id)
