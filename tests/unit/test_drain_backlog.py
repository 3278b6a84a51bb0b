"""The backlog measurement (forwarder/drain/backlog.py), its background refresher and its
gauges (forwarder/drain/gauges.py), and the daemon's drain service exposing them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from config.drain import DrainSettings
from forwarder.delivery.ledger import Ledger
from forwarder.delivery.metrics import DaemonState, MetricsServer
from forwarder.drain.backlog import (
    Backlog,
    KindBacklog,
    emf_document,
    measure_backlog,
    queue_depth,
    tally,
)
from forwarder.drain.gauges import BacklogCollector, BacklogGauges
from forwarder.drain.service import DrainService
from tests.conftest import make_settings

NOW = 1_800_000_000.0
BUCKET = "backlog-bucket"


def item(key: str, size: int, age_s: float) -> dict[str, Any]:
    """A ``list_objects_v2`` Contents entry modified ``age_s`` before NOW."""
    return {"Key": key, "Size": size, "LastModified": datetime.fromtimestamp(NOW - age_s, UTC)}


# ---------------------------------------------------------------------- tally (pure)


def test_tally_sums_objects_bytes_and_oldest_age_per_kind() -> None:
    """Every kind has a row (zeros when empty); archived objects under replayed/ and folder
    markers are not backlog; a key under no kind's folder counts as ``other``."""
    backlog = tally(
        BUCKET,
        "fh/",
        [
            item("fh/splunk-failed/2026/12/03/07/a.gz", 100, 30),
            item("fh/splunk-failed/2026/12/03/06/b.gz", 50, 3600),
            item("fh/processing-failed/2026/12/03/07/c.gz", 7, 10),
            item("fh/replay-failed/splunk-failed/2026/12/03/07/d.gz", 9, 90),
            item("fh/replayed/splunk-failed/2026/12/03/05/e.gz", 1000, 9000),
            item("fh/splunk-failed/", 0, 99999),
            item("fh/loose.gz", 3, 5),
        ],
        now=NOW,
    )
    table = backlog.to_dict()["by_kind"]
    assert table == {
        "decompression-failed": {"objects": 0, "bytes": 0, "oldest_age_s": 0.0},
        "other": {"objects": 1, "bytes": 3, "oldest_age_s": 5.0},
        "processing-failed": {"objects": 1, "bytes": 7, "oldest_age_s": 10.0},
        "replay-failed": {"objects": 1, "bytes": 9, "oldest_age_s": 90.0},
        "splunk-failed": {"objects": 2, "bytes": 150, "oldest_age_s": 3600.0},
    }
    # the totals are what the drain will replay: replay-failed/ is a person's
    assert (backlog.objects, backlog.bytes, backlog.oldest_age_s) == (4, 160, 3600.0)
    assert (backlog.replay_failed.objects, backlog.replay_failed.bytes) == (1, 9)
    assert "failure_queue_depth" not in backlog.to_dict()


def test_tally_of_nothing_is_zeros_for_every_kind() -> None:
    backlog = tally(BUCKET, "", [], now=NOW)
    assert backlog.objects == backlog.bytes == 0 and backlog.oldest_age_s == 0.0
    assert set(backlog.by_kind) == {
        "splunk-failed",
        "processing-failed",
        "decompression-failed",
        "replay-failed",
    }


