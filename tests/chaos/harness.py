"""The chaos run: uniquely numbered events through every delivery path, against a hostile HEC.

Paths (all at once, on loopback):

- ``a``: the push Lambda (``forwarder.push.handler``, in this process) with CloudWatch Logs
  subscription events, retried as AWS retries a failed invocation;
- ``b``: the push Lambda with SQS batches of S3 notifications naming flow-log files, the
  items in ``batchItemFailures`` handed back as SQS would;
- ``c``: ``forwarder daemon`` (a subprocess) reading a Kinesis stream that is split
  (resharded) once the daemon has caught up with the first half (moto patched to reshard
  as AWS does: :mod:`tests.faithful_kinesis`);
- ``d``: ``forwarder daemon`` on an ``sqs-s3`` source;
- ``e``: ``forwarder forward FILE`` (subprocesses).

Faults: the HEC emulator (a subprocess) answers at random busy, 500, resets, a proxy's HTML
200s, black holes, byte-drips, lost and delayed acks and 413s above a size, and is down in
repeating windows; S3 sits behind :class:`~tests.chaos.proxy.OutageProxy`, which takes it
away in windows too. Kinesis and SQS stay up. Each daemon gets SIGTERM once all its events
are settled (and, for ``sqs-s3``, its queue is empty), or when it made no progress for
``stall_s``, or at ``bound_s``: the run always ends by itself.

Every event carries a unique id (``eni-<path><9 digits>``, in the log message or in the
flow-log line). At the end the run reads what the emulator indexed, the backsplash bucket
and the local spools (with the forwarder's own backsplash reader) and checks:

1. lost = 0: every id is indexed, backsplashed or spooled;
2. every run's ledger balances (its ``push_invocation_summarized`` / ``delivery_summarized``
   log line, or ``forward --json``);
3. duplicates (ids indexed more than once) <= what explains them: events the ledgers count
   as possible duplicates (ack expired or lost, read timeout) + events of invocations, SQS
   items and objects that were retried whole;
4. no run passed its deadline: push invocations their Lambda budget, daemons
   ``shutdown_grace_s`` (+ ``EXIT_ALLOWANCE_S`` to exit) after SIGTERM, ``forward`` its bound;
5. nothing was left unread in a source (a daemon that stalled), every daemon exited 0 and no
   Lambda event was given up (retries exhausted).

It prints the figures. ``python -m tests.chaos.harness`` runs it (``--short`` for the small
version; ``CHAOS_SEED`` or ``--seed`` to replay a seed); ``make chaos`` runs the full one.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.chaos.proxy import Outage, OutageProxy

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "00000000-chaos-token-0000-000000000000"
BUCKET = "chaos-backsplash"
PREFIX = "chaos/"
FLOW_BUCKET = "chaos-flow"
STREAM = "chaos-stream"
QUEUE = "chaos-daemon-queue"
REGION = "us-east-1"
HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes "
    "start end action log-status"
)
ID_RE = re.compile(rb"eni-([a-e])(\d{9})(?!\d)")
#: After SIGTERM a daemon has shutdown_grace_s to settle, then this long to write its last
#: checkpoint, drain the spool and leave the interpreter.
EXIT_ALLOWANCE_S = 5.0
#: Before AWS hands a failed invocation or SQS item back (minutes on AWS; longer than any
#: outage window here, so that retries can succeed).
LAMBDA_RETRY_DELAY_S = 5.0
PATHS = {
    "a": "push awslogs",
    "b": "push sqs-s3",
    "c": "daemon kinesis (resharded)",
    "d": "daemon sqs-s3",
    "e": "forward",
}
RUN_DAEMON = "import sys; from forwarder.cli import main; sys.exit(main(['daemon', *sys.argv[1:]]))"
RUN_FORWARD = "import sys; from forwarder.cli import main; sys.exit(main(sys.argv[1:]))"


def event_id(path: str, seq: int) -> str:
    return f"eni-{path}{seq:09d}"


def flow_line(path: str, seq: int) -> str:
    start = 1_764_000_000 + seq % 86_400
    return (
        f"2 123456789012 {event_id(path, seq)} 10.0.{seq // 250 % 256}.{seq % 250 + 1} "
        f"52.94.1.7 49152 443 6 10 8400 {start} {start + 60} ACCEPT OK"
    )


def app_line(path: str, seq: int) -> str:
    return f"chaos app event {event_id(path, seq)} status=ok attempt=1"


def cloudwatch_payload(messages: list[str], log_group: str, first_id: int) -> bytes:
    document = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": log_group,
        "logStream": "chaos-stream-1",
        "subscriptionFilters": ["to-splunk"],
        "logEvents": [
            {"id": f"{first_id + i:056d}", "timestamp": 1_764_000_000_000 + i, "message": m}
            for i, m in enumerate(messages)
        ],
    }
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=1)


def flow_file(path: str, first: int, count: int) -> bytes:
    lines = [HEADER, *(flow_line(path, first + i) for i in range(count))]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run's shape. ``units[path] = (units, events per unit)``."""

    name: str
    seed: int
    units: dict[str, tuple[int, int]]
    hec_outage: Outage
    s3_outage: Outage
    reshard_after_s: float
    push_budget_s: float = 20.0
    daemon_grace_s: float = 10.0
    forward_bound_s: float = 240.0
    #: How long a daemon may make no progress before the run stops waiting for it.
    stall_s: float = 60.0
    #: Bound on the whole delivery phase (the run stops waiting, then checks).
    bound_s: float = 600.0
    drip_interval_s: float = 0.5
    faults: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(n * per for n, per in self.units.values())

    @classmethod
    def full(cls, seed: int) -> ChaosConfig:
        return cls(
            name="full",
            seed=seed,
            units={
                "a": (40, 1000),
                "b": (20, 2000),
                "c": (240, 250),
                "d": (12, 2500),
                "e": (3, 10000),
            },
            hec_outage=Outage(start_s=20, duration_s=6, every_s=60),
            s3_outage=Outage(start_s=35, duration_s=8, every_s=75),
            reshard_after_s=60,
            faults=_faults(seed, drips=0),
        )

    @classmethod
    def short(cls, seed: int) -> ChaosConfig:
        return cls(
            name="short",
            seed=seed,
            units={"a": (6, 100), "b": (4, 200), "c": (24, 50), "d": (3, 200), "e": (2, 300)},
            hec_outage=Outage(start_s=6, duration_s=2),
            s3_outage=Outage(start_s=9, duration_s=3),
            reshard_after_s=20,
            push_budget_s=15.0,
            daemon_grace_s=5.0,
            forward_bound_s=60.0,
            stall_s=25.0,
            bound_s=90.0,
            # Few requests in a short run: each rare fault is also forced once (a budget).
            faults=_faults(seed, drips=1),
        )


