"""Delivery speed (issue 3): ``forward`` against a naive sender and the wire floor, and memory.

One HEC emulator runs in its own process (so it does not share the sender's GIL), acks on;
every sender gzips its bodies at level 1 (the forwarder's default) and waits until every
ackId is true. On the same flow-log text file of ``--events`` version-2 lines, interleaved:

* ``forward``: :func:`forwarder.commands.forward.forward_stream` with default settings,
  routed as flow logs (``log_group=/aws/vpc/flowlogs``): read, transform, batch, send, poll
  acks, ledger;
* ``naive``: a naive correct sender: per line one ``json.dumps`` of a HEC event envelope (time,
  source, sourcetype, event), 1 MB batches gzipped and posted back to back on one channel with
  one ``requests.Session``, acks polled at the end, no retries;
* ``wire``: the wire floor: the naive sender's gzip bodies, built before the clock starts,
  posted back to back, acks polled at the end: no per-event work at all.

Targets: forward/naive >= 1.0 and forward >= 100,000 events/s (issue 3); forward/wire >= 0.8
(issue 11; the floor is posted to the same emulator process, one request at a time).
``--concurrency N|adaptive`` sets ``SPLUNK_HEC_CONCURRENCY`` in ``forward``'s settings (a tree
whose deliverer does not read it ignores it). Whole processes, two URLs and the daemon as a
process: ``bench_processes.py``.
Memory: a fresh subprocess forwards ``--memory-events`` events from a file to the same
emulator and reports its ``VmHWM`` (target < 200 MB). Each run checks the emulator's indexed
count, so a fast wrong sender cannot win.

Run: ``.venv/bin/python benchmarks/bench_delivery.py [--events N] [--memory-events N]
[--concurrency N|adaptive]``
(``--profile`` prints the hottest functions of one ``forward`` run).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.common import median_seconds
from config.loader import load_settings
from config.logs import configure_logging
from config.settings import LogSettings, Settings
from forwarder.commands.forward import forward_stream
from forwarder.devtools.synthetic import FlowLogGenerator
from forwarder.hec.client import DEFAULT_GZIP_LEVEL

TOKEN = "00000000-bench-0000-0000-000000000000"
LOG_GROUP = "/aws/vpc/flowlogs"
LOG_STREAM = "bench"
SOURCETYPE = "aws:cloudwatchlogs:vpcflow"
BATCH_BYTES = 1_000_000
TARGET_RATIO = 1.0
TARGET_EVENTS_S = 100_000
TARGET_WIRE_RATIO = 0.8
MEMORY_LIMIT_MB = 200
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------- shared with bench_daemon


def quiet() -> None:
    """Warnings and errors only, as JSON (the benchmark prints its own table)."""
    configure_logging(LogSettings(level="WARNING", format="json"))


def write_flow_file(path: Path, events: int, *, seed: int = 7) -> int:
    """Write ``events`` version-2 flow-log lines to ``path``; return its size in bytes."""
    generator = FlowLogGenerator(seed=seed)
    step = 100_000
    with path.open("w", encoding="ascii", newline="\n") as handle:
        for offset in range(0, events, step):
            lines = generator.lines(min(step, events - offset), offset=offset)
            handle.write("\n".join(lines))
            handle.write("\n")
    return path.stat().st_size


@dataclass
class Emulator:
    """A ``forwarder hec-emulator`` subprocess: its URL and pid."""

    url: str
    pid: int

    def stats(self) -> dict[str, Any]:
        """The emulator's counters (``GET /emulator/stats``)."""
        answer: dict[str, Any] = requests.get(f"{self.url}/emulator/stats", timeout=10).json()
        return answer

    def indexed(self) -> int:
        """Events indexed so far."""
        return int(self.stats()["events_indexed"])

    def cpu_seconds(self) -> float:
        """User + system CPU time the emulator process has used (Linux /proc)."""
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` from ``/proc/<pid>/stat`` (0 elsewhere)."""
    import os

    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def emulator_process(*extra: str) -> Iterator[Emulator]:
    """Run ``forwarder hec-emulator`` on a free loopback port in its own process."""
    command = [sys.executable, "-m", "forwarder", "hec-emulator", "--port", "0", "--token", TOKEN]
    process = subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        if "listening on" not in first:
            raise RuntimeError(f"the HEC emulator did not start: {first!r}")
        yield Emulator(url=first.strip().rsplit(" ", 1)[-1], pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def hec_settings(url: str, **extra: str) -> Settings:
    """Default settings (acks and gzip on) pointed at ``url``."""
    return load_settings(
        environ={"SPLUNK_HEC_URL": url, "SPLUNK_HEC_TOKEN": TOKEN, "LOG_LEVEL": "WARNING", **extra}
    )


def run_forward(path: Path, settings: Settings) -> dict[str, Any]:
    """``forward_stream`` over the file; returns the ledger summary (checked balanced)."""
    with path.open("rb") as handle:
        report = forward_stream(handle, settings, log_group=LOG_GROUP, log_stream=LOG_STREAM)
    summary = report.summary
    if not summary["balanced"] or summary["backsplashed"] or report.fatal:
        raise RuntimeError(f"forward did not deliver everything: {summary}")
    return summary


def vm_kb(field: str, pid: int | str = "self") -> int:
    """``VmHWM`` / ``VmRSS`` of a process in KiB (0 if unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------- the naive sender, the floor


class _NaiveHec:
    """The least a correct acked sender does: one session, one channel, no retries."""

    def __init__(self, url: str) -> None:
        self.session = requests.Session()
        self.event_url = f"{url}/services/collector/event"
        self.ack_url = f"{url}/services/collector/ack"
        channel = str(uuid.uuid4())
        self.headers = {
            "Authorization": f"Splunk {TOKEN}",
            "X-Splunk-Request-Channel": channel,
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        }
        self.ack_headers = {
            "Authorization": f"Splunk {TOKEN}",
            "X-Splunk-Request-Channel": channel,
            "Content-Type": "application/json",
        }
        self.ack_ids: list[int] = []

    def post(self, body: bytes) -> None:
        response = self.session.post(self.event_url, data=body, headers=self.headers, timeout=30)
        answer = response.json()
        if response.status_code != 200 or answer.get("code") != 0:
            raise RuntimeError(f"HEC refused a batch: {response.status_code} {answer}")
        self.ack_ids.append(int(answer["ackId"]))

    def await_acks(self, timeout_s: float = 60.0) -> None:
        pending = list(self.ack_ids)
        end = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > end:
                raise RuntimeError(f"{len(pending)} acks not confirmed")
            response = self.session.post(
                self.ack_url, json={"acks": pending}, headers=self.ack_headers, timeout=30
            )
            acks = response.json()["acks"]
            pending = [i for i in pending if not acks.get(str(i))]
            if pending:
                time.sleep(0.01)
        self.session.close()


def _naive_bodies(path: Path) -> Iterator[bytes]:
    """The naive sender's gzip bodies: one ``json.dumps`` per line, 1 MB before gzip."""
    source = f"{LOG_GROUP}:{LOG_STREAM}"
    parts: list[bytes] = []
    size = 0
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not line:
                continue
            data = json.dumps(
                {
                    "time": int(line.split(" ", 11)[10]),
                    "source": source,
                    "sourcetype": SOURCETYPE,
                    "event": line,
                }
            ).encode()
            if parts and size + len(data) + 1 > BATCH_BYTES:
                yield gzip.compress(b"\n".join(parts), compresslevel=DEFAULT_GZIP_LEVEL, mtime=0)
                parts, size = [], 0
            parts.append(data)
            size += len(data) + 1
    if parts:
        yield gzip.compress(b"\n".join(parts), compresslevel=DEFAULT_GZIP_LEVEL, mtime=0)


def run_naive(path: Path, url: str) -> int:
    """Encode, gzip and post as we go; then wait for every ack. Returns the requests made."""
    hec = _NaiveHec(url)
    for body in _naive_bodies(path):
        hec.post(body)
    hec.await_acks()
    return len(hec.ack_ids)


def run_wire(bodies: list[bytes], url: str) -> int:
    """Post ready-made bodies back to back; then wait for every ack."""
    hec = _NaiveHec(url)
    for body in bodies:
        hec.post(body)
    hec.await_acks()
    return len(hec.ack_ids)


# --------------------------------------------------------------------- memory (subprocess)


def memory_child(config: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: forward the big file, report peak RSS (run by ``main``)."""
    quiet()
    concurrency = config.get("concurrency")
    extra = {"SPLUNK_HEC_CONCURRENCY": concurrency} if concurrency else {}
    settings = hec_settings(config["hec"], **extra)
    base_kb = vm_kb("VmHWM")
    started = time.perf_counter()
    summary = run_forward(Path(config["path"]), settings)
    seconds = time.perf_counter() - started
    return {
        "events": summary["acknowledged"],
        "seconds": round(seconds, 2),
        "events_s": round(summary["acknowledged"] / seconds),
        "requests": summary["requests"],
        "rss_after_imports_mb": round(base_kb / 1024, 1),
        "peak_rss_mb": round(vm_kb("VmHWM") / 1024, 1),
    }


def _memory(
    emulator: Emulator, events: int, tmp: Path, concurrency: str | None = None
) -> dict[str, Any]:
    path = tmp / "memory.log"
    size = write_flow_file(path, events, seed=11)
    before = emulator.indexed()
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            json.dumps({"hec": emulator.url, "path": str(path), "concurrency": concurrency}),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    child = json.loads(done.stdout.strip().splitlines()[-1])
    path.unlink()
    if child["events"] != events or emulator.indexed() - before != events:
        raise RuntimeError(f"memory run delivered {child['events']} of {events}")
    return {"file_mb": round(size / 1e6, 1), **child, "limit_mb": MEMORY_LIMIT_MB}


# --------------------------------------------------------------------- main


def _profile(path: Path, settings: Settings, top: int = 18) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_forward(path, settings)
    profiler.disable()
    print(f"\nprofile of one forward run (top {top} by own time)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a table; return the numbers (``run.py`` passes no flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="events per run (300,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument(
        "--memory-events", type=int, default=1_000_000, help="events of the memory run (1,000,000)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile one forward run")
    parser.add_argument(
        "--concurrency", help="SPLUNK_HEC_CONCURRENCY for forward (default: not set)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 30,000 events, 1 run")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.quick:
        args.events, args.repeats, args.memory_events = 30_000, 1, 100_000
    if args.memory_child:
        result = memory_child(json.loads(args.memory_child))
        print(json.dumps(result))
        return result

    quiet()
    events = args.events
    results: dict[str, Any] = {"events": events}
    with tempfile.TemporaryDirectory() as tmp_name, emulator_process() as emulator:
        tmp = Path(tmp_name)
        path = tmp / "flow.log"
        results["file_mb"] = round(write_flow_file(path, events) / 1e6, 1)
        extra = {"SPLUNK_HEC_CONCURRENCY": args.concurrency} if args.concurrency else {}
        results["concurrency"] = args.concurrency
        settings = hec_settings(emulator.url, **extra)
        bodies = list(_naive_bodies(path))
        results["wire_requests"] = len(bodies)
        results["wire_gzip_mb"] = round(sum(map(len, bodies)) / 1e6, 1)

        emulator_cpu: dict[str, list[float]] = {"forward": [], "naive": [], "wire": []}

        def timed(name: str, fn: Any) -> Any:
            def run() -> None:
                before_indexed, before_cpu = emulator.indexed(), emulator.cpu_seconds()
                fn()
                emulator_cpu[name].append(emulator.cpu_seconds() - before_cpu)
                indexed = emulator.indexed() - before_indexed
                if indexed != events:
                    raise RuntimeError(f"{name}: the emulator indexed {indexed} of {events}")

            return run

        times = median_seconds(
            {
                "forward": timed("forward", lambda: run_forward(path, settings)),
                "naive": timed("naive", lambda: run_naive(path, emulator.url)),
                "wire": timed("wire", lambda: run_wire(bodies, emulator.url)),
            },
            repeats=args.repeats,
        )
        rates = {name: events / seconds for name, seconds in times.items()}
        for name, seconds in times.items():
            cpu = sorted(emulator_cpu[name])[len(emulator_cpu[name]) // 2]
            results[name] = {
                "seconds": round(seconds, 3),
                "events_s": round(rates[name]),
                "emulator_cpu_share": round(cpu / seconds, 2),
            }
        results["forward_over_naive"] = round(rates["forward"] / rates["naive"], 2)
        results["forward_over_wire"] = round(rates["forward"] / rates["wire"], 2)
        results["target_ratio"] = TARGET_RATIO
        results["target_events_s"] = TARGET_EVENTS_S
        results["target_wire_ratio"] = TARGET_WIRE_RATIO
        _print_throughput(results)
        if args.profile:
            _profile(path, settings)
        path.unlink()
        if not args.skip_memory:
            results["memory"] = _memory(emulator, args.memory_events, tmp, args.concurrency)
            _print_memory(results["memory"])
    return results


def _print_throughput(results: dict[str, Any]) -> None:
    print(
        f"Delivery to one HEC emulator process, acks + gzip, {results['events']:,} VPC flow "
        f"events ({results['file_mb']} MB text; median of interleaved runs; "
        f"SPLUNK_HEC_CONCURRENCY {results.get('concurrency') or 'not set'})"
    )
    print(f"{'sender':<10}{'seconds':>10}{'events/s':>12}{'emulator CPU':>14}")
    for name in ("forward", "naive", "wire"):
        row = results[name]
        print(
            f"{name:<10}{row['seconds']:>10.2f}{row['events_s']:>12,}"
            f"{row['emulator_cpu_share']:>13.0%}"
        )
    ratio = results["forward_over_naive"]
    rate = results["forward"]["events_s"]
    print(
        f"forward / naive: {ratio:.2f} (target >= {TARGET_RATIO})"
        + ("" if ratio >= TARGET_RATIO else "  (BELOW TARGET)")
    )
    print(
        f"forward: {rate:,} events/s (target >= {TARGET_EVENTS_S:,})"
        + ("" if rate >= TARGET_EVENTS_S else "  (BELOW TARGET)")
    )
    wire = results["forward_over_wire"]
    print(
        f"forward / wire floor: {wire:.2f} (target >= {TARGET_WIRE_RATIO})"
        + ("" if wire >= TARGET_WIRE_RATIO else "  (BELOW TARGET)")
    )


def _print_memory(memory: dict[str, Any]) -> None:
    peak = memory["peak_rss_mb"]
    print(
        f"memory: forward of {memory['events']:,} events ({memory['file_mb']} MB file) in a fresh "
        f"process: peak RSS {peak} MB (after imports {memory['rss_after_imports_mb']} MB; "
        f"target < {MEMORY_LIMIT_MB} MB){'' if peak < MEMORY_LIMIT_MB else '  (OVER TARGET)'}; "
        f"{memory['events_s']:,} events/s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
