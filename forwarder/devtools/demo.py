"""``forwarder demo`` (``make demo``): the whole job end to end on this machine.

A local HEC emulator with acknowledgments and injected faults, a local S3-compatible server
(moto) for the backsplash bucket, and generated VPC flow log batches. Each stage prints what
was delivered, acknowledged and backsplashed, and the run ends by checking that every
generated event is either indexed or in the backsplash bucket. The last stage is an outage
that heals by itself: the drain (:mod:`forwarder.drain`) empties what it backsplashed once
HEC is back.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from config.daemon import load_daemon_settings
from config.drain import DrainSettings
from config.loader import load_settings
from config.logs import configure_logging, register_secret
from config.settings import LogSettings, Settings
from forwarder import aws
from forwarder.backsplash.writers import Backsplash
from forwarder.commands.context import CommandContext
from forwarder.daemon import run_daemon_demo
from forwarder.delivery.destinations import build_delivery, member
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import control_payload, firehose_event, flow_log_payloads
from forwarder.drain.drainer import Drainer
from forwarder.replay.engine import replay
from forwarder.replay.options import ReplayOptions
from forwarder.sources.checkpoints import FileCheckpointStore
from forwarder.status import ExitStatus, RunOutcome, status_for
from transforms import firehose
from transforms.pipeline import transform_payload

DEMO_TOKEN = "5b0c1f9e-demo-4c3a-9d7e-000000000001"
DEMO_BUCKET = "demo-backsplash"
DEMO_STREAM = "cwl-to-splunk"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``forwarder demo``."""
    parser.add_argument("--batches", type=_at_least_one, default=20, help="CloudWatch batches (20)")
    parser.add_argument(
        "--lines", type=_at_least_one, default=500, help="flow-log lines per batch (500)"
    )
    parser.add_argument(
        "--log-level",
        default="ERROR",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="structured log lines on stderr at this level and above (ERROR)",
    )


def _at_least_one(raw: str) -> int:
    """A whole number of at least 1 (argparse reports anything else as a usage error)."""
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def local_aws() -> Iterator[str]:
    """A moto server on loopback, with this process's AWS variables pointing at it."""
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "the demo needs moto's server for a local S3: pip install "
            "'firehose-splunk-forwarder[demo]'"
        ) from exc
    # moto's server logs every request through werkzeug; the demo's own output says enough.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARIABLES}
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


#: The shaping rule stage 2 shows at work (README "Shaping events"): flow-log records with no
#: traffic to report (NODATA) are dropped before they cost licence, and counted as filtered.
DEMO_ROUTES: Mapping[str, Any] = {
    "routes": [{"log_group": "/aws/vpc/*", "drop": [{"message": "* NODATA"}]}]
}


def demo_settings(
    hec_url: str, *, document: Mapping[str, Any] | None = None, **extra: str
) -> Settings:
    """Settings for the local run: short ack timeout and backoff so faults pass quickly;
    ``document`` is a settings file's content (routes)."""
    environ: Mapping[str, str] = {
        "SPLUNK_HEC_URL": hec_url,
        "SPLUNK_HEC_TOKEN": DEMO_TOKEN,
        "SPLUNK_HEC_ACK_TIMEOUT": "2",
        "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.1",
        "SPLUNK_HEC_RETRY_DURATION": "30",
        "SPLUNK_HEC_RETRY_BACKOFF_BASE": "0.05",
        "SPLUNK_HEC_RETRY_BACKOFF_MAX": "0.5",
        "SPLUNK_HEC_BATCH_MAX_BYTES": "262144",
        "BACKSPLASH_BUCKET": DEMO_BUCKET,
        **extra,
    }
    return load_settings(environ=environ, document=document or {})


@dataclass
class DemoTally:
    """What the run generated, and where every event ended."""

    generated: int = 0
    acknowledged: int = 0
    backsplashed: int = 0
    dropped: int = 0


