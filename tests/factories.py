"""Builders for AWS-shaped test inputs: flow-log lines, CloudWatch Logs payloads, Firehose events.

Deterministic (seeded) and stdlib-only, so any test can import them. ``python -m tests.factories``
rewrites ``tests/samples/`` from the same builders; ``test_samples_are_current`` keeps them in
sync.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transforms.vpc_flow import DEFAULT_FIELDS, FIELDS, TGW_DEFAULT_FIELDS, V5_FIELDS

ACCOUNT = "123456789012"
REGION = "us-east-1"
#: 2023-11-14T22:13:20Z: a fixed "now" for every builder.
EPOCH_S = 1_700_000_000
EPOCH_MS = EPOCH_S * 1000
VPC_LOG_GROUP = "/aws/vpc/flowlogs"
VPC_LOG_STREAM = "eni-0a1b2c3d4e5f60718-all"
DELIVERY_STREAM_ARN = f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/splunk-forwarder"
KINESIS_STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/cwl-subscription"
CONTROL_TEXT = "CWL CONTROL MESSAGE: Checking health of destination Firehose."

#: A custom format (v3 to v8 fields, not a layout the Splunk add-on reads raw).
CUSTOM_FIELDS: tuple[str, ...] = (
    "version",
    "vpc-id",
    "subnet-id",
    "instance-id",
    "interface-id",
    "account-id",
    "type",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "pkt-srcaddr",
    "pkt-dstaddr",
    "protocol",
    "bytes",
    "packets",
    "start",
    "end",
    "action",
    "tcp-flags",
    "log-status",
    "flow-direction",
    "traffic-path",
    "pkt-src-aws-service",
    "pkt-dst-aws-service",
    "reject-reason",
)

_SERVICES = ("S3", "DYNAMODB", "EC2", "AMAZON", "-", "-", "-")


def format_fields(version: int | str) -> tuple[str, ...]:
    """The fields of a layout: 2 (default), 3, 4 or 5 (all fields up to it), or "tgw"."""
    if version == "tgw":
        return TGW_DEFAULT_FIELDS
    if version == 2:
        return DEFAULT_FIELDS
    if isinstance(version, int) and 3 <= version <= 5:
        return tuple(name for name in V5_FIELDS if FIELDS[name].version <= version)
    raise ValueError(f"no layout for version {version!r}; pass fields= instead")


def _ip(rng: random.Random, prefix: str) -> str:
    return f"{prefix}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def flow_values(
    rng: random.Random, fields: Sequence[str], *, start: int, status: str = "OK"
) -> dict[str, str]:
    """Realistic values for one flow record (``-`` where AWS writes none)."""
    protocol = rng.choice(("6", "6", "6", "17", "1"))
    icmp = protocol == "1"
    packets = rng.randint(1, 400)
    interface = f"eni-0a1b2c3d4e5f{rng.randint(0, 0xFFFFF):05x}"
    src, dst = _ip(rng, "10.0"), _ip(rng, "172.31")
    values = {
        "version": str(max(FIELDS[name].version for name in fields)),
        "account-id": ACCOUNT,
        "interface-id": interface,
        "srcaddr": src,
        "dstaddr": dst,
        "srcport": "0" if icmp else str(rng.randint(1024, 65535)),
        "dstport": "0" if icmp else rng.choice(("443", "80", "22", "53", "3306")),
        "protocol": protocol,
        "packets": str(packets),
        "bytes": str(packets * rng.randint(40, 1500)),
        "start": str(start),
        "end": str(start + rng.randint(1, 60)),
        "action": rng.choice(("ACCEPT", "ACCEPT", "ACCEPT", "REJECT")),
        "log-status": status,
        "vpc-id": "vpc-0f1e2d3c4b5a69788",
        "subnet-id": "subnet-0123456789abcdef0",
        "instance-id": rng.choice(("i-0123456789abcdef0", "i-0fedcba9876543210", "-")),
        "tcp-flags": "-" if protocol != "6" else rng.choice(("2", "3", "18", "19", "0")),
        "type": "IPv4",
        "pkt-srcaddr": src,
        "pkt-dstaddr": dst,
        "region": REGION,
        "az-id": "use1-az4",
        "sublocation-type": "-",
        "sublocation-id": "-",
        "pkt-src-aws-service": rng.choice(_SERVICES),
        "pkt-dst-aws-service": rng.choice(_SERVICES),
        "flow-direction": rng.choice(("ingress", "egress")),
        "traffic-path": rng.choice(("1", "2", "7", "8", "-")),
        "reject-reason": "-",
        "resource-type": "TransitGateway",
        "tgw-id": "tgw-0123456789abcdef0",
        "tgw-attachment-id": "tgw-attach-0123456789abcdef0",
        "tgw-src-vpc-account-id": ACCOUNT,
        "tgw-dst-vpc-account-id": "210987654321",
        "tgw-src-vpc-id": "vpc-0f1e2d3c4b5a69788",
        "tgw-dst-vpc-id": "vpc-0a9b8c7d6e5f40312",
        "tgw-src-subnet-id": "subnet-0123456789abcdef0",
        "tgw-dst-subnet-id": "subnet-0fedcba9876543210",
        "tgw-src-eni": interface,
        "tgw-dst-eni": "eni-0f9e8d7c6b5a43210",
        "tgw-src-az-id": "use1-az4",
        "tgw-dst-az-id": "use1-az6",
        "tgw-pair-attachment-id": "tgw-attach-0fedcba9876543210",
        "packets-lost-no-route": "0",
        "packets-lost-blackhole": "0",
        "packets-lost-mtu-exceeded": "0",
        "packets-lost-ttl-expired": "0",
    }
    if values["action"] == "REJECT" and "reject-reason" in fields:
        values["reject-reason"] = rng.choice(("BPA", "-"))
    if status != "OK":
        # NODATA / SKIPDATA: only the identity and the window are known.
        keep = {"version", "account-id", "interface-id", "start", "end", "log-status"}
        keep |= {"vpc-id", "subnet-id", "instance-id", "region", "az-id", "type", "resource-type"}
        values = {name: value if name in keep else "-" for name, value in values.items()}
    return {name: values.get(name, "-") for name in fields}


def make_flow_lines(
    n: int,
    version: int | str = 2,
    seed: int = 0,
    *,
    fields: Sequence[str] | None = None,
    offset: int = 0,
    start: int = EPOCH_S,
    nodata_every: int | None = None,
    skipdata_every: int | None = None,
) -> list[str]:
    """``n`` flow-log lines as AWS writes them (single spaces, ``-`` for no value).

    Args:
        n: number of lines.
        version: the layout (``format_fields``) unless ``fields`` is given.
        seed: random seed; equal arguments give equal lines.
        fields: a custom format's fields.
        offset: skip this many lines of the sequence first (distinct lines per record).
        start: the first ``start`` (epoch seconds); later lines start a little later.
        nodata_every: every k-th line is a NODATA record.
        skipdata_every: every k-th line is a SKIPDATA record.
    """
    rng = random.Random(seed)
    chosen = tuple(fields) if fields is not None else format_fields(version)
    lines = []
    for index in range(offset + n):
        status = "OK"
        if nodata_every and index % nodata_every == nodata_every - 1:
            status = "NODATA"
        elif skipdata_every and index % skipdata_every == skipdata_every - 1:
            status = "SKIPDATA"
        values = flow_values(rng, chosen, start=start + index // 10, status=status)
        lines.append(" ".join(values[name] for name in chosen))
    return lines[offset:]


def make_log_events(
    messages: Iterable[str], *, timestamp_ms: int = EPOCH_MS, step_ms: int = 7
) -> list[dict[str, Any]]:
    """``logEvents`` entries: 56-digit ids (as CloudWatch writes them), rising timestamps."""
    events = []
    for index, message in enumerate(messages):
        timestamp = timestamp_ms + index * step_ms
        event_id = f"{timestamp:020d}{index:036d}"[-56:]
        events.append({"id": event_id, "timestamp": timestamp, "message": message})
    return events


def make_cwl_envelope(
    *positional: Any,
    log_group: str | None = None,
    log_stream: str | None = None,
    messages: Iterable[str] | None = None,
    owner: str = ACCOUNT,
    message_type: str = "DATA_MESSAGE",
    timestamp_ms: int = EPOCH_MS,
    filters: Sequence[str] = ("splunk-forwarder",),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a CloudWatch Logs subscription payload (before gzip).

    Two call shapes, both used by the tests:
    ``make_cwl_envelope(lines, log_group=..., log_stream=...)`` and
    ``make_cwl_envelope(log_group, log_stream, lines)``. Group and stream default to a VPC
    flow-log group and an ``eni-`` stream.
    """
    if positional and isinstance(positional[0], str):
        names = ("log_group", "log_stream", "messages")
        if len(positional) > len(names):
            raise TypeError("make_cwl_envelope(log_group, log_stream, messages) takes 3 values")
        given = dict(zip(names, positional, strict=False))
        log_group = given.get("log_group", log_group)
        log_stream = given.get("log_stream", log_stream)
        messages = given.get("messages", messages)
    elif positional:
        if len(positional) > 1 or messages is not None:
            raise TypeError("make_cwl_envelope(messages, *, log_group=..., log_stream=...)")
        messages = positional[0]
    if isinstance(messages, str):
        raise TypeError("messages is a list of strings, not one string")
    envelope: dict[str, Any] = {
        "messageType": message_type,
        "owner": owner,
        "logGroup": VPC_LOG_GROUP if log_group is None else log_group,
        "logStream": VPC_LOG_STREAM if log_stream is None else log_stream,
        "subscriptionFilters": list(filters),
        "logEvents": make_log_events(messages or (), timestamp_ms=timestamp_ms),
    }
    envelope.update(extra or {})
    return envelope


