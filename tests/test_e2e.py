"""End to end: the real service under gunicorn with 2 workers, the fake Feishu over real HTTP, GitLab's headers.

These are the few tests that run in real time; their waits are short polls with a timeout.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time

import pytest
import requests

from tests.conftest import SECRET, gitlab_headers, load_payload
from tests.fake_feishu import FakeFeishu
from tests.servers import ServiceProcess, free_port, service_env, wait_for

DEADLINE = 3.0
RETRY_BASE = 0.3
OWNERS = {"Y_野水发财": "zhangsan@example.com", "N_奶奶的小农院": ["lisi@example.com", "wangwu@example.com"]}



@pytest.fixture(scope="module")
def service_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    (folder / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8-sig")
    return folder


def settings_for(fake, folder, **settings: str) -> dict[str, str]:
    return service_env(**{"FEISHU_APP_ID": "cli_test_app", "FEISHU_APP_SECRET": "test-secret",
                          "FEISHU_BASE_URL": fake.url, "GITLAB_WEBHOOK_SECRET": SECRET,
                          "OWNERS_FILE": str(folder / "owners.json"), "DATA_DIR": str(folder / "data"),
                          "LOG_DIR": str(folder / "logs"), "DELIVERY_DEADLINE_SECONDS": str(DEADLINE),
                          "RETRY_BASE_SECONDS": str(RETRY_BASE), **settings})


def start_service(fake, folder, **settings: str) -> ServiceProcess:
    return ServiceProcess(settings_for(fake, folder, **settings), folder / "service.log").start()


@pytest.fixture(scope="module")
def service(fake, service_dir):
    server = start_service(fake, service_dir)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_fake(fake):
    assert wait_for(lambda: fake.answering() == 0, timeout=10)   # nothing from the last test lands in this one
    fake.reset()
    for email in ("zhangsan@example.com", "lisi@example.com", "wangwu@example.com"):
        fake.add_user(email)


def push(service, payload_name="chinese_push.json", headers=None, path="/gitlab-webhook"):
    """POST like GitLab does; returns (response, seconds GitLab waited)."""
    body = json.dumps(load_payload(payload_name), ensure_ascii=False).encode("utf-8")
    started = time.monotonic()
    response = requests.post(service.url + path, data=body, headers=headers or gitlab_headers(), timeout=10)
    return response, time.monotonic() - started


def port_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def queue_is_empty(service):
    return requests.get(service.url + "/healthz", timeout=5).json()["outbox"]["queued"] == 0



@pytest.mark.parametrize("header", [b"X-Gitlab-Token: abc\x00def", b"X-Long: " + b"x" * 9000,
                                    b"Content-Length: abc"])
def test_a_request_gunicorn_cannot_parse_is_answered_in_json_not_html(service, header):
    """Issue 2: no input produces an HTML error page, gunicorn's own answers included."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as conn:
        conn.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"400", b"431") and b"Content-Type: application/json" in head
    assert json.loads(body)["status"] == "error"

