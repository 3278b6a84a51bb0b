"""Delivery as a user runs it (issue 11): whole processes against HEC emulator processes.

Every sender here is a fresh process timed from spawn to exit (start-up included, cached
bytecode), the runs interleaved, each checked against the emulators' indexed counts, so a
fast wrong sender cannot win. The HEC emulators run in their own processes, acks and gzip on.
Inputs hold the same ``--events`` version-2 flow-log lines (FlowLogGenerator, seed 7):

* a gzip CloudWatch Logs payload (``forwarder.devtools.synthetic.cloudwatch_payload``);
* the same lines as a flow-log text file (what the daemon's ``files`` source reads).

Figures (targets of issue 11):

1. ``forward``: ``python -m forwarder forward`` on the CloudWatch Logs file against
   ``benchmarks/minimal_sender.py`` (one ``json.dumps`` per event, ~1 MB gzip batches posted
   back to back, acks polled at the end) on the same file: target >= 1.8x.
2. two URLs: the same ``forward`` with ``SPLUNK_HEC_URL`` naming two emulator processes,
   against one URL: target >= 1.5x. Before it, whether one emulator process is the
   bottleneck: the wire floor (pre-built gzip batches, no per-event work) posted by one
   client to one emulator, by two concurrent clients to one emulator, and by two clients to
   two emulators. If two clients get no more from one emulator than one client does, but
   more from two, one emulator process is saturated. Every row also gives the events per
   emulator CPU second (the emulators' own CPU time from ``/proc``): what one emulator process
   takes with a core to itself, which a loaded machine moves much less than events/s.
3. daemon: ``python -m forwarder daemon`` with a ``files`` source over the text file (it
   exits when the input ends) against ``forward`` of the same text file: target >= 0.9.
   The daemon runs with ``SPLUNK_HEC_CONCURRENCY=--daemon-concurrency`` (adaptive).
4. memory: ``forward`` of ``--memory-events`` (1,000,000) flow-log lines from a text file
   (the streaming path; a single CloudWatch payload that big passes
   ``MAX_DECOMPRESSED_BYTES``): peak RSS, ``ru_maxrss`` of the child read by a small
   wrapper process (a child of the benchmark itself would report the benchmark's own peak:
   Linux carries the parent's high-water mark across ``exec``): target < 200 MB.

``--concurrency 1,4,adaptive`` repeats figures 1-3 for each value of ``SPLUNK_HEC_CONCURRENCY``
given to the ``forward`` and daemon processes (``default``: not set). A tree whose deliverer
does not read that variable ignores it. In-process, ``forward_stream`` against the wire floor
is ``bench_delivery.py``'s figure.

``--base-tree DIR`` (a source tree of another revision, e.g. ``git archive 184ea29 | tar -x
-C DIR``) adds that tree's ``forward`` and daemon to the same rounds (``python -m forwarder``
run from DIR imports DIR's code), so a change is measured against its base under the same load.

Run: ``.venv/bin/python benchmarks/bench_processes.py [--quick] [--repeats N]
[--concurrency LIST] [--base-tree DIR] [--skip-check] [--skip-memory]``
(``make bench-delivery``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_delivery import (
    LOG_GROUP,
    ROOT,
    TOKEN,
    Emulator,
    _naive_bodies,
    _NaiveHec,
    emulator_process,
    write_flow_file,
)
from benchmarks.common import machine
from forwarder.devtools.synthetic import cloudwatch_payload

MINIMAL_SENDER = Path(__file__).with_name("minimal_sender.py")
TARGETS = {"forward_over_minimal": 1.8, "two_urls_over_one": 1.5, "daemon_over_forward": 0.9}
MEMORY_LIMIT_MB = 200
DEFAULT = "default"
# Stops a hung child; far above any honest run of the sizes here.
CHILD_TIMEOUT_S = 600.0


def child_env(concurrency: str = DEFAULT, **extra: str) -> dict[str, str]:
    """A child's environment: no stray settings, bytecode cached, warnings-only JSON logs."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPLUNK_", "BACKSPLASH_", "FORWARDER_", "MAX_DECOMPRESSED"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(SPLUNK_HEC_TOKEN=TOKEN, LOG_LEVEL="WARNING", LOG_FORMAT="json", **extra)
    if concurrency != DEFAULT:
        env["SPLUNK_HEC_CONCURRENCY"] = concurrency
    return env