def _faults(seed: int, drips: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "p_busy": 0.05,
        "retry_after_s": 1,
        "p_500": 0.03,
        "p_reset": 0.02,
        "p_html_200": 0.01,
        "html_200_requests": 1,
        "p_blackhole": 0.003,
        "blackhole_requests": 1,
        "p_drip": 0.002,
        "drip_requests": drips,
        "p_lost_ack": 0.02,
        "lost_acks": 1,
        "p_delayed_ack": 0.03,
        "delayed_ack_s": 8.0,  # past the 5 s ack timeout: the ack expires, the batch is re-sent
        "max_body_bytes": 28_000,  # batches are up to 32 KiB: the big ones meet a 413
    }


def hec_environ(config: ChaosConfig, hec_url: str) -> dict[str, str]:
    """The delivery settings of every run (environment variables, DESIGN.md §7)."""
    return {
        "SPLUNK_HEC_URL": hec_url,
        "SPLUNK_HEC_TOKEN": TOKEN,
        "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.2",
        "SPLUNK_HEC_ACK_TIMEOUT": "5",
        "SPLUNK_HEC_RETRY_DURATION": "60",
        "SPLUNK_HEC_RETRY_BACKOFF_BASE": "0.05",
        "SPLUNK_HEC_RETRY_BACKOFF_MAX": "1",
        "SPLUNK_HEC_UNHEALTHY_COOLDOWN": "0.5",
        "SPLUNK_HEC_CONNECT_TIMEOUT": "2",
        "SPLUNK_HEC_READ_TIMEOUT": "3",
        "SPLUNK_HEC_BATCH_MAX_BYTES": "32768",
        "BACKSPLASH_BUCKET": BUCKET,
        "BACKSPLASH_PREFIX": PREFIX,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class RunRecord:
    """One run (invocation, daemon, forward): its ledger, wall time and deadline."""

    kind: str
    name: str
    ledger: dict[str, Any] | None = None
    wall_s: float = 0.0
    deadline_s: float | None = None
    exit_status: int | None = None
    failed: str | None = None
    #: A push invocation that raised: AWS retries it whole (not a failure of the run).
    raised: str | None = None

    @property
    def overrun_s(self) -> float:
        if self.deadline_s is None:
            return 0.0
        return max(0.0, self.wall_s - self.deadline_s)


@dataclass
class Book:
    """What the drivers report, shared between threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: list[RunRecord] = field(default_factory=list)
    #: Events re-sent whole by a retry outside any ledger (invocation, SQS item, object).
    retried_events: Counter[str] = field(default_factory=Counter)
    #: Events whose run ended without a place for them (retries exhausted).
    abandoned: Counter[str] = field(default_factory=Counter)
    peak_rss_kb: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, run: RunRecord) -> None:
        with self.lock:
            self.runs.append(run)

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)
        print(f"  [chaos] {text}", flush=True)


class RssWatcher:
    """Samples VmHWM (peak RSS) of registered processes until they exit."""

    def __init__(self, book: Book) -> None:
        self._book = book
        self._pids: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, pid: int, role: str) -> None:
        with self._book.lock:
            self._pids[pid] = role

    def sample(self) -> None:
        with self._book.lock:
            pids = dict(self._pids)
        for pid, role in pids.items():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
            if match:
                kb = int(match.group(1))
                with self._book.lock:
                    self._book.peak_rss_kb[role] = max(self._book.peak_rss_kb.get(role, 0), kb)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_events(path: Path, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if f'"{name}"' not in line:
            continue
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict) and item.get("event") == name:
                found.append(item)
    return found


def settled(metrics: dict[str, float]) -> float:
    """Events a daemon acknowledged, backsplashed or dropped, from its /metrics."""
    return (
        metrics.get("forwarder_events_acknowledged_total", 0)
        + metrics.get("forwarder_events_backsplashed_total", 0)
        + metrics.get("forwarder_events_dropped_total", 0)
    )


def metric_values(url: str) -> dict[str, float]:
    """The daemon's /metrics as name -> summed value (labels summed away)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values


# --------------------------------------------------------------------------- the world


class World:
    """Moto (S3, SQS, Kinesis, resharding as AWS does), the S3 outage proxy and the HEC
    emulator, on loopback."""

    def __init__(self, config: ChaosConfig, workdir: Path, book: Book) -> None:
        self.config = config
        self.workdir = workdir
        self.book = book
        self.procs: list[subprocess.Popen[bytes]] = []
        self.moto_url = ""
        self.hec_url = ""
        self.proxy: OutageProxy | None = None
        self.output = workdir / "indexed.jsonl"
        self.rss = RssWatcher(book)
        self.emulator: subprocess.Popen[bytes] | None = None
        self.queue_url = ""

    def popen(
        self, role: str, argv: list[str], log: Path, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=kwargs.pop("stdout", handle), stderr=handle, **kwargs
            )
        self.procs.append(proc)
        self.rss.watch(proc.pid, role)
        return proc

    def start(self) -> None:
        self.rss.start()
        port = free_port()
        self.popen(
            "moto",
            [sys.executable, "-m", "tests.chaos.moto_server", "-H", "127.0.0.1", "-p", str(port)],
            self.workdir / "moto.log",
        )
        self.moto_url = f"http://127.0.0.1:{port}"
        emulator = self.popen(
            "emulator",
            [
                sys.executable,
                "-m",
                "forwarder.devtools.emulator",
                "--port",
                "0",
                "--token",
                TOKEN,
                "--output",
                str(self.output),
            ],
            self.workdir / "emulator.log",
            stdout=subprocess.PIPE,
        )
        self.emulator = emulator
        assert emulator.stdout is not None
        first = emulator.stdout.readline().decode()
        if "listening on" not in first:
            raise RuntimeError(f"the HEC emulator did not start: {first!r}")
        self.hec_url = first.split()[-1]
        end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.moto_url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("moto did not start") from None
                time.sleep(0.2)

    def aws_environ(self, s3_url: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_ENDPOINT_URL=self.moto_url,
            AWS_ENDPOINT_URL_S3=s3_url,
        )
        return environ

    def client(self, service: str, *, direct: bool = False) -> Any:
        import boto3
        from botocore.config import Config

        url = self.moto_url
        if service == "s3" and not direct and self.proxy is not None:
            url = self.proxy.url
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"mode": "standard"}),
        )

    def set_faults(self, plan: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.hec_url}/emulator/faults",
            data=json.dumps(plan).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def emulator_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.hec_url}/emulator/stats", timeout=10) as r:
            stats: dict[str, Any] = json.loads(r.read())
            return stats

    def stop(self) -> None:
        self.rss.sample()
        self.rss.stop()
        if self.proxy is not None:
            self.proxy.stop()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