@pytest.fixture(scope="module")
def waitress_service(fake, service_dir):
    port = free_port()
    env = {**settings_for(fake, service_dir), "HOST": "127.0.0.1", "PORT": str(port)}
    server = ServiceProcess(env, service_dir / "waitress.log", port=port,
                            command=[sys.executable, "webhook_server.py"]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("request_bytes, status", [
    (b"X-Gitlab-Token: abc\x00def\r\n\r\n", b"400"),
    (b"Content-Length: abc\r\n\r\n", b"400"),
    (b"Content-Length: %d\r\n\r\n" % (26 << 20), b"413"),
    (b"Transfer-Encoding: gzip\r\n\r\n", b"501"),
], ids=["nul-in-header", "bad-length", "over-25-mb", "unknown-coding"])
def test_a_request_waitress_refuses_itself_is_answered_in_json(waitress_service, request_bytes, status):
    """As under gunicorn: every answer of this service is JSON, waitress's own refusals included."""
    with socket.create_connection(("127.0.0.1", waitress_service.port), timeout=5) as conn:
        conn.sendall(b"POST /gitlab-webhook HTTP/1.1\r\nHost: x\r\n" + request_bytes)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == status and b"Content-Type: application/json" in head
    reason = json.loads(body)["reason"]
    assert reason == "body larger than GitLab's 25 MB limit" if status == b"413" else reason


def test_chinese_push_reaches_the_owner_intact(service, fake):
    response, waited = push(service)
    assert response.status_code == 200 and response.json()["status"] == "sent"
    [message] = fake.messages
    card_text = json.dumps(message["card"], ensure_ascii=False)
    assert message["to_email"] == "zhangsan@example.com"
    assert "张三" in card_text and "修复：登录界面在 1080p 下按钮错位" in card_text


def test_gunicorn_keeps_an_access_log_beside_the_line_per_webhook(service, fake):
    # A query string of its own tells this request's access line from an earlier test's, which gunicorn
    # writes after that answer has gone out and so may still be on its way.
    response, _ = push(service, headers=gitlab_headers(key="access-log-check"), path="/gitlab-webhook?access-log")
    assert response.status_code == 200
    assert "key=idem:access-log-check" in service.log()
    assert wait_for(lambda: '"POST /gitlab-webhook?access-log HTTP/1.1" 200' in service.log())
    assert service.log().count("/gitlab-webhook?access-log") == 1


@pytest.mark.parametrize("fault", [
    {"kind": "send", "status": 500, "times": 1},
    {"kind": "send", "status": 429, "code": 99991400, "times": 2, "headers": {"x-ogw-ratelimit-reset": "1"}},
    {"kind": "send", "status": 400, "code": 230020, "times": 1},
])
def test_a_passing_fault_still_makes_exactly_one_card(service, fake, fault):
    push(service)                               # warm the caches so the fault hits the send
    fake.reset()
    fake.fail_next(**fault)
    response, waited = push(service)
    assert response.status_code == 200 and waited < DEADLINE + 0.5
    assert wait_for(lambda: queue_is_empty(service))
    assert len(fake.messages) == 1


def test_revoked_tokens_are_refreshed_once(service, fake):
    push(service)
    fake.revoke_tokens()
    response, waited = push(service)
    assert response.json()["status"] == "sent" and waited < DEADLINE + 0.5
    assert len(fake.messages) == 2


def test_feishu_down_answers_in_time_and_delivers_once_when_back(service, fake):
    fake.set_down(True)
    response, waited = push(service)
    assert response.status_code == 200 and waited < DEADLINE + 0.5
    assert response.json()["status"] == "queued"
    fake.set_down(False)
    back = time.monotonic()
    assert wait_for(lambda: len(fake.messages) == 1)
    assert time.monotonic() - back < 2 * RETRY_BASE + 1.0    # within about one backoff interval
    assert wait_for(lambda: queue_is_empty(service))
    assert len(fake.messages) == 1


def test_feishu_hanging_past_the_deadline_still_makes_one_card(service, fake):
    fake.hang_sends(DEADLINE + 1.5)
    response, waited = push(service)
    assert response.status_code == 200 and waited < DEADLINE + 0.5
    assert response.json()["deliveries"][0]["result"] == "queued"
    fake.hang_sends(None)
    assert wait_for(lambda: queue_is_empty(service) and len(fake.messages) >= 1, timeout=15)
    # The hung original is answered once its hang is over: it shares the retry's uuid.
    assert wait_for(lambda: fake.answering() == 0, timeout=DEADLINE + 5)
    assert len(fake.messages) == 1


def test_a_group_bot_answering_after_the_deadline_posts_the_card_once(fake, tmp_path):
    """A bot has no uuid: a post cut off at the deadline and retried showed the card twice in the group."""
    owners = {"Y_野水发财": {"owners": [], "chats": [fake.add_bot("slow-bot")]}}
    (tmp_path / "owners.json").write_text(json.dumps(owners, ensure_ascii=False), encoding="utf-8")
    server = start_service(fake, tmp_path)
    try:
        fake.hang_sends(DEADLINE + 1.5)            # late, but well within the bot client's read timeout
        response, waited = push(server)
        assert response.status_code == 200 and waited < DEADLINE + 0.5
        assert response.json()["deliveries"][0]["result"] == "queued"
        fake.hang_sends(None)
        assert wait_for(lambda: queue_is_empty(server) and fake.answering() == 0, timeout=20)
        assert len(fake.bot_messages) == 1
    finally:
        server.stop()


def test_resend_three_times_makes_one_card(service, fake):
    key = "3a427872-00df-429c-9bc9-a9475de2efe4"
    answers = [push(service, headers=gitlab_headers(key=key))[0] for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert len(fake.messages) == 1
    assert "repeat" in answers[2].json()["reason"]


def test_sigkill_while_queued_delivers_once_after_restart(fake, tmp_path):
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    # The first process sees Feishu unreachable (a port nobody listens on), rather than the fake switched
    # off: a send already on the wire when SIGKILL lands could otherwise reach the fake once it is back.
    first = start_service(fake, tmp_path, FEISHU_BASE_URL=f"http://127.0.0.1:{free_port()}")
    try:
        response, _ = push(first)
        assert response.json()["status"] == "queued"
    finally:
        first.kill()
    second = start_service(fake, tmp_path)
    try:
        assert wait_for(lambda: len(fake.messages) == 1)
        assert wait_for(lambda: queue_is_empty(second))
        assert len(fake.messages) == 1
    finally:
        second.stop()


def test_sigkill_during_a_hung_send_is_taken_over_at_once_after_restart(tmp_path):
    """The killed process still held the row's lease; the restarted one sees it is gone and sends."""
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    with FakeFeishu() as feishu:             # its own: the hung request outlives this test
        feishu.add_user("zhangsan@example.com")
        feishu.hang_sends(120)
        first = start_service(feishu, tmp_path)
        try:
            assert push(first)[0].json()["status"] == "queued"
            assert wait_for(lambda: lease_left(tmp_path) > 30)    # the retry worker has it, for a minute
        finally:
            first.kill()
        feishu.hang_sends(None)
        second = start_service(feishu, tmp_path)
        try:
            assert wait_for(lambda: len(feishu.messages) == 1, timeout=5.0), second.log()
        finally:
            second.stop()


@pytest.mark.parametrize("command", [None, [sys.executable, "webhook_server.py"]], ids=["gunicorn", "waitress"])
def test_a_stop_during_a_retry_round_lets_the_round_finish(fake, tmp_path, command):
    """`systemctl stop` with deliveries queued: the round under way sends its cards before the process
    exits (Python would otherwise end the retry thread mid-call, or shut the delivery threads under it)."""
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    first = start_service(fake, tmp_path, FEISHU_BASE_URL=f"http://127.0.0.1:{free_port()}")   # unreachable
    try:
        assert [push(first)[0].json()["status"] for _ in range(2)] == ["queued", "queued"]
    finally:
        first.stop()
    port = free_port()
    second = ServiceProcess(settings_for(fake, tmp_path, HOST="127.0.0.1", PORT=str(port)), tmp_path / "second.log",
                            port=port, command=command)
    fake.set_rtt(0.5)
    try:
        second.start()
        assert wait_for(lambda: fake.answering() > 0)      # the round is fetching the token or looking up
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=30) == 0
    finally:
        fake.set_rtt(0.0)
        second.kill()
    assert len(fake.messages) >= 1                         # the row (or rows) of the round under way
    logs = second.log() + "".join(path.read_text(encoding="utf-8") for path in (tmp_path / "logs").glob("*.log*"))
    assert "Traceback" not in logs and " ERROR " not in logs
    with ServiceProcess(second.env, tmp_path / "third.log", port=port, command=command):
        assert wait_for(lambda: len(fake.messages) == 2)   # a row due later goes after the restart, once
    assert len(fake.messages) == 2


def lease_left(folder) -> float:
    """Seconds left on the lease of the one delivery in `folder`'s outbox."""
    with sqlite3.connect(folder / "data" / "outbox.sqlite3") as db:
        [(lease_until,)] = db.execute("SELECT lease_until FROM deliveries").fetchall()
    return (lease_until or 0) - time.time()


def every_worker_checked(server) -> bool:
    """Each worker gunicorn booted has logged its start-up check of the Feishu credentials."""
    log = server.log()
    return log.count("Booting worker") == log.count("Feishu credentials ok")


def test_warm_path_is_one_call_per_owner_whichever_worker_answers(fake, tmp_path):
    """After one push, each push costs one send per owner, no token and no lookup, even in a worker that
    has not talked to Feishu yet: the one that took the first push is killed, so every later push lands
    in a process with nothing in memory."""
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    server = start_service(fake, tmp_path)
    try:
        push(server, "chinese_push_redacted.json")                      # two owners
        [warm_pid] = re.findall(r"gitlab_feishu\.service \[(\d+)\] push ", server.log())
        assert wait_for(lambda: every_worker_checked(server))
        boots = server.log().count("Booting worker")
        os.kill(int(warm_pid), signal.SIGKILL)                          # gunicorn starts a fresh worker
        # ... which has made its start-up check before the fake starts counting
        assert wait_for(lambda: server.log().count("Booting worker") > boots and every_worker_checked(server))
        fake.reset()
        for _ in range(4):
            assert push(server, "chinese_push_redacted.json")[0].json()["status"] == "sent"
        assert (fake.calls("token"), fake.calls("batch_get_id"), fake.calls("send")) == (0, 0, 8)
        assert warm_pid not in re.findall(r"gitlab_feishu\.service \[(\d+)\] push ", server.log())[1:]
    finally:
        server.stop()


def test_a_reload_while_gitlab_keeps_sending_answers_every_delivery(fake, tmp_path):
    """`systemctl reload` (HUP) replaces every worker; GitLab opens a connection per delivery meanwhile,
    and a connection reset would count toward disabling the hook."""
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    server = start_service(fake, tmp_path)
    answers: list[int | str] = []
    stop_at = time.monotonic() + 4.0

    def gitlab():
        while time.monotonic() < stop_at:
            try:
                answers.append(push(server, headers={**gitlab_headers(), "Connection": "close"})[0].status_code)
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)

    senders = [threading.Thread(target=gitlab) for _ in range(6)]
    try:
        for sender in senders:
            sender.start()
        for _ in range(2):
            time.sleep(1.0)
            os.kill(server.process.pid, signal.SIGHUP)
        for sender in senders:
            sender.join()
    finally:
        server.stop()
    assert len(answers) > 20 and set(answers) == {200}


