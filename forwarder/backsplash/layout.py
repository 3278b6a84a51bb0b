"""Where backsplash objects live: their kinds, keys and prefixes, and the one key classifier.

Layout (DESIGN.md §6), the same for Firehose's backup bucket and ours::

    <root>splunk-failed/YYYY/MM/DD/HH/<name>       delivery to HEC failed (rawData: what was sent)
    <root>processing-failed/YYYY/MM/DD/HH/<name>   the transform failed (rawData: the original)
    <root>decompression-failed/YYYY/MM/DD/HH/<name>  Firehose's own CloudWatch Logs
                                                   decompression failed (rawData: the original,
                                                   still gzip)
    <root>replay-failed/YYYY/MM/DD/HH/<name>       failed again when re-delivered (replayAttempts)
    <root>replayed/<the key below root>            archived by ``forwarder replay --archive``

``<root>`` is our ``BACKSPLASH_PREFIX`` (empty or ending with ``/``) or whatever prefix
Firehose was given, which need not end with ``/`` (``fhsplunk-failed/...``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Final, Literal

SPLUNK_FAILED: Final = "splunk-failed"
PROCESSING_FAILED: Final = "processing-failed"
#: Written by Firehose when its built-in CloudWatch Logs decompression fails.
DECOMPRESSION_FAILED: Final = "decompression-failed"
REPLAY_FAILED: Final = "replay-failed"
#: The folder ``forwarder replay --archive`` moves done objects to (under the root).
REPLAYED: Final = "replayed"
KINDS: Final = (SPLUNK_FAILED, PROCESSING_FAILED, DECOMPRESSION_FAILED, REPLAY_FAILED)
Kind = Literal["splunk-failed", "processing-failed", "decompression-failed", "replay-failed"]
#: Kinds whose ``rawData`` is the original input (a CloudWatch Logs payload), which goes
#: through the transform; the others hold what was sent to HEC.
ORIGINAL_PAYLOAD_KINDS: Final = frozenset({PROCESSING_FAILED, DECOMPRESSION_FAILED})

_HOUR_PATH: Final = re.compile(r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


def object_key(
    now: datetime,
    kind: str = SPLUNK_FAILED,
    *,
    prefix: str = "",
    unique: str | None = None,
) -> str:
    """The key for a new backsplash object: ``<prefix><kind>/YYYY/MM/DD/HH/<name>.gz``.

    The name starts with the UTC time to the microsecond, so keys sort by time within an
    hour's folder, and ends with a random part, so two writers never collide.

    Args:
        now: when the object is written (converted to UTC; naive means UTC).
        kind: ``splunk-failed`` (Firehose's folder for delivery failures).
        prefix: the bucket prefix, empty or ending with ``/``.
        unique: the random part (a uuid4 hex by default); tests pass a fixed one.

    Returns:
        The key.
    """
    when = now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
    unique = unique or uuid.uuid4().hex
    return (
        f"{prefix}{kind}/{when:%Y/%m/%d/%H}/"
        f"forwarder-{when:%Y-%m-%d-%H-%M-%S}-{when.microsecond:06d}-{unique}.gz"
    )


def key_kind(key: str) -> tuple[Kind | None, str]:
    """The backsplash kind a key lives under, and its root (the key before the kind's folder).

    The one key classifier. A folder (any path component but the last, the object's name)
    names a kind when it is the kind's name or ends with it (a Firehose prefix without a
    trailing ``/``: ``fhsplunk-failed/``). When several folders name kinds,
    ``replay-failed`` wins (the loop guard: what failed again is never re-delivered
    automatically, wherever it was written), else the first from the left.

    Returns:
        ``(kind, root)``; ``(None, "")`` for a key under no kind's folder.
    """
    parts = key.split("/")[:-1]
    found: tuple[Kind, int] | None = None
    for position, part in enumerate(parts):
        for kind in KINDS:
            if part.endswith(kind) and (found is None or kind == REPLAY_FAILED):
                found = (kind, position)
    if found is None:
        return None, ""
    kind, position = found
    root = "/".join([*parts[:position], parts[position][: -len(kind)]])
    return kind, root


def kind_from_key(key: str) -> Kind | None:
    """The kind :func:`key_kind` finds in a key, or None."""
    return key_kind(key)[0]


def source_root(prefix: str) -> str:
    """The root of a replayed prefix: before its kind folder, else its directory."""
    kind, root = key_kind(prefix if prefix.endswith("/") else prefix + "/x")
    if kind is not None:
        return root
    return prefix[: prefix.rfind("/") + 1]


def key_hour(key: str) -> datetime | None:
    """The UTC hour in a key's ``YYYY/MM/DD/HH/`` path, if it has a valid one."""
    match = _HOUR_PATH.search(key)
    if match is None:
        return None
    try:
        year, month, day, hour = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, tzinfo=UTC)
    except ValueError:
        return None


def archive_key(key: str, root: str) -> str:
    """Where ``--archive`` moves an object: ``<root>replayed/<rest of the key>``."""
    rest = key[len(root) :] if key.startswith(root) else key
    return f"{root}{REPLAYED}/{rest}"