# --------------------------------------------------------------------------- drivers


class FakeContext:
    """A Lambda context whose remaining time runs down in real time."""

    def __init__(self, budget_s: float, request_id: str) -> None:
        self.aws_request_id = request_id
        self._end = time.monotonic() + budget_s

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._end - time.monotonic()) * 1000), 0)


def push_driver(world: World, config: ChaosConfig, book: Book, env: dict[str, str]) -> None:
    """Paths a and b: the push handler, invoked as Lambda would, with AWS's retries."""
    from config.loader import load_settings
    from config.logs import configure_logging
    from forwarder import push

    settings = load_settings(env)
    log_file = (world.workdir / "push.log").open("a", encoding="utf-8")
    with contextlib.redirect_stderr(log_file):  # its start-up warnings go to the push log
        push.configure(settings, client_factory=world.client)
    configure_logging(settings.log, stream=log_file)

    n_a, per_a = config.units["a"]
    n_b, per_b = config.units["b"]
    invocations: list[tuple[str, Any, int]] = []
    for u in range(n_a):
        lines = [app_line("a", u * per_a + i) for i in range(per_a)]
        payload = cloudwatch_payload(lines, "/chaos/app", u * per_a)
        event = {"awslogs": {"data": base64.b64encode(payload).decode()}}
        invocations.append(("awslogs", event, per_a))
    sqs: list[tuple[str, Any, int]] = []
    for u in range(0, n_b, 2):
        records = [
            {
                "eventSource": "aws:sqs",
                "messageId": f"b-{k}",
                "receiptHandle": "r",
                "body": s3_notification(FLOW_BUCKET, f"push/{k:04d}.log.gz"),
            }
            for k in range(u, min(u + 2, n_b))
        ]
        sqs.append(("sqs", {"Records": records}, per_b))
    # Interleave: the SQS batches spread over the awslogs invocations.
    step = max(1, len(invocations) // max(1, len(sqs)))
    schedule: list[tuple[str, Any, int]] = []
    for i, item in enumerate(invocations):
        schedule.append(item)
        if i % step == step - 1 and sqs:
            schedule.append(sqs.pop(0))
    schedule.extend(sqs)

    try:
        for number, (shape, event, per_unit) in enumerate(schedule):
            _invoke(
                push,
                shape=shape,
                event=event,
                per_unit=per_unit,
                number=number,
                config=config,
                book=book,
            )
    finally:
        structlog_reset()
        log_file.close()
        push.reset()


def structlog_reset() -> None:
    import structlog

    structlog.reset_defaults()


def _invoke(
    push: Any,
    *,
    shape: str,
    event: dict[str, Any],
    per_unit: int,
    number: int,
    config: ChaosConfig,
    book: Book,
) -> None:
    """One Lambda event until it succeeds, retried as AWS would (bounded: then to the DLQ)."""
    attempts = 6
    for attempt in range(1, attempts + 1):
        name = f"{shape}-{number}-try{attempt}"
        run = RunRecord("push", name, deadline_s=config.push_budget_s)
        start = time.monotonic()
        try:
            result = push.handler(event, FakeContext(config.push_budget_s, name))
        except Exception as exc:
            run.wall_s = time.monotonic() - start
            run.raised = f"{type(exc).__name__}: {exc}"[:200]
            book.add(run)
            items = len(event.get("Records", ())) or 1
            book.retried_events[f"{shape}_invocation_retried"] += items * per_unit
            book.note(f"push {name} raised {run.raised}; retried as AWS would")
            time.sleep(LAMBDA_RETRY_DELAY_S)
            continue
        run.wall_s = time.monotonic() - start
        book.add(run)  # its ledger is its push_invocation_summarized line (see collect)
        failures = {f["itemIdentifier"] for f in result.get("batchItemFailures", ())}
        if not failures:
            return
        event = {"Records": [r for r in event["Records"] if r["messageId"] in failures]}
        book.retried_events["sqs_item_retried"] += len(failures) * per_unit
        book.note(f"push {name}: {len(failures)} SQS item(s) failed; handed back as SQS would")
        time.sleep(LAMBDA_RETRY_DELAY_S)
    items = len(event.get("Records", ())) or 1
    book.abandoned[f"{shape}_retries_exhausted"] += items * per_unit
    book.note(f"push {shape}-{number}: still failing after {attempts} attempts (to the DLQ)")


def s3_notification(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1}},
                }
            ]
        }
    )


