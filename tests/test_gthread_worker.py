"""gunicorn's worker (gitlab_feishu/gthread_worker.py): workers take turns at new connections, and a
request that has not arrived whole in time is cut off.

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
from gitlab_feishu.gthread_worker import ACCEPT_PAUSE_SECONDS, ArrivalDeadlineSocket, ServiceThreadWorker
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


ARRIVAL_SECONDS = 0.5          # stands in for REQUEST_ARRIVAL_SECONDS (10 s)
HEADERS = b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 2\r\n\r\n"


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(gthread_worker, "REQUEST_ARRIVAL_SECONDS", ARRIVAL_SECONDS)


@pytest.fixture
def served(make_worker, listener, short_deadline):
    """A client sends `data` at once, then `trickled` a byte at a time every 0.05 s, then nothing; the worker
    accepts it and handles it as a pool thread does. Returns the worker, what handling returned and how long
    it took, and the answer the client received (when handling returns False, gthread's main thread closes
    the connection: nothing to receive)."""
    def serve(data: bytes, trickled: bytes = b"") -> tuple[ServiceThreadWorker, dict, bytes]:
        worker = make_worker()
        worker.wsgi = reading_the_body
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
            for byte in trickled:
                time.sleep(0.05)    # the client's pace, not a wait for the code under test
                if not thread.is_alive():
                    break           # handled: cut off, or answered
                client.send(bytes([byte]))
            thread.join(10)
            assert not thread.is_alive(), "still handling the connection after 10 s"
            client.settimeout(1)
            return worker, outcome, client.recv(4096) if outcome.get("result") else b""
    return serve


def reading_the_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def test_a_taken_connection_has_an_arrival_deadline_before_any_thread_reads_it(taking):
    worker = taking(1)
    assert isinstance(worker.taken[0].sock, ArrivalDeadlineSocket)


@pytest.mark.parametrize(("sent", "trickled"), [
    (b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Le", b""),       # silent in the headers
    (HEADERS[:-4] + b"0\r\n\r\n{\"a\":", b""),                                    # silent in the body
    (b"POST /gitlab-webhook HTTP/1.1\r\n", b"X-Gitlab-Event: Push Hook\r\n" * 2),  # a byte at a time
])
def test_a_request_not_arrived_whole_in_time_is_cut_off_and_frees_its_thread(served, caplog, sent, trickled):
    worker, outcome, _ = served(sent, trickled)
    assert outcome["result"] is False                               # gthread closes the connection
    assert ARRIVAL_SECONDS <= outcome["seconds"] < ARRIVAL_SECONDS + 1
    assert [r.getMessage() for r in caplog.records] == [
        f"cut off 127.0.0.1: its request had not arrived whole {ARRIVAL_SECONDS:g} s after its first bytes "
        "(a client that went silent or sends a byte at a time)"]
    assert not worker.log.exception.called                          # and no traceback from gunicorn


def test_a_whole_request_is_answered_and_kept_alive_as_before(served):
    worker, outcome, received = served(HEADERS + b"{}")
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"\r\n\r\n{}")
    assert outcome["result"] is True


def test_a_request_arriving_in_pieces_within_the_deadline_is_answered(served):
    worker, outcome, received = served(HEADERS[:-2], HEADERS[-2:] + b"{}")      # the last 4 bytes over 0.2 s
    assert outcome["result"] is True and received.endswith(b"\r\n\r\n{}")


def test_a_kept_alive_connection_keeps_its_deadline_for_its_next_request(make_worker, listener, short_deadline):
    worker = make_worker()
    worker.wsgi = reading_the_body
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker.accept(listener)
        [conn] = worker.taken
        for _ in range(2):
            client.sendall(HEADERS + b"{}")
            assert worker.handle(conn) is True
            assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
            conn.sock.setblocking(False)            # back to gthread's poller, as finish_request does
            worker.enqueue_req(conn)                # readable again: handed to a thread once more
    assert worker.taken == [conn, conn, conn] and isinstance(conn.sock, ArrivalDeadlineSocket)


def test_a_connection_gunicorn_itself_wraps_in_tls_is_left_as_gthread_makes_it(make_worker, listener, clients):
    worker = make_worker()
    worker.cfg.set("certfile", "server.pem")
    clients(1)
    worker.accept(listener)
    assert type(worker.taken[0].sock) is socket.socket


@pytest.mark.parametrize(("set_by", "raised"), [("gthread", ConnectionResetError), ("gunicorn", TimeoutError)])
def test_only_the_deadlines_own_timeout_is_reported_as_a_reset(short_deadline, set_by, raised):
    ours, theirs = socket.socketpair()
    with theirs, ArrivalDeadlineSocket.taking_over(ours) as taken:
        taken.setblocking(True)                     # a request's first bytes are in: its deadline starts
        if set_by == "gunicorn":
            taken.settimeout(ARRIVAL_SECONDS)       # draining a body, closing: gunicorn's own
        with pytest.raises(raised):
            taken.recv(1)
