"""The crash run: a daemon killed with SIGKILL at random moments, restarted, and audited.

One run, in this process: a moto server on loopback (S3 backsplash bucket, the source's
stream or queue, the DynamoDB checkpoint table when asked), the HEC emulator with indexer
acknowledgment, and a producer thread writing uniquely numbered events throughout. The daemon
runs as a subprocess (``python -m forwarder daemon``); a controller kills it with SIGKILL at
random moments (a seeded RNG; ``CRASH_SEED`` overrides the seed), some of them right after a
reshard, and restarts it each time. At the end the producer stops, the last daemon catches up
(bounded wait) and is stopped with SIGTERM, and :func:`end_check` audits the run:

- lost = 0: every event produced is indexed by the emulator, or in the backsplash bucket or
  the local spool;
- every duplicate is explained: an extra copy of an event is allowed once per kill that found
  it indexed while its record was not checkpointed (Kinesis: past the shard's checkpoint at the
  kill; SQS: its message not yet deleted), or once when its ack was still pending at the
  shutdown deadline (indexed and backsplashed ``Splunk.Deadline``). Nothing else;
- every ledger a run logged balances (``checkpoint_saved`` and the final
  ``delivery_summarized``), the last run exits 0, no run exits on its own.

moto departs from Kinesis on resharding; :mod:`tests.faithful_kinesis` makes it split,
merge and end shards as AWS does for the run's duration.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwarder.backsplash.writers import Backsplash, LocalSpool
from forwarder.devtools.emulator import HecEmulator
from forwarder.sources.checkpoints import SHARD_END, DynamoCheckpointStore, FileCheckpointStore
from tests.conftest import create_checkpoint_table
from tests.factories import make_cwl_payload
from tests.faithful_kinesis import faithful_resharding

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "00000000-crash-token-0000-000000000000"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "crash-backsplash"
PREFIX = "failed/"
FLOW_BUCKET = "crash-flow-logs"
STREAM = "crash-stream"
QUEUE = "crash-queue"
TABLE = "crash-checkpoints"
MESSAGE = "crash-{:09d}"
LOG_GROUP = "/app/crash"
DEADLINE_CODES = frozenset({"Splunk.Deadline", "Splunk.Shutdown"})
FLOW_HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
    "start end action log-status"
)
#: A v2 flow-log line; ``bytes`` carries the event number (the add-on's layout: sent raw).
FLOW_LINE = "2 123456789012 eni-0c0ffee000000001 10.0.0.1 10.0.1.1 443 49152 6 1 {n} 1764000000 1764000060 ACCEPT OK"  # noqa: E501

#: Kill kinds: at a random moment; right after a reshard; a reshard while the daemon runs,
#: then a random kill; a random kill, then a reshard before the restart; the moment the
#: emulator indexed a batch (its ack not yet polled, so not checkpointed: duplicates follow).
RANDOM, AFTER_RESHARD, LIVE_RESHARD, WHILE_DOWN, JUST_INDEXED = (
    "random",
    "after_reshard",
    "live_reshard",
    "reshard_while_down",
    "just_indexed",
)
RESHARD_KINDS = frozenset({AFTER_RESHARD, LIVE_RESHARD, WHILE_DOWN})


@dataclass(frozen=True)
class Profile:
    """How big and how long a run is."""

    name: str
    events: int
    events_per_unit: int  # events per Kinesis record or per S3 object
    produce_s: float  # the producer spreads its events over this long
    kills: tuple[str, ...]  # the kind of each kill, in order
    #: The random delay before a kill whose planned moment a slow restart already passed.
    kill_delay_s: tuple[float, float] = (0.2, 2.0)
    progress_timeout_s: float = 15.0  # longest wait for a restarted daemon to index anything
    catch_up_timeout_s: float = 60.0
    checkpoint_store: str = "file"
    shutdown_grace_s: float = 10.0


SHORT_KINESIS = Profile(
    name="short",
    events=8_000,
    events_per_unit=20,
    produce_s=30.0,
    kills=(RANDOM, AFTER_RESHARD, JUST_INDEXED, LIVE_RESHARD, AFTER_RESHARD, WHILE_DOWN),
    progress_timeout_s=10.0,
    catch_up_timeout_s=60.0,
)
LONG_KINESIS = Profile(
    name="long",
    events=60_000,
    events_per_unit=25,
    produce_s=150.0,
    kills=(
        RANDOM,
        AFTER_RESHARD,
        JUST_INDEXED,
        LIVE_RESHARD,
        RANDOM,
        AFTER_RESHARD,
        WHILE_DOWN,
        JUST_INDEXED,
        AFTER_RESHARD,
        LIVE_RESHARD,
        RANDOM,
        AFTER_RESHARD,
    ),
    progress_timeout_s=20.0,
    catch_up_timeout_s=120.0,
    checkpoint_store="dynamodb",
)
SHORT_SQS = Profile(
    name="short",
    events=6_000,
    events_per_unit=100,
    produce_s=25.0,
    kills=(RANDOM, JUST_INDEXED, RANDOM, JUST_INDEXED, RANDOM),
    progress_timeout_s=10.0,
    catch_up_timeout_s=60.0,
)
LONG_SQS = Profile(
    name="long",
    events=50_000,
    events_per_unit=250,
    produce_s=120.0,
    kills=(RANDOM, JUST_INDEXED) * 5,
    progress_timeout_s=20.0,
    catch_up_timeout_s=120.0,
)
#: Shard counts the reshards walk through (UpdateShardCount, uniform scaling), from 1 shard.
SHARD_TARGETS = (2, 4, 2, 1)


def seed_from_env(default: int | None = None) -> int:
    """``CRASH_SEED`` if set, else ``default``, else a fresh random seed."""
    text = os.environ.get("CRASH_SEED", "").strip()
    if text:
        return int(text)
    return default if default is not None else random.SystemRandom().randrange(1 << 31)


# --------------------------------------------------------------------------- records


@dataclass
class Kill:
    """One SIGKILL and what was true at that moment."""

    number: int
    kind: str
    at_s: float  # since the run started
    since_reshard_s: float | None  # since the last reshard (None: none yet)
    produced: int  # events produced when the daemon died
    indexed_pos: int  # the emulator's indexed-event count when the daemon was dead
    uncommitted_indexed: int = 0  # indexed events whose record was not checkpointed
    uncommitted_produced: int = 0  # produced events not checkpointed (read again, at most)
    progressed: bool = True  # the run indexed something new before being killed
    recovery_s: float | None = None  # restart -> every event produced before the kill indexed
    first_event_s: float | None = None  # restart -> first new event indexed
    restart_at: float | None = None  # since the run started
    committed: Callable[[int], bool] = field(default=lambda n: False, repr=False)


@dataclass
class Reshard:
    """One UpdateShardCount."""

    at_s: float
    before: int
    after: int
    kind: str
    quiet: bool  # the producer paused and the daemon had caught up and checkpointed first


@dataclass
class Report:
    """The figures of a run and the end check's verdict."""

    source: str
    profile: str
    seed: int
    duration_s: float = 0.0
    produced: int = 0
    units: int = 0
    kills: list[Kill] = field(default_factory=list)
    reshards: list[Reshard] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    indexed: int = 0
    indexed_unique: int = 0
    backsplashed: int = 0
    backsplash_codes: dict[str, int] = field(default_factory=dict)
    spooled: int = 0
    lost: int = 0
    lost_sample: list[int] = field(default_factory=list)
    unknown: int = 0
    duplicates: int = 0
    duplicates_by_kill: int = 0
    duplicates_by_deadline: int = 0
    duplicates_unexplained: int = 0
    unexplained_sample: list[int] = field(default_factory=list)
    ledgers_logged: int = 0
    ledgers_unbalanced: list[str] = field(default_factory=list)
    checkpoints_skipped: int = 0
    final_exit: int | None = None
    final_summary: dict[str, Any] = field(default_factory=dict)
    stall: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The figures, for humans (and RELIABILITY.md)."""
        out = [
            f"crash run ({self.source}, {self.profile}): seed {self.seed} "
            f"(CRASH_SEED={self.seed} repeats it), {self.duration_s:.1f} s",
            f"  produced: {self.produced} events in {self.units} "
            f"{'records' if self.source == 'kinesis' else 'objects'}",
            f"  reshards: {len(self.reshards)}"
            + "".join(
                f"\n    t={r.at_s:6.1f}s {r.before}->{r.after} shards ({r.kind}, "
                f"{'while caught up' if r.quiet else 'under traffic'})"
                for r in self.reshards
            ),
            f"  kills (SIGKILL): {len(self.kills)}",
        ]
        for k in self.kills:
            after = (
                f", {k.since_reshard_s:.2f}s after the last reshard"
                if k.since_reshard_s is not None
                else ""
            )
            recovery = f"{k.recovery_s:.1f}s" if k.recovery_s is not None else "not recovered"
            first = f"{k.first_event_s:.1f}s" if k.first_event_s is not None else "never"
            out.append(
                f"    #{k.number} t={k.at_s:6.1f}s {k.kind}{after}; produced {k.produced}, "
                f"not checkpointed {k.uncommitted_produced} (of them indexed: "
                f"{k.uncommitted_indexed})"
                f"{'' if k.progressed else ', NO PROGRESS before the kill'}; "
                f"restart: first event {first}, recovery {recovery}"
            )
        firsts = sorted(k.first_event_s for k in self.kills if k.first_event_s is not None)
        recoveries = sorted(k.recovery_s for k in self.kills if k.recovery_s is not None)
        if firsts and recoveries:
            out.append(
                f"  restarts: first event indexed after median {firsts[len(firsts) // 2]:.1f}s "
                f"(max {firsts[-1]:.1f}s); every event produced before the kill indexed after "
                f"median {recoveries[len(recoveries) // 2]:.1f}s (max {recoveries[-1]:.1f}s); "
                f"{len(self.kills) - len(recoveries)} never recovered"
            )
        out += [
            f"  indexed: {self.indexed} ({self.indexed_unique} unique)",
            f"  backsplashed: {self.backsplashed} {self.backsplash_codes or ''}; "
            f"spooled: {self.spooled}",
            f"  lost: {self.lost}" + (f" e.g. {self.lost_sample}" if self.lost_sample else ""),
            f"  duplicates: {self.duplicates} extra copies; explained by a kill before the "
            f"checkpoint: {self.duplicates_by_kill}, by an ack pending at the shutdown "
            f"deadline: {self.duplicates_by_deadline}; unexplained: "
            f"{self.duplicates_unexplained}",
            f"  ledgers logged: {self.ledgers_logged}, unbalanced: "
            f"{len(self.ledgers_unbalanced)}; checkpoints skipped: {self.checkpoints_skipped}",
            f"  last run: exit {self.final_exit}, ledger {self._final_text()}",
        ]
        if self.unexpected_exits:
            out.append(f"  daemons that exited on their own: {self.unexpected_exits}")
        if self.stall:
            out.append(f"  stall: {self.stall}")
        out.append("  verdict: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)))
        return out

    def _final_text(self) -> str:
        s = self.final_summary
        if not s:
            return "not logged"
        keys = ("events_in", "acknowledged", "backsplashed", "dropped", "in_flight", "resends")
        return ", ".join(f"{k} {s.get(k)}" for k in keys)


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class Audit:
    """What the end check found in the copies of each event."""

    lost: list[int]  # events with no copy anywhere
    duplicates: int  # extra copies, all events
    by_kill: int  # extra copies a kill explains
    by_deadline: int  # extra copies an ack pending at the shutdown deadline explains
    unexplained_copies: int
    unexplained: list[int]  # events with more copies than anything explains


def audit(
    produced: int,
    copies: Mapping[int, int],
    kill_windows: Sequence[Set[int]],
    deadline: Set[int],
) -> Audit:
    """Check every event ``0 .. produced-1`` has a copy, and every extra copy a cause.

    Args:
        produced: how many events were produced (numbered from 0).
        copies: copies of each event: indexed plus backsplashed or spooled.
        kill_windows: for each kill, the events indexed before it whose record (Kinesis) or
            message (SQS) was not yet checkpointed: after the restart they are read again,
            so each kill explains at most one extra copy of each of them.
        deadline: events backsplashed because their ack was still pending at the shutdown
            deadline (``Splunk.Deadline``/``Splunk.Shutdown``): indexed and backsplashed, one
            extra copy each.

    Returns:
        The lost events and the duplicates, explained or not.
    """
    lost = [n for n in range(produced) if copies.get(n, 0) == 0]
    duplicates = by_kill = by_deadline = rest_total = 0
    unexplained: list[int] = []
    for number, count in sorted(copies.items()):
        extra = count - 1
        if extra <= 0:
            continue
        duplicates += extra
        kills = min(extra, sum(1 for window in kill_windows if number in window))
        late = min(extra - kills, 1 if number in deadline else 0)
        by_kill += kills
        by_deadline += late
        rest = extra - kills - late
        if rest:
            rest_total += rest
            unexplained.append(number)
    return Audit(lost, duplicates, by_kill, by_deadline, rest_total, unexplained)


# --------------------------------------------------------------------------- environment


def boto(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server of our own on loopback (its models patched for Kinesis resharding)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    werkzeug = logging.getLogger("werkzeug")  # one line per request otherwise
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with faithful_resharding():
            yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon run (anything else is skipped)."""
    found: list[dict[str, Any]] = []
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