@dataclass
class DaemonRun:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_url: str
    expected: int
    grace_s: float
    #: Whether the source holds nothing more (the SQS queue is empty); None: not checked.
    source_done: Callable[[], bool] | None = None
    sigterm_at: float | None = None
    exit_at: float | None = None
    waiter: threading.Thread | None = None

    def terminate(self) -> None:
        """SIGTERM now; a thread notes the moment the process exits."""
        self.sigterm_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

        def wait() -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=self.grace_s + EXIT_ALLOWANCE_S + 60)
                self.exit_at = time.monotonic()

        self.waiter = threading.Thread(target=wait, daemon=True)
        self.waiter.start()


def daemon_config(
    world: World, name: str, source: dict[str, Any], grace_s: float, metrics_port: int
) -> Path:
    daemon = {
        "checkpoint_store": "file",
        "checkpoint_path": str(world.workdir / f"{name}-checkpoints.json"),
        "checkpoint_interval_s": 1.0,
        "checkpoint_max_records": 200,
        "shutdown_grace_s": grace_s,
        "metrics_port": metrics_port,
        "spool_drain_interval_s": 2.0,
        "health_check_interval_s": 1.0,
    }
    lines = [
        f'backsplash_spool_dir = "{world.workdir / f"spool-{name}"}"',
        "[source]",
        *(f"{k} = {json.dumps(v)}" for k, v in source.items()),
        "[daemon]",
        *(f"{k} = {json.dumps(v)}" for k, v in daemon.items()),
    ]
    path = world.workdir / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_daemon(
    world: World, name: str, source: dict[str, Any], expected: int, env: dict[str, str]
) -> DaemonRun:
    port = free_port()
    config = daemon_config(world, name, source, world.config.daemon_grace_s, port)
    log = world.workdir / f"{name}.log"
    proc = world.popen(
        name, [sys.executable, "-c", RUN_DAEMON, "--config", str(config)], log, env=env
    )
    return DaemonRun(
        name, proc, log, f"http://127.0.0.1:{port}", expected, world.config.daemon_grace_s
    )