def gzip_json(document: Any) -> bytes:
    """Deterministic gzip of compact JSON (mtime 0), as CloudWatch Logs sends it."""
    text = json.dumps(document, separators=(",", ":"))
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def make_cwl_payload(*positional: Any, **keywords: Any) -> bytes:
    """A gzip CloudWatch Logs subscription payload (arguments as ``make_cwl_envelope``).

    ``make_cwl_payload(lines, log_group="/aws/vpc/flowlogs", log_stream="eni-...")`` or
    ``make_cwl_payload("/aws/vpc/flowlogs", "eni-...", lines)``.
    """
    return gzip_json(make_cwl_envelope(*positional, **keywords))


def make_control_envelope(timestamp_ms: int = EPOCH_MS) -> dict[str, Any]:
    """The reachability check CloudWatch Logs sends when a subscription is created."""
    return {
        "messageType": "CONTROL_MESSAGE",
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": timestamp_ms, "message": CONTROL_TEXT}],
    }


def make_control_payload(timestamp_ms: int = EPOCH_MS) -> bytes:
    """A gzip CONTROL_MESSAGE payload."""
    return gzip_json(make_control_envelope(timestamp_ms))


def make_direct_record(line: str) -> bytes:
    """A flow log sent straight to Firehose: ``{"message": "<line>"}``."""
    return json.dumps({"message": line}, separators=(",", ":")).encode()


