"""moto's server, with Kinesis resharding as AWS does it, for the chaos run.

moto (5.x) moves a split parent's records into the children, keeps routing new records to
the closed parent and never ends it: a reader keeps a shard iterator forever, so a reshard
changes nothing a consumer can see. Three patches make it behave as Kinesis documents
(``SplitShard``, ``PutRecord``, ``GetRecords``):

- a split leaves the parent's records in the parent (closed) and the children empty;
- ``PutRecord(s)`` goes to the *open* shard whose hash key range holds the key;
- ``GetRecords`` on a closed shard answers ``NextShardIterator: null`` once the reader has
  every record of it (on a read with no records when the reader was caught up, which is the
  end-of-shard case a consumer must handle).

Run as ``python -m tests.chaos.moto_server -H 127.0.0.1 -p PORT`` (moto's own flags).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from moto.kinesis import models, utils

_shard_for_key = models.Stream.get_shard_for_key
_get_records = models.KinesisBackend.get_records
_split_shard = models.Stream.split_shard


def split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
    """moto's split (its checks, the two children), with the records left where they were."""
    parent = self.shards.get(shard_to_split)
    kept = OrderedDict(parent.records) if parent is not None else None
    before = set(self.shards)
    _split_shard(self, shard_to_split, new_starting_hash_key)
    if parent is not None and kept is not None:
        parent.records = kept
        for shard_id in set(self.shards) - before:
            self.shards[shard_id].records = OrderedDict()


def get_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
    """The open shard for the key (moto's own lookup first, for its argument checks)."""
    shard = _shard_for_key(self, partition_key, explicit_hash_key)
    if shard is None or shard.is_open:
        return shard
    if explicit_hash_key:
        key = int(explicit_hash_key)
    else:
        key = int(
            hashlib.md5(partition_key.encode()).hexdigest(), 16
        )  # AWS hashes partition keys with MD5
    for candidate in self.shards.values():
        if candidate.is_open and candidate.starting_hash <= key <= candidate.ending_hash:
            return candidate
    return shard


def get_records(self: Any, stream_arn: str | None, shard_iterator: str, limit: int | None) -> Any:
    """moto's GetRecords, ending a closed shard once everything in it was read."""
    next_iterator, records, millis_behind = _get_records(self, stream_arn, shard_iterator, limit)
    stream_name, shard_id, position = utils.decompose_shard_iterator(next_iterator)
    stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
    shard = stream.get_shard(shard_id)
    if not shard.is_open and (not shard.records or int(position) >= max(shard.records)):
        return None, records, millis_behind
    return next_iterator, records, millis_behind


_PATCHES: list[tuple[Any, str, Any, Any]] = [
    (models.Stream, "split_shard", split_shard, _split_shard),
    (models.Stream, "get_shard_for_key", get_shard_for_key, _shard_for_key),
    (models.KinesisBackend, "get_records", get_records, _get_records),
]


@contextlib.contextmanager
def aws_resharding() -> Iterator[None]:
    """Within the block, moto's Kinesis reshards as AWS does (this process only)."""
    for owner, name, patched, _ in _PATCHES:
        setattr(owner, name, patched)
    try:
        yield
    finally:
        for owner, name, _, original in _PATCHES:
            setattr(owner, name, original)


if __name__ == "__main__":
    from moto.server import main

    with aws_resharding():
        main(sys.argv[1:])