class Progress:
    """Which events the emulator indexed so far, kept up to date incrementally."""

    def __init__(self, emulator: HecEmulator, total: int, parse: Callable[[Any], int | None]):
        self._emulator = emulator
        self._parse = parse
        self.seen = bytearray(total)
        self.read = 0
        self.contiguous = 0  # every event below this number is indexed
        self.unknown = 0

    def indexed_now(self) -> int:
        """Events indexed so far (duplicates included), without reading them."""
        return self._emulator.stats().events_indexed

    def update(self) -> int:
        events = self._emulator.indexed_events()
        for event in events[self.read :]:
            number = self._parse(event.get("event"))
            if number is None or not 0 <= number < len(self.seen):
                self.unknown += 1
                continue
            self.seen[number] = 1
        self.read = len(events)
        while self.contiguous < len(self.seen) and self.seen[self.contiguous]:
            self.contiguous += 1
        return self.read


# --------------------------------------------------------------------------- sources


class SourceAdapter:
    """What differs between the kinesis and sqs-s3 runs."""

    name = ""
    unit = ""

    def __init__(self, endpoint: str, profile: Profile, rng: random.Random) -> None:
        self.endpoint = endpoint
        self.profile = profile
        self.rng = rng
        #: event number -> unit index; unit index -> its position (shard, seq) or S3 key.
        self.unit_of: list[int] = []
        self.units: list[Any] = []
        #: ``[daemon]`` lines about checkpoints.
        self.daemon_toml: list[str] = []

    def setup(self, workdir: Path) -> None:
        raise NotImplementedError

    def source_toml(self) -> list[str]:
        raise NotImplementedError

    def produce(self, first: int, count: int) -> None:
        """Write events ``first .. first+count-1`` as one unit."""
        raise NotImplementedError

    def snapshot(self) -> Callable[[int], bool]:
        """At a kill (daemon dead): whether an event's unit was committed."""
        raise NotImplementedError

    def parse(self, event: Any) -> int | None:
        raise NotImplementedError

    def reshard(self) -> tuple[int, int]:
        raise NotImplementedError

    def describe_position(self) -> str:
        return ""


