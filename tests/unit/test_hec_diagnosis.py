"""explain_failure: each transport failure, wrapped as the HEC client wraps it, in plain words."""

from __future__ import annotations

import errno
import http.client
import socket
import ssl

import pytest
import requests
from urllib3.exceptions import MaxRetryError, ProtocolError

from forwarder.errors import DeliveryError, RetryableError
from forwarder.hec.diagnosis import exception_chain, explain_failure

URL = "https://splunk.example.com:8088"


def through_client(cause: BaseException) -> DeliveryError:
    """``cause`` as the client hands it on: urllib3's MaxRetryError inside a requests error,
    re-raised as a DeliveryError ``from None`` (the context stays reachable)."""
    try:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise requests.ConnectionError(
                    MaxRetryError(None, "/services/collector/event", reason=inner)  # type: ignore[arg-type]
                ) from inner
        except requests.RequestException:
            raise RetryableError(f"token probe to {URL} failed (raw urllib3 text)") from None
    except DeliveryError as delivery:
        return delivery
    raise AssertionError("unreachable")


def certificate_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
            f"cannot connect to {URL} (connection refused)",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            f"cannot connect to {URL} (name not found: splunk.example.com)",
        ),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            f"cannot connect to {URL} (name lookup of splunk.example.com failed: "
            "Temporary failure in name resolution)",
        ),
        (
            certificate_error(18, "self-signed certificate"),
            f"cannot connect to {URL}: TLS certificate not trusted: self-signed certificate "
            "(set SPLUNK_HEC_CA_BUNDLE to the CA certificate that signed it)",
        ),
        (
            certificate_error(62, "Hostname mismatch, certificate is not valid for 'x'."),
            f"cannot connect to {URL}: TLS certificate is not for host splunk.example.com "
            "(Hostname mismatch, certificate is not valid for 'x'.)",
        ),
        (
            certificate_error(10, "certificate has expired"),
            f"cannot connect to {URL}: TLS certificate expired (certificate has expired)",
        ),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"),
            f"cannot connect to {URL}: TLS handshake failed: the server does not speak TLS "
            "on this port (try http://)",
        ),
        (requests.ConnectTimeout("connect timeout=1"), f"cannot connect to {URL} (timed out)"),
        (
            requests.ReadTimeout("read timeout=5"),
            f"{URL} accepted the connection but did not answer in time (timed out)",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "reset"),
            f"{URL} reset the connection without answering (connection reset)",
        ),
        (
            http.client.RemoteDisconnected("Remote end closed connection without response"),
            f"{URL} closed the connection without answering",
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            f"cannot connect to {URL} (host unreachable)",
        ),
        (
            OSError(errno.ENETUNREACH, "Network is unreachable"),
            f"cannot connect to {URL} (network unreachable)",
        ),
    ],
)
def test_each_cause_in_plain_words(cause: BaseException, expected: str) -> None:
    assert explain_failure(through_client(cause), URL) == expected


def test_an_untrusted_certificate_with_a_bundle_set_names_the_bundle() -> None:
    error = through_client(certificate_error(20, "unable to get local issuer certificate"))
    assert explain_failure(error, URL, ca_bundle="/etc/ca.pem") == (
        f"cannot connect to {URL}: TLS certificate not trusted: unable to get local issuer "
        "certificate (SPLUNK_HEC_CA_BUNDLE=/etc/ca.pem does not hold the CA that signed it)"
    )


def test_a_request_past_its_time_bound_timed_out() -> None:
    """The client's own bound (no requests exception underneath) reads as a timeout."""
    error = RetryableError("no complete answer", error_code="Splunk.ConnectionTimeout")
    assert explain_failure(error, URL) == f"{URL} did not answer in time (timed out)"


def test_an_unknown_cause_keeps_the_clients_message() -> None:
    error = RetryableError("token probe failed (something new)")
    assert explain_failure(error, URL) == f"cannot reach {URL} (token probe failed (something new))"
    assert explain_failure(ValueError("odd"), URL) == f"cannot reach {URL} (ValueError: odd)"


def test_a_cyclic_chain_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert [str(e) for e in exception_chain(first)] == ["a", "b"]


def test_a_reset_wrapped_in_urllib3s_protocol_error_is_still_a_reset() -> None:
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    error = through_client(ProtocolError("Connection aborted.", reset))
    assert explain_failure(error, URL) == (
        f"{URL} reset the connection without answering (connection reset)"
    )