def run_child(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run one child to completion (``python -m`` imports from ``cwd``, this tree by
    default); its stdout. A failing child fails the benchmark."""
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[1:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def write_inputs(tmp: Path, events: int) -> tuple[Path, Path]:
    """The flow-log text file and a CloudWatch Logs payload of the same lines."""
    text = tmp / "flow.log"
    write_flow_file(text, events)
    lines = text.read_text(encoding="ascii").splitlines()
    payload = tmp / "cloudwatch.json.gz"
    payload.write_bytes(cloudwatch_payload(lines, log_group=LOG_GROUP))
    return text, payload


def daemon_config(tmp: Path, text: Path) -> Path:
    """A settings file for a files-source daemon over ``text`` (HEC settings come from env)."""
    config = tmp / "daemon.toml"
    config.write_text(
        f'backsplash_spool_dir = "{tmp / "spool"}"\n\n'
        '[daemon]\ncheckpoint_store = "none"\nmetrics_port = 0\n\n'
        f'[source]\ntype = "files"\npaths = ["{text}"]\nlog_group = "{LOG_GROUP}"\n'
    )
    return config


#: Each case's emulator CPU seconds per run (all its emulators together), in run order.
EMULATOR_CPU: dict[str, list[float]] = {}


def checked(
    emulators: list[Emulator], events: int, name: str, fn: Callable[[], object]
) -> Callable[[], None]:
    """``fn`` wrapped so that the emulators must have indexed exactly ``events`` more; the
    emulators' CPU time goes to :data:`EMULATOR_CPU`."""

    def run() -> None:
        before = sum(emulator.indexed() for emulator in emulators)
        cpu = sum(emulator.cpu_seconds() for emulator in emulators)
        fn()
        EMULATOR_CPU.setdefault(name, []).append(
            sum(emulator.cpu_seconds() for emulator in emulators) - cpu
        )
        indexed = sum(emulator.indexed() for emulator in emulators) - before
        if indexed != events:
            raise RuntimeError(f"{name}: the emulators indexed {indexed} of {events}")

    return run


def interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Wall seconds of each candidate, ``repeats`` rounds in turn after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return samples


# --------------------------------------------------------------------- is one emulator the limit?


def wire_floor(bodies: list[bytes], urls: list[str], clients: int) -> None:
    """Post the ready-made bodies with ``clients`` concurrent clients (threads), client ``i``
    to ``urls[i % len(urls)]``, each on its own channel; then wait for every ack."""
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            hec = _NaiveHec(urls[index % len(urls)])
            for body in bodies[index::clients]:
                hec.post(body)
            hec.await_acks()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def emulator_check(
    text: Path, events: int, *, one: Emulator, two: Emulator, repeats: int, warmup: int
) -> dict[str, Any]:
    """The wire floor against one and two emulator processes, with the emulators' CPU."""
    bodies = list(_naive_bodies(text))
    both = [one, two]
    cases = {
        "1 client, 1 emulator": ([one.url], 1),
        "2 clients, 1 emulator": ([one.url], 2),
        "2 clients, 2 emulators": ([one.url, two.url], 2),
    }

    def case(name: str, urls: list[str], clients: int) -> Callable[[], None]:
        return checked(both, events, name, lambda: wire_floor(bodies, urls, clients))

    samples = interleaved(
        {name: case(name, urls, clients) for name, (urls, clients) in cases.items()},
        repeats,
        warmup,
    )
    return {name: _rates(events, samples[name], name) for name in cases}


# --------------------------------------------------------------------- memory


WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)


def memory(emulator: Emulator, events: int, tmp: Path, concurrency: str) -> dict[str, Any]:
    """Peak RSS of ``forward`` over a text file of ``events`` flow-log lines."""
    path = tmp / "memory.log"
    size = write_flow_file(path, events, seed=11)
    before = emulator.indexed()
    argv = [sys.executable, "-m", "forwarder", "forward", str(path), "--log-group", LOG_GROUP]
    started = time.perf_counter()
    out = run_child(
        [sys.executable, "-c", WRAPPER, *argv],
        child_env(concurrency, SPLUNK_HEC_URL=emulator.url),
    )
    seconds = time.perf_counter() - started
    path.unlink()
    maxrss_kb, code = (int(x) for x in out.split())
    indexed = emulator.indexed() - before
    if code != 0 or indexed != events:
        raise RuntimeError(f"memory run: exit {code}, indexed {indexed} of {events}")
    return {
        "events": events,
        "file_mb": round(size / 1e6, 1),
        "seconds": round(seconds, 2),
        "events_s": round(events / seconds),
        "peak_rss_mb": round(maxrss_kb / 1024, 1),
        "limit_mb": MEMORY_LIMIT_MB,
    }