def kinesis_producer(
    world: World, config: ChaosConfig, book: Book, start: float, daemon: DaemonRun
) -> None:
    """Path c: half the records; once the daemon has settled them (it is caught up, the case
    where a closing parent shard ends on an empty read) or ``reshard_after_s`` passed, the
    shard is split; then the other half, which lands on the two children."""
    kinesis = world.client("kinesis")
    n, per = config.units["c"]
    rng = random.Random(config.seed)
    records = [
        {
            "Data": cloudwatch_payload(
                [flow_line("c", u * per + i) for i in range(per)], "/aws/vpc/chaos", u * per
            ),
            "PartitionKey": f"pk-{rng.getrandbits(64):x}",
        }
        for u in range(n)
    ]

    def put(batch: list[dict[str, Any]]) -> None:
        for i in range(0, len(batch), 100):
            chunk = batch[i : i + 100]
            while chunk:
                answer = kinesis.put_records(StreamName=STREAM, Records=chunk)
                chunk = [
                    r for r, e in zip(chunk, answer["Records"], strict=True) if "ErrorCode" in e
                ]

    half = len(records) // 2
    put(records[:half])
    end = time.monotonic() + config.reshard_after_s
    while time.monotonic() < end and daemon.proc.poll() is None:
        with contextlib.suppress(OSError):
            if settled(metric_values(daemon.metrics_url)) >= half * per:
                break
        time.sleep(0.2)
    shard = kinesis.list_shards(StreamName=STREAM)["Shards"][0]["ShardId"]
    kinesis.split_shard(StreamName=STREAM, ShardToSplit=shard, NewStartingHashKey=str(2**127))
    book.note(f"kinesis: shard {shard} split at {time.monotonic() - start:.1f} s")
    end = time.monotonic() + 30
    while (
        kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"][
            "StreamStatus"
        ]
        != "ACTIVE"
        and time.monotonic() < end
    ):
        time.sleep(0.2)
    put(records[half:])


def forward_driver(world: World, config: ChaosConfig, book: Book, env: dict[str, str]) -> None:
    """Path e: ``forwarder forward FILE --json`` per file, one after another.

    A run still going after ``forward_bound_s`` gets SIGTERM: it must stop reading, wait at
    most ``--grace`` for acks and backsplash the rest, so its deadline is the bound + grace +
    ``EXIT_ALLOWANCE_S``. A file not finished is run again, as an operator would.
    """
    n, per = config.units["e"]
    grace = config.daemon_grace_s
    deadline = config.forward_bound_s + grace + EXIT_ALLOWANCE_S
    for u in range(n):
        path = world.workdir / f"forward-{u}.log.gz"
        path.write_bytes(flow_file("e", u * per, per))
        for attempt in range(1, 4):
            name = f"forward-{u}-try{attempt}"
            out = world.workdir / f"{name}.json"
            run = RunRecord("forward", name, deadline_s=deadline)
            start = time.monotonic()
            with out.open("wb") as stdout:
                proc = world.popen(
                    "forward",
                    [
                        sys.executable,
                        "-c",
                        RUN_FORWARD,
                        "forward",
                        str(path),
                        "--json",
                        "--grace",
                        str(grace),
                    ],
                    world.workdir / f"{name}.log",
                    env={**env, "BACKSPLASH_SPOOL_DIR": str(world.workdir / "spool-forward")},
                    stdout=stdout,
                )
                try:
                    proc.wait(timeout=config.forward_bound_s)
                except subprocess.TimeoutExpired:
                    book.note(f"{name} still running after {config.forward_bound_s} s: SIGTERM")
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=grace + EXIT_ALLOWANCE_S + 30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        run.failed = "killed: still running 30 s past its deadline after SIGTERM"
            run.wall_s = time.monotonic() - start
            run.exit_status = proc.returncode
            text = out.read_text().strip().splitlines()
            with contextlib.suppress(ValueError, IndexError):
                run.ledger = json.loads(text[-1])
            book.add(run)
            if proc.returncode in (0, 5):
                break
            # 130 (stopped at the bound: the rest of the file unread), 6 (nowhere to store)
            # or a crash: the operator runs the file again.
            book.retried_events["forward_rerun"] += per
            book.note(f"{name} exited {proc.returncode}; run again")
        else:
            book.abandoned["forward_failed"] += per


def sqs_setup(world: World, config: ChaosConfig) -> str:
    """Path d's queue, with one notification per flow-log file."""
    sqs = world.client("sqs")
    url: str = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    n, _ = config.units["d"]
    for u in range(n):
        sqs.send_message(
            QueueUrl=url, MessageBody=s3_notification(FLOW_BUCKET, f"daemon/{u:04d}.log.gz")
        )
    return url


def queue_empty(world: World, url: str) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    try:
        found = world.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)
    except Exception:
        return False
    return all(int(found["Attributes"][name]) == 0 for name in names)


def wait_daemons(runs: list[DaemonRun], config: ChaosConfig, book: Book, start: float) -> None:
    """SIGTERM each daemon once all its events are settled, or it stalls, or time is up."""
    progress: dict[str, tuple[float, float]] = {}
    while any(r.sigterm_at is None for r in runs):
        now = time.monotonic()
        for run in runs:
            if run.sigterm_at is not None:
                continue
            if run.proc.poll() is not None:
                run.sigterm_at = run.exit_at = now
                book.note(f"{run.name} exited on its own with {run.proc.returncode} (died)")
                continue
            try:
                m = metric_values(run.metrics_url)
            except OSError:
                m = {}
            done_events = settled(m)
            done = done_events >= run.expected and not m.get("forwarder_pending_acks", 0)
            if done and run.source_done is not None:
                done = run.source_done()
            last, since = progress.get(run.name, (-1.0, now))
            if done_events != last:
                progress[run.name] = (done_events, now)
                since = now
            stalled = now - since > config.stall_s
            late = now - start > config.bound_s
            if done or stalled or late:
                if not done:
                    why = "made no progress" if stalled else "ran out of time"
                    book.note(f"{run.name} {why}: {done_events:.0f} of {run.expected} settled")
                run.terminate()
        time.sleep(0.5)


