"""The backsplash backlog: objects, bytes and the oldest object's age per kind, from one
listing; and the CloudWatch Embedded Metric Format line the drain Lambda logs with them.

The listing reads only keys, sizes and ``LastModified`` (no object is opened). Objects under
``replayed/`` (archived) are not backlog. ``replay-failed/`` is counted apart: the drain never
reads it (a person runs ``forwarder replay`` on it), so its figures are what needs a person.

EMF (CloudWatch's "Embedded metric format specification"): one JSON object on one log line,
with ``_aws.CloudWatchMetrics`` naming the metrics and dimensions; CloudWatch Logs extracts
the metrics with no ``PutMetricData`` call. Namespace :data:`NAMESPACE`, dimension
``Bucket``; metrics ``BacklogObjects``, ``BacklogBytes``, ``BacklogOldestAgeSeconds`` (what
the drain will replay), ``ReplayFailedObjects``, ``ReplayFailedBytes`` (what needs a person),
``DrainEventsDelivered`` and ``DrainEventsAbandoned`` (this invocation), and
``FailureQueueDepth`` when a failure queue is configured. The per-kind table rides along as a
plain property (``backlog``), for Logs Insights.

The failure queue (the push Lambda's on-failure SQS queue) is measured by its
``ApproximateNumberOfMessages`` (one ``GetQueueAttributes`` call). :func:`measure_backlog` is
the one measurement: the drain Lambda's EMF line, the daemon's ``/metrics`` gauges
(:mod:`forwarder.drain.gauges`) and ``forwarder replay --dry-run --json`` all read it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from forwarder.backsplash.layout import KINDS, REPLAY_FAILED, REPLAYED, key_kind, source_root
from forwarder.replay.options import parse_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

NAMESPACE: Final = "FirehoseSplunkForwarder"
#: The kind of objects under no kind's folder (recognised by content when replayed).
UNKNOWN_KIND: Final = "other"


@dataclass
class KindBacklog:
    """One kind's backlog."""

    objects: int = 0
    bytes: int = 0
    oldest_age_s: float = 0.0


@dataclass
class Backlog:
    """The backlog under one source, by kind (:data:`~forwarder.backsplash.layout.KINDS`,
    and ``other``)."""

    bucket: str
    by_kind: dict[str, KindBacklog] = field(default_factory=dict)
    #: Messages in the failure queue (``ApproximateNumberOfMessages``); None: no queue.
    failure_queue_depth: int | None = None

    def _pending(self) -> list[KindBacklog]:
        return [row for kind, row in self.by_kind.items() if kind != REPLAY_FAILED]

    @property
    def objects(self) -> int:
        """Objects the drain will replay (every kind but replay-failed)."""
        return sum(row.objects for row in self._pending())

    @property
    def bytes(self) -> int:
        """Bytes the drain will replay."""
        return sum(row.bytes for row in self._pending())

    @property
    def oldest_age_s(self) -> float:
        """Age of the oldest object the drain will replay (0 when none)."""
        return max((row.oldest_age_s for row in self._pending()), default=0.0)

    @property
    def replay_failed(self) -> KindBacklog:
        """What the drain gave up on (and what push and the daemon parked): a person's."""
        return self.by_kind.get(REPLAY_FAILED, KindBacklog())

    def to_dict(self) -> dict[str, Any]:
        """Plain data: totals, the per-kind table, and the failure queue's depth (when
        measured)."""
        document: dict[str, Any] = {
            "objects": self.objects,
            "bytes": self.bytes,
            "oldest_age_s": round(self.oldest_age_s, 3),
            "by_kind": {
                kind: {
                    "objects": row.objects,
                    "bytes": row.bytes,
                    "oldest_age_s": round(row.oldest_age_s, 3),
                }
                for kind, row in sorted(self.by_kind.items())
            },
        }
        if self.failure_queue_depth is not None:
            document["failure_queue_depth"] = self.failure_queue_depth
        return document


