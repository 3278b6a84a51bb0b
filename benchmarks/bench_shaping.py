"""Firehose transform with shaping rules (issue 12): ours versus the decode floor.

One route with ``time_field``, one ``drop`` rule and one ``redact`` rule, on 10 records of
5,000 JSON log lines each (Lambda-style: ISO time, level, request id, a message; one line in
ten is DEBUG and dropped, one in twenty carries a password to mask). The floor is
``bench_transform.floor`` (base64-decode, gunzip, ``json.loads``, join, base64-encode). For
context, the same event without rules is measured too.

Run: ``.venv/bin/python benchmarks/bench_shaping.py`` (or ``make bench``).
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_transform import _Accepting, floor
from benchmarks.common import median_seconds
from config.loader import load_settings
from config.logs import configure_logging
from config.settings import FirehoseSettings, LogSettings, Settings
from forwarder.devtools.synthetic import firehose_event
from transforms.firehose import transform_event

TARGET = 2.0
RECORDS, LINES = 10, 5000
GROUP = "/aws/lambda/orders"
RULES = """
[[routes]]
log_group = "/aws/lambda/*"
time_field = "timestamp"
drop = [{ field = "level", equals = "DEBUG" }]
redact = [{ pattern = "re:password=\\\\S+", replace = "password=****" }]
"""


def json_log_payload(record: int) -> bytes:
    """One CloudWatch Logs payload of ``LINES`` JSON log lines."""
    events = []
    for i in range(LINES):
        n = record * LINES + i
        second, millis = divmod(n, 1000)
        message = json.dumps(
            {
                "timestamp": f"2025-11-24T16:{second // 60 % 60:02d}:{second % 60:02d}"
                f".{millis:03d}Z",
                "level": "DEBUG" if n % 10 == 0 else "INFO",
                "requestId": f"{n:08x}-1f2e-4d3c-8b7a-{n:012x}",
                "message": (
                    f"user {n % 977} logged in with password=hunter{n}"
                    if n % 20 == 1
                    else f"order {n} accepted for customer {n % 977} in 12 ms"
                ),
            }
        )
        events.append({"id": f"{n:056d}", "timestamp": 1_764_000_000_000 + n, "message": message})
    document = {
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": GROUP,
        "logStream": "2025/11/24/[$LATEST]0123456789abcdef",
        "subscriptionFilters": ["to-firehose"],
        "logEvents": events,
    }
    return gzip.compress(json.dumps(document).encode())


def settings_with(rules: str) -> Settings:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "forwarder.toml"
        path.write_text(rules)
        settings = load_settings(environ={}, path=path)
    return replace(settings, firehose=FirehoseSettings(response_limit_bytes=1 << 40))


def main(repeats: int = 7) -> dict[str, Any]:
    """Measure with and without the rules; print a table; return the numbers."""
    configure_logging(LogSettings(level="WARNING", format="json"))
    event = firehose_event([json_log_payload(r) for r in range(RECORDS)])
    shaped, plain = settings_with(RULES), settings_with("")
    check = transform_event(event, shaped, reingester=_Accepting())
    body = b"".join(base64.b64decode(r["data"]) for r in check["records"])
    assert b"hunter" not in body and b"password=****" in body
    assert b"DEBUG" not in body and b"INFO" in body
    times = median_seconds(
        {
            "floor": lambda: floor(event),
            "rules": lambda: transform_event(event, shaped, reingester=_Accepting()),
            "no rules": lambda: transform_event(event, plain, reingester=_Accepting()),
        },
        repeats=repeats,
    )
    print("Firehose transform, 10 records x 5,000 JSON log lines: median ms, ratio to the floor")
    results: dict[str, Any] = {"shaping": []}
    for name in ("rules", "no rules"):
        ratio = times[name] / times["floor"]
        print(
            f"{name:<10} floor {times['floor'] * 1000:7.1f}  ours {times[name] * 1000:7.1f}"
            f"  ratio {ratio:5.2f}" + (f"  (target {TARGET}x)" if name == "rules" else "")
        )
        results["shaping"].append(
            {"mode": name, "floor_s": times["floor"], "ours_s": times[name], "ratio": ratio}
        )
    return results


if __name__ == "__main__":
    main()
