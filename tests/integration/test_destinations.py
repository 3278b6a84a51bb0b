"""Two Splunks from one deployment: two HEC emulators as two destinations, one of them
refusing its token (revoked). The good one's events are all acknowledged, the other's are
backsplashed under its prefix, naming it, with ``hec_fatal``; the ledger balances with a
row per destination; replay sends each record back to the destination recorded with it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from config.loader import load_settings
from config.settings import Settings
from forwarder import push
from forwarder.backsplash.codec import Failure
from forwarder.backsplash.layout import REPLAY_FAILED, SPLUNK_FAILED
from forwarder.backsplash.writers import Backsplash
from forwarder.cli import main
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import HecEmulator
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.replay.engine import replay
from forwarder.replay.options import ReplayOptions
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN, boto_client
from tests.integration.conftest import BUCKET, FAST, PREFIX
from tests.integration.test_daemon import STREAM, daemon_settings, running, wait_for
from transforms.records import EncodedEvent

pytestmark = pytest.mark.integration

SECURITY_TOKEN = "11111111-security-token-000000000000"
REVOKED_TOKEN = "22222222-revoked-token-0000000000000"
SECURITY_PREFIX = "security/"
APP_LINES = [f"app line {i}" for i in range(30)]
SEC_LINES = [f"sec line {i}" for i in range(20)]


def config_file(tmp_path: Path, security_url: str, token: str, route_rules: str = "") -> Path:
    """A settings file: the top level is ``default``; ``security`` is the second emulator."""
    path = tmp_path / f"forwarder-{token[:8]}.toml"
    path.write_text(
        f"""
[destinations.security]
hec_url = "{security_url}"
token = "{token}"
backsplash_prefix = "{SECURITY_PREFIX}"

[[routes]]
log_group = "/sec/*"
sourcetype = "sec:audit"
destination = "security"
{route_rules}
"""
    )
    return path


def environ_for(main_url: str, aws_endpoint: str, config: Path) -> dict[str, str]:
    return {
        **FAST,
        "SPLUNK_HEC_URL": main_url,
        "LOG_FORMAT": "json",
        "FORWARDER_CONFIG": str(config),
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def payloads() -> list[bytes]:
    return [
        cloudwatch_payload(APP_LINES, log_group="/app/web", log_stream="a"),
        cloudwatch_payload(SEC_LINES, log_group="/sec/audit", log_stream="s", first_id=1000),
    ]


def kinesis_event(items: list[bytes]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:kinesis",
                "eventID": f"shardId-000000000000:{i}",
                "kinesis": {
                    "sequenceNumber": f"4959{i:020d}",
                    "partitionKey": "p",
                    "data": base64.b64encode(payload).decode(),
                },
            }
            for i, payload in enumerate(items)
        ]
    }


def records_under(s3: Any, prefix: str, kind: str = SPLUNK_FAILED) -> list[dict[str, Any]]:
    reader = Backsplash(s3, BUCKET, prefix)
    return [record for key in reader.list_keys(kind) for record in reader.read(key)]


@pytest.fixture(name="main_hec")
def fixture_main_hec() -> Iterator[HecEmulator]:
    with HecEmulator(token=TEST_TOKEN) as emulator:
        yield emulator


@pytest.fixture(name="security_hec")
def fixture_security_hec() -> Iterator[HecEmulator]:
    """The security team's Splunk: it accepts SECURITY_TOKEN only (REVOKED_TOKEN is refused)."""
    with HecEmulator(token=SECURITY_TOKEN) as emulator:
        yield emulator