@pytest.mark.parametrize("deadline", [DEADLINE, 6.5])      # waitress itself waits 5 s for requests in flight
def test_sigterm_to_waitress_answers_the_webhooks_in_flight_and_the_card_goes_after_restart(fake, tmp_path, deadline):
    """`kill`, `systemctl stop` or `docker stop` on `python webhook_server.py`: GitLab still gets its answer."""
    (tmp_path / "owners.json").write_text(json.dumps(OWNERS, ensure_ascii=False), encoding="utf-8")
    port = free_port()
    env = service_env(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="test-secret", FEISHU_BASE_URL=fake.url,
                      GITLAB_WEBHOOK_SECRET=SECRET, OWNERS_FILE=str(tmp_path / "owners.json"),
                      DATA_DIR=str(tmp_path / "data"), LOG_DIR=str(tmp_path / "logs"), PORT=str(port),
                      HOST="127.0.0.1", DELIVERY_DEADLINE_SECONDS=str(deadline), RETRY_BASE_SECONDS=str(RETRY_BASE))
    waitress = ServiceProcess(env, tmp_path / "waitress.log", port=port,
                              command=[sys.executable, "webhook_server.py"]).start()
    fake.hang_sends(deadline + 3)
    answers = []
    sender = threading.Thread(target=lambda: answers.append(push(waitress)[0]))
    sender.start()
    assert wait_for(lambda: fake.answering() == 1, timeout=5)          # the send is hanging in Feishu
    waitress.process.send_signal(signal.SIGTERM)
    # A delivery arriving now is refused at once, not taken into the backlog and reset once the wait is over.
    assert wait_for(lambda: not port_accepts(port), timeout=2)
    sender.join(timeout=deadline + 5)
    assert [a.status_code for a in answers] == [200] and answers[0].json()["status"] == "queued"
    assert waitress.process.wait(timeout=10) == 0
    assert "Traceback" not in waitress.log()      # closing the listener left waitress's wake-up pipe open
    fake.hang_sends(None)
    assert wait_for(lambda: fake.answering() == 0, timeout=deadline + 5)
    with ServiceProcess(env, tmp_path / "restarted.log", port=port, command=[sys.executable, "webhook_server.py"]):
        assert wait_for(lambda: len(fake.messages) == 1, timeout=10)   # the hung original and the retry share a uuid