def make_gzip_bomb(inflated_bytes: int) -> bytes:
    """gzip of ``inflated_bytes`` zero bytes: tiny compressed, huge decompressed."""
    chunk = bytes(1024 * 1024)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as out:
        remaining = inflated_bytes
        while remaining > 0:
            out.write(chunk[: min(remaining, len(chunk))])
            remaining -= len(chunk)
    return buffer.getvalue()


def record_id(index: int) -> str:
    """A Firehose-style record id (a long decimal string), unique per index."""
    return f"49546986683135544286507457936321625675700192471156{index:06d}"


def make_firehose_event(
    records: Sequence[bytes],
    *,
    kinesis_stream_arn: str | None = None,
    partition_keys: Sequence[str] | None = None,
    delivery_stream_arn: str = DELIVERY_STREAM_ARN,
    region: str = REGION,
    arrival_ms: int = EPOCH_MS,
) -> dict[str, Any]:
    """A Firehose data-transformation event carrying ``records`` (base64 encoded here).

    With ``kinesis_stream_arn`` the event is shaped like one from a Firehose whose source is
    a Kinesis stream: ``sourceKinesisStreamArn`` and per-record ``kinesisRecordMetadata``.
    """
    event: dict[str, Any] = {
        "invocationId": "00540a87-5050-496a-84e4-e7d92bbaf5e2",
        "deliveryStreamArn": delivery_stream_arn,
        "region": region,
        "records": [],
    }
    if kinesis_stream_arn is not None:
        event["sourceKinesisStreamArn"] = kinesis_stream_arn
    for index, data in enumerate(records):
        record: dict[str, Any] = {
            "recordId": record_id(index),
            "approximateArrivalTimestamp": arrival_ms + index,
            "data": base64.b64encode(data).decode("ascii"),
        }
        if kinesis_stream_arn is not None:
            key = partition_keys[index] if partition_keys else f"partition-{index % 4}"
            record["kinesisRecordMetadata"] = {
                "shardId": f"shardId-{index % 2:012d}",
                "partitionKey": key,
                "approximateArrivalTimestamp": arrival_ms + index,
                "sequenceNumber": f"4959{index:052d}",
                "subsequenceNumber": "",
            }
        event["records"].append(record)
    return event