class KinesisAdapter(SourceAdapter):
    name = "kinesis"
    unit = "record"

    def setup(self, workdir: Path) -> None:
        self.kinesis = boto("kinesis", self.endpoint)
        self.kinesis.create_stream(StreamName=STREAM, ShardCount=1)
        self.shards = 1
        self.targets = list(SHARD_TARGETS)
        if self.profile.checkpoint_store == "dynamodb":
            dynamodb = boto("dynamodb", self.endpoint)
            create_checkpoint_table(dynamodb, TABLE)
            self.store: Any = DynamoCheckpointStore(dynamodb, TABLE)
            self.daemon_toml = ['checkpoint_store = "dynamodb"', f'checkpoint_table = "{TABLE}"']
        else:
            path = workdir / "checkpoints.json"
            self.store = FileCheckpointStore(path)
            self.daemon_toml = [
                'checkpoint_store = "file"',
                f"checkpoint_path = {json.dumps(str(path))}",
            ]

    def source_toml(self) -> list[str]:
        return [
            'type = "kinesis"',
            f'stream_name = "{STREAM}"',
            "poll_interval_s = 0.1",
            "shard_refresh_interval_s = 0.5",
            "max_records = 200",
        ]

    def produce(self, first: int, count: int) -> None:
        payload = make_cwl_payload(
            [MESSAGE.format(n) for n in range(first, first + count)],
            log_group=LOG_GROUP,
            log_stream="crash",
        )
        answer = self.kinesis.put_record(
            StreamName=STREAM, Data=payload, PartitionKey=f"pk-{self.rng.randrange(1 << 30)}"
        )
        self.unit_of.extend([len(self.units)] * count)
        self.units.append((answer["ShardId"], int(answer["SequenceNumber"])))

    def snapshot(self) -> Callable[[int], bool]:
        positions = self.store.load(STREAM)
        units = list(self.units)
        unit_of = self.unit_of

        def committed(number: int) -> bool:
            shard, seq = units[unit_of[number]]
            position = positions.get(shard)
            if position is None:
                return False
            return bool(position == SHARD_END or seq <= int(position))

        return committed

    def parse(self, event: Any) -> int | None:
        if isinstance(event, str) and event.startswith("crash-"):
            try:
                return int(event[6:])
            except ValueError:
                return None
        return None

    def reshard(self) -> tuple[int, int]:
        target = self.targets.pop(0)
        self.targets.append(target)
        before = self.shards
        self.kinesis.update_shard_count(
            StreamName=STREAM, TargetShardCount=target, ScalingType="UNIFORM_SCALING"
        )
        self.shards = target
        return before, target

    def describe_position(self) -> str:
        shards = self.kinesis.list_shards(StreamName=STREAM)["Shards"]
        positions = self.store.load(STREAM)
        parts = []
        for shard in shards:
            ending = shard["SequenceNumberRange"].get("EndingSequenceNumber")
            parts.append(
                f"{shard['ShardId']}({'closed@' + ending if ending else 'open'}; "
                f"checkpoint {positions.get(shard['ShardId'])})"
            )
        return ", ".join(parts)