def finish_daemon(run: DaemonRun, book: Book) -> None:
    deadline = run.grace_s + EXIT_ALLOWANCE_S
    record = RunRecord("daemon", run.name, deadline_s=deadline)
    if run.waiter is not None:
        run.waiter.join()
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()
        record.failed = "killed: still running a minute past its deadline"
    if run.exit_at is None:
        run.exit_at = time.monotonic()
    assert run.sigterm_at is not None
    record.wall_s = run.exit_at - run.sigterm_at
    record.exit_status = run.proc.returncode
    summaries = log_events(run.log, "delivery_summarized")
    record.ledger = summaries[-1] if summaries else None
    if record.ledger is None:
        record.failed = record.failed or f"no ledger logged (exit {run.proc.returncode})"
    # An object whose read broke is read again whole (its message comes back): at least once.
    for failed in log_events(run.log, "object_failed"):
        book.retried_events["object_reread"] += _object_events(str(failed.get("key", "")))
    book.add(record)


_OBJECT_EVENTS: dict[str, int] = {}


def _object_events(key: str) -> int:
    return _OBJECT_EVENTS.get(key, 0)


# --------------------------------------------------------------------------- the end check


@dataclass
class Report:
    config: ChaosConfig
    figures: list[tuple[str, str]]
    failures: list[str]

    def render(self) -> str:
        width = max(len(k) for k, _ in self.figures)
        lines = [f"chaos run ({self.config.name}), seed {self.config.seed}"]
        lines += [f"  {k:<{width}}  {v}" for k, v in self.figures]
        lines.append("RESULT: " + ("PASS" if not self.failures else "FAIL"))
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def _ids_in(data: bytes) -> Iterator[str]:
    for match in ID_RE.finditer(data):
        yield f"eni-{match.group(1).decode()}{match.group(2).decode()}"


def _record_ids(record: dict[str, Any]) -> list[str]:
    raw = record.get("rawData")
    if not isinstance(raw, str):
        return []
    data = base64.b64decode(raw)
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            data = gzip.decompress(data)
    return list(_ids_in(data))


def queued_keys(world: World) -> set[str]:
    """Object keys named by the messages still in path d's queue (daemons stopped)."""
    if not world.queue_url:
        return set()
    sqs = world.client("sqs")
    keys: set[str] = set()
    for _ in range(50):
        answer = sqs.receive_message(
            QueueUrl=world.queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=600,
            WaitTimeSeconds=0,
        )
        messages = answer.get("Messages", [])
        if not messages:
            break
        for message in messages:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for record in json.loads(message["Body"])["Records"]:
                    keys.add(record["s3"]["object"]["key"])
    return keys


