"""gunicorn's gthread worker with two changes (gunicorn.conf.py's `worker_class`).

Workers take turns at new connections. All workers wait on one listening socket, and the first to call
accept() gets a new connection: the worker already running usually wins, and a client that opens its
kept-alive connections all at once (a load generator, nginx keeping upstream connections) had most of
them land on one worker, whose GIL then made its webhooks queue while the other workers idled
(measured: one worker at 66% of a core, the others at 6-11%). Here a worker that takes a connection
while it holds another leaves the next ones to its siblings for a moment. A socket per worker
(SO_REUSEPORT) would spread them too, but a reload then resets the connections waiting at the old
workers' sockets.

A client that stops sending mid-request is cut off. gthread reads a request on a blocking socket with
no timeout, so a client that sent part of one and went silent (a peer that lost its network, a stuck
scanner) held a thread for good, and enough of them would hold every thread while GitLab's deliveries
waited. Each read now gives up after STALLED_CLIENT_SECONDS of silence.
"""
import errno
import socket
import time

from gunicorn.workers.gthread import ThreadWorker

# Long enough for an idle sibling to be scheduled and take the next connection. A worker with nothing
# else in hand never pauses: GitLab opens a connection per delivery and closes it after the answer.
ACCEPT_PAUSE_SECONDS = 0.005
# GitLab sends a delivery at once and gives up on it after 10 s: a read silent this long is no delivery.
STALLED_CLIENT_SECONDS = 10.0


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
            conn.sock = StallGuardedSocket.taking_over(conn.sock)
        super().enqueue_req(conn)


class StallGuardedSocket(socket.socket):
    """A client's socket whose blocking reads give up after STALLED_CLIENT_SECONDS of silence.

    gthread makes a socket blocking (setblocking(True)) before each request: that sets the timeout
    instead. A read that times out is reported as a reset connection, which gthread closes quietly (it
    logs any other socket error with a traceback). A timeout gunicorn sets itself (draining a body,
    closing) is its own to handle, and stays a timeout.
    """
    _guarding = False

    @classmethod
    def taking_over(cls, sock: socket.socket) -> "StallGuardedSocket":
        timeout = sock.gettimeout()
        guarded = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        guarded.settimeout(timeout)
        return guarded

    def setblocking(self, flag: bool) -> None:
        super().settimeout(STALLED_CLIENT_SECONDS if flag else 0.0)
        self._guarding = flag

    def settimeout(self, value) -> None:
        super().settimeout(value)
        self._guarding = False

    def recv(self, *args):
        try:
            return super().recv(*args)
        except TimeoutError:
            if not self._guarding:
                raise
            raise stalled() from None

    def recv_into(self, *args):
        try:
            return super().recv_into(*args)
        except TimeoutError:
            if not self._guarding:
                raise
            raise stalled() from None


def stalled() -> ConnectionResetError:
    return ConnectionResetError(errno.ECONNRESET, f"the client sent nothing for {STALLED_CLIENT_SECONDS:g} s "
                                                  "in the middle of a request")
