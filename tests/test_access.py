"""Who may call the service: ALLOWED_SOURCES, TRUSTED_PROXIES and X-Forwarded-For, /healthz access."""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import logging
import socket
import sys

import pytest
import requests

from gitlab_feishu.access import client_address, parse_address
from gitlab_feishu.app import create_app
from gitlab_feishu.settings import ConfigError, Settings
from tests.conftest import gitlab_headers, load_payload
from tests.servers import ROOT, ServiceProcess, free_port, service_env

GITLAB = "10.20.0.0/16, 192.168.1.7, 2001:db8:1::/48"     # e.g. the GitLab runners' subnet and host


def networks(text: str) -> tuple:
    return tuple(ipaddress.ip_network(word.strip()) for word in text.split(",") if word.strip())


@pytest.fixture
def make_client(settings):
    """A test client for a dry-run app (nothing reaches Feishu) with these sources and proxies."""
    def make(allowed: str = GITLAB, proxies: str = ""):
        app = create_app(dataclasses.replace(settings, feishu_app_id="", allowed_sources=networks(allowed),
                                             trusted_proxies=networks(proxies)), background=False)
        return app.test_client()
    return make


def push(client, remote_addr: str, *, forwarded_for: str | None = None, headers: dict | None = None, **kwargs):
    headers = headers or gitlab_headers()
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    kwargs.setdefault("data", json.dumps(load_payload("push.json")))
    return client.post("/gitlab-webhook", headers=headers, environ_base={"REMOTE_ADDR": remote_addr}, **kwargs)


@pytest.mark.parametrize(("remote_addr", "status"), [
    ("10.20.3.4", 200),                 # inside an IPv4 CIDR
    ("10.21.0.1", 403),                 # just outside it
    ("192.168.1.7", 200),               # a single address
    ("192.168.1.8", 403),
    ("2001:db8:1::25", 200),            # inside an IPv6 CIDR
    ("2001:db8:2::25", 403),
    ("::ffff:10.20.3.4", 200),          # IPv4-mapped IPv6 (a dual-stack socket) matches the IPv4 entry
    ("::ffff:10.21.0.1", 403),
    ("127.0.0.1", 403),                 # loopback is not special for the webhook
    ("203.0.113.9", 403),
])
def test_only_allowed_sources_may_call_the_webhook(make_client, remote_addr, status):
    response = push(make_client(), remote_addr)
    assert response.status_code == status
    if status == 403:
        assert response.json["status"] == "error" and "ALLOWED_SOURCES" in response.json["reason"]
    else:
        assert response.json["status"] == "dry_run"


def test_without_an_allowlist_anyone_may_call_but_the_token_still_applies(make_client):
    client = make_client(allowed="")
    assert push(client, "203.0.113.9").status_code == 200
    assert push(client, "203.0.113.9", headers=gitlab_headers(token="wrong")).status_code == 401


class Unreadable:
    """A request body that fails the test if anything reads it."""

    def read(self, *args):
        raise AssertionError("the body of a refused source was read")

    readline = readlines = read


@pytest.mark.parametrize("problem", [
    {"environ_overrides": {"CONTENT_LENGTH": str(26 * 1024 * 1024)}},   # would be 413
    {"headers": gitlab_headers(token="wrong")},                        # would be 401
    {"data": b"not json"},                                              # would be 400
])
def test_refused_source_gets_403_before_any_other_check_without_reading_the_body(make_client, problem, caplog):
    overrides = {"wsgi.input": Unreadable(), **problem.get("environ_overrides", {})}
    client = make_client()
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="gitlab_feishu"):
        response = push(client, "203.0.113.9", headers=problem.get("headers"),
                        data=problem.get("data", b'{"secret body": 1}'), environ_overrides=overrides)
    assert response.status_code == 403
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "203.0.113.9" in record.getMessage()
    assert "body" not in record.getMessage()


def test_forwarded_for_is_ignored_without_a_trusted_proxy(make_client, caplog):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        response = push(make_client(), "203.0.113.9", forwarded_for="10.20.3.4")
    assert response.status_code == 403
    assert "203.0.113.9" in response.json["reason"] and "from 203.0.113.9" in caplog.text


@pytest.mark.parametrize(("peer", "forwarded_for", "line"), [
    ("203.0.113.9", None, "from 203.0.113.9: not in"),
    ("::ffff:203.0.113.9", None, "from 203.0.113.9: not in"),          # a dual-stack listener: no proxy
    ("127.0.0.1", "203.0.113.9", "from 203.0.113.9 via 127.0.0.1: not in"),
])
def test_a_refusal_names_a_proxy_only_when_there_is_one(make_client, caplog, peer, forwarded_for, line):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        push(make_client(proxies="127.0.0.1"), peer, forwarded_for=forwarded_for)
    assert line in caplog.text


