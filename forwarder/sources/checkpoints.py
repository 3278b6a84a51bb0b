"""Checkpoints: how far each Kinesis shard has been delivered (acknowledged or backsplashed).

A checkpoint is a position string per ``(stream_name, shard_id)``: the sequence number of the
last record whose every event is acknowledged or backsplashed, :data:`SHARD_END` once a
closed shard is finished (its children may then be read), or a pin (:func:`pin_position`,
``AT_TIMESTAMP:<epoch ms>``) for a shard started at ``LATEST`` that has no record delivered
yet: it is written before the shard's first read, so a restart (or an expired iterator)
resumes from that moment instead of a new ``LATEST``, which would skip what arrived in
between. Two stores:

- :class:`FileCheckpointStore`: one local JSON file ``{stream: {shard: position}}``, written
  atomically (temporary file, fsync, ``os.replace``, fsync of the directory), so a crash
  leaves either the old or the new file, never half of one.
- :class:`DynamoCheckpointStore`: a DynamoDB table with partition key ``stream_name`` (S) and
  sort key ``shard_id`` (S), as ``cloudformation/daemon.yaml`` creates it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

SHARD_END: Final = "SHARD_END"
#: The prefix of a pin position (:func:`pin_position`).
PIN_PREFIX: Final = "AT_TIMESTAMP:"


def pin_position(epoch_s: float) -> str:
    """The position that pins a shard at a moment: read from there with ``AT_TIMESTAMP``."""
    return f"{PIN_PREFIX}{int(epoch_s * 1000)}"


def pinned_at(position: str | None) -> float | None:
    """The moment (epoch seconds) a pin position names, or None for any other position."""
    if position is None or not position.startswith(PIN_PREFIX):
        return None
    try:
        return int(position[len(PIN_PREFIX) :]) / 1000.0
    except ValueError:
        return None


class CheckpointStore(Protocol):
    """Where shard positions are kept."""

    def load(self, stream_name: str) -> dict[str, str]:
        """Every shard's position for a stream (shard id -> sequence number or SHARD_END)."""
        ...

    def save(self, stream_name: str, positions: Mapping[str, str]) -> None:
        """Store these shards' positions (others are left as they are)."""
        ...


class MemoryCheckpointStore:
    """Positions in memory only (sources without checkpoints, tests)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, str]] = {}

    def load(self, stream_name: str) -> dict[str, str]:
        """The stored positions."""
        return dict(self._data.get(stream_name, {}))

    def save(self, stream_name: str, positions: Mapping[str, str]) -> None:
        """Store the positions."""
        self._data.setdefault(stream_name, {}).update(positions)


class FileCheckpointStore:
    """A JSON file, replaced atomically on every save.

    Args:
        path: the checkpoint file (its directory is created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileCheckpointStore(path={str(self.path)!r})"

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"{self.path}: checkpoint file must hold a JSON object")
        return {
            str(stream): {str(k): str(v) for k, v in shards.items()}
            for stream, shards in data.items()
            if isinstance(shards, dict)
        }

    def load(self, stream_name: str) -> dict[str, str]:
        """The stored positions of ``stream_name``.

        Raises:
            ValueError, TypeError: the file is not a checkpoint file.
        """
        return self._read().get(stream_name, {})

    def save(self, stream_name: str, positions: Mapping[str, str]) -> None:
        """Merge these positions into the file, atomically and durably.

        Raises:
            OSError: the file system refused.
        """
        data = self._read()
        data.setdefault(stream_name, {}).update(positions)
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


class DynamoCheckpointStore:
    """A DynamoDB table keyed by ``stream_name`` (partition) and ``shard_id`` (sort).

    Args:
        client: a boto3 DynamoDB client.
        table: the table name.
        clock: wall clock, for the ``updated_at`` attribute.
    """

    def __init__(self, client: Any, table: str, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.table = table
        self._clock = clock

    def __repr__(self) -> str:
        return f"DynamoCheckpointStore(table={self.table!r})"

    def load(self, stream_name: str) -> dict[str, str]:
        """Every shard's position for the stream (a paginated Query)."""
        positions: dict[str, str] = {}
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="stream_name = :s",
            ExpressionAttributeValues={":s": {"S": stream_name}},
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                positions[item["shard_id"]["S"]] = item["position"]["S"]
        return positions

    def save(self, stream_name: str, positions: Mapping[str, str]) -> None:
        """One PutItem per shard whose position changed."""
        now = str(int(self._clock()))
        for shard_id, position in positions.items():
            self._client.put_item(
                TableName=self.table,
                Item={
                    "stream_name": {"S": stream_name},
                    "shard_id": {"S": shard_id},
                    "position": {"S": position},
                    "updated_at": {"N": now},
                },
            )