def check_revoked_run(
    summary: Mapping[str, Any], main_hec: HecEmulator, security_hec: HecEmulator, s3: Any
) -> None:
    """What a run with the security destination's token revoked leaves behind."""
    assert summary["events_in"] == 50 and summary["balanced"], summary
    assert (summary["acknowledged"], summary["backsplashed"]) == (30, 20)
    rows = summary["destinations"]
    assert set(rows) == {"default", "security"}
    assert (rows["default"]["acknowledged"], rows["default"]["backsplashed"]) == (30, 0)
    assert (rows["security"]["acknowledged"], rows["security"]["backsplashed"]) == (0, 20)
    assert rows["default"]["balanced"] and rows["security"]["balanced"]
    assert sorted(e["event"] for e in main_hec.indexed_events()) == sorted(APP_LINES)
    assert security_hec.stats().events_indexed == 0
    stored = records_under(s3, SECURITY_PREFIX)
    assert len(stored) == 20
    assert {r["errorCode"] for r in stored} == {"Splunk.InvalidToken"}
    assert {r["destination"] for r in stored} == {"security"}
    assert sorted(json.loads(base64.b64decode(r["rawData"]))["event"] for r in stored) == sorted(
        SEC_LINES
    )
    assert records_under(s3, PREFIX) == []  # the default destination lost nothing


