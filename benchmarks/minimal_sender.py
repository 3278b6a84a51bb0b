"""The least a correct acked HEC sender does, as a command: the reference for ``forward``.

``python benchmarks/minimal_sender.py URL TOKEN FILE``: read a gzip CloudWatch Logs payload,
one ``json.dumps`` per event, ~1 MB gzip batches posted back to back on one channel, then
poll every ackId until true. No retries, no routing, no ledger. Prints the events sent.
"""

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
session = requests.Session()
session.headers["Authorization"] = f"Splunk {token}"
session.headers["X-Splunk-Request-Channel"] = str(uuid.uuid4())
ack_ids: list[int] = []


def post(parts: list[str]) -> None:
    body = gzip.compress("\n".join(parts).encode(), compresslevel=1)
    headers = {"Content-Encoding": "gzip"}
    answer = session.post(f"{url}/services/collector/event", data=body, headers=headers, timeout=30)
    answer.raise_for_status()
    ack_ids.append(answer.json()["ackId"])


parts: list[str] = []
size = 0
for event in document["logEvents"]:
    text = json.dumps(
        {
            "time": event["timestamp"] / 1000,
            "source": source,
            "sourcetype": "aws:cloudwatchlogs:vpcflow",
            "event": event["message"],
        }
    )
    if parts and size + len(text) > 1_000_000:
        post(parts)
        parts, size = [], 0
    parts.append(text)
    size += len(text) + 1
if parts:
    post(parts)
pending, deadline = ack_ids, time.monotonic() + 60
while pending:
    acks = session.post(f"{url}/services/collector/ack", json={"acks": pending}, timeout=30)
    pending = [i for i in pending if not acks.json()["acks"].get(str(i))]
    if pending and time.monotonic() > deadline:
        sys.exit(f"{len(pending)} acks not confirmed")
    time.sleep(0.01 if pending else 0)
print(len(document["logEvents"]))
