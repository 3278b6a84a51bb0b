"""A daemon reading Kinesis through a reshard (moto server, the HEC emulator, real processes).

moto departs from Kinesis on resharding, so these tests make the in-process moto server
(ThreadedMotoServer shares this process's backends) follow what the Kinesis API reference
documents: :mod:`tests.faithful_kinesis` says how.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.sources.checkpoints import SHARD_END, FileCheckpointStore
from tests.conftest import boto_client
from tests.faithful_kinesis import faithful_resharding
from tests.integration.test_daemon import (
    STREAM,
    indexed_messages,
    log_events,
    start_daemon,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(name="aws_like_kinesis")
def fixture_aws_like_kinesis() -> Iterator[None]:
    """moto's Kinesis with Kinesis' documented reshard and end-of-shard behaviour."""
    with faithful_resharding():
        yield


@pytest.fixture(name="kinesis")
def fixture_kinesis(aws_endpoint: str, s3: Any) -> Any:
    """A one-shard stream on the moto server (the backsplash bucket exists too)."""
    client = boto_client("kinesis", aws_endpoint)
    client.create_stream(StreamName=STREAM, ShardCount=1)
    return client


def put(kinesis: Any, start: int, count: int) -> set[str]:
    """``count`` CloudWatch payloads of one unique message each, spread over the shards."""
    messages: set[str] = set()
    for n in range(start, start + count):
        message = f"evt-{n:06d}"
        messages.add(message)
        payload = cloudwatch_payload([message], log_group="/app/reshard", first_id=n)
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey=f"key-{n}")
    return messages


def open_shards(kinesis: Any) -> list[str]:
    return [
        shard["ShardId"]
        for shard in kinesis.list_shards(StreamName=STREAM)["Shards"]
        if "EndingSequenceNumber" not in shard["SequenceNumberRange"]
    ]


def caught_up(kinesis: Any, checkpoints: Path) -> bool:
    """Every open shard's checkpoint is at its last record (the daemon has nothing to do)."""
    positions = FileCheckpointStore(checkpoints).load(STREAM)
    for shard_id in open_shards(kinesis):
        iterator = kinesis.get_shard_iterator(
            StreamName=STREAM, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]
        if records and positions.get(shard_id) != records[-1]["SequenceNumber"]:
            return False
    return True


def config_for(tmp_path: Path, emulator: HecEmulator) -> Path:
    config = write_config(tmp_path, emulator)
    text = config.read_text().replace(
        "poll_interval_s = 0.05\n", "poll_interval_s = 0.05\nshard_refresh_interval_s = 1.0\n"
    )
    config.write_text(text)
    return config


@pytest.fixture(name="daemon_proc")
def fixture_daemon_proc() -> Iterator[list[Any]]:
    """Daemon processes started by a test; killed at the end if still running."""
    procs: list[Any] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.usefixtures("aws_like_kinesis")
def test_reshard_while_caught_up_is_followed(
    emulator: HecEmulator,
    kinesis: Any,
    aws_endpoint: str,
    tmp_path: Path,
    daemon_proc: list[Any],
) -> None:
    """GIVEN a caught-up daemon WHEN the stream is split (1 -> 2 shards) and then merged
    (2 -> 1) THEN every record before and after each reshard is indexed and each closed shard
    is checkpointed SHARD_END; SIGTERM exits 0."""
    parent = open_shards(kinesis)[0]
    checkpoints = tmp_path / "checkpoints.json"
    log = tmp_path / "daemon.log"
    messages = put(kinesis, 0, 20)
    proc = start_daemon(config_for(tmp_path, emulator), aws_endpoint, log)
    daemon_proc.append(proc)
    wait_for(lambda: set(indexed_messages(emulator)) == messages, timeout=60, what="first 20")
    wait_for(lambda: caught_up(kinesis, checkpoints), timeout=60, what="caught up")

    kinesis.update_shard_count(StreamName=STREAM, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    children = open_shards(kinesis)
    assert len(children) == 2 and parent not in children
    messages |= put(kinesis, 20, 30)
    wait_for(lambda: set(indexed_messages(emulator)) == messages, timeout=60, what="after split")
    assert FileCheckpointStore(checkpoints).load(STREAM)[parent] == SHARD_END
    wait_for(lambda: caught_up(kinesis, checkpoints), timeout=60, what="caught up again")

    kinesis.update_shard_count(StreamName=STREAM, TargetShardCount=1, ScalingType="UNIFORM_SCALING")
    messages |= put(kinesis, 50, 20)
    wait_for(lambda: set(indexed_messages(emulator)) == messages, timeout=60, what="after merge")
    positions = FileCheckpointStore(checkpoints).load(STREAM)
    assert all(positions[child] == SHARD_END for child in children)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert {e["shard"] for e in log_events(log, "shard_end_committed")} >= {parent, *children}


@pytest.mark.usefixtures("aws_like_kinesis")
def test_restart_after_kill_9_and_a_reshard_reads_the_children(
    emulator: HecEmulator,
    kinesis: Any,
    aws_endpoint: str,
    tmp_path: Path,
    daemon_proc: list[Any],
) -> None:
    """GIVEN a caught-up daemon killed with SIGKILL WHEN the stream is split while it is
    down and it restarts THEN it commits the parent's end, reads the children, and every
    record is indexed."""
    parent = open_shards(kinesis)[0]
    checkpoints = tmp_path / "checkpoints.json"
    log = tmp_path / "daemon.log"
    config = config_for(tmp_path, emulator)
    messages = put(kinesis, 0, 15)
    proc = start_daemon(config, aws_endpoint, log)
    daemon_proc.append(proc)
    wait_for(lambda: set(indexed_messages(emulator)) == messages, timeout=60, what="first 15")
    wait_for(lambda: caught_up(kinesis, checkpoints), timeout=60, what="caught up")
    proc.kill()
    proc.wait(timeout=10)

    kinesis.split_shard(StreamName=STREAM, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    messages |= put(kinesis, 15, 25)
    proc = start_daemon(config, aws_endpoint, log)
    daemon_proc.append(proc)
    wait_for(lambda: set(indexed_messages(emulator)) == messages, timeout=60, what="children")
    assert FileCheckpointStore(checkpoints).load(STREAM)[parent] == SHARD_END
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