def test_forward_delivers_to_two_splunks_and_backsplashes_the_revoked_ones_events(
    main_hec: HecEmulator, security_hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    source = tmp_path / "kinesis.json"
    source.write_text(json.dumps(kinesis_event(payloads())))
    config = config_file(tmp_path, security_hec.url, REVOKED_TOKEN)
    out = io.StringIO()
    status = main(
        ["forward", str(source), "--json"],
        environ=environ_for(main_hec.url, aws_endpoint, config),
        out=out,
    )
    assert status == ExitStatus.HEC_FATAL  # the security destination refused its token
    check_revoked_run(json.loads(out.getvalue()), main_hec, security_hec, s3)


def test_forward_with_both_tokens_good_acknowledges_everything_where_it_belongs(
    main_hec: HecEmulator, security_hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    source = tmp_path / "kinesis.json"
    source.write_text(json.dumps(kinesis_event(payloads())))
    config = config_file(tmp_path, security_hec.url, SECURITY_TOKEN)
    out = io.StringIO()
    status = main(
        ["forward", str(source)], environ=environ_for(main_hec.url, aws_endpoint, config), out=out
    )
    assert status == ExitStatus.OK, out.getvalue()
    assert "destination security" in out.getvalue()
    assert sorted(e["event"] for e in main_hec.indexed_events()) == sorted(APP_LINES)
    indexed = security_hec.indexed_events()
    assert sorted(e["event"] for e in indexed) == sorted(SEC_LINES)
    assert {e["sourcetype"] for e in indexed} == {"sec:audit"}
    assert records_under(s3, SECURITY_PREFIX) == [] and records_under(s3, PREFIX) == []


DROP_SEC_TENS = 'drop = [{ message = "re:^sec line 1[0-9]$" }]'  # ten of the twenty


def check_filtered_rows(summary: Mapping[str, Any]) -> None:
    """A security route dropping ten of its twenty lines: counted on its own row."""
    assert summary["balanced"] and summary["events_in"] == 50, summary
    assert summary["dropped"] == {"filtered": 10}
    rows = summary["destinations"]
    assert rows["security"]["dropped"] == {"filtered": 10}
    assert (rows["security"]["events_in"], rows["security"]["acknowledged"]) == (20, 10)
    assert rows["default"]["dropped"] == {} and rows["default"]["acknowledged"] == 30
    assert rows["security"]["balanced"] and rows["default"]["balanced"]


def test_a_routes_filtered_events_count_on_its_destinations_row(
    main_hec: HecEmulator, security_hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    source = tmp_path / "kinesis.json"
    source.write_text(json.dumps(kinesis_event(payloads())))
    config = config_file(tmp_path, security_hec.url, SECURITY_TOKEN, DROP_SEC_TENS)
    out = io.StringIO()
    status = main(
        ["forward", str(source), "--json"],
        environ=environ_for(main_hec.url, aws_endpoint, config),
        out=out,
    )
    assert status == ExitStatus.OK, out.getvalue()
    check_filtered_rows(json.loads(out.getvalue()))
    assert sorted(e["event"] for e in security_hec.indexed_events()) == [
        f"sec line {i}" for i in range(10)
    ]


@pytest.fixture(name="push_with")
def fixture_push_with(s3: Any, aws_endpoint: str) -> Iterator[Any]:
    def factory(service: str) -> Any:
        return boto_client(service, aws_endpoint)

    def configure(settings: Settings) -> None:
        push.configure(settings, client_factory=factory)

    yield configure
    push.reset()


def test_push_keeps_delivering_to_one_destination_when_the_others_token_is_revoked(
    main_hec: HecEmulator,
    security_hec: HecEmulator,
    s3: Any,
    *,
    aws_endpoint: str,
    tmp_path: Path,
    push_with: Any,
) -> None:
    config = config_file(tmp_path, security_hec.url, REVOKED_TOKEN)
    push_with(load_settings(environ_for(main_hec.url, aws_endpoint, config)))
    with capture_logs() as logs:
        answer = push.handler(kinesis_event(payloads()), None)
    assert answer == {"batchItemFailures": []}  # every event is acknowledged or stored
    (summary,) = [e for e in logs if e["event"] == "push_invocation_summarized"]
    check_revoked_run(summary, main_hec, security_hec, s3)
    fatal = [e for e in logs if e["event"] == "hec_fatal"]
    assert fatal and {e.get("destination") for e in fatal} == {"security"}
    assert REVOKED_TOKEN not in repr(logs)

    # The next invocation: the security destination stays stopped, default still delivers.
    with capture_logs() as logs:
        push.handler(kinesis_event([payloads()[0]]), None)
    (summary,) = [e for e in logs if e["event"] == "push_invocation_summarized"]
    assert (summary["acknowledged"], summary["balanced"]) == (30, True)
    assert summary["destinations"]["default"]["acknowledged"] == 30


def test_push_counts_a_routes_filtered_events_on_its_destinations_row(
    main_hec: HecEmulator,
    security_hec: HecEmulator,
    s3: Any,
    *,
    aws_endpoint: str,
    tmp_path: Path,
    push_with: Any,
) -> None:
    config = config_file(tmp_path, security_hec.url, SECURITY_TOKEN, DROP_SEC_TENS)
    push_with(load_settings(environ_for(main_hec.url, aws_endpoint, config)))
    with capture_logs() as logs:
        answer = push.handler(kinesis_event(payloads()), None)
    assert answer == {"batchItemFailures": []}
    (summary,) = [e for e in logs if e["event"] == "push_invocation_summarized"]
    check_filtered_rows(summary)


def test_replay_sends_each_record_back_to_its_destination(
    main_hec: HecEmulator, security_hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    source = tmp_path / "kinesis.json"
    source.write_text(json.dumps(kinesis_event(payloads())))
    revoked = config_file(tmp_path, security_hec.url, REVOKED_TOKEN)
    environ = environ_for(main_hec.url, aws_endpoint, revoked)
    status = main(["forward", str(source)], environ=environ, out=io.StringIO())
    assert status == ExitStatus.HEC_FATAL
    # One record for a destination the settings no longer have.
    Backsplash(s3, BUCKET, SECURITY_PREFIX).write(
        [EncodedEvent(b'{"event":"orphan"}', "orphan-1")],
        Failure("Splunk.InvalidToken", "refused", 1, "event", destination="gone"),
    )

    # The token is fixed: replay the security destination's prefix with the new settings.
    fixed = config_file(tmp_path, security_hec.url, SECURITY_TOKEN)
    settings = load_settings(environ_for(main_hec.url, aws_endpoint, fixed))
    with capture_logs() as logs:
        report = replay(
            settings,
            f"s3://{BUCKET}/{SECURITY_PREFIX}",
            ReplayOptions(state_path=tmp_path / "replay.sqlite"),
            s3_client=s3,
        )
    assert report.fatal is None
    indexed = security_hec.indexed_events()
    assert sorted(e["event"] for e in indexed) == sorted(SEC_LINES)
    assert len(main_hec.indexed_events()) == 30  # nothing of security's went to default
    (summary,) = [e for e in logs if e["event"] == "delivery_summarized"]
    assert summary["balanced"]
    assert (summary["acknowledged"], summary["backsplashed"]) == (20, 1)
    assert summary["destinations"]["security"]["acknowledged"] == 20
    assert summary["destinations"]["security"]["balanced"]
    unrouted = [e for e in logs if e["event"] == "replay_record_unrouted"]
    assert [(e["destination"], e["events"]) for e in unrouted] == [("gone", 1)]
    parked = records_under(s3, SECURITY_PREFIX, REPLAY_FAILED)
    assert [(r["errorCode"], r["destination"], r["replayAttempts"]) for r in parked] == [
        ("Splunk.UnknownDestination", "gone", 1)
    ]


def test_the_daemon_keeps_running_for_the_good_destination_and_exports_a_row_each(
    main_hec: HecEmulator, security_hec: HecEmulator, s3: Any, aws_endpoint: str, tmp_path: Path
) -> None:
    kinesis = boto_client("kinesis", aws_endpoint)
    kinesis.create_stream(StreamName=STREAM, ShardCount=1)
    for number, payload in enumerate(payloads()):
        kinesis.put_record(StreamName=STREAM, Data=payload, PartitionKey=str(number))
    config = config_file(tmp_path, security_hec.url, REVOKED_TOKEN)
    settings = load_settings(environ_for(main_hec.url, aws_endpoint, config))
    daemon = Daemon(
        settings, daemon_settings(tmp_path), client_factory=lambda s: boto_client(s, aws_endpoint)
    )
    with running(daemon) as status:
        wait_for(lambda: daemon.deliverer.ledger.summary()["acknowledged"] == 30, what="acks")
        wait_for(lambda: daemon.deliverer.ledger.summary()["backsplashed"] == 20, what="stored")
        wait_for(lambda: daemon.state.checkpoints >= 1 and daemon.pending_acks() == 0)
        # A fatal error on one destination does not stop the daemon: more events still go.
        more = cloudwatch_payload(["after 1", "after 2"], log_group="/app/web", first_id=5000)
        kinesis.put_record(StreamName=STREAM, Data=more, PartitionKey="x")
        wait_for(lambda: daemon.deliverer.ledger.summary()["acknowledged"] == 32, what="more")
        assert daemon.metrics is not None
        text = requests.get(f"{daemon.metrics.url}/metrics", timeout=5).text
    assert status == [ExitStatus.HEC_FATAL]
    samples = {
        (sample.name, sample.labels.get("destination"), sample.labels.get("outcome")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("forwarder_events_acknowledged_total", None, None)] == 32
    assert samples[("forwarder_destination_events_total", "default", "acknowledged")] == 32
    assert samples[("forwarder_destination_events_total", "security", "backsplashed")] == 20
    assert samples[("forwarder_destination_events_total", "security", "acknowledged")] == 0
    assert len(main_hec.indexed_events()) == 32
    assert security_hec.stats().events_indexed == 0
    stored = records_under(s3, SECURITY_PREFIX)
    assert len(stored) == 20 and {r["destination"] for r in stored} == {"security"}


def test_check_probes_each_destination_with_its_own_token(
    main_hec: HecEmulator, security_hec: HecEmulator, aws_endpoint: str, tmp_path: Path
) -> None:
    environ = environ_for(
        main_hec.url, aws_endpoint, config_file(tmp_path, security_hec.url, REVOKED_TOKEN)
    )
    out = io.StringIO()
    assert main(["check"], environ=environ, out=out) == ExitStatus.HEC_FATAL
    lines = out.getvalue().splitlines()
    assert f"{main_hec.url}: token accepted" in lines
    after = lines[lines.index("destination security:") + 1 :]
    assert any(line.startswith(f"{security_hec.url}: token refused") for line in after)
    assert REVOKED_TOKEN not in out.getvalue()

    fixed = environ_for(
        main_hec.url, aws_endpoint, config_file(tmp_path, security_hec.url, SECURITY_TOKEN)
    )
    out = io.StringIO()
    assert main(["check"], environ=fixed, out=out) == ExitStatus.OK, out.getvalue()
    assert f"{security_hec.url}: token accepted" in out.getvalue().splitlines()
