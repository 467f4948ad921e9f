"""gunicorn's workers take turns at new connections (gitlab_feishu/balanced_worker.py).

A worker on a real listening socket and selector, with an injected clock; gunicorn's thread pool is
left out (a taken connection is only recorded).
"""
from __future__ import annotations

import selectors
import socket
import sys

import pytest

if sys.platform == "win32":
    pytest.skip("gunicorn does not run on Windows", allow_module_level=True)

from gunicorn.config import Config

from gitlab_feishu.balanced_worker import ACCEPT_PAUSE_SECONDS, BalancedThreadWorker
from tests.conftest import FakeClock


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


@pytest.fixture
def make_worker(listener):
    made = []

    def make(workers: int = 4) -> BalancedThreadWorker:
        cfg = Config()
        cfg.set("workers", workers)
        worker = BalancedThreadWorker(0, 0, [listener], None, 30, cfg, None)
        worker.clock = FakeClock(1000.0)
        worker.taken = []
        worker.enqueue_req = worker.taken.append       # instead of handing it to the thread pool
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
    def take(count: int, workers: int = 4) -> BalancedThreadWorker:
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
