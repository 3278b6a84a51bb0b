"""Start-up time of the CLI and the Lambda handlers, each as a ratio to a reference process.

Every case is a fresh ``python`` process, timed from the parent (spawn to exit), median of
``REPEATS`` runs interleaved across the cases so load drift hits them all alike. Bytecode is
cached: the children run without ``PYTHONDONTWRITEBYTECODE`` and every case runs once untimed
first. The references run in the same session:

- ``python -m forwarder forward FILE`` (a 10-event CloudWatch Logs payload, delivered with
  acknowledgment to a ``python -m forwarder hec-emulator`` process on loopback) against a
  minimal stdlib-and-requests script doing the same: read the file, one gzip batch to the
  event endpoint on a channel, poll the ack until it is true;
- ``python -m forwarder --help`` against ``python -c "import requests"``;
- ``python -c "import forwarder.push"`` and ``python -c "import transforms.firehose"`` against
  ``python -c pass``.

It also reports whether building the CLI's parser (``forwarder.cli.main(["--help"])``) imports
requests or boto3. Only ``python -m forwarder``, its subcommands and ``forwarder.cli.main`` are
used, so the script survives modules moving inside ``forwarder/``.

Run: ``.venv/bin/python benchmarks/bench_startup.py`` (or ``benchmarks/run.py bench_startup``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 10
TOKEN = "bench-startup-token"
EVENTS = 10

# The floor for ``forward``: what any forwarder must do for this file, in ~40 lines.
MINIMAL_FORWARDER = '''\
"""Read a gzip CloudWatch Logs payload, send it to HEC in one gzip batch, wait for the ack."""
import gzip
import json
import sys
import time
import uuid

import requests

url, token, path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path, "rb") as f:
    document = json.loads(gzip.decompress(f.read()))
source = f"{document['logGroup']}:{document['logStream']}"
body = "".join(
    json.dumps(
        {
            "time": event["timestamp"] / 1000,
            "source": source,
            "sourcetype": "aws:cloudwatchlogs:vpcflow",
            "event": event["message"],
        }
    )
    for event in document["logEvents"]
)
session = requests.Session()
session.headers["Authorization"] = f"Splunk {token}"
session.headers["X-Splunk-Request-Channel"] = str(uuid.uuid4())
answer = session.post(
    f"{url}/services/collector/event",
    data=gzip.compress(body.encode()),
    headers={"Content-Encoding": "gzip"},
    timeout=10,
)
answer.raise_for_status()
ack_id = answer.json()["ackId"]
deadline, delay = time.monotonic() + 30, 0.005
while True:
    acks = session.post(f"{url}/services/collector/ack", json={"acks": [ack_id]}, timeout=10)
    if acks.json()["acks"].get(str(ack_id)):
        break
    if time.monotonic() > deadline:
        sys.exit("ack timeout")
    time.sleep(delay)
    delay = min(delay * 2, 1.0)
'''

# Builds the CLI's parser the way ``forwarder --help`` does, then says what it imported.
HELP_PROBE = """\
import contextlib, io, json, sys
from forwarder.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print(json.dumps({name: name in sys.modules for name in ("requests", "boto3")}))
"""

# (case, reference, target ratio or None); the table's rows.
ROWS: tuple[tuple[str, str, float | None], ...] = (
    ("forward 10 events", "minimal script", 1.6),
    ("forwarder --help", "import requests", 0.5),
    ("import forwarder.push", "python -c pass", None),
    ("import forwarder.push", "push's libraries", None),
    ("import transforms.firehose", "python -c pass", None),
)
#: With ``--baseline DIR`` (a tree holding an older forwarder/, transforms/ and config/, e.g.
#: ``git archive a46a2fb forwarder transforms config | tar -x -C DIR``), the handlers' imports
#: against the same imports of that tree, interleaved in the same run.
BASELINE_ROWS: tuple[tuple[str, str, float | None], ...] = (
    ("import forwarder.push", "baseline: import forwarder.push", 2 / 3),
    ("import transforms.firehose", "baseline: import transforms.firehose", 1.0),
)
#: What ``forwarder.push`` cannot start without: the runtime libraries it delivers with.
PUSH_LIBRARIES = "import requests, structlog, tenacity, botocore.exceptions"


def payload(events: int = EVENTS) -> bytes:
    """A gzip CloudWatch Logs subscription payload of ``events`` version 2 flow-log lines."""
    lines = [
        f"2 123456789012 eni-0a1b2c3d4e5f60718 10.0.{i}.11 10.0.0.{i + 2} 443 {40000 + i} 6 "
        f"10 840 1764000000 1764000060 ACCEPT OK"
        for i in range(events)
    ]
    document = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/aws/vpc/flowlogs",
        "logStream": "eni-0a1b2c3d4e5f60718-all",
        "subscriptionFilters": ["to-splunk"],
        "logEvents": [
            {"id": f"{i:056d}", "timestamp": 1_764_000_000_000 + i, "message": line}
            for i, line in enumerate(lines)
        ],
    }
    return gzip.compress(json.dumps(document).encode())


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: bytecode cached, no stray HEC settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SPLUNK_", "BACKSPLASH_", "FORWARDER_"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """A ``python -m forwarder hec-emulator`` process on loopback; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "forwarder", "hec-emulator", "--port", str(port), "--token", TOKEN],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{url}/emulator/stats")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the HEC emulator did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
    """Run one child to completion; a failing child fails the benchmark."""
    result = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr[-2000:]!r}")


