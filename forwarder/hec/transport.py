"""The transport under :class:`~forwarder.hec.client.HecClient`: every request bounded as a whole.

Every request has one wall-clock bound (DESIGN.md §4): name resolution, connect, sending the
body and every byte of the answer together take at most the client's bound (or less, when the
caller's :class:`RequestGuard` says so). requests' own read timeout applies to each socket read,
so a HEC that drips one byte a second would never trip it; here a process-wide watchdog thread
shuts the request's socket down once its guard's deadline passes, and
:meth:`RequestGuard.cancel` does the same at once, from any thread or a signal handler. Name
resolution (``getaddrinfo`` cannot be interrupted or given a timeout) runs in a helper thread
that is waited for no longer than the bound. Only the address lookup changes: TLS
verification, SNI and the hostname check still use the URL's host name.

:func:`guard_session` mounts the guarded connection pools on a session; :func:`guarding` bounds
one request made through it; :func:`read_capped` reads an answer no longer than
:data:`MAX_ANSWER_BYTES`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager
from urllib3.util.connection import allowed_gai_family

#: How often the watchdog looks at the requests it bounds, and how often a wait for name
#: resolution checks its guard: the granularity of a deadline or a cancel, not a timeout.
WATCH_SLICE_S: Final = 0.05
#: Name resolution waits at most this long when nothing else bounds it (no guard, no timeout).
_RESOLVE_MAX_S: Final = 30.0


class RequestGuard:
    """One HEC request's wall-clock bound and kill switch.

    The deadline is a ``time.monotonic()`` time; :meth:`HecClient.send` (and the other calls)
    tighten it to the client's own bound when they start. :meth:`cancel` and the watchdog end
    the request by shutting its socket down, which wakes a thread blocked in connect, send or
    receive at once; a wait for name resolution notices within ``WATCH_SLICE_S``.

    :meth:`cancel` and :meth:`tighten` take no lock: they are safe from any thread and from a
    signal handler.

    Args:
        deadline: a ``time.monotonic()`` time, or None (the client's bound alone applies).
    """

    __slots__ = ("_done", "_sock", "cancelled", "deadline", "expired")

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline if deadline is not None else float("inf")
        self.cancelled = False
        self.expired = False
        self._sock: socket.socket | None = None
        self._done = False

    @property
    def stopped(self) -> bool:
        """True once cancelled or past its deadline (the request fails, or failed, for it)."""
        return self.cancelled or self.expired or time.monotonic() >= self.deadline

    def remaining(self) -> float:
        """Seconds left to the deadline (never negative)."""
        return max(self.deadline - time.monotonic(), 0.0)

    def tighten(self, deadline: float) -> None:
        """Move the deadline earlier (never later); the watchdog acts on it within a slice."""
        self.deadline = min(self.deadline, deadline)

    def cancel(self) -> None:
        """End the request now: its socket is shut down (it fails as cancelled)."""
        self.cancelled = True
        self._kill()

    def expire(self) -> None:
        """The deadline passed (the watchdog): end the request as timed out."""
        if not self._done:
            self.expired = True
            self._kill()

    def attach(self, sock: socket.socket) -> None:
        """The socket the request now uses (a dup of the connection's: see ``_GuardedMixin``)."""
        self._sock = sock
        if self.cancelled or self.expired:  # stopped before the socket existed
            self._kill()

    def finish(self) -> None:
        """The request is over: later cancels no longer touch its (pooled) socket."""
        self._done = True
        self._sock = None

    def _kill(self) -> None:
        sock = self._sock
        if sock is not None and not self._done:
            # The base class's shutdown: on a TLS socket it acts on the TCP connection without
            # touching the SSL object another thread is reading through. OSError: already
            # closed or never connected, and the request ends on its own.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread per process that expires the guards of requests in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: set[RequestGuard] = set()
        self._thread: threading.Thread | None = None

    def watch(self, guard: RequestGuard) -> None:
        with self._cond:
            self._active.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="hec-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def unwatch(self, guard: RequestGuard) -> None:
        with self._cond:
            self._active.discard(guard)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._active:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                for guard in [g for g in self._active if now >= g.deadline]:
                    self._active.discard(guard)
                    guard.expire()
                self._cond.wait(WATCH_SLICE_S)


_WATCHDOG: Final = _Watchdog()
#: The guard of the request the current thread is making (read by the connection classes).
_CURRENT: Final = threading.local()


def _current_guard() -> RequestGuard | None:
    guard: RequestGuard | None = getattr(_CURRENT, "guard", None)
    return guard


@contextlib.contextmanager
def guarding(guard: RequestGuard) -> Iterator[None]:
    """Bound the request this thread makes inside the block (through a guarded session).

    The watchdog expires ``guard`` at its deadline meanwhile; when the block ends the request
    is over, so a later cancel no longer touches its (pooled) socket.
    """
    _CURRENT.guard = guard
    _WATCHDOG.watch(guard)
    try:
        yield
    finally:
        _CURRENT.guard = None
        guard.finish()
        _WATCHDOG.unwatch(guard)


def _resolve(
    host: str, port: int, family: int, timeout: float | None, guard: RequestGuard | None
) -> list[tuple[Any, ...]]:
    """``getaddrinfo``, waited for no longer than ``timeout`` and the guard's deadline.

    An IP literal is resolved in place (no lookup happens). A name is looked up in a daemon
    thread: if the resolver hangs, the request fails with a timeout and the thread ends when
    the system resolver gives up.

    Raises:
        TimeoutError: the lookup took longer than the bound (a connect timeout for urllib3).
        OSError: the request was cancelled, or ``getaddrinfo`` failed (``socket.gaierror``).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
    box: list[list[tuple[Any, ...]] | BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="hec-resolve", daemon=True).start()
    end = time.monotonic() + (timeout if timeout is not None else _RESOLVE_MAX_S)
    while not done.wait(WATCH_SLICE_S):
        if guard is not None and guard.cancelled:
            raise OSError(f"name resolution of {host} cancelled")
        now = time.monotonic()
        if now >= end or (guard is not None and now >= guard.deadline):
            raise TimeoutError(f"name resolution of {host} timed out")
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class _GuardedMixin:
    """urllib3 connection behaviour for bounded requests (see the module notes), for the plain
    and the TLS connection classes alike.

    The connection resolves its host with :func:`_resolve` and keeps a ``dup`` of its socket:
    the TLS layer takes over the original socket object, while a shutdown through the dup
    still ends the TCP connection underneath, in any phase (connect, handshake, send, read).
    """

    _kill_switch: socket.socket | None = None
    # Provided by urllib3's HTTPConnection, which this mixin precedes.
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        guard = _current_guard()
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        try:
            sock = self._open(guard, timeout)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"Failed to establish a new connection: {exc}",
            ) from exc
        return sock

    def _open(self, guard: RequestGuard | None, timeout: float | None) -> socket.socket:
        host = self._dns_host.strip("[]")
        error: OSError | None = None
        for family, kind, proto, _name, address in _resolve(
            host, self.port, allowed_gai_family(), timeout, guard
        ):
            sock = socket.socket(family, kind, proto)
            kill = sock.dup()
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                if guard is not None:
                    guard.attach(kill)
                sock.connect(address)
            except OSError as exc:
                error = exc
                sock.close()
                kill.close()
                if guard is not None and guard.stopped:
                    break
                continue
            self._set_kill_switch(kill)
            return sock
        raise error if error is not None else OSError("getaddrinfo returned no address")

    def _set_kill_switch(self, kill: socket.socket | None) -> None:
        old, self._kill_switch = self._kill_switch, kill
        if old is not None:
            old.close()

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = _current_guard()
        if guard is not None and self._kill_switch is not None:
            guard.attach(self._kill_switch)  # a kept-alive connection: the guard takes its socket
        super().request(*args, **kwargs)  # type: ignore[misc]  # urllib3's, which this precedes

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            self._set_kill_switch(None)


class _GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOL_CLASSES: Final = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class _GuardedAdapter(HTTPAdapter):
    """requests' adapter with pools of guarded connections (proxies included, not SOCKS)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager


def guard_session(session: requests.Session) -> None:
    """Mount the bounded-request adapter on ``session`` for http and https (idempotent)."""
    for prefix in ("https://", "http://"):
        if not isinstance(session.adapters.get(prefix), _GuardedAdapter):
            session.mount(prefix, _GuardedAdapter())


#: The most of an answer body read. HEC's answers are small JSON objects (an ack answer for
#: every pending ackId stays far below this); a longer body is not HEC's, and reading it whole
#: would let a hostile server choose our memory.
MAX_ANSWER_BYTES: Final = 1 << 20
_ANSWER_CHUNK: Final = 64 * 1024


def read_capped(response: requests.Response) -> bool:
    """Read the body into ``response.content`` if it is at most :data:`MAX_ANSWER_BYTES`.

    Returns:
        False when the body is longer: then the connection is dropped, not drained.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_ANSWER_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            break
    response._content = b"".join(chunks)[:MAX_ANSWER_BYTES]  # requests' own cache of the body
    response.close()  # fully read: the connection goes back to the pool; else it is closed
    return size <= MAX_ANSWER_BYTES
