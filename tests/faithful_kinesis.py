"""moto's Kinesis made to reshard as AWS does (in-process moto server only; crash, chaos, reshard).

moto (5.x) departs from Kinesis where a crash run must be exact:

- ``SplitShard`` moves the parent's records into the children (re-put with new sequence
  numbers) and ``MergeShards`` copies them: a consumer that read the parent reads them again
  from the children, duplicates Kinesis never makes.
- Writes keep going to a closed parent (the hash-key lookup does not skip closed shards), so a
  closed shard never really ends.
- ``GetRecords`` on a closed shard read to its end returns an iterator, where Kinesis returns
  none (``NextShardIterator`` null: SHARD_END).
- The shard models are not thread-safe (an ``OrderedDict`` iterated while a put appends).

:func:`faithful_resharding` patches those four points for as long as it is entered: a closed
shard keeps its records and gets no new ones (so its ``EndingSequenceNumber``, moto's last
sequence number, is fixed at the split), children start empty, the end of a closed shard is a
null iterator, and one lock serialises reads, writes and reshards. The patches apply to the
moto server in this process (``ThreadedMotoServer``), whoever its client is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import attrgetter
from typing import Any

_LOCK = threading.RLock()


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    return wrapper


def _split_shard(self: Any, shard_to_split: str, new_starting_hash_key: str) -> None:
    """AWS SplitShard: two empty children, the parent closed with its records kept."""
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import Shard

    with _LOCK:
        new_start = int(new_starting_hash_key)
        shard = self.shards[shard_to_split]
        if not shard.starting_hash < new_start < shard.ending_hash:
            raise InvalidArgumentError(message=f"NewStartingHashKey {new_start} out of range")
        if not shard.is_open:
            raise InvalidArgumentError(message=f"Shard {shard.shard_id} is already closed")
        last_id = max(s._shard_id for s in self.shards.values())
        for offset, (start, end) in enumerate(
            ((shard.starting_hash, new_start - 1), (new_start, shard.ending_hash)), start=1
        ):
            child = Shard(last_id + offset, start, end, parent=shard.shard_id)
            self.shards[child.shard_id] = child
        shard.is_open = False


def _merge_shards(self: Any, shard_to_merge: str, adjacent_shard_to_merge: str) -> None:
    """AWS MergeShards: one empty child of both, the parents closed with their records kept."""
    from moto.kinesis.exceptions import InvalidArgumentError
    from moto.kinesis.models import Shard

    with _LOCK:
        first = self.shards[shard_to_merge]
        second = self.shards[adjacent_shard_to_merge]
        low, high = sorted((first, second), key=attrgetter("starting_hash"))
        if low.ending_hash + 1 != high.starting_hash or not (first.is_open and second.is_open):
            raise InvalidArgumentError(adjacent_shard_to_merge)
        last_id = max(s._shard_id for s in self.shards.values())
        child = Shard(
            last_id + 1,
            low.starting_hash,
            high.ending_hash,
            parent=first.shard_id,
            adjacent_parent=second.shard_id,
        )
        self.shards[child.shard_id] = child
        first.is_open = False
        second.is_open = False


def _shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
    """Only open shards take writes (the hash range is inclusive at both ends, as in AWS)."""
    from moto.utilities.utils import md5_hash

    key = (
        int(explicit_hash_key)
        if explicit_hash_key
        else int(md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
    )
    for shard in self.shards.values():
        if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
            return shard
    return None


def _end_of_closed_shard(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_records(self: Any, stream_arn: str | None, shard_iterator: str, limit: Any) -> Any:
        from moto.kinesis.utils import decompose_shard_iterator

        with _LOCK:
            next_iterator, records, behind = original(self, stream_arn, shard_iterator, limit)
            stream_name, shard_id, _ = decompose_shard_iterator(shard_iterator)
            stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
            shard = stream.get_shard(shard_id)
            _, _, last = decompose_shard_iterator(next_iterator)
            if not shard.is_open and int(last) >= shard.get_max_sequence_number():
                next_iterator = None  # SHARD_END: the consumer moves on to the children
            return next_iterator, records, behind

    return get_records


@contextmanager
def faithful_resharding() -> Iterator[None]:
    """Patch moto's Kinesis models (see the module docstring) while the block runs."""
    from moto.kinesis.models import KinesisBackend, Shard, Stream

    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    patch(Stream, "split_shard", _split_shard)
    patch(Stream, "merge_shards", _merge_shards)
    patch(Stream, "update_shard_count", _locked(Stream.update_shard_count))
    patch(Stream, "get_shard_for_key", _shard_for_key)
    patch(Stream, "put_record", _locked(Stream.put_record))
    patch(Shard, "to_json", _locked(Shard.to_json))
    patch(KinesisBackend, "get_records", _end_of_closed_shard(KinesisBackend.get_records))
    patch(KinesisBackend, "get_shard_iterator", _locked(KinesisBackend.get_shard_iterator))
    patch(KinesisBackend, "list_shards", _locked(KinesisBackend.list_shards))
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
