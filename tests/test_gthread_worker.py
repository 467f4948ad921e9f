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


HEADERS = b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 2\r\n\r\n"
SILENCE_SECONDS = 0.5          # REQUEST_ARRIVAL_SECONDS for a client that goes silent: a real wait


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(gthread_worker, "REQUEST_ARRIVAL_SECONDS", SILENCE_SECONDS)


def reading_the_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def connected(make_worker, listener):
    """A worker with one client's connection taken, and the client."""
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker = make_worker()
        worker.wsgi = reading_the_body
        worker.accept(listener)
        yield worker, worker.taken[0], client


def handled(worker: ServiceThreadWorker, conn) -> tuple[bool, float]:
    """gthread's handling of the connection's next request, as a pool thread runs it: its result (False:
    gthread's main thread closes the connection) and how long it took."""
    started = time.monotonic()
    return worker.handle(conn), time.monotonic() - started


def cut_off_lines(caplog) -> list[str]:
    return [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("cut off")]


def test_a_taken_connection_has_an_arrival_deadline_before_any_thread_reads_it(taking):
    worker = taking(1)
    assert isinstance(worker.taken[0].sock, ArrivalDeadlineSocket)


def test_a_whole_request_is_answered_and_kept_alive_as_before(connected):
    worker, conn, client = connected
    client.sendall(HEADERS + b"{}")
    assert handled(worker, conn)[0] is True
    assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("sent", [
    b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Le",    # silent in the headers
    HEADERS[:-4] + b"0\r\n\r\n{\"a\":",                                 # silent in the body
])
def test_a_client_gone_silent_mid_request_is_cut_off_and_frees_its_thread(connected, short_deadline, caplog, sent):
    worker, conn, client = connected
    client.sendall(sent)
    result, seconds = handled(worker, conn)
    assert result is False and SILENCE_SECONDS <= seconds < 5
    assert cut_off_lines(caplog) == ["cut off 127.0.0.1"]
    assert not worker.log.exception.called                          # and no traceback from gunicorn


def test_a_kept_alive_connections_next_request_has_a_deadline_of_its_own(connected, short_deadline, caplog):
    worker, conn, client = connected
    client.sendall(HEADERS + b"{}")
    assert handled(worker, conn)[0] is True and client.recv(4096).startswith(b"HTTP/1.1 200 OK")
    conn.sock.setblocking(False)                    # back to gthread's poller, as finish_request does
    worker.enqueue_req(conn)                        # readable again: handed to a thread once more
    client.sendall(HEADERS[:10])                    # the next request starts, then the client goes silent
    assert handled(worker, conn)[0] is False
    assert cut_off_lines(caplog) == ["cut off 127.0.0.1"] and not worker.log.exception.called
    assert worker.taken == [conn, conn] and isinstance(conn.sock, ArrivalDeadlineSocket)


@pytest.fixture
def deadline_started(connected, monkeypatch):
    """The client sends a request's first bytes and a pool thread starts handling it, with the deadline on
    a FakeClock; returns when the deadline has started: the clock, the thread, and the list its result goes to."""
    worker, conn, client = connected
    clock = FakeClock(1000.0)
    monkeypatch.setattr(ArrivalDeadlineSocket, "clock", clock)

    def start() -> tuple[FakeClock, threading.Thread, list]:
        client.sendall(HEADERS[:10])
        results = []
        thread = threading.Thread(target=lambda: results.append(worker.handle(conn)), daemon=True)
        thread.start()
        while conn.sock._read_by is None and thread.is_alive():
            time.sleep(0.001)                       # until gthread's setblocking(True) starts the deadline
        return clock, thread, results
    return start


def test_a_client_sending_a_little_at_a_time_is_cut_off_at_the_deadline(connected, deadline_started, caplog):
    worker, conn, client = connected
    clock, thread, results = deadline_started()
    for piece in (HEADERS[10:20], HEADERS[20:30]):  # each piece in time ...
        clock.advance(gthread_worker.REQUEST_ARRIVAL_SECONDS / 2 - 0.01)
        client.sendall(piece)
    clock.advance(0.03)                             # ... but the request not whole at the deadline
    client.sendall(HEADERS[30:31])
    thread.join(5)
    assert results == [False] and cut_off_lines(caplog) == ["cut off 127.0.0.1"]


def test_closing_a_cut_off_connection_does_not_hold_gthreads_main_loop(connected, short_deadline):
    worker, conn, client = connected
    client.sendall(HEADERS[:10])
    assert handled(worker, conn)[0] is False
    started = time.monotonic()
    conn.close(graceful=True)                       # what finish_request does, on the main thread
    assert time.monotonic() - started < 0.5         # not gunicorn's 2 s wait for the client to finish


def test_an_answer_is_written_unhurried_by_what_the_deadline_had_left(connected, deadline_started):
    worker, conn, client = connected
    answer = b"x" * 8_000_000                       # more than the socket buffers hold

    def answering_at_length(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]

    worker.wsgi = answering_at_length
    clock, thread, results = deadline_started()
    clock.advance(gthread_worker.REQUEST_ARRIVAL_SECONDS - 0.01)
    client.sendall(HEADERS[10:] + b"{}")            # the request whole just in time
    time.sleep(0.2)                                 # the client's pace: it reads its answer a moment later
    received = 0
    client.settimeout(5)                            # a worker that gave up writing leaves the client waiting
    while received < len(answer):
        received += len(client.recv(1 << 20))
    thread.join(5)
    assert results == [True]


def test_a_connection_gunicorn_itself_wraps_in_tls_is_left_as_gthread_makes_it(make_worker, listener, clients):
    worker = make_worker()
    worker.cfg.set("certfile", "server.pem")
    clients(1)
    worker.accept(listener)
    assert type(worker.taken[0].sock) is socket.socket


@pytest.mark.parametrize(("set_by", "raised"), [("gthread", ConnectionResetError), ("gunicorn", TimeoutError)])
def test_a_timeout_gunicorn_sets_itself_stays_a_timeout(short_deadline, set_by, raised):
    ours, theirs = socket.socketpair()
    with theirs, ArrivalDeadlineSocket.taking_over(ours) as taken:
        taken.setblocking(True)                     # a request's first bytes are in: its deadline starts
        if set_by == "gunicorn":
            taken.settimeout(SILENCE_SECONDS / 5)   # closing: gunicorn's own, shorter
        with pytest.raises(raised):
            taken.recv(1)
