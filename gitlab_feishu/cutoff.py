"""A deadline on a whole HTTP answer, for the calls a webhook waits for.

Socket timeouts bound each read, not a whole answer: a reply trickling in a few
bytes at a time (a slow link, a proxy feeding it slowly) would hold a webhook's
thread, and GitLab, as long as it lasts, past GitLab's 10 s. A call made inside
`CUTOFF.after(seconds)` on a `session()` has its socket shut once that time is
up, by one watcher thread per process, so the call fails as retryable and the
card is retried in the background. The call itself stays on the caller's
thread: handing every card to another thread cost about 7% of throughput.
Only a new connection (rare: they are kept alive) is made on a thread of its
own, since nothing else bounds its name lookup; its socket is watched from
then on, through a proxy's CONNECT exchange and the TLS handshake.
"""
from __future__ import annotations

import math
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3 import connection, connectionpool, poolmanager
from urllib3.exceptions import ConnectTimeoutError

TICK = 0.05      # seconds between the watcher's looks: how late past its deadline a call is cut off at most


class Countdown:
    """The seconds left before a deadline on an injectable (wall) clock, never more than really remain: the
    wall clock may be stepped back (an NTP correction) mid-wait, and a clock a test injects may never move."""

    def __init__(self, deadline: float, clock: Callable[[], float]):
        self._deadline, self._clock = deadline, clock
        self._real_end = time.monotonic() + (deadline - clock())

    def left(self) -> float:
        return min(self._deadline - self._clock(), self._real_end - time.monotonic())


@dataclass(eq=False)
class Call:
    deadline: float
    sock: socket.socket | None = None     # while the call has a request out on it
    cut: bool = False


class Cutoff:
    """Shuts the socket of a call still unanswered at its deadline."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, tick: float = TICK):
        self._clock = clock
        self._tick = tick
        self._local = threading.local()
        self._calls: set[Call] = set()
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._watcher: threading.Thread | None = None

    @contextmanager
    def after(self, seconds: float | None) -> Iterator[Call]:
        """Calls this thread makes in the block are cut off `seconds` from now (never, for None)."""
        call = Call(math.inf if seconds is None else self._clock() + seconds)
        self._local.call = call
        try:
            yield call
        finally:
            self._local.call = None
            self._release(call)

    def watch(self, conn: connection.HTTPConnection) -> None:
        """A connection has sent this thread's request: its socket is the one to shut if need be."""
        call = self._watch(conn.sock)
        if call is not None:
            conn.cutoff_call = call

    def watch_handshake(self, sock: socket.socket) -> None:
        """A new connection's socket, from before its TLS handshake (or a proxy's CONNECT), which reads too:
        a server can trickle a handshake as it can an answer."""
        self._watch(sock)

    def _watch(self, sock: socket.socket | None) -> Call | None:
        call = getattr(self._local, "call", None)
        if call is None or call.deadline == math.inf or sock is None:
            return None
        with self._lock:
            call.sock = sock
            self._calls.add(call)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_forever, daemon=True, name="cutoff")
                self._watcher.start()
        self._busy.set()
        return call

    def returned(self, conn: connection.HTTPConnection) -> None:
        """The connection's answer has been read: from now on it may carry someone else's call."""
        call = getattr(conn, "cutoff_call", None)
        if call is not None:
            conn.cutoff_call = None
            self._release(call)

    def time_left(self) -> float | None:
        """Seconds left for this thread's call; None outside a call or for one without a deadline."""
        call = getattr(self._local, "call", None)
        if call is None or call.deadline == math.inf:
            return None
        return call.deadline - self._clock()

    def cut_overdue(self) -> int:
        """Shut the sockets of calls past their deadline; how many."""
        now = self._clock()
        with self._lock:       # held while shutting, so a socket is never shut after its call let it go
            overdue = [call for call in self._calls if call.deadline <= now]
            for call in overdue:
                self._calls.discard(call)
                call.cut = True
                try:
                    call.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass          # closed already
        return len(overdue)

    def _release(self, call: Call) -> None:
        with self._lock:
            self._calls.discard(call)
            call.sock = None

    def _watch_forever(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(self._tick)
            self.cut_overdue()
            with self._lock:
                if not self._calls:
                    self._busy.clear()


CUTOFF = Cutoff()


# A new connection given up at its call's deadline, per address, while its thread still runs.
_HANGING: dict[tuple[str, int], _Connecting] = {}
_HANGING_LOCK = threading.Lock()


class _Watched:
    def _new_conn(self):
        # A name lookup has no timeout (a socket's covers only the connect), and a DNS server that does not
        # answer holds getaddrinfo 10 s or more, past GitLab's wait. Inside a call with a deadline a new
        # connection is made on a thread of its own and given up when the time is up; while one given up
        # still hangs, calls to that address fail at once rather than each leave a thread behind.
        left = CUTOFF.time_left()
        if left is None:
            return super()._new_conn()
        address = (self._dns_host, self.port)
        with _HANGING_LOCK:
            hanging = _HANGING.get(address)
        if hanging is not None:
            raise ConnectTimeoutError(self, f"the connection to {self.host} begun {hanging.age():.0f} s ago is not "
                                      "made yet (a name lookup or connect that does not answer)")
        if left <= 0:
            raise ConnectTimeoutError(self, f"no time left to connect to {self.host}")
        sock = _Connecting(super()._new_conn, address).result(left, self)
        CUTOFF.watch_handshake(sock)
        return sock

    def request(self, *args, **kwargs):
        super().request(*args, **kwargs)
        CUTOFF.watch(self)


class _Connecting:
    """A connect on a daemon thread: one that never returns holds no webhook, nor the process at exit."""

    def __init__(self, connect: Callable[[], socket.socket], address: tuple[str, int]):
        self._address = address
        self._started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, args=(connect,), daemon=True, name="connect").start()

    def age(self) -> float:
        return time.monotonic() - self._started

    def _run(self, connect: Callable[[], socket.socket]) -> None:
        try:
            sock = connect()
        except BaseException as exc:           # handed to the caller, who raises it
            sock, self._error = None, exc
        with self._lock:
            if self._abandoned:
                if sock is not None:
                    sock.close()
                with _HANGING_LOCK:
                    if _HANGING.get(self._address) is self:
                        del _HANGING[self._address]
            self._sock = sock
            self._done.set()

    def result(self, timeout: float, conn: connection.HTTPConnection) -> socket.socket:
        self._done.wait(timeout)
        with self._lock:
            if not self._done.is_set():
                self._abandoned = True
                with _HANGING_LOCK:
                    _HANGING[self._address] = self
                raise ConnectTimeoutError(conn, f"no connection to {conn.host} within the {timeout:.2f} s left "
                                          "(a name lookup or connect that does not answer)")
        if self._error is not None:
            raise self._error
        return self._sock


class _WatchedHTTPConnection(_Watched, connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, connection.HTTPSConnection):
    pass


class _ReturnsWatched:
    def _put_conn(self, conn):
        if conn is not None:
            CUTOFF.returned(conn)
        super()._put_conn(conn)


class _HTTPPool(_ReturnsWatched, connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(_ReturnsWatched, connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is poolmanager.pool_classes_by_scheme:   # not SOCKS: its own pools
            manager.pool_classes_by_scheme = _POOLS
        return manager


def session(*, pool_maxsize: int) -> requests.Session:
    """A Session whose calls inside `CUTOFF.after()` are cut off at their deadline; no urllib3 retries,
    since a retried POST could post a card twice."""
    adapter = _Adapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
    result = requests.Session()
    result.mount("https://", adapter)
    result.mount("http://", adapter)
    return result
