"""Daemon speed and memory (issue 4): a files source against ``forward``, and HEC down.

Throughput: one HEC emulator in its own process, acks and gzip on, default settings. On the
same flow-log file of ``--events`` lines, interleaved in this process:

* ``forward``: :func:`forwarder.commands.forward.forward_stream` (the ``forwarder forward`` engine);
* ``daemon``: :class:`forwarder.daemon.Daemon` with a ``files`` source, run in this process's
  main thread until the file is exhausted (its final flush included), metrics server on, no
  checkpoint store (a files source has nothing to commit).

Both run in-process so that neither pays interpreter start-up and both share the same
machine state; the ratio daemon/forward is the target (>= 0.8).

Memory while HEC is down: the emulator is down (connections reset) for the whole run; a
``forwarder daemon --config FILE`` subprocess reads a ``--backlog-events`` file; its VmRSS is
sampled for ``--down-seconds`` seconds (target: peak < 200 MB, i.e. backpressure rather than
buffering the backlog). Then SIGTERM: it should exit within its grace period
(``shutdown_grace_s``), backsplashing what is pending into a local spool directory.

Run: ``.venv/bin/python benchmarks/bench_daemon.py [--events N] [--backlog-events N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_delivery import (
    LOG_GROUP,
    ROOT,
    TOKEN,
    Emulator,
    emulator_process,
    hec_settings,
    quiet,
    run_forward,
    vm_kb,
    write_flow_file,
)
from benchmarks.common import median_seconds
from config.daemon import DaemonSettings, SourceSettings
from config.settings import Settings
from forwarder.daemon import Daemon
from forwarder.status import ExitStatus

TARGET_RATIO = 0.8
MEMORY_LIMIT_MB = 200
GRACE_S = 5.0


def run_daemon(path: Path, settings: Settings, *, metrics: bool = True) -> dict[str, Any]:
    """A files-source daemon over ``path`` until the file is exhausted; the ledger summary."""
    daemon_settings = DaemonSettings(
        source=SourceSettings(type="files", paths=(str(path),), log_group=LOG_GROUP),
        checkpoint_store="none",
        metrics_port=0,
        metrics_enabled=metrics,
    )
    daemon = Daemon(settings, daemon_settings)
    status = daemon.run()
    summary = daemon.deliverer.ledger.summary()
    if status != ExitStatus.OK or not summary["balanced"] or summary["backsplashed"]:
        raise RuntimeError(f"the daemon did not deliver everything (exit {status}): {summary}")
    return summary


def _throughput(emulator: Emulator, events: int, repeats: int, tmp: Path) -> dict[str, Any]:
    path = tmp / "flow.log"
    size = write_flow_file(path, events)
    settings = hec_settings(emulator.url)

    def checked(name: str, fn: Any) -> Any:
        def run() -> None:
            before = emulator.indexed()
            fn()
            indexed = emulator.indexed() - before
            if indexed != events:
                raise RuntimeError(f"{name}: the emulator indexed {indexed} of {events}")

        return run

    times = median_seconds(
        {
            "forward": checked("forward", lambda: run_forward(path, settings)),
            "daemon": checked("daemon", lambda: run_daemon(path, settings)),
            "daemon_no_metrics": checked(
                "daemon_no_metrics", lambda: run_daemon(path, settings, metrics=False)
            ),
        },
        repeats=repeats,
    )
    path.unlink()
    return {
        "events": events,
        "file_mb": round(size / 1e6, 1),
        "forward_s": round(times["forward"], 3),
        "daemon_s": round(times["daemon"], 3),
        "forward_events_s": round(events / times["forward"]),
        "daemon_events_s": round(events / times["daemon"]),
        "daemon_no_metrics_s": round(times["daemon_no_metrics"], 3),
        "daemon_no_metrics_events_s": round(events / times["daemon_no_metrics"]),
        "daemon_over_forward": round(times["forward"] / times["daemon"], 2),
        "daemon_no_metrics_over_forward": round(times["forward"] / times["daemon_no_metrics"], 2),
        "target_ratio": TARGET_RATIO,
    }


def _config(path: Path, hec_url: str, spool: Path, config: Path) -> None:
    config.write_text(
        f"""splunk_hec_url = "{hec_url}"
splunk_hec_token = "{TOKEN}"
log_level = "WARNING"
log_format = "json"
backsplash_spool_dir = "{spool}"

[daemon]
checkpoint_store = "none"
shutdown_grace_s = {GRACE_S}
metrics_port = 0

