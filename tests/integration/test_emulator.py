"""The HEC emulator over real HTTP on loopback: protocol, acks, channels, faults, CLI."""

from __future__ import annotations

import argparse
import gzip
import ipaddress
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.devtools.emulator import (
    HTML_MAINTENANCE_PAGE,
    EmulatorStats,
    FaultPlan,
    HecEmulator,
    add_arguments,
    serve,
)
from tests.integration.conftest import self_signed_certificate

pytestmark = pytest.mark.integration

TOKEN = "emulator-test-token"
REPO_ROOT = Path(__file__).resolve().parents[2]
EVENT = "/services/collector/event"
RAW = "/services/collector/raw"
ACK = "/services/collector/ack"
HEALTH = "/services/collector/health"


class FakeClock:
    """A monotonic clock the test moves by hand, so no test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fixture_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="output")
def fixture_output(tmp_path: Path) -> Path:
    return tmp_path / "indexed.jsonl"


@pytest.fixture(name="hec")
def fixture_hec(clock: FakeClock, output: Path) -> Iterator[HecEmulator]:
    with HecEmulator(token=TOKEN, output_path=output, clock=clock) as hec:
        yield hec


@pytest.fixture(name="session")
def fixture_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(name="channel")
def fixture_channel() -> str:
    return str(uuid.uuid4())


def headers(channel: str | None = None, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    """HEC request headers; None leaves a header out."""
    result = dict(extra)
    if token is not None:
        result["Authorization"] = f"Splunk {token}"
    if channel is not None:
        result["X-Splunk-Request-Channel"] = channel
    return result


def events_body(*events: object) -> bytes:
    return "\n".join(
        json.dumps({"event": event, "sourcetype": "test"}) for event in events
    ).encode()


def post(
    session: requests.Session,
    hec: HecEmulator,
    path: str,
    body: bytes | str,
    channel: str | None,
    **extra: str,
) -> requests.Response:
    return session.post(f"{hec.url}{path}", data=body, headers=headers(channel, **extra))


def query_acks(
    session: requests.Session, hec: HecEmulator, channel: str, ids: list[int]
) -> dict[str, bool]:
    response = session.post(f"{hec.url}{ACK}", json={"acks": ids}, headers=headers(channel))
    assert response.status_code == 200, response.text
    acks: dict[str, bool] = response.json()["acks"]
    return acks


# ------------------------------------------------------------------ happy path and acks


def test_event_ack_flow_per_channel(hec: HecEmulator, session: requests.Session) -> None:
    """GIVEN two channels WHEN each sends twice THEN ackIds count from 0 per channel, true once."""
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    answers = [
        post(session, hec, EVENT, events_body("a", {"k": 1}), first).json(),
        post(session, hec, EVENT, events_body("b"), first).json(),
        post(session, hec, EVENT, events_body("c"), second).json(),
    ]

    assert answers == [
        {"text": "Success", "code": 0, "ackId": 0},
        {"text": "Success", "code": 0, "ackId": 1},
        {"text": "Success", "code": 0, "ackId": 0},
    ]
    assert query_acks(session, hec, first, [0, 1, 7]) == {"0": True, "1": True, "7": False}
    assert query_acks(session, hec, first, [0, 1]) == {"0": False, "1": False}
    assert query_acks(session, hec, second, [0]) == {"0": True}
    stats = hec.stats()
    assert (stats.events_indexed, stats.acks_issued, stats.acks_confirmed) == (4, 3, 3)
    assert (stats.channels, stats.acks_pending) == (2, 0)
    assert [e["event"] for e in hec.indexed_events()] == ["a", {"k": 1}, "b", "c"]


@pytest.mark.parametrize("path", ["/services/collector", "/services/collector/event/1.0"])
def test_event_endpoint_aliases(
    hec: HecEmulator, session: requests.Session, channel: str, path: str
) -> None:
    """The legacy event paths behave like /services/collector/event."""
    response = post(session, hec, path, events_body("x"), channel)

    assert response.json() == {"text": "Success", "code": 0, "ackId": 0}


def test_channel_from_query_parameter(hec: HecEmulator, session: requests.Session) -> None:
    """A channel may come as ?channel= instead of the header."""
    channel = str(uuid.uuid4())
    response = post(session, hec, f"{EVENT}?channel={channel}", events_body("x"), None)

    assert response.json()["ackId"] == 0
    assert query_acks(session, hec, channel, [0]) == {"0": True}


def test_concatenated_objects_without_separator(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """Objects may follow each other with no whitespace, or with pretty-printed insides."""
    body = '{"event":"a"}{"event":"b"}  \r\n{\n  "event": "c"\n}'

    assert post(session, hec, EVENT, body, channel).status_code == 200
    assert [e["event"] for e in hec.indexed_events()] == ["a", "b", "c"]


def test_raw_endpoint_with_query_metadata(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """Each non-blank raw line is one event carrying the query's metadata."""
    path = f"{RAW}?sourcetype=aws:cloudwatchlogs:vpcflow&index=main&source=s1&host=h1"
    response = post(session, hec, path, "line one\r\n\n   \nline two\n", channel)

    assert response.json() == {"text": "Success", "code": 0, "ackId": 0}
    meta = {
        "sourcetype": "aws:cloudwatchlogs:vpcflow",
        "index": "main",
        "source": "s1",
        "host": "h1",
    }
    assert hec.indexed_events() == [{"event": "line one", **meta}, {"event": "line two", **meta}]