class SqsAdapter(SourceAdapter):
    name = "sqs-s3"
    unit = "object"

    def setup(self, workdir: Path) -> None:
        self.s3 = boto("s3", self.endpoint)
        self.s3.create_bucket(Bucket=FLOW_BUCKET)
        self.sqs = boto("sqs", self.endpoint)
        self.queue_url = self.sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        self.daemon_toml = ['checkpoint_store = "none"']
        self.key_index: dict[str, int] = {}

    def source_toml(self) -> list[str]:
        return [
            'type = "sqs-s3"',
            f'queue_url = "{self.queue_url}"',
            "visibility_timeout_s = 8",
            "wait_time_s = 1",
            "max_messages = 5",
            "chunk_lines = 50",
        ]

    def produce(self, first: int, count: int) -> None:
        key = f"AWSLogs/123456789012/vpcflowlogs/{REGION}/2026/01/01/crash-{first:09d}.log.gz"
        lines = [FLOW_HEADER, *(FLOW_LINE.format(n=n) for n in range(first, first + count))]
        self.s3.put_object(
            Bucket=FLOW_BUCKET, Key=key, Body=gzip.compress(("\n".join(lines) + "\n").encode())
        )
        body = json.dumps(
            {
                "Records": [
                    {
                        "eventSource": "aws:s3",
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": FLOW_BUCKET}, "object": {"key": key}},
                    }
                ]
            }
        )
        self.key_index[key] = len(self.units)
        self.unit_of.extend([len(self.units)] * count)
        self.units.append(key)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def _queued_keys(self) -> set[str]:
        """Keys whose message is still in the queue (visible or in flight): not deleted."""
        from moto.sqs.models import sqs_backends

        queue = sqs_backends[ACCOUNT][REGION].queues[QUEUE]
        keys: set[str] = set()
        for message in list(queue._messages):
            for record in json.loads(message.body)["Records"]:
                keys.add(record["s3"]["object"]["key"])
        return keys

    def snapshot(self) -> Callable[[int], bool]:
        queued = {self.key_index[key] for key in self._queued_keys()}
        sent = len(self.units)
        unit_of = self.unit_of

        def committed(number: int) -> bool:
            unit = unit_of[number]
            return unit < sent and unit not in queued

        return committed

    def parse(self, event: Any) -> int | None:
        if isinstance(event, str):
            parts = event.split()
            if len(parts) == 14 and parts[2] == "eni-0c0ffee000000001":
                try:
                    return int(parts[9])
                except ValueError:
                    return None
        return None

    def describe_position(self) -> str:
        return f"{len(self._queued_keys())} messages not deleted"


