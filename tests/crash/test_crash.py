"""The short crash runs inside ``make test`` (at least five SIGKILLs each; Kinesis with kills
right after reshards), and the end check's own arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.harness import AFTER_RESHARD, SHORT_KINESIS, SHORT_SQS, audit, run_crash


@pytest.mark.integration
def test_kinesis_daemon_survives_sigkill_and_reshards(tmp_path: Path) -> None:
    """GIVEN a Kinesis stream resharded while events flow (and while the daemon is caught up)
    WHEN the daemon is killed -9 at random moments, some right after a reshard, and restarted
    THEN nothing is lost, every duplicate is one a kill explains, and every ledger the runs
    logged balances."""
    report = run_crash("kinesis", SHORT_KINESIS, tmp_path)
    assert len(report.kills) >= 5
    assert any(kill.kind == AFTER_RESHARD for kill in report.kills)
    assert report.ok, "\n".join(report.lines())


@pytest.mark.integration
def test_sqs_s3_daemon_survives_sigkill(tmp_path: Path) -> None:
    """GIVEN flow-log objects announced on SQS WHEN the daemon is killed -9 while messages are
    in flight and restarted THEN nothing is lost and every duplicate is one a kill explains."""
    report = run_crash("sqs-s3", SHORT_SQS, tmp_path)
    assert len(report.kills) >= 5
    assert report.ok, "\n".join(report.lines())


def test_audit_finds_lost_events() -> None:
    result = audit(4, {0: 1, 2: 1, 3: 1}, [], set())
    assert result.lost == [1]
    assert result.duplicates == 0


def test_audit_explains_one_copy_per_kill_window() -> None:
    """An event in two kill windows may come three times; a third extra copy is unexplained."""
    windows = [{0, 1}, {1}]
    result = audit(3, {0: 2, 1: 4, 2: 1}, windows, set())
    assert (result.duplicates, result.by_kill) == (4, 3)
    assert (result.unexplained_copies, result.unexplained) == (1, [1])


def test_audit_never_explains_a_duplicate_outside_every_window() -> None:
    """A duplicate of an event checkpointed at every kill (or with no kill at all) is a bug."""
    result = audit(2, {0: 2, 1: 1}, [{1}], set())
    assert result.unexplained == [0] and result.by_kill == 0


def test_audit_explains_one_copy_by_a_deadline_backsplash() -> None:
    """Indexed, and backsplashed at the shutdown deadline (its ack still pending): one extra
    copy; a second one is not explained by the deadline."""
    result = audit(2, {0: 2, 1: 3}, [], {0, 1})
    assert (result.by_deadline, result.unexplained) == (2, [1])
    assert result.lost == []


@pytest.mark.integration
def test_faithful_resharding_on_moto(aws_endpoint: str) -> None:
    """The harness's premise: with the patch, a split keeps the parent's records, new writes go
    to the children only, and a closed shard read to its end answers no next iterator."""
    from tests.conftest import boto_client
    from tests.faithful_kinesis import faithful_resharding

    kinesis = boto_client("kinesis", aws_endpoint)
    with faithful_resharding():
        kinesis.create_stream(StreamName="faithful", ShardCount=1)
        (parent,) = kinesis.list_shards(StreamName="faithful")["Shards"]
        for i in range(3):
            kinesis.put_record(StreamName="faithful", Data=f"p{i}".encode(), PartitionKey=str(i))
        kinesis.update_shard_count(
            StreamName="faithful", TargetShardCount=2, ScalingType="UNIFORM_SCALING"
        )
        written = {
            kinesis.put_record(StreamName="faithful", Data=b"c", PartitionKey=str(i))["ShardId"]
            for i in range(20)
        }
        shards = {s["ShardId"]: s for s in kinesis.list_shards(StreamName="faithful")["Shards"]}
        iterator = kinesis.get_shard_iterator(
            StreamName="faithful", ShardId=parent["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        answer = kinesis.get_records(ShardIterator=iterator, Limit=100)
    children = {i for i, s in shards.items() if s.get("ParentShardId") == parent["ShardId"]}
    assert len(children) == 2 and written <= children
    assert shards[parent["ShardId"]]["SequenceNumberRange"]["EndingSequenceNumber"] == "3"
    assert [r["Data"] for r in answer["Records"]] == [b"p0", b"p1", b"p2"]
    assert answer.get("NextShardIterator") is None