def test_gzip_body(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    """Content-Encoding: gzip bodies are decompressed, multi-member streams too."""
    body = gzip.compress(events_body("one", "two")) + gzip.compress(events_body("three"))
    response = post(session, hec, EVENT, body, channel, **{"Content-Encoding": "gzip"})

    assert response.status_code == 200, response.text
    assert [e["event"] for e in hec.indexed_events()] == ["one", "two", "three"]
    stats = hec.stats()
    assert (stats.bytes_received, stats.bytes_decompressed) == (
        len(body),
        len(gzip.decompress(body)),
    )


def test_corrupt_gzip_is_invalid_data_format(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    truncated = gzip.compress(events_body("x"))[:-6]
    response = post(session, hec, EVENT, truncated, channel, **{"Content-Encoding": "gzip"})

    assert (response.status_code, response.json()["code"]) == (400, 6)


def test_chunked_body(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    """A body sent with Transfer-Encoding: chunked is read whole."""
    chunks = iter([b'{"event":"a"}', b'\n{"event":', b'"b"}'])
    response = session.post(f"{hec.url}{EVENT}", data=chunks, headers=headers(channel))

    assert response.status_code == 200, response.text
    assert hec.stats().events_indexed == 2


def test_output_file_holds_one_json_line_per_event(
    hec: HecEmulator, session: requests.Session, channel: str, output: Path
) -> None:
    """Indexed events land in the output file; an acknowledged event is already flushed."""
    sent = {"time": 1.5, "event": {"msg": "hi"}, "fields": {"a": "b"}, "index": "main"}
    post(session, hec, EVENT, json.dumps(sent, indent=2), channel)
    post(session, hec, f"{RAW}?sourcetype=st", "raw line", channel)

    assert query_acks(session, hec, channel, [0, 1]) == {"0": True, "1": True}
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [sent, {"event": "raw line", "sourcetype": "st"}]


def test_health(hec: HecEmulator, session: requests.Session) -> None:
    response = session.get(f"{hec.url}{HEALTH}")

    assert (response.status_code, response.json()) == (200, {"text": "HEC is healthy", "code": 17})


def test_unknown_path_is_404(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    response = post(session, hec, "/services/collector/nope", "x", channel)

    assert response.status_code == 404


def test_keep_alive_reuses_one_connection(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """HTTP/1.1 keep-alive: errors and successes alike leave the connection open."""
    for body in (events_body("a"), b"", events_body("b")):
        post(session, hec, EVENT, body, channel)

    assert hec.stats().connections == 1


def test_concurrent_clients_get_consistent_counts(hec: HecEmulator) -> None:
    """Counters and per-channel ackIds stay consistent under concurrent senders."""
    per_thread, errors = 25, []

    def send() -> None:
        channel = str(uuid.uuid4())
        with requests.Session() as session:
            ids = [post(session, hec, EVENT, events_body("x", "y"), channel).json()["ackId"]]
            ids += [
                post(session, hec, EVENT, events_body("x", "y"), channel).json()["ackId"]
                for _ in range(per_thread - 1)
            ]
            if ids != list(range(per_thread)):
                errors.append(ids)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stats = hec.stats()
    assert (stats.data_requests, stats.events_indexed, stats.channels) == (200, 400, 8)


# ------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    "case",
    [
        ({}, EVENT, 401, {"text": "Token is required", "code": 2}),
        ({"Authorization": "Splunk wrong"}, EVENT, 403, {"text": "Invalid token", "code": 4}),
        (
            {"Authorization": f"Bearer {TOKEN}"},
            EVENT,
            401,
            {"text": "Invalid authorization", "code": 3},
        ),
        (
            {},
            f"{EVENT}?token={TOKEN}",
            400,
            {"text": "Query string authorization is not enabled", "code": 16},
        ),
        ({"Authorization": "Splunk wrong"}, ACK, 403, {"text": "Invalid token", "code": 4}),
    ],
)
def test_auth_failures(
    hec: HecEmulator,
    session: requests.Session,
    channel: str,
    case: tuple[dict[str, str], str, int, dict[str, Any]],
) -> None:
    extra_headers, path, status, body = case
    response = session.post(
        f"{hec.url}{path}",
        data=events_body("x"),
        headers={"X-Splunk-Request-Channel": channel, **extra_headers},
    )

    assert (response.status_code, response.json()) == (status, body)
    assert hec.stats().rejected == {body["code"]: 1}
    assert hec.indexed_events() == []


def test_basic_auth_with_token_as_password(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    response = session.post(
        f"{hec.url}{EVENT}",
        data=events_body("x"),
        headers={"X-Splunk-Request-Channel": channel},
        auth=("anything", TOKEN),
    )

    assert response.status_code == 200


@pytest.mark.parametrize("path", [EVENT, RAW, ACK])
def test_missing_channel_with_acks(hec: HecEmulator, session: requests.Session, path: str) -> None:
    response = post(session, hec, path, events_body("x"), None)

    assert (response.status_code, response.json()) == (
        400,
        {"text": "Data channel is missing", "code": 10},
    )


def test_invalid_channel(hec: HecEmulator, session: requests.Session) -> None:
    response = post(session, hec, EVENT, events_body("x"), "not-a-uuid")

    assert (response.status_code, response.json()) == (
        400,
        {"text": "Invalid data channel", "code": 11},
    )


@pytest.mark.parametrize(
    ("path", "body"), [(EVENT, b""), (EVENT, b" \n "), (RAW, b""), (RAW, b"\n\n")]
)
def test_empty_body_is_no_data(
    hec: HecEmulator, session: requests.Session, channel: str, path: str, body: bytes
) -> None:
    response = post(session, hec, path, body, channel)

    assert (response.status_code, response.json()) == (400, {"text": "No data", "code": 5})


@pytest.mark.parametrize(
    "case",
    [
        ('{"time": 1}', 12, "Event field is required"),
        ('{"event": ""}', 13, "Event field cannot be blank"),
        ('{"event": null}', 13, "Event field cannot be blank"),
        ('{"event": "x"', 6, "Invalid data format"),
        ("[1, 2]", 6, "Invalid data format"),
        ('{"event": "x", "fields": {"nested": {"no": 1}}}', 15, "Error in handling indexed fields"),
    ],
)
def test_invalid_event_number_rejects_whole_request(
    hec: HecEmulator, session: requests.Session, channel: str, case: tuple[str, int, str]
) -> None:
    """GIVEN a bad third event WHEN posted THEN 400 names event 2 and nothing is indexed."""
    bad, code, text = case
    body = '{"event": "ok"}\n{"event": "ok"}\n' + bad

    response = post(session, hec, EVENT, body, channel)

    assert (response.status_code, response.json()) == (
        400,
        {"text": text, "code": code, "invalid-event-number": 2},
    )
    assert hec.stats().events_indexed == 0
    assert hec.indexed_events() == []


def test_allowed_indexes(session: requests.Session, channel: str) -> None:
    with HecEmulator(token=TOKEN, allowed_indexes={"main"}) as hec:
        ok = post(session, hec, EVENT, '{"event":"a","index":"main"}{"event":"b"}', channel)
        bad = post(session, hec, EVENT, '{"event":"a"}{"event":"b","index":"other"}', channel)

    assert ok.status_code == 200
    assert (bad.status_code, bad.json()["code"], bad.json()["invalid-event-number"]) == (400, 7, 1)


# ------------------------------------------------------------------ faults


def test_busy_then_recovers(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    """GIVEN busy_requests=2 THEN two 503 code 9 with Retry-After, then success."""
    hec.set_faults(FaultPlan(busy_requests=2, retry_after_s=3))

    answers = [post(session, hec, EVENT, events_body("x"), channel) for _ in range(3)]

    assert [r.status_code for r in answers] == [503, 503, 200]
    assert answers[0].json() == {"text": "Server is busy", "code": 9}
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[2].json()["ackId"] == 0  # rejected requests consume no ackId
    stats = hec.stats()
    assert (stats.faults_injected, stats.rejected, stats.events_indexed) == ({"busy": 2}, {9: 2}, 1)


def test_error_500_then_recovers(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    hec.set_faults(FaultPlan(error_500_requests=1))

    answers = [post(session, hec, RAW, "x", channel) for _ in range(2)]

    assert [r.status_code for r in answers] == [500, 200]
    assert answers[0].json() == {"text": "Internal server error", "code": 8}


def test_faults_spare_requests_that_fail_auth(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """A request rejected for its token does not consume the busy budget."""
    hec.set_faults(FaultPlan(busy_requests=1))

    assert post(session, hec, EVENT, events_body("x"), channel, token="bad").status_code == 403
    assert post(session, hec, EVENT, events_body("x"), channel).status_code == 503


def test_reset_closes_connection_without_answer(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    hec.set_faults(FaultPlan(reset_requests=1))

    with pytest.raises(requests.ConnectionError):
        post(session, hec, EVENT, events_body("x"), channel)
    response = post(session, hec, EVENT, events_body("x"), channel)

    assert response.json() == {"text": "Success", "code": 0, "ackId": 0}
    assert hec.stats().faults_injected == {"reset": 1}
    assert hec.stats().events_indexed == 1


def test_lost_ack_never_turns_true_but_data_is_indexed(
    hec: HecEmulator, session: requests.Session, channel: str, clock: FakeClock
) -> None:
    """A lost ack models Splunk indexing the batch and losing its ack: a resend duplicates."""
    hec.set_faults(FaultPlan(lost_acks=1))
    first = post(session, hec, EVENT, events_body("x"), channel).json()["ackId"]
    second = post(session, hec, EVENT, events_body("x"), channel).json()["ackId"]

    clock.now += 3600
    assert query_acks(session, hec, channel, [first, second]) == {"0": False, "1": True}
    assert query_acks(session, hec, channel, [first]) == {"0": False}
    stats = hec.stats()
    assert (stats.events_indexed, stats.acks_lost, stats.acks_pending) == (2, 1, 0)
    assert stats.faults_injected == {"lost_ack": 1}


def test_lost_ack_can_drop_data(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    hec.set_faults(FaultPlan(lost_acks=1, lost_ack_drops_data=True))

    assert post(session, hec, EVENT, events_body("x"), channel).json()["ackId"] == 0
    assert query_acks(session, hec, channel, [0]) == {"0": False}
    assert hec.stats().events_indexed == 0


def test_delayed_ack(
    hec: HecEmulator, session: requests.Session, channel: str, clock: FakeClock
) -> None:
    """GIVEN ack_delay_s=30 THEN the ack is false until 30 s passed, then true once."""
    hec.set_faults(FaultPlan(ack_delay_s=30))
    post(session, hec, EVENT, events_body("x"), channel)

    clock.now += 29.9
    assert query_acks(session, hec, channel, [0]) == {"0": False}
    clock.now += 0.1
    assert query_acks(session, hec, channel, [0]) == {"0": True}
    assert query_acks(session, hec, channel, [0]) == {"0": False}
    assert hec.stats().events_indexed == 1


def test_body_too_large_measured_after_decompression(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """GIVEN max_body_bytes THEN a body above it (decompressed) is 413, one at it passes."""
    body = events_body("x" * 500)
    hec.set_faults(FaultPlan(max_body_bytes=len(body)))
    big = gzip.compress(events_body("x" * 501))
    assert len(big) < len(body)

    too_large = post(session, hec, EVENT, big, channel, **{"Content-Encoding": "gzip"})
    fits = post(session, hec, EVENT, body, channel)

    assert (too_large.status_code, too_large.json()) == (
        413,
        {"text": "Content too large", "code": 413},
    )
    assert fits.status_code == 200
    assert hec.stats().faults_injected == {"too_large": 1}


def test_ack_disabled_token(session: requests.Session) -> None:
    """With acks off: no channel needed, no ackId, and /ack answers 400 code 14."""
    with HecEmulator(token=TOKEN, acks=False) as hec:
        sent = post(session, hec, EVENT, events_body("x"), None)
        ack = session.post(
            f"{hec.url}{ACK}", json={"acks": [0]}, headers=headers(str(uuid.uuid4()))
        )

    assert sent.json() == {"text": "Success", "code": 0}
    assert (ack.status_code, ack.json()) == (400, {"text": "ACK is disabled", "code": 14})


def test_ack_disabled_fault(hec: HecEmulator, session: requests.Session, channel: str) -> None:
    hec.set_faults(FaultPlan(ack_disabled=True))

    assert post(session, hec, EVENT, events_body("x"), None).json() == {
        "text": "Success",
        "code": 0,
    }
    ack = session.post(f"{hec.url}{ACK}", json={"acks": [0]}, headers=headers(channel))
    assert ack.json()["code"] == 14


def test_down_window(
    hec: HecEmulator, session: requests.Session, channel: str, clock: FakeClock
) -> None:
    """While down, health is 503 code 18 (20 with ?ack=1) and data connections reset."""
    hec.set_faults(FaultPlan(down_for_s=10))

    health = session.get(f"{hec.url}{HEALTH}")
    health_ack = session.get(f"{hec.url}{HEALTH}?ack=1")
    with pytest.raises(requests.ConnectionError):
        post(session, hec, EVENT, events_body("x"), channel)
    clock.now += 10

    assert (health.status_code, health.json()["code"], health_ack.json()["code"]) == (503, 18, 20)
    assert post(session, hec, EVENT, events_body("x"), channel).status_code == 200
    assert session.get(f"{hec.url}{HEALTH}").json()["code"] == 17


def test_unhealthy_code(hec: HecEmulator, session: requests.Session) -> None:
    hec.set_faults(FaultPlan(unhealthy_code=19))

    response = session.get(f"{hec.url}{HEALTH}")

    assert (response.status_code, response.json()) == (
        503,
        {"text": "HEC is unhealthy, ack service unavailable", "code": 19},
    )


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError, match="busy_requests"):
        FaultPlan(busy_requests=-1)
    with pytest.raises(ValueError, match="unknown fault keys: nope"):
        FaultPlan.from_mapping({"nope": 1})
    with pytest.raises(ValueError, match="lost_acks"):
        FaultPlan.from_mapping({"lost_acks": True})
    assert FaultPlan.from_mapping({"ack_delay_s": 2}) == FaultPlan(ack_delay_s=2.0)


# ------------------------------------------------------------------ control endpoints


def test_stats_faults_and_reset_endpoints(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """/emulator/* need no token: set faults, read stats, reset."""
    plan = session.post(f"{hec.url}/emulator/faults", json={"busy_requests": 1})
    post(session, hec, EVENT, events_body("x"), channel)
    post(session, hec, EVENT, events_body("x", "y"), channel)
    post(session, hec, EVENT, events_body("x"), channel, token="wrong")

    stats = session.get(f"{hec.url}/emulator/stats").json()
    remaining = session.get(f"{hec.url}/emulator/faults").json()
    bad = session.post(f"{hec.url}/emulator/faults", json={"nope": 1})
    reset = session.post(f"{hec.url}/emulator/reset")

    assert (plan.status_code, plan.json()["busy_requests"]) == (200, 1)
    assert (
        stats
        == EmulatorStats(
            requests=3,
            data_requests=3,
            events_indexed=2,
            bytes_received=stats["bytes_received"],
            bytes_decompressed=stats["bytes_decompressed"],
            acks_issued=1,
            acks_pending=1,
            connections=1,
            rejected={4: 1, 9: 1},
            faults_injected={"busy": 1},
            channels=1,
        ).to_mapping()
    )
    assert stats["rejected"] == {"4": 1, "9": 1}
    assert remaining["busy_requests"] == 0
    assert (bad.status_code, reset.status_code) == (400, 200)
    assert hec.stats() == EmulatorStats()
    assert hec.indexed_events() == []


# ------------------------------------------------------------------ TLS and CLI


def test_tls(tmp_path: Path, session: requests.Session, channel: str) -> None:
    from cryptography import x509

    ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    cert, key = self_signed_certificate(tmp_path, "127.0.0.1", ip)
    with HecEmulator(token=TOKEN, tls_certfile=cert, tls_keyfile=key) as hec:
        assert hec.url.startswith("https://127.0.0.1:")
        response = session.post(
            f"{hec.url}{EVENT}", data=events_body("x"), headers=headers(channel), verify=str(cert)
        )

    assert response.json() == {"text": "Success", "code": 0, "ackId": 0}


def test_add_arguments_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "from-env")
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    args = parser.parse_args(["--busy", "2", "--no-acks", "--ack-delay", "1.5"])

    assert (args.host, args.port, args.token, args.no_acks) == ("127.0.0.1", 8088, "from-env", True)
    assert (args.busy, args.ack_delay, args.output, args.max_body_bytes) == (2, 1.5, None, None)
    assert callable(serve)


def test_cli_serve_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m forwarder.devtools.emulator` prints its URL, serves, and exits 0 on SIGTERM."""
    output = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "forwarder.devtools.emulator",
        "--port",
        "0",
        "--token",
        "cli-token",
    ]
    command += ["--output", str(output), "--busy", "1"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            first_line = proc.stdout.readline()
            assert first_line.startswith("HEC emulator listening on http://127.0.0.1:"), first_line
            url = first_line.split()[-1]
            with requests.Session() as session:
                channel = str(uuid.uuid4())
                busy = session.post(
                    f"{url}{RAW}", data="a line", headers=headers(channel, "cli-token")
                )
                sent = session.post(
                    f"{url}{RAW}", data="a line", headers=headers(channel, "cli-token")
                )
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert proc.returncode == 0, stderr
    assert (busy.status_code, sent.json()["ackId"]) == (503, 0)
    assert json.loads(output.read_text(encoding="utf-8")) == {"event": "a line"}


# ------------------------------------------------------------------ chaos faults


def raw_request(hec: HecEmulator, channel: str, body: bytes = b'{"event":"x"}') -> socket.socket:
    """Send one event request on a bare socket (no client timeout logic); return the socket."""
    host, port = hec.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {EVENT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Splunk {TOKEN}\r\n"
        f"X-Splunk-Request-Channel: {channel}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_connections(hec: HecEmulator) -> int:
    with hec._lock:
        return len(hec._connections)


def test_html_200_is_a_proxy_page_and_indexes_nothing(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """GIVEN html_200_requests=1 THEN a 200 text/html maintenance page, nothing indexed."""
    hec.set_faults(FaultPlan(html_200_requests=1))

    page = post(session, hec, EVENT, events_body("x"), channel)
    after = post(session, hec, EVENT, events_body("y"), channel)

    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.content == HTML_MAINTENANCE_PAGE
    assert after.json() == {"text": "Success", "code": 0, "ackId": 0}
    assert [e["event"] for e in hec.indexed_events()] == ["y"]
    assert hec.stats().faults_injected == {"html_200": 1}


def test_blackhole_holds_the_request_until_the_client_closes(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """GIVEN a black hole THEN no answer; the client's close frees the connection; no index."""
    hec.set_faults(FaultPlan(blackhole_requests=1))

    with pytest.raises(requests.ReadTimeout):
        session.post(
            f"{hec.url}{EVENT}", data=events_body("x"), headers=headers(channel), timeout=0.3
        )
    session.close()  # the client gives up: its socket closes
    wait_until(lambda: open_connections(hec) == 0, "the held connection to be released")

    with requests.Session() as fresh:
        assert post(fresh, hec, EVENT, events_body("y"), channel).json()["ackId"] == 0
    assert [e["event"] for e in hec.indexed_events()] == ["y"]
    assert hec.stats().faults_injected == {"blackhole": 1}


def test_stop_releases_a_black_holed_client(clock: FakeClock, channel: str) -> None:
    """A client that never gives up cannot keep stop() waiting: its connection is closed."""
    hec = HecEmulator(token=TOKEN, clock=clock, faults=FaultPlan(blackhole_requests=1)).start()
    try:
        sock = raw_request(hec, channel)
        wait_until(lambda: hec.stats().faults_injected == {"blackhole": 1}, "the black hole")
    finally:
        hec.stop()
    with sock:
        assert sock.recv(100) == b""  # closed without an answer


def test_drip_delivers_the_real_answer_and_indexes(hec: HecEmulator, channel: str) -> None:
    """GIVEN a drip THEN the real answer arrives in the end; the events are indexed."""
    hec.set_faults(FaultPlan(drip_requests=1, drip_interval_s=0.005))

    with raw_request(hec, channel) as sock:
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"text": "Success", "code": 0, "ackId": 0}
    assert hec.stats().events_indexed == 1
    assert hec.stats().faults_injected == {"drip": 1}


def test_drip_stops_when_the_client_gives_up(hec: HecEmulator, channel: str) -> None:
    """A client that closes mid-drip frees the emulator's thread."""
    hec.set_faults(FaultPlan(drip_requests=1, drip_interval_s=1.0))

    with raw_request(hec, channel) as sock:
        assert sock.recv(4096) == b"H"  # one byte, and the next only a second later
    wait_until(lambda: open_connections(hec) == 0, "the dripping connection to be released")

    assert hec.stats().faults_injected == {"drip": 1}


def statuses(hec: HecEmulator, session: requests.Session, channel: str, n: int) -> list[object]:
    """Send n requests one after another; return each one's status or exception name."""
    result: list[object] = []
    for _ in range(n):
        try:
            result.append(post(session, hec, EVENT, events_body("x"), channel).status_code)
        except requests.ConnectionError:
            result.append("reset")
    return result


def test_random_faults_reproduce_with_the_same_seed(
    hec: HecEmulator, session: requests.Session, channel: str
) -> None:
    """GIVEN p_busy, p_500, p_reset and a seed THEN the same seed gives the same faults."""
    plan = FaultPlan(seed=1234, p_busy=0.25, p_500=0.2, p_reset=0.1, p_lost_ack=0.3)

    hec.set_faults(plan)
    first = statuses(hec, session, channel, 60)
    first_faults = hec.stats().faults_injected
    hec.reset()
    hec.set_faults(plan)
    second = statuses(hec, session, channel, 60)

    assert first == second
    assert hec.stats().faults_injected == first_faults
    assert {503, 500, 200, "reset"} <= set(first)
    assert set(first_faults) == {"busy", "error_500", "reset", "lost_ack"}
    assert first_faults["busy"] == first.count(503)
    assert first_faults["lost_ack"] + hec.stats().acks_pending == first.count(200)


@pytest.mark.parametrize(
    ("field_name", "kind"),
    [("p_busy", "busy"), ("p_500", "error_500"), ("p_html_200", "html_200")],
)
def test_probability_one_always_injects(
    hec: HecEmulator, session: requests.Session, channel: str, field_name: str, kind: str
) -> None:
    hec.set_faults(FaultPlan.from_mapping({field_name: 1, "seed": 1}))

    codes = statuses(hec, session, channel, 5)

    assert hec.stats().faults_injected == {kind: 5}
    assert hec.stats().events_indexed == 0
    assert len(set(codes)) == 1


def test_random_lost_and_delayed_acks(
    hec: HecEmulator, session: requests.Session, channel: str, clock: FakeClock
) -> None:
    """p_lost_ack=1 loses every ack (data indexed); p_delayed_ack=1 delays each by delayed_ack_s."""
    hec.set_faults(FaultPlan(p_lost_ack=1.0, seed=3))
    lost = post(session, hec, EVENT, events_body("a"), channel).json()["ackId"]
    hec.set_faults(FaultPlan(p_delayed_ack=1.0, delayed_ack_s=30, seed=3))
    delayed = post(session, hec, EVENT, events_body("b"), channel).json()["ackId"]

    assert query_acks(session, hec, channel, [lost, delayed]) == {"0": False, "1": False}
    clock.now += 30
    assert query_acks(session, hec, channel, [lost, delayed]) == {"0": False, "1": True}
    assert hec.stats().faults_injected == {"lost_ack": 1, "delayed_ack": 1}
    assert hec.stats().events_indexed == 2


def test_outage_windows_start_late_and_repeat(
    hec: HecEmulator, session: requests.Session, channel: str, clock: FakeClock
) -> None:
    """GIVEN down 2 s at 5 s, every 10 s THEN resets in [5, 7) and [15, 17), answers between."""
    hec.set_faults(FaultPlan(down_at_s=5, down_for_s=2, down_every_s=10))
    seen = []
    for at in (0, 4.9, 5, 6.9, 7, 14.9, 15, 16.5, 17, 25.5):
        clock.now = 1000.0 + at
        seen.append(statuses(hec, session, channel, 1)[0])

    assert seen == [200, 200, "reset", "reset", 200, 200, "reset", "reset", 200, "reset"]
    assert hec.stats().faults_injected == {"down": 5}
    clock.now = 1000.0 + 26
    assert hec.current_faults().down_at_s == 0
    assert hec.current_faults().down_for_s == pytest.approx(1)


def test_chaos_fault_validation() -> None:
    with pytest.raises(ValueError, match="p_drip"):
        FaultPlan(p_drip=1.5)
    with pytest.raises(ValueError, match="drip_interval_s"):
        FaultPlan(drip_interval_s=0)
    with pytest.raises(ValueError, match="down_every_s"):
        FaultPlan(down_for_s=5, down_every_s=2)
    with pytest.raises(ValueError, match="blackhole_requests"):
        FaultPlan.from_mapping({"blackhole_requests": -1})
    assert FaultPlan.from_mapping({"p_reset": 1, "seed": 9}) == FaultPlan(p_reset=1.0, seed=9)
    assert FaultPlan(p_lost_ack=0.1).randomised
    assert not FaultPlan(busy_requests=3).randomised


def test_chaos_flags_build_the_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every chaos flag reaches the emulator's fault plan."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--seed", "5", "--p-busy", "0.1", "--p-500", "0.2", "--p-reset", "0.03"),
            *("--p-html-200", "0.04", "--p-blackhole", "0.05", "--p-drip", "0.06"),
            *("--p-lost-ack", "0.07", "--p-delayed-ack", "0.08", "--delayed-ack", "9"),
            *("--html-200", "1", "--blackholes", "2", "--drips", "3", "--drip-interval", "0.5"),
            *("--down-at", "10", "--down-for", "2", "--down-every", "30", "--port", "0"),
        ]
    )
    captured: list[FaultPlan] = []

    class Captured(Exception):
        pass

    def fake_start(self: HecEmulator) -> HecEmulator:
        captured.append(self._plan)
        raise Captured

    monkeypatch.setattr(HecEmulator, "start", fake_start)
    with pytest.raises(Captured):
        serve(args)

    plan = captured[0]
    assert (plan.seed, plan.p_busy, plan.p_500, plan.p_reset) == (5, 0.1, 0.2, 0.03)
    assert (plan.p_html_200, plan.p_blackhole, plan.p_drip) == (0.04, 0.05, 0.06)
    assert (plan.p_lost_ack, plan.p_delayed_ack, plan.delayed_ack_s) == (0.07, 0.08, 9.0)
    assert (plan.html_200_requests, plan.blackhole_requests, plan.drip_requests) == (1, 2, 3)
    assert plan.drip_interval_s == 0.5
    assert (plan.down_at_s, plan.down_every_s) == (10.0, 30.0)
