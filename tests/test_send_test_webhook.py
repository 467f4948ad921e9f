"""send_test_webhook.py against real local servers: the service, a closed port, one that never answers."""
from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import requests
from werkzeug.serving import make_server

import send_test_webhook
from gitlab_feishu.app import create_app
from gitlab_feishu.gitlab import parse_event
from tests.conftest import SECRET
from tests.servers import ROOT, free_port, service_env


@pytest.fixture
def service(settings, fake, owners_file):
    """The app on a real local port, routing 测试项目 to a known and an unknown owner."""
    owners_file.write_text(json.dumps({"测试项目": ["test@example.com", "ghost@example.com"]}, ensure_ascii=False),
                           encoding="utf-8")
    fake.reset()
    fake.add_user("test@example.com")
    app = create_app(dataclasses.replace(settings, feishu_base_url=fake.url), background=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield server
    server.shutdown()
    app.extensions["gitlab_feishu"].worker.stop()


@pytest.fixture
def run(settings, monkeypatch, capsys):
    """send_test_webhook.main with the test settings (never the developer's .env); returns (code, out, err)."""
    def run(*argv: str, port: int | None = None, **changed):
        local = dataclasses.replace(settings, host="127.0.0.1", port=port or free_port(), **changed)
        monkeypatch.setattr(send_test_webhook.Settings, "from_env", classmethod(lambda cls: local))
        code = send_test_webhook.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_a_push_reaches_the_owners_and_the_answer_is_shown(run, service, fake):
    code, out, err = run(port=service.server_port)
    assert code == 0, err
    assert "HTTP 200" in out and "partial" in out
    assert "test@example.com  [exact: 测试项目]  sent" in out
    assert "ghost@example.com  [exact: 测试项目]  failed: not found in Feishu" in out
    [message] = fake.messages
    assert "测试：确认 GitLab → 飞书 通知已接通" in json.dumps(message["card"], ensure_ascii=False)


def test_project_user_message_and_branch_are_sent_as_given(run, service, fake):
    code, out, _ = run("--project", "games/client", "--name", "测试项目", "--user", "李四", "--message", "修复登录",
                       "--branch", "release/1.0", port=service.server_port)
    assert code == 0 and "sent" in out
    card = json.dumps(fake.messages[0]["card"], ensure_ascii=False)
    assert all(text in card for text in ("games/client", "李四", "修复登录", "release/1.0"))


def test_a_project_nobody_owns_says_so(run, service):
    code, out, _ = run("--project", "other/thing", port=service.server_port)
    assert code == 0
    assert "ignored (no entry in owners.json matches other/thing (thing))" in out and "--match" in out


def test_a_url_without_the_path_is_told_the_path(run, service, fake):
    code, _, err = run("--url", f"http://127.0.0.1:{service.server_port}")
    assert code == 1 and err.count("\n") == 1
    assert "HTTP 404" in err and "ends with /gitlab-webhook" in err and fake.messages == []


def test_wrong_token_is_one_line_and_fails(run, service, fake):
    code, out, err = run("--token", "not-the-secret", port=service.server_port)
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and "HTTP 401" in err and "GITLAB_WEBHOOK_SECRET" in err
    assert fake.messages == []


class TestANonAsciiSecret:
    @pytest.fixture
    def settings(self, settings):
        return dataclasses.replace(settings, gitlab_webhook_secret="密钥-s3cret")

    def test_is_sent_as_its_utf8_bytes_and_accepted(self, run, service):
        code, out, err = run(port=service.server_port)
        assert code == 0, err
        assert "HTTP 200" in out and "Traceback" not in err


class TestWithASigningToken:
    """GitLab 19 signs every delivery; with GITLAB_SIGNING_TOKEN set the service refuses anything unsigned."""
    TOKEN = "whsec_" + base64.b64encode(bytes(range(32))).decode()

    @pytest.fixture
    def settings(self, settings):
        return dataclasses.replace(settings, gitlab_signing_token=self.TOKEN)

    def test_the_push_is_signed_as_gitlab_signs_it_and_accepted(self, run, service, fake):
        code, out, err = run(port=service.server_port)
        assert code == 0, err
        assert "HTTP 200" in out and "test@example.com  [exact: 测试项目]  sent" in out

    def test_an_unsigned_push_is_refused_with_the_services_reason_not_a_guess(self, run, service):
        code, _, err = run(port=service.server_port, gitlab_signing_token="")   # the script's .env lacks it
        assert code == 1
        assert err.count("\n") == 1 and "HTTP 401" in err and "webhook-signature" in err
        assert "is not the service's GITLAB_WEBHOOK_SECRET" not in err


def test_closed_port_is_one_line_and_fails(run):
    code, _, err = run(port=free_port())
    assert code == 1
    assert err.count("\n") == 1 and "connection refused" in err and "is the service running" in err


def test_a_server_that_never_answers_times_out(run):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()                 # accepts connections, never reads or answers
        code, _, err = run("--timeout", "0.3", port=listener.getsockname()[1])
    assert code == 1
    assert err.count("\n") == 1 and "no answer" in err and "0.3 s" in err
    assert "may still have been sending" in err and "--timeout 10" in err   # not "stuck": within its deadline


def test_a_server_silent_for_as_long_as_gitlab_waits_is_stuck(run, monkeypatch):
    monkeypatch.setattr(send_test_webhook, "GITLAB_WAITS", 0.3)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        code, _, err = run("--timeout", "0.3", port=listener.getsockname()[1])
    assert code == 1 and "the service is stuck: look at its log" in err


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "ten"])
def test_a_timeout_that_is_not_a_positive_number_is_refused_by_the_parser(run, timeout):
    with pytest.raises(SystemExit) as raised:
        run("--timeout", timeout)
    assert raised.value.code == 2