def help_imports() -> dict[str, bool]:
    """Whether building the CLI's parser imports requests and boto3 (a fresh interpreter)."""
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def main(repeats: int = REPEATS, baseline: Path | None = None) -> dict[str, Any]:
    """Measure every case and its reference; print a table; return the numbers."""
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, emulator() as url:
        data = Path(tmp, "cloudwatch.json.gz")
        data.write_bytes(payload())
        script = Path(tmp, "minimal_forwarder.py")
        script.write_text(MINIMAL_FORWARDER)
        plain = child_env()
        hec = child_env(SPLUNK_HEC_URL=url, SPLUNK_HEC_TOKEN=TOKEN)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "forward 10 events": ([python, "-m", "forwarder", "forward", str(data)], hec),
            "minimal script": ([python, str(script), url, TOKEN, str(data)], plain),
            "forwarder --help": ([python, "-m", "forwarder", "--help"], plain),
            "import requests": ([python, "-c", "import requests"], plain),
            "import forwarder.push": ([python, "-c", "import forwarder.push"], plain),
            "import transforms.firehose": ([python, "-c", "import transforms.firehose"], plain),
            "python -c pass": ([python, "-c", "pass"], plain),
            "push's libraries": ([python, "-c", PUSH_LIBRARIES], plain),
        }
        cwds = dict.fromkeys(commands, ROOT)
        if baseline is not None:
            for module in ("forwarder.push", "transforms.firehose"):
                name = f"baseline: import {module}"
                commands[name] = ([python, "-c", f"import {module}"], plain)
                cwds[name] = baseline  # ``-c`` puts the working directory first on sys.path
        indexed_before = get_json(f"{url}/emulator/stats")["events_indexed"]
        times = median_seconds(
            {
                name: functools.partial(run, argv, env, cwds[name])
                for name, (argv, env) in commands.items()
            },
            repeats=repeats,
            warmup=1,
        )
        indexed = get_json(f"{url}/emulator/stats")["events_indexed"] - indexed_before
    expected = 2 * EVENTS * (repeats + 1)
    if indexed != expected:
        raise RuntimeError(f"the emulator indexed {indexed} events, expected {expected}")
    imports = help_imports()

    print(
        f"Start-up: median of {repeats} processes with cached bytecode, "
        "as a ratio to a reference in the same run"
    )
    print(f"{'case':<28}{'ms':>8}  {'reference':<37}{'ms':>8}{'ratio':>8}{'target':>8}")
    rows = []
    for case, reference, target in ROWS + (BASELINE_ROWS if baseline is not None else ()):
        ratio = times[case] / times[reference]
        print(
            f"{case:<28}{times[case] * 1000:>8.1f}  {reference:<37}"
            f"{times[reference] * 1000:>8.1f}{ratio:>8.2f}"
            + (f"{target:>7.1f}x" if target is not None else f"{'':>8}")
            + ("  (over target)" if target is not None and ratio > target else "")
        )
        rows.append(
            {
                "case": case,
                "reference": reference,
                "case_s": times[case],
                "reference_s": times[reference],
                "ratio": ratio,
                "target": target,
            }
        )
    print(
        "forwarder --help imports requests: "
        f"{'YES' if imports['requests'] else 'no'}, boto3: {'YES' if imports['boto3'] else 'no'}"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {
        "repeats": repeats,
        "rows": rows,
        "help_imports": imports,
        "events_indexed": indexed,
        "loadavg": os.getloadavg(),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--baseline", type=Path, help="an older tree to compare the imports with")
    arguments = parser.parse_args()
    main(arguments.repeats, arguments.baseline)
