"""Plain words for a failed HEC request: what went wrong on the way, not urllib3's wording.

:func:`explain_failure` reads the chain of exceptions under a failed request (the
:class:`~forwarder.errors.DeliveryError` the client raised, the ``requests`` exception it came
from, urllib3's wrapper and the ``OSError`` or ``ssl`` error underneath) and names the cause
the way a person would: connection refused, name not found, TLS certificate not trusted,
timed out. ``forwarder check`` prints it. No I/O; the token never reaches these messages (only
exception types, errno values and the TLS verifier's text are read).
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Final, TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    ProtocolError,
    ReadTimeoutError,
)

from forwarder.errors import DeliveryError

_E = TypeVar("_E", bound=BaseException)

#: How deep the exception chain is followed (urllib3 wraps three or four levels).
_MAX_CHAIN: Final = 32
#: OpenSSL's X509_V_ERR_* codes that have their own wording.
_CERT_EXPIRED: Final = 10
_CERT_HOSTNAME_MISMATCH: Final = 62
#: getaddrinfo answers that mean "this name does not exist", not "the lookup failed".
_NAME_MISSING: Final = frozenset(
    code
    for code in (
        getattr(socket, "EAI_NONAME", None),
        getattr(socket, "EAI_NODATA", None),
        getattr(socket, "EAI_ADDRFAMILY", None),
    )
    if code is not None
)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Every exception under ``exc``, nearest first: causes, contexts, urllib3's ``reason``
    and exceptions passed as arguments (``requests`` wraps urllib3's error that way)."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue and len(seen) < _MAX_CHAIN:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        nested = [current.__cause__, current.__context__, reason, *current.args]
        queue.extend(item for item in nested if isinstance(item, BaseException))


def _first(chain: list[BaseException], kind: type[_E]) -> _E | None:
    return next((item for item in chain if isinstance(item, kind)), None)


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


def _tls_reason(error: ssl.SSLError, url: str, ca_bundle: str | None) -> str:
    # ssl sets reason, verify_code and verify_message on the errors it raises; an error made
    # elsewhere may lack them.
    reason = getattr(error, "reason", None)
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = getattr(error, "verify_message", None) or reason or "verification failed"
        code = getattr(error, "verify_code", None)
        if code == _CERT_HOSTNAME_MISMATCH:
            return f"TLS certificate is not for host {_host(url)} ({detail})"
        if code == _CERT_EXPIRED:
            return f"TLS certificate expired ({detail})"
        hint = (
            f"SPLUNK_HEC_CA_BUNDLE={ca_bundle} does not hold the CA that signed it"
            if ca_bundle
            else "set SPLUNK_HEC_CA_BUNDLE to the CA certificate that signed it"
        )
        return f"TLS certificate not trusted: {detail} ({hint})"
    text = f"{reason or ''} {error}".lower()
    if "wrong version number" in text or "record layer failure" in text:
        return "TLS handshake failed: the server does not speak TLS on this port (try http://)"
    return f"TLS handshake failed ({reason or error})"


def explain_failure(exc: BaseException, url: str, *, ca_bundle: str | None = None) -> str:
    """Say in plain words why a request to ``url`` got no HEC answer.

    Args:
        exc: what the request raised (a ``DeliveryError`` from the HEC client, or any
            exception whose chain holds the ``requests``/urllib3/``OSError`` cause).
        url: the HEC base URL, named in the message.
        ca_bundle: the configured ``SPLUNK_HEC_CA_BUNDLE``, for the hint on an untrusted
            certificate.

    Returns:
        One line: ``cannot connect to https://splunk:8088 (connection refused)``,
        ``cannot connect to https://splunk:8088: TLS certificate not trusted: ...``,
        ``https://splunk:8088 did not answer in time (timed out)``.
    """
    chain = list(exception_chain(exc))
    tls = _first(chain, ssl.SSLError)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return f"cannot connect to {url}: {_tls_reason(tls, url, ca_bundle)}"
    lookup = _first(chain, socket.gaierror)
    if lookup is not None or _first(chain, NameResolutionError) is not None:
        host = _host(url)
        if lookup is not None and lookup.errno not in _NAME_MISSING:
            detail = lookup.strerror or str(lookup)
            return f"cannot connect to {url} (name lookup of {host} failed: {detail})"
        return f"cannot connect to {url} (name not found: {host})"
    if tls is not None:
        return f"cannot connect to {url}: {_tls_reason(tls, url, ca_bundle)}"
    if _first(chain, ConnectionRefusedError) is not None:
        return f"cannot connect to {url} (connection refused)"
    if (
        _first(chain, ConnectTimeoutError) is not None
        or _first(chain, requests.ConnectTimeout) is not None
    ):
        return f"cannot connect to {url} (timed out)"
    if (
        _first(chain, ReadTimeoutError) is not None
        or _first(chain, requests.ReadTimeout) is not None
        or _first(chain, TimeoutError) is not None
    ):
        return f"{url} accepted the connection but did not answer in time (timed out)"
    # RemoteDisconnected is a ConnectionResetError, and urllib3 wraps both in ProtocolError.
    if _first(chain, http.client.RemoteDisconnected) is not None:
        return f"{url} closed the connection without answering"
    if _first(chain, ConnectionResetError) is not None:
        return f"{url} reset the connection without answering (connection reset)"
    if _first(chain, ProtocolError) is not None:
        return f"{url} closed the connection without answering"
    unreachable = next(
        (
            item
            for item in chain
            if isinstance(item, OSError) and item.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
        ),
        None,
    )
    if unreachable is not None:
        what = "host" if unreachable.errno == errno.EHOSTUNREACH else "network"
        return f"cannot connect to {url} ({what} unreachable)"
    delivery = _first(chain, DeliveryError)
    if delivery is not None and delivery.error_code == "Splunk.ConnectionTimeout":
        return f"{url} did not answer in time (timed out)"
    if delivery is not None:
        return f"cannot reach {url} ({delivery.message})"
    return f"cannot reach {url} ({type(exc).__name__}: {str(exc)[:200]})"