def test_an_https_url_at_a_plain_http_port_says_to_use_http(run, service):
    port = service.server_port
    code, _, err = run("--url", f"https://127.0.0.1:{port}/gitlab-webhook", "--timeout", "0.5")
    assert code == 1
    assert err.count("\n") == 1 and "speaks plain HTTP" in err and f"http://127.0.0.1:{port}/gitlab-webhook" in err


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no CA signed: (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def https_service(service, self_signed):
    """The same app behind TLS with a self-signed certificate, as behind an nginx with one."""
    server = make_server("127.0.0.1", 0, service.app, threaded=True, ssl_context=tuple(map(str, self_signed)))
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield server
    server.shutdown()


def test_a_self_signed_certificate_says_how_to_trust_it(run, https_service, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    code, _, err = run("--url", f"https://127.0.0.1:{https_service.server_port}/gitlab-webhook")
    assert code == 1
    assert err.count("\n") == 1 and "not trusted" in err and "REQUESTS_CA_BUNDLE" in err


def test_requests_ca_bundle_trusts_a_self_signed_certificate(run, https_service, self_signed, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed[0]))
    code, out, err = run("--url", f"https://127.0.0.1:{https_service.server_port}/gitlab-webhook")
    assert code == 0, err
    assert "HTTP 200" in out and "test@example.com  [exact: 测试项目]  sent" in out


@contextmanager
def another_server(status: int, content_type: str, body: bytes) -> Iterator[int]:
    """A local program that is not this service, answering every POST the same way; yields its port."""
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_that_is_not_json_fails(run):
    with another_server(200, "text/html", b"<html><body>Welcome to nginx!</body></html>") as port:
        code, _, err = run(port=port)
    assert code == 1
    assert err.count("\n") == 1 and "HTTP 200" in err and "not this service's JSON answer" in err


def test_a_url_that_is_not_http_is_refused(run):
    code, _, err = run("--url", "127.0.0.1:5000/gitlab-webhook")
    assert code == 2 and "http://" in err


@pytest.mark.parametrize("url", ["http://[::1/gitlab-webhook", "http://[::1]:99999/gitlab-webhook",
                                 "http://[not-an-address]:5000/gitlab-webhook"])
def test_a_malformed_url_is_one_line_not_a_traceback(run, url):
    code, out, err = run("--url", url)
    assert code == 2 and err.startswith("error: --url") and err.count("\n") == 1 and "Traceback" not in out + err


def test_headers_are_gitlabs_with_fresh_ids():
    first = send_test_webhook.gitlab_headers(SECRET, "https://git.example.cn")
    second = send_test_webhook.gitlab_headers(SECRET, "https://git.example.cn")
    assert first["X-Gitlab-Event"] == "Push Hook" and first["X-Gitlab-Token"] == SECRET.encode()
    assert first["User-Agent"].startswith("GitLab/") and first["X-Gitlab-Instance"] == "https://git.example.cn"
    for name in ("Idempotency-Key", "X-Gitlab-Event-UUID", "X-Gitlab-Webhook-UUID"):
        assert first[name] != second[name]
    assert "X-Gitlab-Token" not in send_test_webhook.gitlab_headers("", "https://git.example.cn")


def test_payload_parses_as_a_push_with_its_chinese_text():
    payload = send_test_webhook.push_payload("https://git.example.cn", "grouptwogame/yeshui-client", "野水发财",
                                             user="张三", username="zhangsan", message="修复：按钮错位", branch="主干")
    event = parse_event(json.loads(json.dumps(payload, ensure_ascii=False)), "Push Hook")
    assert event.kind == "push" and event.project.path == "grouptwogame/yeshui-client"
    assert event.project.name == "野水发财" and event.ref == "refs/heads/主干"
    assert event.commits[0].title == "修复：按钮错位" and event.actor.name == "张三"


def test_as_a_process_an_unreachable_service_exits_1_without_a_traceback():
    port = free_port()
    result = subprocess.run([sys.executable, "send_test_webhook.py"], cwd=ROOT, capture_output=True, timeout=30,
                            env=service_env(HOST="127.0.0.1", PORT=str(port)))
    stderr = result.stderr.decode("utf-8")
    assert result.returncode == 1
    assert "Traceback" not in stderr and f"127.0.0.1:{port}" in stderr


def test_as_a_process_ctrl_c_while_waiting_is_one_line_not_a_traceback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()                 # accepts connections, never reads or answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/gitlab-webhook"
        process = subprocess.Popen([sys.executable, "send_test_webhook.py", "--url", url, "--timeout", "30"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=service_env())
        try:
            listener.settimeout(20)
            # Keep the connection open: closing it resets the request, and the script would exit on its
            # own (1, or killed by the SIGINT during its shutdown) in a race with the signal.
            connection = listener.accept()[0]  # it is waiting for the answer now
            try:
                process.send_signal(signal.SIGINT)
                _, err = process.communicate(timeout=20)
            finally:
                connection.close()
        finally:
            process.kill()
    assert process.returncode == 130
    assert err.decode("utf-8") == "interrupted\n"


def test_as_a_process_a_reader_that_went_away_is_no_traceback():
    process = subprocess.Popen([sys.executable, "send_test_webhook.py", "--url", f"http://127.0.0.1:{free_port()}/"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=service_env())
    process.stdout.close()                # as `| head -0` would
    err = process.stderr.read().decode("utf-8")
    assert process.wait(timeout=30) == 1
    assert "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("proxy_var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_does_not_hide_the_local_service(run, service, monkeypatch, proxy_var):
    """A machine-wide HTTP_PROXY (usual behind a company proxy) must not send the local test through it."""
    monkeypatch.setenv(proxy_var, f"http://127.0.0.1:{free_port()}")     # a proxy that is not there
    code, out, err = run(port=service.server_port)
    assert code == 0, err
    assert "HTTP 200" in out


def test_a_proxy_that_fails_for_a_remote_url_is_named(run, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    code, out, err = run("--url", "http://notify.example.invalid/gitlab-webhook")
    assert code == 1
    assert "through the proxy" in err and "NO_PROXY" in err and "Traceback" not in err


@pytest.mark.parametrize("body", ["<p>服务维护中，请稍后</p>".encode("utf-8"), "禁止访问".encode("gbk")],
                         ids=["utf-8", "gbk"])
def test_a_chinese_page_without_a_charset_is_quoted_readably(run, body):
    """nginx's default `charset off` sends text/html with no charset, which requests would read as Latin-1."""
    with another_server(502, "text/html", body) as port:
        code, _, err = run(port=port)
    shown = body.decode("utf-8") if body.startswith(b"<p>") else body.decode("gbk")
    assert code == 1 and shown in err


def test_a_json_answer_that_is_not_the_services_fails(run):
    """Another program's JSON API at the URL (a different webhook receiver): 200 with JSON, not the service's."""
    with another_server(200, "application/json", b'{"ok": true}') as port:
        code, out, err = run(port=port)
    assert code == 1, out
    assert "not this service's JSON answer" in err


def test_no_connection_in_time_blames_the_network_not_the_service(run, monkeypatch):
    def dropped(*args, **kwargs):
        raise requests.ConnectTimeout("timed out")
    monkeypatch.setattr(send_test_webhook.requests, "post", dropped)
    code, _, err = run("--timeout", "0.3")
    assert code == 1 and "no connection" in err and "firewall" in err
