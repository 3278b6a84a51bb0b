"""The drain's parts: the health gate, the pause, the settings, and the drainer's cycles
(rate, attempts bookkeeping, trouble) over moto's in-process S3 with fake deliverers."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import pytest
import responses
from moto import mock_aws
from structlog.testing import capture_logs

from config.drain import DrainSettings, load_drain_settings
from config.errors import ConfigError
from config.settings import Settings
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import Backsplash, ReplayFailedBacksplash
from forwarder.delivery.ledger import Ledger
from forwarder.drain.drainer import Drainer
from forwarder.drain.gate import Backoff, GateResult, HecGate
from tests.conftest import TEST_TOKEN, make_settings
from transforms.records import EncodedEvent, RawTarget

BUCKET = "drain-unit"
ROOT = "bs/"
URL = "https://hec.example.com:8088"


# ------------------------------------------------------------------ the pause


def test_backoff_doubles_up_to_its_bound_and_resets() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_backoff_refuses_an_empty_range() -> None:
    with pytest.raises(ValueError, match="first_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="first_s"):
        Backoff(2.0, 1.0)


# ------------------------------------------------------------------ settings


def test_drain_settings_defaults_file_env_and_flags() -> None:
    assert load_drain_settings() == DrainSettings()
    document = {"drain": {"enabled": True, "max_attempts": 4, "max_events_per_s": 50}}
    settings = load_drain_settings(
        document,
        {"DRAIN_MAX_ATTEMPTS": "6", "DRAIN_STATE": "/var/lib/drain.sqlite"},
        {"max_events_per_s": 7.5, "interval_s": None},
    )
    assert settings.enabled is True
    assert settings.max_attempts == 6  # the environment wins over the file
    assert settings.max_events_per_s == 7.5  # a flag wins over both
    assert settings.state == "/var/lib/drain.sqlite"
    assert settings.interval_s == DrainSettings().interval_s  # a flag not given changes nothing


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"drain": {"max_attempts": 0}}, "drain.max_attempts"),
        ({"drain": {"max_events_per_s": "fast"}}, "drain.max_events_per_s"),
        ({"drain": {"after_success": "keep"}}, "drain.after_success"),
        ({"drain": {"source": "bucket/prefix"}}, "drain.source"),
        ({"drain": {"flush": 1}}, "drain.flush"),
        ({"drain": {"pause_s": 10, "pause_max_s": 1}}, "drain.pause_max_s"),
        ({"drain": 3}, "drain"),
    ],
)
def test_drain_settings_errors_name_the_key(document: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_drain_settings(document)
    assert caught.value.key == key


# ------------------------------------------------------------------ the gate


def gate_settings(**environ: str) -> Settings:
    return make_settings(SPLUNK_HEC_URL=URL, SPLUNK_HEC_TOKEN=TEST_TOKEN, **environ)


def answer_health(code: int = 17) -> None:
    status = 200 if code == 17 else 503
    responses.get(
        f"{URL}/services/collector/health", status=status, json={"text": "x", "code": code}
    )


def answer_token(status: int = 400, code: int = 5) -> None:
    responses.post(
        f"{URL}/services/collector/event", status=status, json={"text": "x", "code": code}
    )


@responses.activate
def test_gate_open_when_health_token_and_ack_endpoint_answer() -> None:
    answer_health()
    answer_token()
    responses.post(f"{URL}/services/collector/ack", json={"acks": {"0": False}})
    assert HecGate(gate_settings())() == GateResult(True, "healthy")
    assert [call.request.path_url for call in responses.calls] == [
        "/services/collector/health",
        "/services/collector/event",
        "/services/collector/ack",
    ]


@responses.activate
def test_gate_shut_when_health_says_unhealthy() -> None:
    answer_health(18)
    result = HecGate(gate_settings())()
    assert not result.healthy
    assert "health 18" in result.reason
    assert len(responses.calls) == 1  # nothing else asked of an unhealthy HEC


@responses.activate
def test_gate_shut_when_the_token_is_refused() -> None:
    answer_health()
    answer_token(403, 4)
    result = HecGate(gate_settings())()
    assert not result.healthy
    assert "token probe" in result.reason
    assert TEST_TOKEN not in result.reason


@responses.activate
def test_gate_shut_when_the_ack_service_fails() -> None:
    answer_health()
    answer_token()
    responses.post(f"{URL}/services/collector/ack", status=503, json={"text": "busy", "code": 9})
    result = HecGate(gate_settings())()
    assert not result.healthy
    assert "ack endpoint" in result.reason


@responses.activate
def test_gate_open_when_the_token_has_acks_off() -> None:
    answer_health()
    answer_token()
    responses.post(
        f"{URL}/services/collector/ack",
        status=400,
        json={"text": "ACK is disabled", "code": 14},
    )
    assert HecGate(gate_settings())().healthy


@responses.activate
def test_gate_skips_the_ack_round_trip_with_acks_off() -> None:
    answer_health()
    answer_token()
    assert HecGate(gate_settings(SPLUNK_HEC_ACK="false"))().healthy
    assert len(responses.calls) == 2


# ------------------------------------------------------------------ the drainer


class Hec:
    """What the fake deliverers share: events delivered, and how to behave."""

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.fail = False
        self.trouble = False
        self.sinks: list[FakeSink] = []


class FakeSink:
    """A deliverer that acknowledges (or, ``fail``, backsplashes) on flush; ``trouble``
    counts a retry and holds the flush until the drain bounds it with a deadline."""

    def __init__(self, hec: Hec, backsplash: ReplayFailedBacksplash) -> None:
        self.hec = hec
        self.backsplash = backsplash
        self.ledger = Ledger()
        self.fatal = None
        self.pending: list[EncodedEvent] = []
        self.deadline: float | None = None
        self.bounded = threading.Event()

    def set_deadline(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.bounded.set()

    def submit(self, events: Sequence[EncodedEvent], raw_target: RawTarget | None = None) -> None:
        self.ledger.add(events_in=len(events))
        self.pending.extend(events)

    def flush(self, deadline: float | None = None) -> None:
        events, self.pending = self.pending, []
        if not events:
            return
        if self.hec.trouble:
            self.ledger.add(retries=1)
            assert self.bounded.wait(30), "the drain never bounded the troubled deliverer"
        if self.hec.fail:
            self.backsplash.write(events, Failure("Splunk.ServerError", "busy", 1, "event"))
            self.ledger.add(backsplashed=len(events))
        else:
            self.hec.delivered.extend(str(event.event_id) for event in events)
            self.ledger.add(acknowledged=len(events))

    def close(self, deadline: float | None = None, *, summarize: bool = True) -> None:
        self.flush()

    def release(self) -> None:
        self.pending = []


def event(n: int) -> EncodedEvent:
    body = {"time": 1764000000, "event": f"message {n}", "fields": {"event_id": f"e{n}"}}
    return EncodedEvent(json.dumps(body).encode(), f"e{n}")


@pytest.fixture(name="s3")
def fixture_s3(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put_failed(s3: Any, events: Sequence[EncodedEvent]) -> str:
    """One splunk-failed object, as the push Lambda or the daemon writes it."""
    writer = Backsplash(s3, BUCKET, ROOT, sleep=lambda s: None)
    return writer.write(list(events), Failure("Splunk.ConnectionTimeout", "down", 3, "event"))


def keys(s3: Any, prefix: str = ROOT) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def records(s3: Any, key: str) -> list[dict[str, Any]]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return [json.loads(line) for line in gzip.decompress(body).splitlines() if line.strip()]


def drainer(
    s3: Any,
    hec: Hec,
    tmp_path: Any,
    *,
    probe: Any = None,
    **drain: Any,
) -> Drainer:
    def factory(settings: Settings, *, backsplash: ReplayFailedBacksplash) -> FakeSink:
        sink = FakeSink(hec, backsplash)
        hec.sinks.append(sink)
        return sink

    values: dict[str, Any] = {
        "source": f"s3://{BUCKET}/{ROOT}",
        "pause_s": 0.001,
        "pause_max_s": 0.004,
        "interval_s": 0.001,
        "settle_s": 0.0,
        **drain,
    }
    return Drainer(
        gate_settings(BACKSPLASH_BUCKET=BUCKET, BACKSPLASH_PREFIX=ROOT),
        DrainSettings(**values),
        s3_client=s3,
        state=tmp_path / "state.sqlite",
        probe=probe or (lambda: GateResult(True, "healthy")),
        deliverer_factory=factory,
        watch_interval_s=0.01,
    )


def test_a_cycle_delivers_and_deletes_and_leaves_replay_failed_alone(
    s3: Any, tmp_path: Any
) -> None:
    hec = Hec()
    put_failed(s3, [event(n) for n in range(5)])
    put_failed(s3, [event(n) for n in range(5, 8)])
    parked = ReplayFailedBacksplash(Backsplash(s3, BUCKET, ROOT)).write(
        [event(99)], Failure("Splunk.ServerError", "x", 1, "event")
    )
    result = drainer(s3, hec, tmp_path).cycle()
    assert result.outcome == "drained"
    assert sorted(hec.delivered) == sorted(f"e{n}" for n in range(8))
    assert keys(s3) == [parked]  # what needs a person stays; the rest is gone
    assert result.report is not None and result.report.objects_deleted == 2


def test_a_shut_gate_replays_nothing(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    key = put_failed(s3, [event(1)])
    drain = drainer(s3, hec, tmp_path, probe=lambda: GateResult(False, "health 18"))
    with capture_logs() as logs:
        result = drain.cycle()
    assert result.outcome == "closed"
    assert hec.delivered == [] and hec.sinks == []
    assert keys(s3) == [key]
    assert drain.counters.snapshot()["gates_closed"] == 1
    assert [log["reason"] for log in logs if log["event"] == "drain_gate_closed"] == ["health 18"]


def test_an_empty_bucket_is_an_empty_cycle(s3: Any, tmp_path: Any) -> None:
    assert drainer(s3, Hec(), tmp_path).cycle().outcome == "empty"


def test_re_failures_go_back_with_one_more_attempt_then_to_replay_failed(
    s3: Any, tmp_path: Any
) -> None:
    """GIVEN HEC refusing everything, max_attempts 3; THEN each cycle puts the events back
    under splunk-failed/ with replayAttempts + 1, the third under replay-failed/, counted,
    and the fourth cycle finds nothing to do (no loop)."""
    hec = Hec()
    hec.fail = True
    put_failed(s3, [event(n) for n in range(4)])
    drain = drainer(s3, hec, tmp_path, max_attempts=3)
    seen: list[list[int]] = []
    for _ in range(3):
        result = drain.cycle()
        assert result.outcome == "drained"
        pool = keys(s3, f"{ROOT}splunk-failed/")
        seen.append(sorted({r["replayAttempts"] for key in pool for r in records(s3, key)}))
    assert seen == [[1], [2], []]
    parked = keys(s3, f"{ROOT}replay-failed/")
    assert len(parked) == 1
    gave_up = records(s3, parked[0])
    assert sorted(r["EventId"] for r in gave_up) == [f"e{n}" for n in range(4)]
    assert {r["replayAttempts"] for r in gave_up} == {3}
    assert drain.cycle().outcome == "empty"
    counters = drain.counters.snapshot()
    assert counters["events_requeued"] == 8
    assert counters["events_abandoned"] == 4
    assert counters["events_delivered"] == 0


def test_abandoned_events_are_logged_as_given_up(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    hec.fail = True
    put_failed(s3, [event(1)])
    drain = drainer(s3, hec, tmp_path, max_attempts=1)
    with capture_logs() as logs:
        result = drain.cycle()
    assert result.events_abandoned == 1 and result.events_requeued == 0
    abandoned = [log for log in logs if log["event"] == "events_abandoned"]
    assert len(abandoned) == 1 and abandoned[0]["events"] == 1
    assert "replay-failed/" in abandoned[0]["key"]


def test_the_rate_limit_holds_events_per_second(s3: Any, tmp_path: Any) -> None:
    """50 one-event records at 10 events/s: the first second's 10 go at once (the bucket is
    one second deep), the other 40 wait 0.1 s each on the injected clock."""
    hec = Hec()
    put_failed(s3, [event(n) for n in range(50)])
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    drain = drainer(s3, hec, tmp_path, max_events_per_s=10.0)
    drain._clock = lambda: now[0]
    drain._sleep = sleep
    assert drain.cycle().outcome == "drained"
    assert len(hec.delivered) == 50
    assert sum(slept) == pytest.approx(4.0)
    assert max(slept) == pytest.approx(0.1)


def test_trouble_stops_the_cycle_after_the_chunk_in_flight(s3: Any, tmp_path: Any) -> None:
    """GIVEN a deliverer that retries (HEC busy) on the first object; THEN the watch stops
    the cycle and bounds the deliverer; the other objects wait for the next cycle, and
    nothing is lost."""
    hec = Hec()
    hec.trouble = True
    for n in range(3):
        put_failed(s3, [event(n)])
    drain = drainer(s3, hec, tmp_path, chunk_mb=0.000001)
    result = drain.cycle()
    assert result.outcome == "troubled"
    assert "retry" in result.reason
    assert hec.sinks and all(sink.deadline is not None for sink in hec.sinks)
    assert len(hec.delivered) == 1
    assert len(keys(s3)) == 2
    hec.trouble = False
    assert drain.cycle().outcome == "drained"
    assert sorted(hec.delivered) == ["e0", "e1", "e2"]
    assert keys(s3) == []
    assert drain.counters.snapshot()["cycles_troubled"] == 1


def test_a_failed_health_probe_between_objects_stops_the_cycle(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    for n in range(3):
        put_failed(s3, [event(n)])
    answers = iter([GateResult(True, "healthy")])
    probe_calls = threading.Event()

    def probe() -> GateResult:
        result = next(answers, GateResult(False, "health 18"))
        if not result.healthy:
            probe_calls.set()
        return result

    hec_sinks_wait = hec

    class SlowSink(FakeSink):
        def flush(self, deadline: float | None = None) -> None:
            probe_calls.wait(30)  # the watch probes after the first object ends
            super().flush(deadline)

    def factory(settings: Settings, *, backsplash: ReplayFailedBacksplash) -> FakeSink:
        sink = SlowSink(hec_sinks_wait, backsplash)
        hec.sinks.append(sink)
        return sink

    drain = drainer(s3, hec, tmp_path, probe=probe, probe_interval_s=0.01)
    drain._factory = factory
    result = drain.cycle()
    assert result.outcome == "troubled"
    assert "health probe" in result.reason
    assert len(hec.delivered) + len(keys(s3)) == 3  # what was not replayed is still there


def test_run_pauses_with_a_bounded_backoff_while_the_gate_is_shut(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    stop = threading.Event()
    calls = [0]

    def probe() -> GateResult:
        calls[0] += 1
        if calls[0] >= 5:
            stop.set()
        return GateResult(False, "health 18")

    drain = drainer(s3, hec, tmp_path, probe=probe)
    drain.stop = stop
    with capture_logs() as logs:
        result = drain.run()
    assert result.outcome == "closed"
    pauses = [log["pause_s"] for log in logs if log["event"] == "drain_paused"]
    assert pauses == [0.001, 0.002, 0.004, 0.004]
    assert drain.counters.snapshot()["gates_closed"] == 5


def test_run_once_is_one_cycle(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    put_failed(s3, [event(1)])
    result = drainer(s3, hec, tmp_path).run(once=True)
    assert result.outcome == "drained"
    assert hec.delivered == ["e1"]


def test_run_with_a_deadline_ends_when_nothing_is_left(s3: Any, tmp_path: Any) -> None:
    """A Lambda's run: cycles while they find work, then returns (no idle wait)."""
    hec = Hec()
    put_failed(s3, [event(1)])
    drain = drainer(s3, hec, tmp_path, interval_s=3600.0)
    result = drain.run(deadline=drain._clock() + 600)
    assert result.outcome == "empty"
    assert hec.delivered == ["e1"]
    assert drain.counters.snapshot()["cycles"] == 2


def test_run_stops_before_a_deadline_too_close_to_settle(s3: Any, tmp_path: Any) -> None:
    hec = Hec()
    put_failed(s3, [event(1)])
    drain = drainer(s3, hec, tmp_path, settle_s=30.0)
    result = drain.run(deadline=drain._clock() + 10)
    assert result.outcome == "stopped" and result.reason == "deadline"
    assert hec.delivered == []


def test_no_source_and_no_backsplash_bucket_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        Drainer(gate_settings(), DrainSettings(), s3_client=None, state=tmp_path / "s")  # type: ignore[arg-type]
    assert caught.value.key == "drain.source"