# --------------------------------------------------------------------------- the run


class CrashRun:
    """One crash run; :meth:`run` returns its :class:`Report`."""

    def __init__(
        self,
        source: str,
        profile: Profile,
        workdir: Path,
        *,
        seed: int,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.source = source
        self.profile = profile
        self.workdir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.echo = echo
        self.report = Report(source=source, profile=profile.name, seed=seed)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.started = 0.0
        self.produced = 0
        self.producer_done = threading.Event()
        self.producer_error: list[BaseException] = []
        self._stop_producing = threading.Event()
        self._producing = threading.Event()  # cleared: the producer pauses
        self._producing.set()
        self._last_reshard: float | None = None

    # ---------------------------------------------------------------- helpers

    def now(self) -> float:
        return time.monotonic() - self.started

    def _config(self, adapter: SourceAdapter, emulator: HecEmulator) -> Path:
        lines = [
            f'splunk_hec_url = "{emulator.url}"',
            "[source]",
            *adapter.source_toml(),
            "[daemon]",
            *adapter.daemon_toml,
            "checkpoint_interval_s = 0.5",
            "checkpoint_max_records = 200",
            f"shutdown_grace_s = {self.profile.shutdown_grace_s}",
            "metrics_port = 0",
            "spool_drain_interval_s = 1.0",
            "health_check_interval_s = 1.0",
        ]
        path = self.workdir / "daemon.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _environ(self, endpoint: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPLUNK_"))}
        keep.pop("FORWARDER_CONFIG", None)
        return {
            **keep,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "SPLUNK_HEC_TOKEN": TOKEN,
            "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.05",
            "SPLUNK_HEC_ACK_TIMEOUT": "60",
            "SPLUNK_HEC_RETRY_DURATION": "120",
            "SPLUNK_HEC_RETRY_BACKOFF_BASE": "0.05",
            "SPLUNK_HEC_RETRY_BACKOFF_MAX": "1",
            "SPLUNK_HEC_CONNECT_TIMEOUT": "2",
            "SPLUNK_HEC_READ_TIMEOUT": "10",
            "SPLUNK_HEC_BATCH_MAX_BYTES": "65536",
            "BACKSPLASH_BUCKET": BUCKET,
            "BACKSPLASH_PREFIX": PREFIX,
            "BACKSPLASH_SPOOL_DIR": str(self.workdir / "spool"),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }

    def _start(self, config: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"run-{len(self.procs) + 1:02d}.log"
        self.logs.append(log)
        with log.open("ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forwarder", "daemon", "--config", str(config)],
                cwd=ROOT,
                env=environ,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def _producer(self, adapter: SourceAdapter) -> None:
        profile = self.profile
        per = profile.events_per_unit
        units = -(-profile.events // per)
        interval = profile.produce_s / units
        begin = time.monotonic()
        try:
            for unit in range(units):
                if not self._producing.is_set():
                    paused = time.monotonic()
                    while not self._producing.wait(0.05):
                        if self._stop_producing.is_set():
                            break
                    begin += time.monotonic() - paused  # the schedule resumes where it was
                if self._stop_producing.is_set():
                    break
                due = begin + unit * interval
                delay = due - time.monotonic()
                if delay > 0 and self._stop_producing.wait(delay):
                    break
                first = unit * per
                count = min(per, profile.events - first)
                adapter.produce(first, count)
                self.produced = first + count
        except BaseException as exc:  # reported by the controller
            self.producer_error.append(exc)
        finally:
            self.producer_done.set()

    def _wait(
        self, progress: Progress, until: Callable[[], bool], timeout: float, proc: Any
    ) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            progress.update()
            self._note_recovery(progress)
            if until():
                return True
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def _until_indexed(self, progress: Progress, proc: Any) -> None:
        """Return the moment the emulator indexes more events (a batch just landed), bounded."""
        start = progress.indexed_now()
        end = time.monotonic() + self.profile.progress_timeout_s
        while time.monotonic() < end and proc.poll() is None:
            if progress.indexed_now() > start:
                return
            time.sleep(0.002)

    def _note_recovery(self, progress: Progress) -> None:
        for kill in self.report.kills:
            if kill.restart_at is None:
                continue
            if kill.recovery_s is None and progress.contiguous >= kill.produced:
                kill.recovery_s = self.now() - kill.restart_at
            if kill.first_event_s is None and progress.read > kill.indexed_pos:
                kill.first_event_s = self.now() - kill.restart_at

    def _reshard(
        self, adapter: SourceAdapter, kind: str, progress: Progress | None = None, proc: Any = None
    ) -> None:
        """Reshard; with ``progress``, in a quiet moment: the producer pauses, the daemon catches
        up and checkpoints, then the parents close (end-of-shard arrives on an empty read)."""
        quiet = False
        if progress is not None:
            self._producing.clear()
            total = self.produced
            quiet = self._wait(progress, lambda: progress.contiguous >= total, 15.0, proc)
            self._wait(progress, lambda: False, 1.5, proc)  # > two checkpoint intervals
        try:
            before, after = adapter.reshard()
        finally:
            self._producing.set()
        self._last_reshard = self.now()
        self.report.reshards.append(Reshard(self._last_reshard, before, after, kind, quiet))
        self.echo(
            f"[crash] t={self._last_reshard:.1f}s reshard {before}->{after} ({kind}, "
            f"{'while caught up' if quiet else 'under traffic'})"
        )

    def _kill(
        self,
        proc: subprocess.Popen[bytes],
        adapter: SourceAdapter,
        progress: Progress,
        kind: str,
        progressed: bool,
    ) -> Kill:
        at = self.now()
        if proc.poll() is not None:
            self.report.unexpected_exits.append(f"run {len(self.procs)}: exit {proc.returncode}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.5)  # a request whose body was already received is indexed by now
        since = at - self._last_reshard if self._last_reshard is not None else None
        kill = Kill(
            number=len(self.report.kills) + 1,
            kind=kind,
            at_s=at,
            since_reshard_s=since,
            produced=self.produced,
            indexed_pos=progress.update(),
            progressed=progressed,
            committed=adapter.snapshot(),
        )
        self.report.kills.append(kill)
        self.echo(
            f"[crash] t={at:.1f}s SIGKILL #{kill.number} ({kind}), produced {kill.produced}, "
            f"indexed {kill.indexed_pos}"
        )
        return kill

    # ---------------------------------------------------------------- the run

    def run(self) -> Report:
        """The whole run, then the end check; always cleans up its processes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.echo(
            f"[crash] source {self.source}, profile {self.profile.name}, seed {self.seed} "
            f"(set CRASH_SEED={self.seed} to repeat)"
        )
        with ExitStack() as stack:
            endpoint = stack.enter_context(moto_server())
            emulator = stack.enter_context(HecEmulator(token=TOKEN))
            stack.callback(self._cleanup)
            s3 = boto("s3", endpoint)
            s3.create_bucket(Bucket=BUCKET)
            adapter_class = KinesisAdapter if self.source == "kinesis" else SqsAdapter
            adapter = adapter_class(endpoint, self.profile, random.Random(self.seed + 1))
            adapter.setup(self.workdir)
            config = self._config(adapter, emulator)
            environ = self._environ(endpoint)
            progress = Progress(emulator, self.profile.events, adapter.parse)
            self.started = time.monotonic()
            producer = threading.Thread(target=self._producer, args=(adapter,), daemon=True)
            producer.start()
            stack.callback(self._stop_producing.set)
            try:
                self._controller(adapter, progress, config, environ)
            finally:
                self._stop_producing.set()
                producer.join(timeout=30)
            self._end_check(adapter, progress, s3, emulator)
        return self.report

    def _controller(
        self, adapter: SourceAdapter, progress: Progress, config: Path, environ: dict[str, str]
    ) -> None:
        profile = self.profile
        proc = self._start(config, environ)

        def moved_since(start: int) -> Callable[[], bool]:
            def moved() -> bool:
                caught_up = self.producer_done.is_set() and progress.contiguous >= self.produced
                return progress.read > start or caught_up

            return moved

        # The kills are spread over the producing time: kill i at a random moment of slot i
        # (or, when a slow restart already used the slot up, after a short random delay).
        slot = profile.produce_s / len(profile.kills)
        for number, kind in enumerate(profile.kills):
            planned = self.rng.uniform(number + 0.2, number + 1.0) * slot
            fallback = self.rng.uniform(*profile.kill_delay_s)
            until = moved_since(progress.update())
            progressed = self._wait(progress, until, profile.progress_timeout_s, proc)
            if kind == LIVE_RESHARD:
                quiet = len(self.report.reshards) % 2 == 0
                self._reshard(adapter, kind, progress if quiet else None, proc)
                until = moved_since(progress.update())
                progressed = self._wait(progress, until, profile.progress_timeout_s, proc)
            delay = planned - self.now()
            self._wait(progress, lambda: False, delay if delay > 0 else fallback, proc)
            if kind == JUST_INDEXED:
                self._until_indexed(progress, proc)
            if kind == AFTER_RESHARD:
                quiet = len(self.report.reshards) % 2 == 0
                self._reshard(adapter, kind, progress if quiet else None, proc)
                self._wait(progress, lambda: False, self.rng.uniform(0.05, 0.5), proc)
            kill = self._kill(proc, adapter, progress, kind, progressed)
            if kind == WHILE_DOWN:
                self._reshard(adapter, kind)
            proc = self._start(config, environ)
            kill.restart_at = self.now()
        # every kill done: let the producer finish, then let the last daemon catch up
        self._wait(progress, self.producer_done.is_set, profile.produce_s * 3 + 60, proc)
        if self.producer_error:
            raise RuntimeError(f"producer failed: {self.producer_error[0]!r}")
        total = self.produced
        caught_up = self._wait(
            progress, lambda: progress.contiguous >= total, profile.catch_up_timeout_s, proc
        )
        if not caught_up:
            missing = total - sum(progress.seen[:total])
            self.report.stall = (
                f"{missing} of {total} events not indexed {profile.catch_up_timeout_s:.0f}s "
                f"after the producer stopped (first missing: #{progress.contiguous}); "
                f"{adapter.describe_position()}"
            )
        if proc.poll() is not None:
            self.report.unexpected_exits.append(f"run {len(self.procs)}: exit {proc.returncode}")
        # A SIGTERM before the daemon installs its handlers (while it still loads settings)
        # ends it by the default action: wait for its start line, so the stop tested is its own.
        self._wait(progress, lambda: b'"daemon_started"' in self.logs[-1].read_bytes(), 60, proc)
        proc.send_signal(signal.SIGTERM)
        try:
            self.report.final_exit = proc.wait(timeout=profile.shutdown_grace_s + 60)
        except subprocess.TimeoutExpired:
            self.report.problems.append("the last daemon did not stop within its grace + 60 s")
            proc.kill()
            proc.wait(timeout=30)
        self._wait(progress, lambda: False, 0.3, None)

    def _cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    # ---------------------------------------------------------------- the end check

    def _end_check(
        self, adapter: SourceAdapter, progress: Progress, s3: Any, emulator: HecEmulator
    ) -> None:
        report = self.report
        report.duration_s = self.now()
        report.produced = self.produced
        report.units = len(adapter.units)
        indexed_numbers: list[int] = []
        for event in emulator.indexed_events():
            number = adapter.parse(event.get("event"))
            if number is None or not 0 <= number < self.produced:
                report.unknown += 1
            else:
                indexed_numbers.append(number)
        copies = Counter(indexed_numbers)
        report.indexed = len(indexed_numbers)
        report.indexed_unique = len(copies)

        deadline_backsplashed: set[int] = set()
        codes: Counter[str] = Counter()
        objects = self._backsplash_objects(s3)
        for where, records in objects.values():
            for record in records:
                number = self._backsplash_number(adapter, record)
                codes[str(record.get("errorCode"))] += 1
                if where == "spool":
                    report.spooled += 1
                else:
                    report.backsplashed += 1
                if number is None:
                    report.unknown += 1
                    continue
                copies[number] += 1
                if record.get("errorCode") in DEADLINE_CODES:
                    deadline_backsplashed.add(number)
        report.backsplash_codes = dict(codes)

        # at each kill: the events indexed by then whose record was not checkpointed
        indexed_events = emulator.indexed_events()
        windows: list[set[int]] = []
        for kill in report.kills:
            before = (adapter.parse(e.get("event")) for e in indexed_events[: kill.indexed_pos])
            window = {
                n
                for n in before
                if n is not None and 0 <= n < self.produced and not kill.committed(n)
            }
            kill.uncommitted_indexed = len(window)
            kill.uncommitted_produced = sum(
                1 for n in range(kill.produced) if not kill.committed(n)
            )
            windows.append(window)
        result = audit(self.produced, copies, windows, deadline_backsplashed)
        report.lost = len(result.lost)
        report.lost_sample = result.lost[:10]
        report.duplicates = result.duplicates
        report.duplicates_by_kill = result.by_kill
        report.duplicates_by_deadline = result.by_deadline
        report.duplicates_unexplained = result.unexplained_copies
        report.unexplained_sample = result.unexplained[:10]

        self._check_ledgers()
        problems = report.problems
        if report.lost:
            problems.append(f"lost {report.lost} events (e.g. {report.lost_sample})")
        if report.duplicates_unexplained:
            problems.append(
                f"{report.duplicates_unexplained} unexplained duplicates "
                f"(e.g. {report.unexplained_sample})"
            )
        if report.unknown:
            problems.append(f"{report.unknown} indexed or backsplashed events never produced")
        if report.ledgers_unbalanced:
            problems.append(f"unbalanced ledgers: {report.ledgers_unbalanced[:3]}")
        if report.final_exit != 0:
            problems.append(f"the last daemon exited {report.final_exit} after SIGTERM, not 0")
        if report.unexpected_exits:
            problems.append(f"daemons exited on their own: {report.unexpected_exits}")
        if report.stall:
            problems.append(f"stall: {report.stall}")
        if len(report.kills) < 5:
            problems.append(f"only {len(report.kills)} kills")
        if self.source == "kinesis" and not any(k.kind == AFTER_RESHARD for k in report.kills):
            problems.append("no kill right after a reshard")

    def _backsplash_objects(self, s3: Any) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        """Every backsplash object by key (S3 and spool; a key in both counts once)."""
        found: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        reader = Backsplash(s3, BUCKET, PREFIX)
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=PREFIX):
            for item in page.get("Contents", []):
                found[item["Key"]] = ("s3", list(reader.read(item["Key"])))
        spool = LocalSpool(self.workdir / "spool", PREFIX)
        for key in spool.list_keys():
            full = key if key.startswith(PREFIX) else f"{PREFIX}{key}"
            if full not in found and key not in found:
                found[full] = ("spool", list(spool.read(key)))
        return found

    @staticmethod
    def _backsplash_number(adapter: SourceAdapter, record: dict[str, Any]) -> int | None:
        try:
            raw = base64.b64decode(record["rawData"])
        except (KeyError, ValueError, TypeError):
            return None
        try:
            event = json.loads(raw)
        except ValueError:
            return adapter.parse(raw.decode(errors="replace").strip())
        return adapter.parse(event.get("event") if isinstance(event, dict) else None)

    def _check_ledgers(self) -> None:
        report = self.report
        for index, log in enumerate(self.logs, start=1):
            last = index == len(self.logs)
            entries = read_log(log)
            summaries = [e for e in entries if e.get("event") == "checkpoint_saved"]
            finals = [e for e in entries if e.get("event") == "delivery_summarized"]
            report.checkpoints_skipped += sum(
                1 for e in entries if e.get("event") == "checkpoint_skipped"
            )
            for entry in summaries + finals:
                report.ledgers_logged += 1
                dropped = entry.get("dropped") or {}
                balance = (
                    entry["events_in"]
                    - entry["acknowledged"]
                    - entry["backsplashed"]
                    - sum(dropped.values())
                )
                if balance != 0 or not entry.get("balanced"):
                    report.ledgers_unbalanced.append(
                        f"run {index} {entry['event']}: in_flight {balance}"
                    )
            if last:
                if finals:
                    report.final_summary = finals[-1]
                else:
                    report.problems.append("the last run logged no delivery_summarized")


def run_crash(
    source: str,
    profile: Profile,
    workdir: Path,
    *,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """Run one crash run and print its figures; returns the report."""
    chosen = seed_from_env() if seed is None else seed
    report = CrashRun(source, profile, workdir, seed=chosen, echo=echo).run()
    for line in report.lines():
        echo(line)
    return report