def make_awslogs_event(payload: bytes) -> dict[str, Any]:
    """A CloudWatch Logs subscription event for a Lambda: ``{"awslogs": {"data": ...}}``."""
    return {"awslogs": {"data": base64.b64encode(payload).decode("ascii")}}


def sample_files() -> dict[str, bytes]:
    """The contents of every file under ``tests/samples/``, by name."""
    v2_lines = make_flow_lines(40, version=2, seed=2, nodata_every=13, skipdata_every=17)
    custom_lines = make_flow_lines(40, fields=CUSTOM_FIELDS, seed=3, nodata_every=11)
    tgw_lines = make_flow_lines(20, version="tgw", seed=6)
    firehose = make_firehose_event(
        [
            make_cwl_payload(make_flow_lines(5, seed=4)),
            make_control_payload(),
            make_cwl_payload(
                [
                    "START RequestId: 6f0a7c1e-3b9d-4e53-9d2a-1f6b8e2c4a77 Version: $LATEST\n",
                    '{"level":"info","msg":"order placed","order":"A-1001"}\n',
                    "END RequestId: 6f0a7c1e-3b9d-4e53-9d2a-1f6b8e2c4a77\n",
                ],
                log_group="/aws/lambda/checkout",
                log_stream="2023/11/14/[$LATEST]0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            ),
            make_direct_record(make_flow_lines(1, seed=5)[0]),
        ]
    )

    def text(header: Sequence[str], lines: list[str]) -> bytes:
        return ("\n".join([" ".join(header), *lines]) + "\n").encode()

    def document(value: Any) -> bytes:
        return (json.dumps(value, indent=2) + "\n").encode()

    return {
        "vpc_flow_v2.log": text(DEFAULT_FIELDS, v2_lines),
        "vpc_flow_custom.log": text(CUSTOM_FIELDS, custom_lines),
        "vpc_flow_tgw.log": text(TGW_DEFAULT_FIELDS, tgw_lines),
        "cwl_control_message.json": document(make_control_envelope()),
        "cwl_data_message.json": document(make_cwl_envelope(v2_lines[:5])),
        "firehose_cwl_event.json": document(firehose),
    }


def write_samples(directory: Path) -> list[Path]:
    """Write ``sample_files()`` into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in sample_files().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_samples(Path(__file__).parent / "samples"):
        sys.stdout.write(f"wrote {written_path}\n")
