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


@pytest.fixture
def stall_after(monkeypatch):
    def set_seconds(seconds: float) -> None:
        monkeypatch.setattr(gthread_worker, "STALLED_CLIENT_SECONDS", seconds)
    return set_seconds


def handled_in_a_thread(worker: ServiceThreadWorker, conn) -> dict:
    """gthread's handling of one connection, as a pool thread runs it: its result and how long it took."""
    outcome = {}

    def handle():
        started = time.monotonic()
        outcome["result"] = worker.handle(conn)
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=handle, daemon=True)
    thread.start()
    thread.join(10)
    return outcome


def test_a_taken_connection_is_guarded_against_stalls_before_any_thread_reads_it(taking):
    worker = taking(1)
    assert isinstance(worker.taken[0].sock, StallGuardedSocket)


def test_a_client_that_stops_mid_request_frees_its_thread(taking, listener, stall_after):
    stall_after(0.2)
    worker = taking(0)
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker.accept(listener)
        client.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Le")   # then silence
        outcome = handled_in_a_thread(worker, worker.taken[0])
    assert outcome["result"] is False                         # gthread closes the connection
    assert outcome["seconds"] < 2
    assert not worker.log.exception.called                    # no traceback for a silent peer


def test_a_client_that_stops_mid_body_frees_its_thread(taking, listener, stall_after):
    stall_after(0.2)
    worker = taking(0)
    worker.wsgi = lambda environ, start_response: [environ["wsgi.input"].read()]
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker.accept(listener)
        client.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 100\r\n\r\n{\"a\":")
        outcome = handled_in_a_thread(worker, worker.taken[0])
    assert outcome["result"] is False and outcome["seconds"] < 2


def test_a_whole_request_is_read_as_before(taking, listener, stall_after):
    stall_after(0.2)
    worker = taking(0)
    worker.wsgi = lambda environ, start_response: start_response("200 OK", [("Content-Length", "2")]) and [b"ok"]
    with socket.create_connection(listener.getsockname()[:2]) as client:
        worker.accept(listener)
        client.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: gitlab\r\nContent-Length: 2\r\n\r\n{}")
        outcome = handled_in_a_thread(worker, worker.taken[0])
        assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert outcome["result"] is True                          # kept alive for the next request
