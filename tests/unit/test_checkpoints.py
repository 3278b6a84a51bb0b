"""Checkpoint stores: the atomic JSON file and the DynamoDB table."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from forwarder.sources.checkpoints import SHARD_END, DynamoCheckpointStore, FileCheckpointStore
from tests.conftest import create_checkpoint_table


def test_file_store_round_trip_and_merge(tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path / "sub" / "ckpt.json")
    assert store.load("s") == {}
    store.save("s", {"shard-0": "100"})
    store.save("s", {"shard-1": SHARD_END})
    store.save("other", {"shard-0": "7"})
    assert store.load("s") == {"shard-0": "100", "shard-1": SHARD_END}
    assert FileCheckpointStore(tmp_path / "sub" / "ckpt.json").load("other") == {"shard-0": "7"}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ckpt.json"]  # no temp left


def test_file_store_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.json"
    store = FileCheckpointStore(path)
    store.save("s", {"a": "1"})

    def broken(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        store.save("s", {"a": "2"})
    assert json.loads(path.read_text()) == {"s": {"a": "1"}}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.json"]


def test_file_store_rejects_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.json"
    path.write_text("[1, 2]")
    with pytest.raises(TypeError):
        FileCheckpointStore(path).load("s")


@pytest.fixture(name="dynamodb")
def fixture_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_checkpoint_table(client, "ckpt")
        yield client


def test_dynamodb_store(dynamodb: Any) -> None:
    store = DynamoCheckpointStore(dynamodb, "ckpt", clock=lambda: 1_764_000_000.0)
    assert store.load("s") == {}
    store.save("s", {"shard-0": "100", "shard-1": "5"})
    store.save("s", {"shard-1": SHARD_END})
    store.save("t", {"shard-0": "1"})
    assert store.load("s") == {"shard-0": "100", "shard-1": SHARD_END}
    item = dynamodb.get_item(
        TableName="ckpt", Key={"stream_name": {"S": "s"}, "shard_id": {"S": "shard-0"}}
    )["Item"]
    assert item["updated_at"] == {"N": "1764000000"}