def test_forwarded_for_is_used_when_the_request_came_through_a_trusted_proxy(make_client):
    client = make_client(proxies="127.0.0.1")
    assert push(client, "127.0.0.1", forwarded_for="10.20.3.4").status_code == 200
    assert push(client, "127.0.0.1", forwarded_for="203.0.113.9").status_code == 403
    # A forged left-most entry cannot win: the proxy appended the real address on the right.
    assert push(client, "127.0.0.1", forwarded_for="10.20.3.4, 203.0.113.9").status_code == 403


def test_log_lines_name_the_resolved_client(make_client, caplog):
    client = make_client(allowed="", proxies="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        response = push(client, "127.0.0.1", forwarded_for="198.51.100.23", headers=gitlab_headers(token="wrong"))
    assert response.status_code == 401
    assert "from 198.51.100.23" in caplog.text


@pytest.mark.parametrize(("allowed", "remote_addr", "forwarded_for", "status"), [
    (GITLAB, "127.0.0.1", None, 200),            # local monitoring
    (GITLAB, "::1", None, 200),
    (GITLAB, "::ffff:127.0.0.1", None, 200),
    (GITLAB, "10.20.3.4", None, 200),            # an allowed source
    (GITLAB, "203.0.113.9", None, 403),
    (GITLAB, "127.0.0.1", "203.0.113.9", 403),   # through the local proxy, from outside: not loopback
    ("", "203.0.113.9", None, 200),              # no allowlist: open, as the webhook is
])
def test_healthz_is_open_to_loopback_and_the_allowlist(make_client, allowed, remote_addr, forwarded_for, status):
    client = make_client(allowed=allowed, proxies="127.0.0.1")
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = client.get("/healthz", headers=headers, environ_base={"REMOTE_ADDR": remote_addr})
    assert response.status_code == status


TRUSTED = networks("127.0.0.1, ::1, 10.0.0.0/8")


@pytest.mark.parametrize(("peer", "forwarded_for", "client"), [
    ("203.0.113.9", None, "203.0.113.9"),                           # direct
    ("203.0.113.9", "10.0.0.5", "203.0.113.9"),                     # not from a proxy: the header is ignored
    ("127.0.0.1", None, "127.0.0.1"),                               # the proxy host itself, no header
    ("127.0.0.1", "198.51.100.23", "198.51.100.23"),
    ("127.0.0.1", "6.6.6.6, 198.51.100.23", "198.51.100.23"),        # forged left-most entry
    ("127.0.0.1", "6.6.6.6, 198.51.100.23, 10.1.1.1", "198.51.100.23"),  # two trusted hops
    ("127.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),                # every hop trusted: the left-most
    ("::1", "2001:db8::7", "2001:db8::7"),
    ("::ffff:127.0.0.1", "198.51.100.23", "198.51.100.23"),         # mapped peer matches the IPv4 proxy
    ("127.0.0.1", "::ffff:198.51.100.23", "198.51.100.23"),
    ("127.0.0.1", "198.51.100.23:61000", "198.51.100.23"),          # some proxies add the port
    ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ("127.0.0.1", "not-an-address", None),                          # a broken proxy: unknown, never allowed
    ("127.0.0.1", "", "127.0.0.1"),
])
def test_client_address(peer, forwarded_for, client):
    expected = ipaddress.ip_address(client) if client else None
    assert client_address(peer, forwarded_for, TRUSTED) == expected


@pytest.mark.parametrize("text", ["", "unknown", "10.0.0.256", "[::1", "example.com"])
def test_parse_address_refuses_what_is_not_an_address(text):
    assert parse_address(text) is None


def test_settings_read_sources_and_proxies():
    settings = Settings.from_env({"ALLOWED_SOURCES": "10.20.0.0/16, 192.168.1.7; 2001:db8::/32",
                                  "TRUSTED_PROXIES": "127.0.0.1"}, env_file=None)
    assert settings.allowed_sources == networks("10.20.0.0/16, 192.168.1.7, 2001:db8::/32")
    assert settings.trusted_proxies == networks("127.0.0.1")
    with pytest.raises(ConfigError, match="ALLOWED_SOURCES"):
        Settings.from_env({"ALLOWED_SOURCES": "10.20.0.0/33"}, env_file=None)


@pytest.mark.parametrize(("written", "meant"), [("::ffff:127.0.0.1", "127.0.0.1"),
                                                ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
                                                ("::ffff:0:0/96", "0.0.0.0/0")])
def test_an_ipv4_mapped_network_means_its_ipv4_network(written, meant):
    """Callers' addresses are compared as IPv4 (a dual-stack socket reports ::ffff:10.1.2.3 as 10.1.2.3)."""
    settings = Settings.from_env({"ALLOWED_SOURCES": written}, env_file=None)
    assert settings.allowed_sources == networks(meant)


def serving(tmp_path, server: str, **settings: str) -> ServiceProcess:
    """The service under `server` ("waitress" or "gunicorn") on a free port, routing by the shipped owners.json."""
    port = free_port()
    env = service_env(HOST="127.0.0.1", PORT=str(port), OWNERS_FILE=str(ROOT / "config" / "owners.json"),
                      DATA_DIR=str(tmp_path / "data"), LOG_DIR=str(tmp_path / "logs"), **settings)
    command = [sys.executable, "webhook_server.py"] if server == "waitress" else None
    return ServiceProcess(env, tmp_path / "service.log", port=port, command=command)


@pytest.mark.parametrize("server", ["waitress", "gunicorn"])
def test_either_server_hands_x_forwarded_for_from_a_trusted_proxy_to_the_allowlist(tmp_path, server):
    """waitress drops X-Forwarded-For unless told not to: behind nginx every caller looked like the proxy."""
    with serving(tmp_path, server, ALLOWED_SOURCES="10.20.0.0/16", TRUSTED_PROXIES="127.0.0.1") as service:
        headers = {**gitlab_headers(token=None), "X-Forwarded-For": "10.20.3.4"}
        response = requests.post(service.url + "/gitlab-webhook", json=load_payload("push.json"), headers=headers,
                                 timeout=10)
    assert response.status_code == 200, response.text


def test_a_refused_caller_cannot_make_waitress_take_a_body_over_gitlabs_limit(tmp_path):
    """waitress reads a body before the app runs (up to 1 GiB by default): it must stop at 25 MB itself.
    (gunicorn hands the app the socket, which refuses before reading.)"""
    sent = 0
    with serving(tmp_path, "waitress", ALLOWED_SOURCES="10.20.0.0/16") as service, \
            socket.create_connection(("127.0.0.1", service.port), timeout=3) as conn:
        conn.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (100 << 20))
        try:
            for _ in range(100):                  # 100 MB, as fast as the server takes it
                conn.sendall(b" " * (1 << 20))
                sent += 1 << 20
        except OSError:                           # it stopped reading (a timeout here) or closed the connection
            pass
    assert sent <= 40 << 20


@pytest.mark.parametrize("server", ["waitress", "gunicorn"])
def test_a_caller_behind_nginx_gets_the_allowlists_403_whatever_scheme_headers_it_adds(tmp_path, server):
    """nginx (README) sets X-Forwarded-Proto and passes a caller's X-Forwarded-Ssl on: gunicorn, trusting 127.0.0.1
    for the scheme, answered 400 "Contradictory scheme headers" before the app could refuse the caller."""
    with serving(tmp_path, server, ALLOWED_SOURCES="10.20.0.0/16", TRUSTED_PROXIES="127.0.0.1") as service:
        responses = [requests.post(service.url + "/gitlab-webhook", json=load_payload("push.json"), timeout=10,
                                   headers={**gitlab_headers(token=None), "X-Forwarded-For": f"{caller}, {caller}",
                                            "X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"})
                     for caller in ("198.51.100.7", "10.20.3.4")]
        log = service.log()
    assert [r.status_code for r in responses] == [403, 200], [r.text for r in responses]
    assert "refused POST /gitlab-webhook from 198.51.100.7 via 127.0.0.1" in log


@pytest.mark.parametrize("name", ["ALLOWED_SOURCES", "TRUSTED_PROXIES"])
@pytest.mark.parametrize("written", [",", " , ", "；", ",,"])
def test_a_list_of_only_separators_is_refused_not_read_as_anyone(name, written):
    """ALLOWED_SOURCES=, read as empty would open the webhook to anyone while the operator meant to restrict it."""
    with pytest.raises(ConfigError, match=f"{name}=.*only separators"):
        Settings.from_env({name: written}, env_file=None)


@pytest.mark.parametrize("server", ["waitress", "gunicorn"])
@pytest.mark.parametrize("declared", [1000, 100 << 20], ids=["body-held-back", "body-over-the-limit"])
def test_a_refused_caller_gets_the_allowlists_403_as_soon_as_its_headers_are_in(tmp_path, server, declared):
    """Issue 8: "403 before anything else is checked or parsed". waitress read the body first: a caller holding
    it back got no answer, one declaring more than 25 MB got waitress's own 413."""
    with serving(tmp_path, server, ALLOWED_SOURCES="10.20.0.0/16") as service, \
            socket.create_connection(("127.0.0.1", service.port), timeout=5) as conn:
        conn.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % declared)
        answer = http.client.HTTPResponse(conn)
        answer.begin()
        body = json.loads(answer.read())
        log = service.log()
    assert answer.status == 403 and body["reason"].startswith("source address 127.0.0.1")
    assert "refused POST /gitlab-webhook from 127.0.0.1" in log
