"""gunicorn's gthread worker with three changes (gunicorn.conf.py's `worker_class`).

Workers take turns at new connections. All workers wait on one listening socket, and the first to call
accept() gets a new connection: the worker already running usually wins, and a client that opens its
kept-alive connections all at once (a load generator, nginx keeping upstream connections) had most of
them land on one worker, whose GIL then made its webhooks queue while the other workers idled
(measured: one worker at 66% of a core, the others at 6-11%). Here a worker that takes a connection
while it holds another leaves the next ones to its siblings for a moment. A socket per worker
(SO_REUSEPORT) would spread them too, but a reload then resets the connections waiting at the old
workers' sockets.

A request must arrive whole within REQUEST_ARRIVAL_SECONDS of its first byte. gthread reads a request
on a blocking socket with no timeout, so a client that sent part of one and went silent (a peer that
lost its network, a stuck scanner) held a thread for good, one trickling a byte at a time as long as it
liked, and enough of them would hold every thread while GitLab's deliveries waited.

A request gunicorn itself refuses (a header it cannot parse, one over 8 KB) is answered in JSON, as every
other answer of this service is, not with gunicorn's HTML page.
"""
import errno
import json
import logging
import socket
import time

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)

# Long enough for an idle sibling to be scheduled and take the next connection. A worker with nothing
# else in hand never pauses: GitLab opens a connection per delivery and closes it after the answer.
ACCEPT_PAUSE_SECONDS = 0.005
# GitLab sends a delivery at once and gives up on it after 10 s: a request still arriving then is no delivery.
REQUEST_ARRIVAL_SECONDS = 10.0


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's util.write_error, in JSON: `{"status": "error", "reason": ...}` like the app's own errors."""
    body = json.dumps({"status": "error", "reason": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn's worker calls util.write_error by name when it cannot parse a request; only this worker's
# processes (and the master, which answers none) import this module.
util.write_error = write_json_error


class ServiceThreadWorker(ThreadWorker):
    clock = staticmethod(time.monotonic)
    _paused_until = 0.0

    def accept(self, listener):
        held = self.nr_conns
        super().accept(listener)
        accepted = self.nr_conns > held              # not when a sibling was quicker
        if accepted and held and self.cfg.workers > 1:
            self._paused_until = self.clock() + ACCEPT_PAUSE_SECONDS
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled):
        # gthread's loop turns accepting back on at every turn: not until the pause is over.
        if enabled and self.clock() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        pause_left = self._paused_until - self.clock()
        if pause_left > 0:                        # wake when the pause ends, not a second later
            timeout = min(timeout, pause_left)
        super().wait_for_and_dispatch_events(timeout)

    def enqueue_req(self, conn):
        # Here, on the worker's main thread, before a pool thread first reads from the connection. Not when
        # gunicorn itself terminates TLS (the README puts nginx in front): its SSL socket replaces this one.
        if type(conn.sock) is socket.socket and not self.cfg.is_ssl:
            conn.sock = ArrivalDeadlineSocket.taking_over(conn.sock)
        super().enqueue_req(conn)


class ArrivalDeadlineSocket(socket.socket):
    """A client's socket on which each request must arrive within REQUEST_ARRIVAL_SECONDS.

    gthread makes the socket blocking (setblocking(True)) once a request's first bytes are in, before
    reading it: that starts the request's deadline, which bounds every read until the answer is written
    or the socket goes back to gthread's poller. A read past it is logged in one line and reported as a
    reset connection, which gthread closes quietly (it logs any other socket error with a traceback). A
    timeout gunicorn sets itself (draining a body, closing) bounds reads too, and stays its own to handle.
    """
    clock = staticmethod(time.monotonic)
    _read_by: float | None = None
    _timeout: float | None = None       # the timeout gunicorn last set, which reads respect too

    @classmethod
    def taking_over(cls, sock: socket.socket) -> "ArrivalDeadlineSocket":
        timeout = sock.gettimeout()
        taken = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        taken.settimeout(timeout)
        return taken

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0
        super().setblocking(flag)
        self._read_by = self.clock() + REQUEST_ARRIVAL_SECONDS if flag else None

    def settimeout(self, value) -> None:
        # gunicorn's own bound (a body's drain, closing, or Parser.__next__'s finish_body() putting the
        # previous value back): reads respect it, but it does not end the request's deadline.
        self._timeout = value
        super().settimeout(value)

    def gettimeout(self):
        return self._timeout

    def recv(self, *args):
        return self._read(super().recv, args)

    def recv_into(self, *args):
        return self._read(super().recv_into, args)

    def sendall(self, *args):
        self._response_begins()
        return super().sendall(*args)

    def sendfile(self, *args, **kwargs):
        self._response_begins()
        return super().sendfile(*args, **kwargs)

    def _response_begins(self) -> None:
        # The request has arrived: writing the answer is bounded as gunicorn bounds it, not by what the
        # deadline had left at the last read.
        if self._read_by is not None:
            self._read_by = None
            super().settimeout(self._timeout)

    def _read(self, read, args):
        if self._read_by is None:
            return read(*args)
        left = self._read_by - self.clock()
        if left <= 0:
            raise self._cut_off()
        ours = self._timeout is None or self._timeout > left
        super().settimeout(left if ours else self._timeout)
        try:
            return read(*args)
        except TimeoutError:
            if not ours:
                raise
            raise self._cut_off() from None

    def _cut_off(self) -> ConnectionResetError:
        try:
            address = self.getpeername()
        except OSError:           # gone already
            address = None
        peer = address[0] if isinstance(address, tuple) else "a client"
        log.warning("cut off %s: its request had not arrived whole %g s after its first bytes (a client that went "
                    "silent or sends a byte at a time)", peer, REQUEST_ARRIVAL_SECONDS)
        self._read_by = None
        try:                      # close_graceful (on gthread's main thread) then finds nothing to wait for
            self.shutdown(socket.SHUT_RD)    # an answer (the app's 400) can still go out
        except OSError:
            pass
        return ConnectionResetError(errno.ECONNRESET, "the request did not arrive in time")