[source]
type = "files"
paths = ["{path}"]
log_group = "{LOG_GROUP}"
"""
    )


def _down(events: int, seconds: float, tmp: Path) -> dict[str, Any]:
    path = tmp / "backlog.log"
    size = write_flow_file(path, events, seed=13)
    spool = tmp / "spool"
    config = tmp / "daemon.toml"
    log_path = tmp / "daemon.log"
    # Down for longer than the run: every data request has its connection reset.
    with emulator_process("--down-for", "3600") as emulator, log_path.open("w") as log:
        _config(path, emulator.url, spool, config)
        process = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "daemon", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
        )
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds and process.poll() is None:
                samples.append((time.monotonic() - started, vm_kb("VmRSS", process.pid)))
                time.sleep(0.1)
            early_exit = process.poll()
            hwm_kb = vm_kb("VmHWM", process.pid)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            shutdown_peak_kb = 0
            while process.poll() is None and time.monotonic() - signalled < GRACE_S + 60:
                shutdown_peak_kb = max(shutdown_peak_kb, vm_kb("VmRSS", process.pid))
                time.sleep(0.05)
            exit_s = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        stats = emulator.stats()
    summary = _last_summary(log_path)
    rss = [kb for _, kb in samples if kb]
    half = len(rss) // 2
    return {
        "backlog_events": events,
        "backlog_file_mb": round(size / 1e6, 1),
        "down_seconds": seconds,
        "exited_before_sigterm": early_exit,
        "peak_rss_mb": round(max(rss, default=0) / 1024, 1),
        "vm_hwm_mb": round(hwm_kb / 1024, 1),
        "rss_first_half_peak_mb": round(max(rss[:half], default=0) / 1024, 1),
        "rss_second_half_peak_mb": round(max(rss[half:], default=0) / 1024, 1),
        "shutdown_peak_rss_mb": round(shutdown_peak_kb / 1024, 1),
        "exit_status": process.returncode,
        "exit_seconds_after_sigterm": round(exit_s, 2),
        "grace_s": GRACE_S,
        "emulator_down_resets": stats["faults_injected"].get("down", 0),
        "ledger": summary,
        **_spooled(spool),
        "limit_mb": MEMORY_LIMIT_MB,
    }


def _spooled(spool: Path) -> dict[str, int]:
    """Objects and events (lines) the daemon backsplashed into its spool directory."""
    objects = events = 0
    for item in spool.rglob("*") if spool.exists() else ():
        if item.is_file():
            objects += 1
            with contextlib.suppress(OSError, EOFError), gzip.open(item, "rb") as handle:
                events += sum(1 for _ in handle)
    return {"spool_objects": objects, "spooled_events": events}


def _last_summary(log_path: Path) -> dict[str, Any] | None:
    """The daemon's last ``delivery_summarized`` log line, if it logged one at WARNING+."""
    found = None
    for line in log_path.read_text(errors="replace").splitlines():
        if "delivery_summarized" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        keys = ("events_in", "acknowledged", "backsplashed", "in_flight", "balanced")
        found = {k: record.get(k) for k in keys}
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a table; return the numbers (``run.py`` passes no flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="events per run (300,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument(
        "--backlog-events", type=int, default=1_000_000, help="file size while HEC is down"
    )
    parser.add_argument("--down-seconds", type=float, default=20.0, help="RSS sampling time")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args([] if argv is None else argv)

    quiet()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with emulator_process() as emulator:
            results["throughput"] = _throughput(emulator, args.events, args.repeats, tmp)
        _print_throughput(results["throughput"])
        if not args.skip_memory:
            results["hec_down"] = _down(args.backlog_events, args.down_seconds, tmp)
            _print_down(results["hec_down"])
    return results


def _print_throughput(row: dict[str, Any]) -> None:
    print(
        f"Daemon (files source, in-process) vs forward_stream, {row['events']:,} VPC flow events "
        f"({row['file_mb']} MB), acks + gzip, one emulator process; median of interleaved runs"
    )
    print(f"{'engine':<14}{'seconds':>10}{'events/s':>12}")
    print(f"{'forward':<14}{row['forward_s']:>10.2f}{row['forward_events_s']:>12,}")
    print(f"{'daemon':<14}{row['daemon_s']:>10.2f}{row['daemon_events_s']:>12,}")
    print(
        f"{'(metrics off)':<14}{row['daemon_no_metrics_s']:>10.2f}"
        f"{row['daemon_no_metrics_events_s']:>12,}"
    )
    ratio = row["daemon_over_forward"]
    print(
        f"daemon / forward: {ratio:.2f} (target >= {TARGET_RATIO})"
        + ("" if ratio >= TARGET_RATIO else "  (BELOW TARGET)")
        + f"; with the metrics server off: {row['daemon_no_metrics_over_forward']:.2f}"
    )


def _print_down(row: dict[str, Any]) -> None:
    peak = max(row["peak_rss_mb"], row["vm_hwm_mb"])
    print(
        f"HEC down for {row['down_seconds']:g} s, daemon subprocess reading a "
        f"{row['backlog_events']:,}-event file ({row['backlog_file_mb']} MB):"
    )
    print(
        f"  peak RSS {peak} MB (target < {MEMORY_LIMIT_MB} MB)"
        + ("" if peak < MEMORY_LIMIT_MB else "  (OVER TARGET)")
        + f"; first half {row['rss_first_half_peak_mb']} MB, second half "
        f"{row['rss_second_half_peak_mb']} MB; during shutdown {row['shutdown_peak_rss_mb']} MB"
    )
    print(
        f"  SIGTERM -> exit {row['exit_status']} after {row['exit_seconds_after_sigterm']} s "
        f"(grace {row['grace_s']:g} s); spooled {row['spooled_events']:,} events in "
        f"{row['spool_objects']} objects" + (f"; ledger {row['ledger']}" if row["ledger"] else "")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