# --------------------------------------------------------------------- main


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def _rates(events: int, seconds: list[float], name: str) -> dict[str, Any]:
    """Events/s (median, range) and the emulators' share of the work: their CPU seconds, and
    the events per emulator CPU second (what one emulator process could take with a core to
    itself; a sender near that rate is limited by the emulator, whatever the load)."""
    rates = sorted(events / s for s in seconds)
    cpu = statistics.median(EMULATOR_CPU[name][-len(seconds) :])
    return {
        "seconds": [round(s, 3) for s in seconds],
        "events_s": round(statistics.median(rates)),
        "events_s_range": [round(rates[0]), round(rates[-1])],
        "emulator_cpu_s": round(cpu, 3),
        "events_per_emulator_cpu_s": round(events / cpu) if cpu else None,
    }


def _ratios(samples: dict[str, list[float]], case: str, reference: str) -> list[float]:
    """Rate of ``case`` over rate of ``reference``, round by round (same round, same load)."""
    return sorted(round(r / c, 2) for c, r in zip(samples[case], samples[reference], strict=True))


def throughput(
    text: Path,
    payload: Path,
    events: int,
    *,
    one: Emulator,
    two: Emulator,
    concurrencies: list[str],
    daemon_concurrency: str,
    config: Path,
    repeats: int,
    warmup: int,
    base: Path | None = None,
) -> dict[str, Any]:
    """Figures 1-3, every process of every concurrency interleaved in each round; with
    ``base`` (another source tree), its ``forward`` and daemon too, in the same rounds."""
    python = sys.executable
    forward = [python, "-m", "forwarder", "forward"]
    candidates: dict[str, Callable[[], object]] = {
        "minimal": checked(
            [one],
            events,
            "minimal",
            lambda: run_child(
                [python, str(MINIMAL_SENDER), one.url, TOKEN, str(payload)], child_env()
            ),
        )
    }
    for n in concurrencies:
        one_url = child_env(n, SPLUNK_HEC_URL=one.url)
        two_urls = child_env(n, SPLUNK_HEC_URL=f"{one.url},{two.url}")
        daemon_env = child_env(daemon_concurrency, SPLUNK_HEC_URL=one.url)
        cases: dict[str, tuple[list[str], dict[str, str], list[Emulator]]] = {
            f"forward[{n}]": ([*forward, str(payload)], one_url, [one]),
            f"forward 2 urls[{n}]": ([*forward, str(payload)], two_urls, [one, two]),
            f"forward text[{n}]": ([*forward, str(text), "--log-group", LOG_GROUP], one_url, [one]),
            f"daemon[{n}]": (
                [python, "-m", "forwarder", "daemon", "--config", str(config)],
                daemon_env,
                [one],
            ),
        }
        runs = {
            name: (argv, env, emulators, ROOT) for name, (argv, env, emulators) in cases.items()
        }
        if base is not None:
            for name in (f"forward[{n}]", f"daemon[{n}]"):
                argv, env, emulators = cases[name]
                runs[f"base {name}"] = (argv, env, emulators, base)
        for name, (argv, env, emulators, cwd) in runs.items():
            candidates[name] = checked(
                emulators, events, name, functools.partial(run_child, argv, env, cwd)
            )
    samples = interleaved(candidates, repeats, warmup)
    results: dict[str, Any] = {name: _rates(events, s, name) for name, s in samples.items()}
    results["ratios"] = {
        n: {
            "forward_over_minimal": _ratios(samples, f"forward[{n}]", "minimal"),
            "two_urls_over_one": _ratios(samples, f"forward 2 urls[{n}]", f"forward[{n}]"),
            "daemon_over_forward": _ratios(samples, f"daemon[{n}]", f"forward text[{n}]"),
        }
        for n in concurrencies
    }
    if base is not None:
        for n in concurrencies:
            results["ratios"][n] |= {
                "base_forward_over_minimal": _ratios(samples, f"base forward[{n}]", "minimal"),
                "forward_over_base": _ratios(samples, f"forward[{n}]", f"base forward[{n}]"),
                "daemon_over_base": _ratios(samples, f"daemon[{n}]", f"base daemon[{n}]"),
            }
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; return the numbers (``run.py`` passes no flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run (200,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--memory-events", type=int, default=1_000_000, help="(1,000,000)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--concurrency",
        default=DEFAULT,
        help="comma-separated SPLUNK_HEC_CONCURRENCY values for forward and the daemon, e.g. "
        "1,4,adaptive ('default': not set)",
    )
    parser.add_argument("--daemon-concurrency", default="adaptive", help="the daemon's (adaptive)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20,000 events, one round, no warm-up"
    )
    parser.add_argument("--output", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--base-tree",
        type=Path,
        help="another source tree (e.g. `git archive REV | tar -x -C DIR`): its forward and "
        "daemon run in the same rounds, as `base forward[N]` and `base daemon[N]`",
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="skip the wire-floor emulator check"
    )
    args = parser.parse_args([] if argv is None else argv)
    events, repeats, warmup = args.events, args.repeats, 1
    memory_events = args.memory_events
    if args.quick:
        events, repeats, warmup, memory_events = 20_000, 1, 0, 100_000
    concurrencies = [value.strip() for value in args.concurrency.split(",") if value.strip()]
    results: dict[str, Any] = {
        "machine": machine(),
        "events": events,
        "repeats": repeats,
        "concurrency": concurrencies,
        "daemon_concurrency": args.daemon_concurrency,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-processes-")))
        one = stack.enter_context(emulator_process())
        two = stack.enter_context(emulator_process())
        text, payload = write_inputs(tmp, events)
        results["payload_mb"] = round(payload.stat().st_size / 1e6, 1)
        results["text_mb"] = round(text.stat().st_size / 1e6, 1)
        if not args.skip_check:
            results["emulator_check"] = emulator_check(
                text, events, one=one, two=two, repeats=repeats, warmup=warmup
            )
            _print_check(results)
        results["throughput"] = throughput(
            text,
            payload,
            events,
            one=one,
            two=two,
            concurrencies=concurrencies,
            daemon_concurrency=args.daemon_concurrency,
            config=daemon_config(tmp, text),
            repeats=repeats,
            warmup=warmup,
            base=args.base_tree.resolve() if args.base_tree else None,
        )
        _print_throughput(results)
        if not args.skip_memory:
            results["memory"] = memory(one, memory_events, tmp, concurrencies[0])
            _print_memory(results["memory"])
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average: {results['loadavg_start']} at the start, {results['loadavg_end']} at end")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print_check(results: dict[str, Any]) -> None:
    print(
        f"Wire floor ({results['events']:,} events in pre-built gzip batches; median and range "
        f"of {results['repeats']} rounds): is one emulator process the bottleneck?"
    )
    print(f"{'case':<26}{'events/s':>12}{'range':>22}{'per emulator CPU s':>20}")
    for name, row in results["emulator_check"].items():
        low, high = row["events_s_range"]
        print(
            f"{name:<26}{row['events_s']:>12,}{f'{low:,}-{high:,}':>22}"
            f"{row['events_per_emulator_cpu_s']:>20,}"
        )


def _print_throughput(results: dict[str, Any]) -> None:
    rows = results["throughput"]
    print(
        f"\nWhole processes, spawn to exit, {results['events']:,} events (CloudWatch payload "
        f"{results['payload_mb']} MB gzip, text {results['text_mb']} MB); median and range of "
        f"{results['repeats']} interleaved rounds; daemon at SPLUNK_HEC_CONCURRENCY="
        f"{results['daemon_concurrency']}"
    )
    print(
        f"{'process [SPLUNK_HEC_CONCURRENCY]':<34}{'events/s':>12}{'range':>22}"
        f"{'per emulator CPU s':>20}"
    )
    for name, row in rows.items():
        if name == "ratios":
            continue
        low, high = row["events_s_range"]
        print(
            f"{name:<34}{row['events_s']:>12,}{f'{low:,}-{high:,}':>22}"
            f"{row['events_per_emulator_cpu_s']:>20,}"
        )
    for n, ratios in rows["ratios"].items():
        for key, values in ratios.items():
            target = TARGETS.get(key)
            if target is None:  # the base tree's comparisons: no target
                print(f"[{n}] {key}: {values} (median {statistics.median(values):.2f})")
                continue
            met = "met" if statistics.median(values) >= target else "BELOW TARGET"
            print(f"[{n}] {key}: {values} (median {statistics.median(values):.2f}; "
                  f"target >= {target}: {met})")  # fmt: skip


def _print_memory(row: dict[str, Any]) -> None:
    peak = row["peak_rss_mb"]
    print(
        f"\nmemory: forward of {row['events']:,} events ({row['file_mb']} MB text) as a process: "
        f"peak RSS {peak} MB (target < {MEMORY_LIMIT_MB} MB: "
        f"{'met' if peak < MEMORY_LIMIT_MB else 'OVER TARGET'}); {row['events_s']:,} events/s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
