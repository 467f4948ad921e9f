"""A call's whole answer is cut off at its deadline, not only each read (gitlab_feishu/cutoff.py)."""
import socket
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from gitlab_feishu.cards import card_content, render_card
from gitlab_feishu.chats import BotClient
from gitlab_feishu.cutoff import Cutoff
from gitlab_feishu.feishu import FeishuClient
from gitlab_feishu.feishu_errors import FeishuError
from gitlab_feishu.gitlab import parse_event
from tests.conftest import FakeClock, load_payload

CARD = card_content(render_card(parse_event(load_payload("chinese_push.json"), "Push Hook")))


@pytest.fixture
def connection():
    """A connection with its request out: our end of a socket pair, the peer still to answer."""
    ours, peer = socket.socketpair()
    yield SimpleNamespace(sock=ours)
    ours.close()
    peer.close()


def is_shut(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""        # shut for reading: end of stream at once
    except BlockingIOError:
        return False


@pytest.mark.parametrize("elapsed, shut", [(1.0, True), (0.9, False)])
def test_a_call_still_unanswered_at_its_deadline_has_its_socket_shut(connection, elapsed, shut):
    clock = FakeClock()
    cutoff = Cutoff(clock=clock)
    with cutoff.after(1.0) as call:
        cutoff.watch(connection)
        clock.now += elapsed
        assert cutoff.cut_overdue() == int(shut)
    assert call.cut is shut and is_shut(connection.sock) is shut


@pytest.mark.parametrize("how", ["call ended", "connection back in the pool"])
def test_a_socket_is_never_shut_once_its_call_let_it_go(connection, how):
    # The connection may already carry someone else's call.
    clock = FakeClock()
    cutoff = Cutoff(clock=clock)
    with cutoff.after(1.0):
        cutoff.watch(connection)
        if how == "connection back in the pool":
            cutoff.returned(connection)
            clock.now += 5
            assert cutoff.cut_overdue() == 0
    clock.now += 5
    assert cutoff.cut_overdue() == 0
    assert not is_shut(connection.sock)


@pytest.mark.parametrize("seconds", [None, "outside"])
def test_calls_without_a_deadline_are_not_watched(connection, seconds):
    clock = FakeClock()
    cutoff = Cutoff(clock=clock)
    if seconds is None:
        with cutoff.after(None) as call:
            cutoff.watch(connection)
        assert not call.cut
    else:
        cutoff.watch(connection)
    clock.now += 3600
    assert cutoff.cut_overdue() == 0


def test_a_card_whose_answer_trickles_in_fails_at_the_deadline_as_retryable(feishu):
    open_id = feishu.add_user("zhangsan@example.com")
    feishu.trickle("send", 3.0)                # every piece within any socket timeout
    client = FeishuClient(feishu.url, "cli_test_app", "test-secret")
    started = time.monotonic()
    with pytest.raises(FeishuError) as raised:
        client.send_card(open_id, CARD, "uuid-trickle", budget=0.5)
    assert time.monotonic() - started < 1.0
    assert raised.value.retryable
    assert "no whole answer before the deadline" in str(raised.value)
    assert "retry with the same uuid" in str(raised.value)


def test_a_group_post_whose_answer_trickles_in_fails_at_the_deadline_as_retryable(feishu):
    url = feishu.add_bot("trickle-bot")
    feishu.trickle("bot", 3.0)
    started = time.monotonic()
    with pytest.raises(FeishuError) as raised:
        BotClient().post_card(url, None, {"schema": "2.0", "body": {"elements": []}}, budget=0.5)
    assert time.monotonic() - started < 1.0
    assert raised.value.retryable and "no whole answer before the deadline" in str(raised.value)


def test_the_next_call_on_the_pool_after_a_cut_off_one_goes_through(feishu):
    open_id = feishu.add_user("zhangsan@example.com")
    client = FeishuClient(feishu.url, "cli_test_app", "test-secret")
    feishu.trickle("send", 3.0)
    with pytest.raises(FeishuError):
        client.send_card(open_id, CARD, "uuid-first", budget=0.5)
    feishu.trickle("send", None)
    assert client.send_card(open_id, CARD, "uuid-second", budget=2.0)


class SlowDNS:
    """Names under slow-dns.test resolve to 127.0.0.1 once answered (a DNS server not answering till then)."""

    def __init__(self, lookup):
        self._lookup, self._answered, self.lookups = lookup, threading.Event(), 0

    def getaddrinfo(self, host, *args, **kwargs):
        if str(host).endswith(".slow-dns.test"):
            self.lookups += 1
            self._answered.wait(30)
            host = "127.0.0.1"
        return self._lookup(host, *args, **kwargs)

    def answer(self) -> None:
        """Let hanging lookups finish, and wait until the connects given up have ended."""
        self._answered.set()
        for thread in threading.enumerate():
            if thread.name == "connect":
                thread.join(10)


@pytest.fixture
def slow_dns(monkeypatch):
    dns = SlowDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
    yield dns
    dns.answer()


def slow_dns_client(feishu) -> FeishuClient:
    return FeishuClient(f"http://feishu.slow-dns.test:{urlsplit(feishu.url).port}", "cli_test_app", "test-secret")


def test_a_name_lookup_that_hangs_fails_at_the_deadline_as_retryable(feishu, slow_dns):
    """getaddrinfo has no timeout: a DNS server that does not answer would hold GitLab past its 10 s."""
    open_id = feishu.add_user("zhangsan@example.com")
    started = time.monotonic()
    with pytest.raises(FeishuError) as raised:
        slow_dns_client(feishu).send_card(open_id, CARD, "uuid-dns", budget=0.5)
    assert time.monotonic() - started < 1.0
    assert raised.value.retryable and "ConnectTimeout" in str(raised.value)


def test_while_a_lookup_given_up_still_hangs_the_next_calls_fail_at_once_without_another(feishu, slow_dns):
    """A DNS outage must not leave a thread behind for every webhook."""
    open_id = feishu.add_user("zhangsan@example.com")
    client = slow_dns_client(feishu)
    with pytest.raises(FeishuError):
        client.send_card(open_id, CARD, "uuid-first", budget=0.3)
    started = time.monotonic()
    for n in range(5):
        with pytest.raises(FeishuError) as raised:
            client.send_card(open_id, CARD, f"uuid-{n}", budget=2.0)
        assert raised.value.retryable
    assert time.monotonic() - started < 1.0
    assert slow_dns.lookups == 1


def test_once_the_name_resolves_the_next_call_goes_through(feishu, slow_dns):
    open_id = feishu.add_user("zhangsan@example.com")
    client = slow_dns_client(feishu)
    with pytest.raises(FeishuError):
        client.send_card(open_id, CARD, "uuid-first", budget=0.3)
    slow_dns.answer()
    assert client.send_card(open_id, CARD, "uuid-second", budget=2.0)
    assert feishu.calls("send") == 1


@pytest.fixture
def trickling_proxy(monkeypatch):
    """HTTPS_PROXY is a proxy that answers CONNECT a byte at a time (each byte within any socket timeout)."""
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)                                   # CONNECT open.feishu.cn:443 ...
            try:
                for byte in b"HTTP/1.1 200 Connection established" + b" " * 1000:
                    if stop.wait(0.05):
                        break
                    connection.sendall(bytes([byte]))
            except OSError:
                pass                                                 # the client gave up

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    yield
    stop.set()
    server.close()


def test_a_proxy_answering_connect_a_byte_at_a_time_fails_at_the_deadline_as_retryable(trickling_proxy):
    """The CONNECT exchange (and a TLS handshake) happen before the request is sent: watched from the connect."""
    client = FeishuClient("https://open.feishu.cn", "cli_test_app", "test-secret")
    started = time.monotonic()
    with pytest.raises(FeishuError) as raised:
        client.send_card("ou_x", CARD, "uuid-proxy", budget=0.5)
    assert time.monotonic() - started < 1.0
    assert raised.value.retryable
