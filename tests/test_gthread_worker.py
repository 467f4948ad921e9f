"""gunicorn's worker (gitlab_feishu/gthread_worker.py): workers take turns at new connections, and a
client that stops sending mid-request is cut off.

A worker on a real listening socket and selector, with an injected clock; gunicorn's thread pool is
left out (a connection handed to it is only recorded).
"""
from __future__ import annotations

import selectors
import socket
import sys
import threading
import time
from concurrent.futures import Future
from unittest import mock

import pytest

if sys.platform == "win32":
    pytest.skip("gunicorn does not run on Windows", allow_module_level=True)

from gunicorn.config import Config

from gitlab_feishu import gthread_worker
from gitlab_feishu.gthread_worker import ACCEPT_PAUSE_SECONDS, ServiceThreadWorker, StallGuardedSocket
from tests.conftest import FakeClock


class RecordingPool:
    """Stands in for gthread's thread pool: records each connection handed to it."""

    def __init__(self, taken: list):
        self.taken = taken

    def submit(self, handle, conn) -> Future:
        self.taken.append(conn)
        return Future()                  # never done: no thread reads from the connection


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def make_worker(listener):
    made = []

    def make(workers: int = 4) -> ServiceThreadWorker:
        cfg = Config()
        cfg.set("workers", workers)
        worker = ServiceThreadWorker(0, 0, [listener], None, 30, cfg, None)
        worker.clock = FakeClock(1000.0)
        worker.taken = []
        worker.tpool = RecordingPool(worker.taken)
        worker.log = mock.Mock()
        worker.poller = selectors.DefaultSelector()
        worker.set_accept_enabled(True)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        for conn in worker.taken:
            conn.sock.close()
        worker.poller.close()
        worker.tmp.close()


@pytest.fixture
def clients(listener):
    made = []

    def connect(count: int = 1) -> None:
        made.extend(socket.create_connection(listener.getsockname()[:2]) for _ in range(count))

    yield connect
    for client in made:
        client.close()


@pytest.fixture
def taking(make_worker, listener, clients):
    """A worker that has accepted `count` connections opened together, one at a time as gthread does."""
    def take(count: int, workers: int = 4) -> ServiceThreadWorker:
        worker = make_worker(workers)
        clients(count)
        for _ in range(count):
            worker.accept(listener)
        return worker
    return take


def test_a_worker_holding_no_connection_takes_one_and_goes_on_accepting(taking):
    worker = taking(1)
    assert len(worker.taken) == 1 and worker._accepting


def test_a_worker_taking_a_second_connection_leaves_the_next_ones_to_its_siblings_for_a_moment(taking):
    worker = taking(2)
    assert len(worker.taken) == 2 and not worker._accepting
    worker.set_accept_enabled(True)                 # what gthread's loop does on every turn
    assert not worker._accepting
    worker.clock.now += ACCEPT_PAUSE_SECONDS
    worker.set_accept_enabled(True)
    assert worker._accepting


def test_a_connection_a_sibling_took_first_makes_no_pause(make_worker, listener):
    worker = make_worker()
    worker.nr_conns = 3
    worker.accept(listener)                         # nothing waiting: EAGAIN, as when a sibling won
    assert worker.taken == [] and worker._accepting


def test_a_worker_alone_never_pauses(taking):
    worker = taking(2, workers=1)
    assert len(worker.taken) == 2 and worker._accepting


def test_the_loop_wakes_when_the_pause_ends_not_a_second_later(taking):
    worker = taking(2)
    waits = []
    worker.poller.select = lambda timeout: waits.append(timeout) or []
    worker.wait_for_and_dispatch_events(1.0)
    worker.clock.now += ACCEPT_PAUSE_SECONDS
    worker.wait_for_and_dispatch_events(1.0)
    assert waits == [pytest.approx(ACCEPT_PAUSE_SECONDS), 1.0]


STALL_SECONDS = 0.2            # stands in for STALLED_CLIENT_SECONDS (10 s)


@pytest.fixture
def stall_after_a_moment(monkeypatch):
    monkeypatch.setattr(gthread_worker, "STALLED_CLIENT_SECONDS", STALL_SECONDS)


@pytest.fixture
def served(make_worker, listener, stall_after_a_moment):
    """A client sends `data`, then nothing; the worker accepts it and handles it as a pool thread does.
    Returns the worker, what handling returned and how long it took, and the answer the client received
    (when handling returns False, gthread's main thread closes the connection: nothing to receive)."""
    def serve(data: bytes, wsgi=None) -> tuple[ServiceThreadWorker, dict, bytes]:
        worker = make_worker()
        worker.wsgi = wsgi
        with socket.create_connection(listener.getsockname()[:2]) as client:
            worker.accept(listener)
            client.sendall(data)
            outcome = {}

            def handle():
                started = time.monotonic()
                outcome["result"] = worker.handle(worker.taken[0])
                outcome["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=handle, daemon=True)
            thread.start()
            thread.join(10)
            assert not thread.is_alive(), "still handling the connection after 10 s"
            client.settimeout(1)
            return worker, outcome, client.recv(4096) if outcome.get("result") else b""
    return serve


def reading_the_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_a_taken_connection_is_guarded_against_stalls_before_any_thread_reads_it(taking):
    worker = taking(1)
    assert isinstance(worker.taken[0].sock, StallGuardedSocket)


@pytest.mark.parametrize("sent", [
    b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Le",                         # in the headers
    b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 100\r\n\r\n{\"a\":",  # in the body
])
def test_a_client_that_stops_mid_request_is_cut_off_and_frees_its_thread(served, sent):
    worker, outcome, _ = served(sent, reading_the_body)
    assert outcome["result"] is False                               # gthread closes the connection
    assert STALL_SECONDS <= outcome["seconds"] < STALL_SECONDS + 1
    assert not worker.log.exception.called                          # no traceback for a silent peer


def test_a_whole_request_is_answered_and_kept_alive_as_before(served):
    worker, outcome, received = served(b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 2"
                                       b"\r\n\r\n{}", reading_the_body)
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"\r\n\r\n{}")
    assert outcome["result"] is True


def test_a_kept_alive_connection_stays_guarded_for_its_next_request(make_worker, listener):
    worker = make_worker()
    worker.wsgi = reading_the_body
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker.accept(listener)
        [conn] = worker.taken
        for _ in range(2):
            client.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 2\r\n\r\n{}")
            assert worker.handle(conn) is True
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
            conn.sock.setblocking(False)            # back to gthread's poller, as finish_request does
            worker.enqueue_req(conn)                # readable again: handed to a thread once more
    assert worker.taken == [conn, conn, conn] and isinstance(conn.sock, StallGuardedSocket)


def test_a_connection_gunicorn_itself_wraps_in_tls_is_left_as_gthread_makes_it(make_worker, listener, clients):
    worker = make_worker()
    worker.cfg.set("certfile", "server.pem")
    clients(1)
    worker.accept(listener)
    assert type(worker.taken[0].sock) is socket.socket


@pytest.mark.parametrize(("set_by", "raised"), [("gthread", ConnectionResetError), ("gunicorn", TimeoutError)])
def test_only_the_guards_own_timeout_is_reported_as_a_reset(stall_after_a_moment, set_by, raised):
    ours, theirs = socket.socketpair()
    with theirs, StallGuardedSocket.taking_over(ours) as guarded:
        guarded.setblocking(True)                   # before each request: the guard's timeout
        if set_by == "gunicorn":
            guarded.settimeout(STALL_SECONDS)       # draining a body, closing: gunicorn's own
        with pytest.raises(raised):
            guarded.recv(1)
