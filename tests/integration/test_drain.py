"""The drain end to end: moto S3 in server mode, the HEC emulator, the push Lambda writing the
backsplash while HEC is down, and the drain emptying it once HEC is back (issue 13's "Outage"
and "Flapping"), plus the drain Lambda under a deadline."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.drain import DrainSettings
from config.settings import Settings
from forwarder import push
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.drain.drainer import Drainer
from tests.conftest import TEST_TOKEN, boto_client
from tests.integration.conftest import BUCKET, PREFIX, delivery_settings

pytestmark = pytest.mark.integration

#: A bound on cycles, generous for a loaded machine: a drain that loops would pass it.
MAX_CYCLES = 40
EVENTS_PER_INVOCATION = 40
INVOCATIONS = 3


class FakeContext:
    """A Lambda context whose remaining time counts down from ``remaining_ms``."""

    aws_request_id = "req-drain"

    def __init__(self, remaining_ms: float) -> None:
        self._end = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._end - time.monotonic()) * 1000), 0)


def settings_for(emulator: HecEmulator, **environ: str) -> Settings:
    """The event id as an indexed field (the emulator's received ids), acks expiring after
    1 s, retries for up to 10 s (a lost ack is re-sent, and counted)."""
    return delivery_settings(
        emulator.url, SPLUNK_DEDUP_FIELD="event_id", SPLUNK_HEC_ACK_TIMEOUT="1", **environ
    )


def drain_settings(**values: Any) -> DrainSettings:
    base: dict[str, Any] = {
        "pause_s": 0.05,
        "pause_max_s": 0.4,
        "interval_s": 0.05,
        "probe_interval_s": 0.1,
        "settle_s": 5.0,
        "max_attempts": 5,
    }
    return DrainSettings(**{**base, **values})


def cli_environ(hec_url: str) -> dict[str, str]:
    """The environment of a ``forwarder drain`` command line against the emulator and the
    test bucket."""
    return {
        "SPLUNK_HEC_URL": hec_url,
        "SPLUNK_HEC_TOKEN": TEST_TOKEN,
        "SPLUNK_HEC_ACK_POLL_INTERVAL": "0.05",
        "BACKSPLASH_BUCKET": BUCKET,
        "BACKSPLASH_PREFIX": PREFIX,
        "LOG_LEVEL": "ERROR",
    }


def expected_ids() -> set[str]:
    return {f"{n:056d}" for n in range(INVOCATIONS * EVENTS_PER_INVOCATION)}


def indexed(emulator: HecEmulator) -> list[str]:
    return [str(e["fields"]["event_id"]) for e in emulator.indexed_events()]


def keys(s3: Any) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])
    return sorted(item["Key"] for item in listed)


@pytest.fixture(name="outage")
def fixture_outage(emulator: HecEmulator, s3: Any, aws_endpoint: str) -> Iterator[Settings]:
    """HEC down while the push Lambda handles three subscription deliveries: every event ends
    in the backsplash bucket (nothing indexed)."""
    settings = settings_for(emulator)
    quick = settings_for(emulator, SPLUNK_HEC_RETRY_DURATION="1")  # the push Lambda gives up fast
    push.configure(quick, client_factory=lambda service: boto_client(service, aws_endpoint))
    emulator.set_faults(FaultPlan(down_for_s=3600))
    try:
        for n in range(INVOCATIONS):
            payload = cloudwatch_payload(
                [f"outage {n} line {i}" for i in range(EVENTS_PER_INVOCATION)],
                log_group="/app/outage",
                first_id=n * EVENTS_PER_INVOCATION,
            )
            event = {"awslogs": {"data": base64.b64encode(payload).decode()}}
            ledger = push.handler(event, FakeContext(remaining_ms=2000))["ledger"]
            assert ledger["balanced"] and ledger["backsplashed"] == EVENTS_PER_INVOCATION
    finally:
        push.reset()
    assert emulator.indexed_events() == []
    assert keys(s3), "the outage left nothing in the backsplash"
    yield settings


def test_outage_heals_by_itself(
    outage: Settings, emulator: HecEmulator, s3: Any, tmp_path: Path
) -> None:
    """GIVEN the backsplash an outage left WHEN HEC is still down THEN the gate stays shut
    and nothing is replayed; WHEN HEC comes back (losing two acks) THEN the drain empties the
    bucket within a bounded number of cycles, every event is indexed, and the only
    duplicates are the lost acks' re-sends, counted."""
    drainer = Drainer(outage, drain_settings(), s3_client=s3, state=tmp_path / "state")
    closed = drainer.cycle()
    assert closed.outcome == "closed" and "health" in closed.reason
    assert emulator.indexed_events() == [] and keys(s3)

    emulator.set_faults(FaultPlan(lost_acks=2))
    outcomes = []
    for _ in range(MAX_CYCLES):
        outcomes.append(drainer.cycle().outcome)
        if not keys(s3):
            break
    assert keys(s3) == [], f"not drained after {len(outcomes)} cycles: {outcomes}"
    seen = indexed(emulator)
    assert set(seen) == expected_ids()
    duplicates = sum(count - 1 for count in Counter(seen).values())
    counters = drainer.counters.snapshot()
    assert duplicates <= counters["duplicates_possible"]
    assert counters["duplicates_possible"] > 0  # the two lost acks were re-sent, and counted
    assert counters["events_abandoned"] == 0
    assert counters["gates_closed"] == 1


def test_flapping_hec_pauses_and_resumes_without_loss_or_loop(
    outage: Settings, emulator: HecEmulator, s3: Any, tmp_path: Path
) -> None:
    """GIVEN the outage's backsplash WHEN HEC flaps (down 0.5 s of every 1.5 s) during the
    drain THEN the drain pauses (a shut gate or a troubled cycle) and resumes, every event is
    indexed, and it needs a bounded number of cycles."""
    emulator.set_faults(FaultPlan(down_for_s=0.5, down_every_s=1.5))
    stop = threading.Event()
    drainer = Drainer(
        outage,
        drain_settings(max_events_per_s=60.0),  # the drain lasts a few flaps
        s3_client=s3,
        state=tmp_path / "state",
        stop=stop,
    )
    runner = threading.Thread(target=drainer.run, name="drain-test")
    runner.start()
    try:
        give_up = time.monotonic() + 120
        while keys(s3) and time.monotonic() < give_up:
            time.sleep(0.1)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    assert keys(s3) == []
    assert set(indexed(emulator)) == expected_ids()
    counters = drainer.counters.snapshot()
    assert counters["gates_closed"] + counters["cycles_troubled"] >= 1, counters
    assert counters["cycles"] <= MAX_CYCLES * 5, counters
    assert counters["events_abandoned"] == 0


@pytest.fixture(name="drain_lambda")
def fixture_drain_lambda(
    outage: Settings, aws_endpoint: str, tmp_path: Path
) -> Iterator[Callable[..., None]]:
    """Configure the drain Lambda's container (the outage's settings, moto, a state file in
    ``tmp_path``, ``DRAIN_*`` as given); reset afterwards."""
    from forwarder import drain

    def configure(**environ: str) -> None:
        drain.configure(
            outage,
            environ={"DRAIN_STATE": str(tmp_path / "state"), **environ},
            client_factory=lambda service: boto_client(service, aws_endpoint),
        )

    yield configure
    drain.reset()


def test_drain_lambda_drains_within_its_deadline_and_logs_the_backlog(
    drain_lambda: Callable[..., None],
    emulator: HecEmulator,
    s3: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from forwarder import drain

    emulator.set_faults(FaultPlan())  # HEC is back
    drain_lambda(DRAIN_SETTLE_S="2")
    answer = drain.handler({}, FakeContext(remaining_ms=60_000))
    assert answer["outcome"] == "empty"
    assert keys(s3) == []
    assert set(indexed(emulator)) == expected_ids()
    assert answer["counters"]["events_delivered"] == len(expected_ids())
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert len(emf) == 1
    (document,) = emf
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Bucket"]]
    assert document["Bucket"] == BUCKET
    assert document["BacklogObjects"] == 0
    assert document["DrainEventsDelivered"] == len(expected_ids())


def test_drain_lambda_stops_before_its_deadline(
    drain_lambda: Callable[..., None],
    emulator: HecEmulator,
    s3: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN less time left than the drain needs to settle THEN the handler replays nothing,
    answers at once, and its EMF line shows the backlog waiting for the next schedule."""
    from forwarder import drain

    drain_lambda(DRAIN_SETTLE_S="30")
    waiting = len(keys(s3))
    started = time.monotonic()
    answer = drain.handler({}, FakeContext(remaining_ms=10_000))
    assert time.monotonic() - started < 10  # within the Lambda's time
    assert answer["outcome"] == "stopped" and answer["reason"] == "deadline"
    assert emulator.indexed_events() == []
    assert answer["backlog"]["objects"] == waiting
    (line,) = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    document = json.loads(line)
    assert document["BacklogObjects"] == waiting
    assert document["BacklogOldestAgeSeconds"] >= 0


def test_forwarder_drain_once_prints_its_cycle_and_exits_with_its_status(
    outage: Settings, emulator: HecEmulator, s3: Any, tmp_path: Path
) -> None:
    """``forwarder drain --once --json``: one cycle from the command line; HEC down, the gate
    is shut (exit 1, nothing replayed); HEC back, the bucket is drained (exit 0)."""
    import io

    from forwarder.cli import main

    environ = cli_environ(emulator.url)
    words = ["drain", "--once", "--json", "--state", str(tmp_path / "state")]
    out = io.StringIO()
    assert main(words, environ=environ, out=out) == 1
    closed = json.loads(out.getvalue())
    assert closed["outcome"] == "closed" and closed["report"] is None
    assert keys(s3)

    emulator.set_faults(FaultPlan())
    out = io.StringIO()
    assert main([*words, "--max-events-per-s", "5000"], environ=environ, out=out) == 0
    drained = json.loads(out.getvalue())
    assert drained["outcome"] == "drained"
    assert drained["source"] == f"s3://{BUCKET}/{PREFIX}"
    assert drained["counters"]["events_delivered"] == len(expected_ids())
    assert keys(s3) == []