def collect(world: World, book: Book, stats: dict[str, Any]) -> Report:
    from forwarder.backsplash.codec import decode_records
    from forwarder.backsplash.writers import LocalSpool

    config = world.config
    expected = {
        event_id(path, seq) for path, (n, per) in config.units.items() for seq in range(n * per)
    }
    indexed: Counter[str] = Counter()
    with world.output.open("rb") as handle:
        for line in handle:
            indexed.update(_ids_in(line))
    backsplashed: set[str] = set()
    s3 = world.client("s3", direct=True)
    objects = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        for item in page.get("Contents", []):
            objects += 1
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            for record in decode_records(body):
                backsplashed.update(_record_ids(record))
    spooled: set[str] = set()
    spool_objects = 0
    for spool_dir in world.workdir.glob("spool-*"):
        spool = LocalSpool(spool_dir, PREFIX)
        for key in spool.list_keys():
            spool_objects += 1
            for record in spool.read(key):
                spooled.update(_record_ids(record))

    found = set(indexed) | backsplashed | spooled
    unaccounted = expected - found
    # Not delivered, but not gone either (yet): what a stopped daemon left in its source.
    # Kinesis keeps records until its retention passes; a queued message names its object.
    queued = queued_keys(world)
    per_d = config.units["d"][1]
    left_in_stream = {i for i in unaccounted if i[4] == "c"}
    left_in_queue = {
        i
        for i in unaccounted
        if i[4] == "d" and f"daemon/{int(i[5:]) // per_d:04d}.log.gz" in queued
    }
    lost = unaccounted - left_in_stream - left_in_queue
    unexpected = found - expected
    duplicates = sum(n - 1 for n in indexed.values() if n > 1)
    both = len(set(indexed) & (backsplashed | spooled))

    # A push invocation's ledger is its push_invocation_summarized line (by request id); one
    # that raised is retried whole by AWS, so its own ledger need not balance.
    summaries = log_events(world.workdir / "push.log", "push_invocation_summarized")
    by_request = {str(line.get("aws_request_id")): line for line in summaries}
    for run in book.runs:
        if run.kind == "push" and run.raised is None:
            run.ledger = by_request.get(run.name)
            if run.ledger is None:
                run.failed = "no push_invocation_summarized line"
    finished = [r for r in book.runs if r.ledger is not None]
    totals: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    unbalanced = []
    for run in finished:
        assert run.ledger is not None
        for key in (
            "events_in",
            "acknowledged",
            "backsplashed",
            "duplicates_possible",
            "resends",
            "retries",
            "requests",
        ):
            totals[key] += int(run.ledger.get(key, 0))
        dropped.update({k: int(v) for k, v in (run.ledger.get("dropped") or {}).items()})
        if not run.ledger.get("balanced", False):
            unbalanced.append(f"{run.name} (in flight {run.ledger.get('in_flight')})")
    explained = totals["duplicates_possible"] + sum(book.retried_events.values())
    overruns = sorted(book.runs, key=lambda r: r.overrun_s, reverse=True)
    worst = overruns[0] if overruns else None
    kinds = Counter(r.kind for r in book.runs)
    walls = {
        kind: max((r.wall_s for r in book.runs if r.kind == kind), default=0.0)
        for kind in ("push", "daemon", "forward")
    }
    peak = dict(sorted(book.peak_rss_kb.items()))
    peak["harness (push, in-process)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lost_by_path = Counter(i[4] for i in lost)

    proxy = world.proxy
    by_path = dict(sorted(lost_by_path.items()))
    events_text = ", ".join(f"{p}={n * per} {PATHS[p]}" for p, (n, per) in config.units.items())
    causes = [f"duplicates_possible in the ledgers {totals['duplicates_possible']}"]
    causes += [f"{k} {v}" for k, v in sorted(book.retried_events.items())]
    figures = [
        ("events", f"{len(expected)} ({events_text})"),
        ("faults injected (HEC)", json.dumps(stats.get("faults_injected", {}), sort_keys=True)),
        ("HEC outage windows", str(config.hec_outage)),
        (
            "S3 outage windows",
            f"{config.s3_outage}: {proxy.windows_seen if proxy else 0} windows, "
            f"{proxy.resets if proxy else 0} connections reset",
        ),
        (
            "HEC requests",
            f"data {stats.get('data_requests')}, ack {stats.get('ack_requests')}, "
            f"acks lost {stats.get('acks_lost')}, "
            f"rejected {json.dumps(stats.get('rejected', {}), sort_keys=True)}",
        ),
        ("indexed", f"{len(indexed)} distinct ids ({sum(indexed.values())} events)"),
        ("backsplashed", f"{len(backsplashed)} ids in {objects} objects"),
        ("spooled", f"{len(spooled)} ids in {spool_objects} spool objects"),
        ("dropped by reason", json.dumps(dict(dropped), sort_keys=True)),
        ("indexed and also backsplashed", str(both)),
        ("duplicates", f"{duplicates} events indexed more than once"),
        ("duplicates explained by", f"{explained}: " + ", ".join(causes)),
        ("resends after an expired ack", str(totals["resends"])),
        ("lost", f"{len(lost)}" + (f" by path {by_path}" if lost else "")),
        (
            "left unread in the source",
            f"{len(left_in_stream)} in the Kinesis stream (lost once its retention passes), "
            f"{len(left_in_queue)} named by messages still queued",
        ),
        (
            "ledgers",
            f"{len(finished)} of {len(book.runs)} runs {dict(kinds)} logged one: "
            f"in {totals['events_in']}, "
            f"acknowledged {totals['acknowledged']}, backsplashed {totals['backsplashed']}, "
            f"unbalanced {len(unbalanced)}",
        ),
        (
            "push invocations that raised",
            json.dumps(Counter(r.raised.split(":")[0] for r in book.runs if r.raised))
            + " (AWS retries them whole)",
        ),
        ("longest wall time", ", ".join(f"{k} {v:.1f} s" for k, v in walls.items())),
        (
            "longest deadline overrun",
            f"{worst.overrun_s:.2f} s ({worst.name}: {worst.wall_s:.1f} s, "
            f"deadline {worst.deadline_s} s)"
            if worst
            else "0",
        ),
        ("peak RSS (MiB)", ", ".join(f"{k} {v / 1024:.0f}" for k, v in peak.items())),
    ]
    failures = []
    if left_in_stream or left_in_queue:
        failures.append(
            f"not delivered when the run ended: {len(left_in_stream)} events left in the "
            f"Kinesis stream, {len(left_in_queue)} in objects still queued"
        )
    if lost:
        failures.append(f"lost {len(lost)} events (by path {by_path}), e.g. {sorted(lost)[:5]}")
    if unexpected:
        failures.append(f"{len(unexpected)} ids never sent, e.g. {sorted(unexpected)[:3]}")
    if unbalanced:
        failures.append(f"unbalanced ledgers: {unbalanced[:5]}")
    if duplicates > explained:
        failures.append(
            f"{duplicates} duplicates, only {explained} explained by lost/expired acks, retries"
        )
    late = [r for r in book.runs if r.overrun_s > 0]
    if late:
        failures.append(
            "deadline overruns: "
            + "; ".join(f"{r.name} {r.wall_s:.1f} s, deadline {r.deadline_s} s" for r in late[:5])
        )
    for run in book.runs:
        if run.failed:
            failures.append(f"{run.name}: {run.failed}")
        if run.kind == "daemon" and run.exit_status != 0:
            failures.append(f"{run.name} exited {run.exit_status}")
    failures += [f"{n} events abandoned: {reason}" for reason, n in sorted(book.abandoned.items())]
    failures += [
        note
        for note in book.notes
        if "made no progress" in note or "ran out of time" in note or "died" in note
    ]
    return Report(config, figures, failures)


# --------------------------------------------------------------------------- the run


def run_chaos(config: ChaosConfig, workdir: Path) -> Report:
    """Run the chaos scenario in ``workdir``; returns the figures and failed checks."""
    book = Book()
    world = World(config, workdir, book)
    print(
        f"[chaos] {config.name} run, seed {config.seed} (CHAOS_SEED={config.seed} replays it), "
        f"{config.events} events, work dir {workdir}",
        flush=True,
    )
    try:
        world.start()
        _prepare(world, config)
        return _deliver(world, config, book)
    finally:
        world.stop()


def _prepare(world: World, config: ChaosConfig) -> None:
    s3 = world.client("s3", direct=True)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket=FLOW_BUCKET)
    n_b, per_b = config.units["b"]
    for u in range(n_b):
        key = f"push/{u:04d}.log.gz"
        s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=flow_file("b", u * per_b, per_b))
        _OBJECT_EVENTS[key] = per_b
    n_d, per_d = config.units["d"]
    for u in range(n_d):
        key = f"daemon/{u:04d}.log.gz"
        s3.put_object(Bucket=FLOW_BUCKET, Key=key, Body=flow_file("d", u * per_d, per_d))
        _OBJECT_EVENTS[key] = per_d
    world.client("kinesis").create_stream(StreamName=STREAM, ShardCount=1)
    kinesis = world.client("kinesis")
    end = time.monotonic() + 30
    while (
        kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"][
            "StreamStatus"
        ]
        != "ACTIVE"
        and time.monotonic() < end
    ):
        time.sleep(0.1)