def test_emf_carries_the_failure_queue_depth_only_when_measured() -> None:
    backlog = Backlog(BUCKET, {"splunk-failed": KindBacklog(2, 20, 12.5)})
    plain = emf_document(backlog, events_delivered=3, events_abandoned=1, wall_clock=lambda: NOW)
    names = [m["Name"] for m in plain["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert "FailureQueueDepth" not in names and "FailureQueueDepth" not in plain
    assert plain["_aws"]["Timestamp"] == int(NOW * 1000)
    assert (plain["BacklogObjects"], plain["BacklogOldestAgeSeconds"]) == (2, 12.5)

    backlog.failure_queue_depth = 4
    document = emf_document(backlog, events_delivered=3, events_abandoned=1)
    metrics = document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert {"Name": "FailureQueueDepth", "Unit": "Count"} in metrics
    assert document["FailureQueueDepth"] == 4
    assert document["backlog"]["failure_queue_depth"] == 4


class Sqs:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return self.answer


def test_queue_depth_reads_approximate_number_of_messages() -> None:
    sqs = Sqs({"Attributes": {"ApproximateNumberOfMessages": "17"}})
    assert queue_depth(sqs, "https://q") == 17  # type: ignore[arg-type]
    assert sqs.calls == [
        {"QueueUrl": "https://q", "AttributeNames": ["ApproximateNumberOfMessages"]}
    ]


# ---------------------------------------------------------------------- measure (moto)


@pytest.fixture(name="aws")
def fixture_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3, boto3.client("sqs", region_name="us-east-1")


def test_measure_backlog_lists_the_source_and_reads_the_queue(aws: tuple[Any, Any]) -> None:
    s3, sqs = aws
    for n in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"fh/splunk-failed/2026/12/03/07/{n}.gz", Body=b"x" * 10)
    s3.put_object(Bucket=BUCKET, Key="elsewhere/splunk-failed/2026/12/03/07/z.gz", Body=b"y")
    url = sqs.create_queue(QueueName="push-failures")["QueueUrl"]
    for n in range(2):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")

    backlog = measure_backlog(s3, f"s3://{BUCKET}/fh/", failure_queue=url, sqs=sqs)
    assert (backlog.bucket, backlog.objects, backlog.bytes) == (BUCKET, 3, 30)
    assert backlog.failure_queue_depth == 2
    assert measure_backlog(s3, f"s3://{BUCKET}/fh/").failure_queue_depth is None
    with pytest.raises(ValueError, match="SQS client"):
        measure_backlog(s3, f"s3://{BUCKET}/fh/", failure_queue=url)


# ---------------------------------------------------------------------- the refresher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Measure:
    """Answers a backlog of ``objects`` splunk-failed objects, or raises ``error``."""

    def __init__(self) -> None:
        self.calls = 0
        self.objects = 1
        self.error: Exception | None = None

    def __call__(self) -> Backlog:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return Backlog(BUCKET, {"splunk-failed": KindBacklog(self.objects, 10 * self.objects)})


def objects_of(gauges: BacklogGauges) -> int | None:
    latest = gauges.latest
    return None if latest is None else latest.objects


def test_the_refresher_measures_at_most_every_interval() -> None:
    clock, measure = Clock(), Measure()
    gauges = BacklogGauges(measure, interval_s=60.0, clock=clock)
    assert gauges.latest is None
    assert gauges.refresh() and measure.calls == 1
    clock.now = 59.9
    assert not gauges.refresh() and measure.calls == 1  # not due: no listing
    clock.now = 60.0
    measure.objects = 5
    assert gauges.refresh() and measure.calls == 2
    assert objects_of(gauges) == 5


def test_a_failed_measurement_keeps_the_last_values_and_logs_once_per_streak() -> None:
    clock, measure = Clock(), Measure()
    gauges = BacklogGauges(measure, interval_s=10.0, clock=clock)
    gauges.refresh()
    measure.error = RuntimeError("AccessDenied")
    with capture_logs() as logs:
        for step in range(1, 4):
            clock.now = 10.0 * step
            assert not gauges.refresh()
        assert objects_of(gauges) == 1  # the last values
        measure.error, measure.objects = None, 7
        clock.now = 40.0
        assert gauges.refresh()
        measure.error = RuntimeError("again")
        clock.now = 50.0
        gauges.refresh()
    assert measure.calls == 6
    events = [(entry["event"], entry.get("error"), entry.get("after_failures")) for entry in logs]
    assert events == [
        ("backlog_unmeasured", "RuntimeError: AccessDenied", None),
        ("backlog_measured", None, 3),
        ("backlog_unmeasured", "RuntimeError: again", None),
    ]
    assert objects_of(gauges) == 7


def test_the_refresher_thread_measures_at_once_and_stops_on_close() -> None:
    measured = threading.Event()
    measure = Measure()

    def measure_and_signal() -> Backlog:
        try:
            return measure()
        finally:
            measured.set()

    gauges = BacklogGauges(measure_and_signal, interval_s=3600.0).start()
    try:
        assert measured.wait(30)
    finally:
        gauges.close()
    assert gauges._thread is not None and not gauges._thread.is_alive()
    assert measure.calls == 1  # the next one was an hour away


# ---------------------------------------------------------------------- exposition


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


@pytest.fixture(name="server")
def fixture_server() -> Iterator[MetricsServer]:
    server = MetricsServer(DaemonState(ledger=Ledger()))
    yield server
    server.stop()


def test_the_collector_exposes_nothing_before_the_first_measurement_then_every_kind(
    server: MetricsServer,
) -> None:
    clock, measure = Clock(), Measure()
    gauges = BacklogGauges(measure, clock=clock)
    server.registry.register(BacklogCollector(gauges))
    assert b"forwarder_backlog" not in server.exposition()

    measure.objects = 3
    gauges.refresh()
    assert gauges.latest is not None
    gauges.latest.by_kind["replay-failed"] = KindBacklog(1, 9, 42.5)
    found = samples(server.exposition())
    assert found[("forwarder_backlog_objects", (("kind", "splunk-failed"),))] == 3
    assert found[("forwarder_backlog_bytes", (("kind", "splunk-failed"),))] == 30
    assert found[("forwarder_backlog_objects", (("kind", "replay-failed"),))] == 1
    assert found[("forwarder_backlog_oldest_age_seconds", (("kind", "replay-failed"),))] == 42.5
    assert not any(name == "forwarder_failure_queue_depth" for name, _ in found)

    gauges.latest.failure_queue_depth = 6
    assert samples(server.exposition())[("forwarder_failure_queue_depth", ())] == 6


def test_the_daemon_service_measures_the_backsplash_for_metrics_without_the_drain(
    aws: tuple[Any, Any], server: MetricsServer
) -> None:
    """GIVEN a daemon with a backsplash bucket and /metrics, the drain off WHEN the service
    starts THEN the backlog and the failure queue's depth are on /metrics; close stops it."""
    s3, sqs = aws
    s3.put_object(Bucket=BUCKET, Key="fh/splunk-failed/2026/12/03/07/a.gz", Body=b"abcd")
    url = sqs.create_queue(QueueName="push-failures")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    clients = {"s3": s3, "sqs": sqs}
    service = DrainService(
        make_settings(BACKSPLASH_BUCKET=BUCKET, BACKSPLASH_PREFIX="fh/"),
        DrainSettings(),
        client_factory=clients.__getitem__,
        stop=threading.Event(),
        failure_queue=url,
    )
    assert service.drainer is None and service.backlog_source == f"s3://{BUCKET}/fh/"
    service.start(server)
    try:
        assert service.backlog is not None
        for _ in range(600):  # the first measurement runs at once on its thread
            if service.backlog.latest is not None:
                break
            threading.Event().wait(0.05)
        found = samples(generate_latest(server.registry))
    finally:
        service.close()
    assert found[("forwarder_backlog_objects", (("kind", "splunk-failed"),))] == 1
    assert found[("forwarder_backlog_bytes", (("kind", "splunk-failed"),))] == 4
    assert found[("forwarder_failure_queue_depth", ())] == 1


def test_no_bucket_or_no_metrics_means_no_measurement(server: MetricsServer) -> None:
    def no_clients(service: str) -> Any:
        raise AssertionError(f"no {service} client expected")

    bare = DrainService(
        make_settings(), DrainSettings(), client_factory=no_clients, stop=threading.Event()
    )
    assert bare.backlog_source is None
    bare.start(server)
    assert bare.backlog is None
    unserved = DrainService(
        make_settings(BACKSPLASH_BUCKET=BUCKET),
        DrainSettings(),
        client_factory=no_clients,
        stop=threading.Event(),
    )
    unserved.start(None)
    assert unserved.backlog is None
    bare.close()
    unserved.close()