class Printer:
    """Plain, aligned output for people."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def heading(self, text: str) -> None:
        self.out.write(f"\n== {text}\n")

    def row(self, label: str, value: object) -> None:
        self.out.write(f"   {label:<38} {value}\n")

    def line(self, text: str) -> None:
        self.out.write(f"   {text}\n")


def stage_firehose(printer: Printer, payloads: list[bytes], hec_url: str) -> None:
    """Stage 1: the Firehose transformation Lambda on a generated event."""
    event = firehose_event([*payloads, control_payload(), payloads[0][:25]])
    firehose.use_settings(demo_settings(hec_url))
    try:
        response = firehose.handler(event, None)
    finally:
        firehose.use_settings(None)
    results: dict[str, int] = {}
    out_bytes = 0
    for record in response["records"]:
        results[record["result"]] = results.get(record["result"], 0) + 1
        if record["result"] == "Ok":
            out_bytes += len(base64.b64decode(record["data"]))
    in_bytes = sum(len(p) for p in payloads)
    printer.heading("1. Firehose transform (transforms.firehose.handler)")
    printer.row("records in", len(event["records"]))
    printer.row("results", ", ".join(f"{k} {v}" for k, v in sorted(results.items())))
    printer.row("bytes in (gzip) -> out (HEC JSON)", f"{in_bytes:,} -> {out_bytes:,}")
    first = base64.b64decode(response["records"][0]["data"]).split(b"}{", 1)[0] + b"}"
    printer.line("first HEC event: " + first.decode())
    printer.line("(the corrupt record is ProcessingFailed with its original data, so Firehose")
    printer.line(" backs it up under processing-failed/; the control message is Dropped)")


def _deliver(settings: Settings, s3: Any, payloads: list[bytes]) -> dict[str, Any]:
    backsplash = Backsplash(s3, DEMO_BUCKET, settings.backsplash.prefix)
    with build_delivery(settings, backsplash=backsplash) as deliverer:
        for payload in payloads:
            batch = transform_payload(payload, settings.transform)
            deliverer.ledger.shaped(batch.filtered, batch.sampled, batch.time_unparsed)
            member(deliverer, batch.destination).submit(batch.events, batch.raw_target)
    summary: dict[str, Any] = deliverer.ledger.summary()
    return summary


def _print_ledger(printer: Printer, summary: Mapping[str, Any]) -> None:
    printer.row("events in", f"{summary['events_in']:,}")
    printer.row("acknowledged by the indexer", f"{summary['acknowledged']:,}")
    printer.row("backsplashed to S3", f"{summary['backsplashed']:,}")
    filtered = summary["dropped"].get("filtered")
    if filtered is not None:
        printer.row("filtered by a rule (counted, not lost)", f"{filtered:,}")
    printer.row(
        "requests / retries / ack resends",
        f"{summary['requests']} / {summary['retries']} / {summary['resends']}",
    )
    printer.row("possible duplicates (lost acks)", summary["duplicates_possible"])
    printer.row("ledger balanced", "yes" if summary["balanced"] else "NO")


def stage_replay(hec_url: str, s3: Any, workdir: Path) -> Any:
    """Stage 4: replay the backsplash bucket into HEC with the right token."""
    options = ReplayOptions(state_path=workdir / "replay.sqlite")
    return replay(demo_settings(hec_url), f"s3://{DEMO_BUCKET}/", options, s3_client=s3)


def stage_daemon(printer: Printer, hec_url: str, payloads: list[bytes], workdir: Path) -> int:
    """Stage 5: the daemon reading a local Kinesis stream fed by a log group's subscription."""
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=DEMO_STREAM, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=DEMO_STREAM)
    for number, payload in enumerate(payloads):
        kinesis.put_record(StreamName=DEMO_STREAM, Data=payload, PartitionKey=f"eni-{number}")
    expected = sum(
        len(transform_payload(p, demo_settings(hec_url).transform).events) for p in payloads
    )
    document = {
        "source": {"type": "kinesis", "stream_name": DEMO_STREAM, "poll_interval_s": 0.1},
        "daemon": {
            "checkpoint_store": "file",
            "checkpoint_path": str(workdir / "checkpoints.json"),
            "checkpoint_interval_s": 0.5,
            "metrics_port": 0,
            "shutdown_grace_s": 5,
        },
    }
    status, metrics = run_daemon_demo(
        demo_settings(hec_url),
        load_daemon_settings(document, {}),
        until=lambda ledger: ledger.acknowledged >= expected,
        timeout_s=60,
    )
    printer.heading(
        f"5. forwarder daemon: Kinesis stream {DEMO_STREAM!r} (2 shards) -> HEC, checkpoints, "
        "metrics"
    )
    printer.row("records put into the stream", len(payloads))
    printer.row("daemon exit status", status)
    positions = FileCheckpointStore(workdir / "checkpoints.json").load(DEMO_STREAM)
    printer.row("shards checkpointed after acks", len(positions))
    printer.line("metrics at shutdown (Prometheus, excerpt):")
    for line in metrics.splitlines():
        if line.startswith("forwarder_events_") and "_created" not in line:
            printer.line("  " + line)
    return expected


