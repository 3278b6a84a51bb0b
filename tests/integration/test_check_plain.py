"""``forwarder check`` in plain words against real failures on loopback: acks on and off, a
closed port, an untrusted certificate, a name that does not exist, a HEC that never answers."""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.cli import main
from forwarder.commands.check import ACKS_NOT_USED, ACKS_OFF, ACKS_ON
from forwarder.devtools.emulator import FaultPlan, HecEmulator
from forwarder.status import ExitStatus
from tests.conftest import TEST_TOKEN
from tests.integration.conftest import self_signed_certificate

pytestmark = pytest.mark.integration

#: urllib3's and requests' own wording, which check must never show.
RAW_TEXT = ("HTTPConnectionPool", "HTTPSConnectionPool", "Max retries", "code None", "urllib3")


def run_check(url: str, **extra: str) -> tuple[int, str]:
    environ = {
        "SPLUNK_HEC_URL": url,
        "SPLUNK_HEC_TOKEN": TEST_TOKEN,
        "LOG_FORMAT": "json",
        # generous: a loaded machine or a slow resolver must not turn a finding into a timeout
        "SPLUNK_HEC_CONNECT_TIMEOUT": "20",
        "SPLUNK_HEC_READ_TIMEOUT": "20",
        **extra,
    }
    out = io.StringIO()
    status = main(["check"], environ=environ, out=out)
    text = out.getvalue()
    assert TEST_TOKEN not in text
    for raw in RAW_TEXT:
        assert raw not in text
    return status, text


@pytest.fixture(name="closed_port")
def fixture_closed_port() -> Iterator[int]:
    """A loopback port that is bound (so nobody else takes it) but not listening: refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_acks_on_is_reported_with_what_it_means() -> None:
    with HecEmulator(token=TEST_TOKEN) as hec:
        url = hec.url
        status, out = run_check(url)
        assert hec.stats().events_indexed == 0  # the probes index nothing
    assert status == ExitStatus.OK
    assert f"{url}: token accepted" in out
    assert f"{url}: {ACKS_ON}" in out


def test_acks_off_says_delivery_cannot_be_confirmed() -> None:
    """GIVEN a token without indexer acknowledgment THEN check says so, and that events then
    count as delivered on a 200; still exit 0 (a warning, not a failure)."""
    with HecEmulator(token=TEST_TOKEN, acks=False) as hec:
        url = hec.url
        status, out = run_check(url)
    assert status == ExitStatus.OK
    assert "token accepted" in out
    assert f"{url}: {ACKS_OFF}" in out
    assert "delivery cannot be confirmed" in ACKS_OFF
    assert "delivered on HEC's 200 answer" in ACKS_OFF


def test_acks_on_for_the_token_but_off_in_the_settings() -> None:
    with HecEmulator(token=TEST_TOKEN) as hec:
        url = hec.url
        status, out = run_check(url, SPLUNK_HEC_ACK="false")
    assert status == ExitStatus.OK
    assert f"{url}: {ACKS_NOT_USED}" in out


def test_a_closed_port_is_connection_refused(closed_port: int) -> None:
    url = f"https://127.0.0.1:{closed_port}"
    status, out = run_check(url)
    assert status == ExitStatus.FAILURE
    assert f"{url}: NOT OK: cannot connect to {url} (connection refused)\n" in out
    assert "token" not in out  # one line for an unreachable URL, no probes after it


def test_a_self_signed_certificate_is_not_trusted_until_its_ca_is_given(tmp_path: Path) -> None:
    from cryptography import x509

    cert, key = self_signed_certificate(
        tmp_path, "127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    )
    with HecEmulator(token=TEST_TOKEN, tls_certfile=cert, tls_keyfile=key) as hec:
        assert hec.url.startswith("https://")
        status, out = run_check(hec.url)
        assert status == ExitStatus.FAILURE
        assert f"cannot connect to {hec.url}: TLS certificate not trusted: self" in out
        assert "(set SPLUNK_HEC_CA_BUNDLE" in out
        status, out = run_check(hec.url, SPLUNK_HEC_CA_BUNDLE=str(cert))
        assert status == ExitStatus.OK
        assert "token accepted" in out


def test_a_name_that_does_not_exist_is_name_not_found() -> None:
    url = "https://hec.invalid:8088"
    status, out = run_check(url)
    assert status == ExitStatus.FAILURE
    assert f"cannot connect to {url} (name not found: hec.invalid)" in out


def test_a_hec_that_never_answers_timed_out() -> None:
    with HecEmulator(token=TEST_TOKEN, faults=FaultPlan(blackhole_requests=1)) as hec:
        url = hec.url
        status, out = run_check(url, SPLUNK_HEC_READ_TIMEOUT="1")
    assert status == ExitStatus.FAILURE
    assert f"{url} accepted the connection but did not answer in time (timed out)" in out


def test_https_to_a_plain_http_port_names_the_scheme() -> None:
    with HecEmulator(token=TEST_TOKEN) as hec:
        url = hec.url.replace("http://", "https://")
        status, out = run_check(url)
    assert status == ExitStatus.FAILURE
    assert "the server does not speak TLS on this port (try http://)" in out