def _deliver(world: World, config: ChaosConfig, book: Book) -> Report:
    host, port = world.moto_url.removeprefix("http://").split(":")
    world.proxy = OutageProxy((host, int(port)), config.s3_outage).start()
    env = {**world.aws_environ(world.proxy.url), **hec_environ(config, world.hec_url)}
    queue_url = world.queue_url = sqs_setup(world, config)
    start = time.monotonic()
    world.set_faults(
        {
            **config.faults,
            "drip_interval_s": config.drip_interval_s,
            "down_at_s": config.hec_outage.start_s,
            "down_for_s": config.hec_outage.duration_s,
            "down_every_s": config.hec_outage.every_s,
        }
    )
    n_c, per_c = config.units["c"]
    n_d, per_d = config.units["d"]
    daemons = [
        start_daemon(
            world,
            "daemon-kinesis",
            {
                "type": "kinesis",
                "stream_name": STREAM,
                "poll_interval_s": 0.2,
                "shard_refresh_interval_s": 2.0,
                "max_records": 50,
            },
            n_c * per_c,
            env,
        ),
        start_daemon(
            world,
            "daemon-sqs",
            {
                "type": "sqs-s3",
                "queue_url": queue_url,
                "visibility_timeout_s": 6,
                "wait_time_s": 1,
                "max_messages": 2,
                "chunk_lines": 500,
            },
            n_d * per_d,
            env,
        ),
    ]
    daemons[1].source_done = lambda: queue_empty(world, queue_url)
    threads = [
        threading.Thread(target=push_driver, args=(world, config, book, env), name="push"),
        threading.Thread(target=forward_driver, args=(world, config, book, env), name="fwd"),
        threading.Thread(
            target=kinesis_producer, args=(world, config, book, start, daemons[0]), name="kinesis"
        ),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    wait_daemons(daemons, config, book, start)
    for run in daemons:
        finish_daemon(run, book)
    for thread in threads:
        thread.join(timeout=max(1.0, config.bound_s - (time.monotonic() - start)) + config.stall_s)
        if thread.is_alive():
            book.note(f"driver {thread.name} ran out of time (died)")
    world.rss.sample()
    stats = world.emulator_stats()
    # Stop the emulator first: it flushes its output file on the way out.
    assert world.emulator is not None
    world.emulator.send_signal(signal.SIGTERM)
    world.emulator.wait(timeout=30)
    book.note(f"delivery phase took {time.monotonic() - start:.1f} s")
    return collect(world, book, stats)


def default_seed() -> int:
    text = os.environ.get("CHAOS_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the small version (make test)")
    parser.add_argument("--seed", type=int, default=None, help="default: $CHAOS_SEED or random")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run's files here")
    parser.add_argument(
        "--faults",
        type=json.loads,
        default={},
        metavar="JSON",
        help='emulator faults to change, e.g. \'{"p_drip": 0, "drip_requests": 0}\' (diagnosis)',
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else default_seed()
    config = ChaosConfig.short(seed) if args.short else ChaosConfig.full(seed)
    if args.faults:
        config = replace(config, faults={**config.faults, **args.faults})
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_chaos(config, workdir)
    print(report.render(), flush=True)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