#: Where stage 6's outage backsplashes (the drain empties this prefix).
OUTAGE_PREFIX = "outage/"


@dataclass
class Healed:
    """What stage 6 did: the outage's ledger, and what the drain then delivered."""

    outage: dict[str, Any]
    drained: int
    left: int


def _wait(predicate: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def stage_outage(
    printer: Printer, hec: HecEmulator, s3: Any, payloads: list[bytes], workdir: Path
) -> Healed:
    """Stage 6: HEC goes down while events arrive (they are backsplashed); the drain, running
    all along, finds the gate shut, and once HEC is back empties the backsplash by itself."""
    printer.heading(
        "6. HEC goes down (connections reset, health 18), then comes back: "
        "the drain heals the backsplash by itself, no manual replay"
    )
    settings = demo_settings(
        hec.url, BACKSPLASH_PREFIX=OUTAGE_PREFIX, SPLUNK_HEC_RETRY_DURATION="1"
    )
    hec.set_faults(FaultPlan(down_for_s=3600))
    outage = _deliver(settings, s3, payloads)
    _print_ledger(printer, outage)
    stop = threading.Event()
    drain = DrainSettings(
        pause_s=0.2, pause_max_s=1.0, interval_s=0.2, probe_interval_s=0.5, settle_s=5.0
    )
    drainer = Drainer(
        demo_settings(hec.url, BACKSPLASH_PREFIX=OUTAGE_PREFIX),
        drain,
        s3_client=s3,
        state=workdir / "drain.sqlite",
        stop=stop,
    )
    thread = threading.Thread(target=drainer.run, name="demo-drain", daemon=True)
    thread.start()

    def left() -> int:
        return len(list(Backsplash(s3, DEMO_BUCKET, OUTAGE_PREFIX).list_keys()))

    try:
        _wait(lambda: drainer.counters.snapshot()["gates_closed"] >= 1, 20)
        printer.row("drain: HEC still down, gate shut", drainer.counters.snapshot()["gates_closed"])
        hec.set_faults(FaultPlan())  # HEC is back
        _wait(lambda: left() == 0, 60)
    finally:
        stop.set()
        thread.join(drain.settle_s + 30)
    counters = drainer.counters.snapshot()
    printer.row("drain cycles after HEC came back", counters["cycles"])
    printer.row("objects drained and deleted", counters["objects_deleted"])
    printer.row("events re-delivered and acknowledged", f"{counters['events_delivered']:,}")
    printer.row("given up (to replay-failed/)", counters["events_abandoned"])
    remaining = left()
    printer.row(f"objects left under s3://{DEMO_BUCKET}/{OUTAGE_PREFIX}", remaining)
    return Healed(outage, counters["events_delivered"], remaining)


def run(args: argparse.Namespace, ctx: CommandContext) -> ExitStatus:
    """``forwarder demo``: run every stage; 0 when every generated event is accounted for."""
    out = ctx.out
    configure_logging(LogSettings(level=args.log_level, format="console"))
    register_secret(DEMO_TOKEN)
    printer = Printer(out)
    tally = DemoTally()
    payloads = flow_log_payloads(args.batches, args.lines)
    with (
        tempfile.TemporaryDirectory(prefix="forwarder-demo-") as workdir,
        local_aws() as aws_url,
        HecEmulator(token=DEMO_TOKEN, output_path=Path(workdir) / "indexed.jsonl") as hec,
    ):
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=DEMO_BUCKET)
        printer.out.write("firehose-splunk-forwarder demo\n")
        printer.row("local HEC emulator (acks on)", hec.url)
        printer.row("local S3 (moto), backsplash bucket", f"{aws_url}  s3://{DEMO_BUCKET}")
        printer.row(
            "generated",
            f"{args.batches} CloudWatch Logs batches x {args.lines} VPC flow log lines",
        )

        stage_firehose(printer, payloads, hec.url)

        half = len(payloads) // 2
        faults = FaultPlan(busy_requests=2, error_500_requests=1, reset_requests=1, lost_acks=1)
        hec.set_faults(faults)
        printer.heading(
            "2. Delivery with indexer acknowledgment; faults injected: 2 busy (503), "
            "1 server error (500), 1 connection reset, 1 lost ack"
        )
        printer.line('shaping rule: [[routes]] log_group = "/aws/vpc/*"')
        printer.line('              drop = [{ message = "* NODATA" }]   (records with no traffic)')
        summary = _deliver(demo_settings(hec.url, document=DEMO_ROUTES), s3, payloads[:half])
        _print_ledger(printer, summary)
        tally.acknowledged += summary["acknowledged"]
        tally.backsplashed += summary["backsplashed"]
        tally.dropped += sum(summary["dropped"].values())
        tally.generated += summary["events_in"]

        hec.set_faults(FaultPlan())
        printer.heading("3. The token is revoked: HEC answers 403, nothing may be lost")
        revoked = demo_settings(hec.url, SPLUNK_HEC_TOKEN="revoked-token-0000")
        summary = _deliver(revoked, s3, payloads[half:])
        _print_ledger(printer, summary)
        tally.acknowledged += summary["acknowledged"]
        tally.backsplashed += summary["backsplashed"]
        tally.generated += summary["events_in"]
        keys = list(Backsplash(s3, DEMO_BUCKET).list_keys())
        printer.row("backsplash objects", len(keys))
        if keys:
            printer.line(f"e.g. s3://{DEMO_BUCKET}/{keys[0]}")
            record = next(Backsplash(s3, DEMO_BUCKET).read(keys[0]))
            shown = {k: record[k] for k in ("errorCode", "errorMessage", "attemptsMade")}
            printer.line("record: " + json.dumps(shown))

        printer.heading("4. The token is fixed: forwarder replay s3://demo-backsplash/")
        report = stage_replay(hec.url, s3, Path(workdir))
        printer.row("objects replayed", report.objects_done)
        printer.row("events re-delivered and acknowledged", f"{report.events_delivered:,}")
        printer.row("failed again (to replay-failed/)", report.events_failed)
        again = stage_replay(hec.url, s3, Path(workdir))
        printer.row("second run sends (state file)", again.events_sent)
        tally.acknowledged += report.events_delivered
        tally.backsplashed -= report.events_delivered

        daemon_payloads = flow_log_payloads(6, args.lines, seed=11)
        delivered = stage_daemon(printer, hec.url, daemon_payloads, Path(workdir))
        tally.generated += delivered
        tally.acknowledged += delivered

        healed = stage_outage(
            printer, hec, s3, flow_log_payloads(4, args.lines, seed=23), Path(workdir)
        )
        tally.generated += healed.outage["events_in"]
        tally.dropped += sum(healed.outage["dropped"].values())
        tally.acknowledged += healed.outage["acknowledged"] + healed.drained
        tally.backsplashed += healed.outage["backsplashed"] - healed.drained

        hec.flush()
        stats = hec.stats()
        printer.heading("Summary")
        printer.row("events generated", f"{tally.generated:,}")
        printer.row("acknowledged by Splunk (emulator)", f"{tally.acknowledged:,}")
        printer.row("still only in the backsplash bucket", f"{tally.backsplashed:,}")
        printer.row("dropped by a shaping rule (counted)", f"{tally.dropped:,}")
        printer.row("indexed by the emulator (with dups)", f"{stats.events_indexed:,}")
        accounted = tally.acknowledged + tally.backsplashed + tally.dropped
        ok = (
            accounted == tally.generated
            and stats.events_indexed >= tally.acknowledged
            and healed.left == 0
        )
        printer.row("every event accounted for", "yes" if ok else "NO")
    return status_for(RunOutcome(error=not ok))
