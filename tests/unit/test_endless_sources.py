"""The part every endless source shares (:class:`forwarder.sources.base.EndlessSource`)."""

from __future__ import annotations

import threading

import pytest

from config.daemon import SourceSettings
from forwarder.sources.base import EndlessSource
from forwarder.sources.checkpoints import MemoryCheckpointStore
from forwarder.sources.firehose_http import FirehoseHttpSource
from forwarder.sources.kinesis import KinesisSource
from forwarder.sources.sqs_s3 import SqsS3Source

STOP = threading.Event()


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (
            KinesisSource(
                object(),
                SourceSettings(type="kinesis", stream_name="s"),
                MemoryCheckpointStore(),
                stop_event=STOP,
            ),
            "kinesis",
        ),
        (
            SqsS3Source(
                object(), object(), SourceSettings(type="sqs-s3", queue_url="q"), stop_event=STOP
            ),
            "sqs-s3",
        ),
        (
            FirehoseHttpSource(
                SourceSettings(type="firehose-http", access_key="k"), stop_event=STOP
            ),
            "firehose-http",
        ),
    ],
)
def test_an_endless_source_never_runs_out_and_starts_detached(
    source: EndlessSource, name: str
) -> None:
    """GIVEN a Kinesis, SQS/S3 or Firehose source WHEN built THEN it carries its name and
    the daemon's stop event, is never exhausted and is not attached before attach()."""
    assert source.name == name
    assert source._stop is STOP
    assert source.exhausted is False
    assert source.attached is False


def test_without_a_stop_event_each_gets_its_own() -> None:
    settings = SourceSettings(type="sqs-s3", queue_url="q")
    first = EndlessSource("a", settings, stop_event=None)
    second = EndlessSource("b", settings, stop_event=None)
    assert first._stop is not second._stop
    assert not first._stop.is_set()
    first._attached = True
    assert first.attached is True