def format_backlog(document: Mapping[str, Any]) -> str:
    """The text form of :meth:`Backlog.to_dict` (``replay --dry-run``'s summary): totals,
    then a line per kind."""
    lines = [
        f"  backlog  {document['objects']:,} objects  {document['bytes']:,} bytes  "
        f"oldest {_age(document['oldest_age_s'])}"
    ]
    for kind, row in document["by_kind"].items():
        lines.append(
            f"    {kind:<30}{row['objects']:>10,} objects{row['bytes']:>14,} bytes  "
            f"oldest {_age(row['oldest_age_s'])}"
            + ("  (apart from the total: needs a person)" if kind == REPLAY_FAILED else "")
        )
    if "failure_queue_depth" in document:
        lines.append(f"    failure queue depth {document['failure_queue_depth']:,}")
    return "\n".join(lines) + "\n"


def _age(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours}:{minutes:02d}:{secs:02d}"


def measure_backlog(
    s3: S3Client,
    source: str,
    *,
    failure_queue: str | None = None,
    sqs: SQSClient | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Backlog:
    """List ``source`` (``s3://bucket/prefix``) once and sum the backlog by kind; with a
    ``failure_queue`` (an SQS queue URL), also read its depth through ``sqs``.

    Raises:
        ValueError: ``source`` is not an ``s3://`` URI, or a queue is given without ``sqs``.
        botocore errors: S3 refused the listing, or SQS the attributes.
    """
    bucket, prefix = parse_s3_uri(source)
    if failure_queue is not None and sqs is None:
        raise ValueError("a failure queue needs an SQS client")
    now = wall_clock()
    paginator = s3.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    items = (item for page in pages for item in page.get("Contents", []))
    backlog = tally(bucket, prefix, items, now=now)
    if failure_queue is not None:
        assert sqs is not None
        backlog.failure_queue_depth = queue_depth(sqs, failure_queue)
    return backlog


def tally(bucket: str, prefix: str, items: Iterable[Mapping[str, Any]], *, now: float) -> Backlog:
    """Sum listed objects (``list_objects_v2``'s ``Contents`` entries: ``Key``, ``Size``,
    ``LastModified``) by kind; ages against ``now`` (epoch seconds). Pure."""
    root = source_root(prefix)
    backlog = Backlog(bucket, {kind: KindBacklog() for kind in KINDS})
    for item in items:
        key = item["Key"]
        if key.endswith("/"):
            continue
        rest = key[len(root) :] if key.startswith(root) else key
        if rest.split("/", 1)[0] == REPLAYED:
            continue  # archived: not backlog (as the engine skips it)
        kind, _ = key_kind(key)
        row = backlog.by_kind.setdefault(kind or UNKNOWN_KIND, KindBacklog())
        row.objects += 1
        row.bytes += int(item.get("Size", 0))
        modified = item.get("LastModified")
        if modified is not None:
            row.oldest_age_s = max(row.oldest_age_s, now - modified.timestamp())
    return backlog


def queue_depth(sqs: SQSClient, queue_url: str) -> int:
    """The queue's ``ApproximateNumberOfMessages`` (visible messages; one API call)."""
    answer = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages", "0"))


def emf_document(
    backlog: Backlog,
    *,
    events_delivered: int,
    events_abandoned: int,
    wall_clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The one EMF log line of a drain invocation (a dict; ``json.dumps`` it on one line)."""
    metrics = {
        "BacklogObjects": ("Count", backlog.objects),
        "BacklogBytes": ("Bytes", backlog.bytes),
        "BacklogOldestAgeSeconds": ("Seconds", round(backlog.oldest_age_s, 3)),
        "ReplayFailedObjects": ("Count", backlog.replay_failed.objects),
        "ReplayFailedBytes": ("Bytes", backlog.replay_failed.bytes),
        "DrainEventsDelivered": ("Count", events_delivered),
        "DrainEventsAbandoned": ("Count", events_abandoned),
    }
    if backlog.failure_queue_depth is not None:
        metrics["FailureQueueDepth"] = ("Count", backlog.failure_queue_depth)
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(wall_clock() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Bucket"]],
                    "Metrics": [
                        {"Name": name, "Unit": unit} for name, (unit, _) in metrics.items()
                    ],
                }
            ],
        },
        "Bucket": backlog.bucket,
        "event": "drain_backlog_measured",
        "backlog": backlog.to_dict(),
    }
    for name, (_, value) in metrics.items():
        document[name] = value
    return document
