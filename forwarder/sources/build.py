"""The daemon's source and checkpoint store, built from the ``[source]`` and ``[daemon]``
settings, and the check of what a ``files`` source names."""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

from config.daemon import DaemonSettings, SourceSettings
from config.errors import ConfigError
from forwarder.aws import ClientFactory
from forwarder.sources.base import Source
from forwarder.sources.checkpoints import (
    CheckpointStore,
    DynamoCheckpointStore,
    FileCheckpointStore,
    MemoryCheckpointStore,
)
from forwarder.sources.files import FileSource
from forwarder.sources.firehose_http import FirehoseHttpSource
from forwarder.sources.kinesis import KinesisSource
from forwarder.sources.sqs_s3 import SqsS3Source
from transforms.options import TransformOptions


def checkpoint_store(daemon: DaemonSettings, clients: ClientFactory) -> CheckpointStore:
    """Where Kinesis positions live (``checkpoint_store``: dynamodb, file or memory)."""
    if daemon.checkpoint_store == "dynamodb":
        assert daemon.checkpoint_table is not None
        return DynamoCheckpointStore(clients("dynamodb"), daemon.checkpoint_table)
    if daemon.checkpoint_store == "file":
        return FileCheckpointStore(daemon.checkpoint_path)
    return MemoryCheckpointStore()


def build_source(
    daemon: DaemonSettings,
    transform: TransformOptions,
    clients: ClientFactory,
    *,
    stop_event: threading.Event,
    stdin: BinaryIO | None = None,
) -> Source:
    """The source ``[source] type`` names (not attached yet).

    Args:
        daemon: the daemon's settings (the source's and the checkpoint store's).
        transform: transform options (backsplash records of ``sqs-s3`` objects).
        clients: builds boto3 clients by service name.
        stop_event: set on shutdown (waits end early).
        stdin: the stream for the stdin source.
    """
    source = daemon.source
    if source.type == "kinesis":
        return KinesisSource(
            clients("kinesis"), source, checkpoint_store(daemon, clients), stop_event=stop_event
        )
    if source.type == "sqs-s3":
        return SqsS3Source(
            clients("sqs"), clients("s3"), source, stop_event=stop_event, transform=transform
        )
    if source.type == "firehose-http":
        return FirehoseHttpSource(source, stop_event=stop_event)
    return FileSource(source, stdin=stdin)


def check_source(source: SourceSettings) -> None:
    """What the source's settings name must exist before it is attached.

    Raises:
        ConfigError: a ``files`` source names a path that is not a readable file.
    """
    if source.type != "files":
        return
    for path in source.paths:
        if path == "-":
            continue
        if not os.path.exists(path):  # a FIFO or a device is fine: only missing is not
            raise ConfigError("source.paths", f"{path}: no such file")
        if os.path.isdir(path):
            raise ConfigError("source.paths", f"{path}: is a directory, not a file")
        if not os.access(path, os.R_OK):
            raise ConfigError("source.paths", f"{path}: not readable")
