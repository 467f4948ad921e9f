"""What the service writes to its log (the file under LOG_DIR, UTF-8) and what /healthz reports."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from datetime import datetime
from urllib.parse import quote

import pytest
import requests

from gitlab_feishu.app import create_app
from gitlab_feishu.logs import configure_logging
from tests.conftest import SECRET, add_owners, gitlab_headers, load_payload

KEY = "6d3c1b0e-7a51-4c55-9b8e-2f0c4be1d7aa"


@pytest.fixture
def feishu(fake):
    """The fake Feishu knowing every owner; wangwu is outside the app's availability range (230013)."""
    fake.reset()
    add_owners(fake, unavailable=("wangwu@example.com",))
    return fake


@pytest.fixture
def log_file(settings):
    """The service's logging as `python webhook_server.py` sets it up, at DEBUG; restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("gitlab_feishu", "waitress")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    configure_logging(dataclasses.replace(settings, log_level="DEBUG"), to_file=True)
    yield settings.log_dir / "webhook_server.log"
    for handler in loggers[0].handlers:
        handler.close()
    for logger, (handlers, level, propagate) in zip(loggers, saved):
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.fixture
def client(settings, feishu, log_file):
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    yield app.test_client()
    app.extensions["gitlab_feishu"].worker.stop()


def post(client, payload_name: str, headers: dict | None = None):
    return client.post("/gitlab-webhook", json=load_payload(payload_name), headers=headers or gitlab_headers())


def issued_token(fake) -> str:
    """The tenant token the fake hands out now: the one the service was given (it is reused while fresh)."""
    answer = requests.post(fake.url + "/open-apis/auth/v3/tenant_access_token/internal", timeout=5,
                           json={"app_id": "cli_test_app", "app_secret": "test-secret"})
    return answer.json()["tenant_access_token"]


def test_one_line_per_webhook_with_key_event_owners_outcomes_and_durations(client, log_file):
    post(client, "chinese_push_redacted.json", gitlab_headers(key=KEY))
    [line] = [line for line in log_file.read_text(encoding="utf-8").splitlines() if f"key=idem:{KEY}" in line]
    assert "push farm/nainai-farm refs/heads/main by 王五 (wangwu)" in line
    assert re.search(r"lisi@example\.com \(exact: N_奶奶的小农院\) sent in \d+ ms", line)
    assert re.search(r"wangwu@example\.com \(exact: N_奶奶的小农院\) failed in \d+ ms: .*230013", line)


def test_a_merge_request_line_shows_where_the_change_goes(client, log_file):
    post(client, "chinese_merge_request.json", gitlab_headers("Merge Request Hook", key=KEY))
    [line] = [line for line in log_file.read_text(encoding="utf-8").splitlines() if f"key=idem:{KEY}" in line]
    assert "merge_request grouptwogame/yeshui-client feature/登录界面 into main by 张三" in line


def test_an_ignored_webhook_line_still_names_its_key_project_ref_and_pusher(client, log_file):
    payload = load_payload("chinese_push_redacted.json")
    payload["project"].update(path_with_namespace="other/unowned", name="无人项目")
    client.post("/gitlab-webhook", json=payload, headers=gitlab_headers(key=KEY))
    [line] = [line for line in log_file.read_text(encoding="utf-8").splitlines() if f"key=idem:{KEY}" in line]
    assert "ignored push other/unowned refs/heads/main by 王五 (wangwu)" in line
    assert "no entry in owners.json matches other/unowned (无人项目)" in line


def test_the_fallback_key_is_logged_without_an_idempotency_key(client, log_file):
    headers = gitlab_headers()
    del headers["Idempotency-Key"]
    post(client, "chinese_push.json", headers)
    assert f"key=uuid:{headers['X-Gitlab-Event-UUID']}" in log_file.read_text(encoding="utf-8")


def test_feishu_errors_are_logged_with_code_message_and_log_id(client, log_file):
    post(client, "chinese_push_redacted.json")
    [error] = [line for line in log_file.read_text(encoding="utf-8").splitlines()
               if "Feishu 230013" in line and "WARNING" in line]
    assert re.search(r"Feishu 230013: \S.* \(log id \w+\): .*可用范围", error)


def test_no_secret_or_tenant_token_ever_reaches_the_log(client, feishu, log_file, caplog):
    wrong_token = "an-old-secret-that-was-rotated"
    with caplog.at_level(logging.DEBUG):        # everything else too: urllib3, werkzeug
        post(client, "chinese_push.json", gitlab_headers(token=wrong_token))
        post(client, "chinese_push.json")
        tokens = {issued_token(feishu)}
        feishu.revoke_tokens()                  # the service must fetch a new token and retry
        post(client, "chinese_push_redacted.json")
        tokens.add(issued_token(feishu))
        feishu.fail_next("send", status=400, code=99991672, msg="Access denied. One of the following scopes "
                                                               "is required: [im:message:send_as_bot].")
        post(client, "chinese_push.json")
    text = log_file.read_text(encoding="utf-8") + caplog.text
    assert "99991672" in text and "sent" in text      # the log did record all of it
    for secret in (SECRET, "test-secret", wrong_token, *tokens):
        assert secret not in text


def test_the_log_file_is_utf8_with_the_chinese_intact(client, log_file):
    post(client, "chinese_push.json")
    assert "Y_野水发财" in log_file.read_bytes().decode("utf-8")


def test_healthz_has_no_last_delivery_before_the_first_card(client):
    assert client.get("/healthz").json["last_delivery_at"] is None


def test_healthz_reports_the_time_of_the_last_delivery(client):
    before = datetime.now().astimezone().replace(microsecond=0)
    post(client, "chinese_push.json")
    health = client.get("/healthz").json
    assert before <= datetime.fromisoformat(health["last_delivery_at"])
    assert health["outbox"] == {"queued": 0, "failed": 0}



def test_waitress_warnings_reach_the_log_file(log_file):
    logging.getLogger("waitress.queue").warning("Task queue depth is 40")
    assert "WARNING waitress.queue" in log_file.read_text(encoding="utf-8")


def test_text_from_a_caller_cannot_forge_a_log_line(client, log_file):
    forged = "x\n2026-11-28 11:00:00,000 ERROR   gitlab_feishu.service [1] FORGED"
    client.get("/" + forged.replace("\n", "%0A").replace(" ", "%20"))
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith("2026-11-28 11:00:00,000") for line in lines)
    assert any("\\n2026-11-28 11:00:00,000 ERROR" in line for line in lines)


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\x1b[2K\x1b[G", "\u202e"])
def test_no_line_break_or_escape_sequence_from_a_caller_reaches_the_log(client, log_file, separator):
    # Each of these starts a new line for splitlines() or an editor, or (ESC [2K, ESC [G: erase the line,
    # back to column 1) makes a terminal running `tail -f` show only the forged text.
    forged = f"x{separator}2026-11-28 11:00:00,000 ERROR   gitlab_feishu.service [1] FORGED"
    client.get("/" + quote(forged))
    text = log_file.read_text(encoding="utf-8")
    assert not any(line.startswith("2026-11-28 11:00:00,000") for line in text.splitlines())
    assert not any(char in text for char in "\x1b\u202e") and "FORGED" in text


def test_a_traceback_still_follows_on_its_own_lines(log_file):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gitlab_feishu.test").exception("failed\nhere")
    text = log_file.read_text(encoding="utf-8")
    assert "failed\\nhere\nTraceback (most recent call last):" in text


@pytest.fixture
def rotating_log(tmp_path):
    """A logger writing to tmp_path/webhook_server.log through the service's RotatingFile (2 KB, 5 old files)."""
    from gitlab_feishu.logs import RotatingFile

    handler = RotatingFile(tmp_path / "webhook_server.log", maxBytes=2000, backupCount=5, encoding="utf-8")
    log = logging.getLogger(f"gitlab_feishu.test_rotation.{tmp_path.name}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield log, handler
    log.removeHandler(handler)
    handler.close()


def every_log_line(folder) -> str:
    return "".join(path.read_text(encoding="utf-8") for path in folder.iterdir())


def refuse_moves(monkeypatch, refused) -> None:
    """os.replace refuses the moves `refused(src, dst)` picks, as Windows does a file another program holds."""
    real_replace = os.replace

    def replace(src, dst):
        if refused(str(src), str(dst)):
            raise PermissionError(32, "The process cannot access the file", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("held", ["webhook_server.log", "webhook_server.log.1"])
def test_a_log_another_program_holds_open_is_not_lost_when_it_is_due_to_rotate(tmp_path, monkeypatch, rotating_log,
                                                                                held):
    """Windows: while a viewer holds a log file open without FILE_SHARE_DELETE it cannot be moved (nor, there,
    can a file be moved onto it). The old files stay, every record still reaches the log, and the rotation
    happens once it is let go."""
    log, handler = rotating_log
    for i in range(60):
        log.info("line %d %s", i, "x" * 100)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refuse_moves(monkeypatch, lambda src, dst: src.endswith(held) or dst.endswith(held))
    for i in range(30):
        log.info("held %d %s", i, "y" * 100)
    assert every_log_line(tmp_path).count("held") == 30 and every_log_line(tmp_path).count("line ") == 60
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items()
               if name not in ("webhook_server.log", held))
    monkeypatch.undo()
    handler._retry_at = 0.0
    for i in range(20):
        log.info("after %d %s", i, "z" * 100)
    assert not (tmp_path / "webhook_server.log.rotating").exists()
    assert every_log_line(tmp_path).count("held") == 30 and every_log_line(tmp_path).count("after ") == 20


def test_a_log_a_rotation_cut_short_left_aside_becomes_the_newest_old_file(tmp_path, rotating_log):
    (tmp_path / "webhook_server.log.rotating").write_text("leftover from a crash\n", encoding="utf-8")
    log, _ = rotating_log
    for i in range(60):
        log.info("line %d %s", i, "x" * 100)
    assert not (tmp_path / "webhook_server.log.rotating").exists()
    assert "leftover from a crash" in every_log_line(tmp_path)


def test_an_undo_that_fails_leaves_a_gap_and_overwrites_no_old_file(tmp_path, monkeypatch, rotating_log):
    log, handler = rotating_log
    for i in range(60):
        log.info("line %d %s", i, "x" * 100)
    refused = []

    def newest_old_file_twice(src, dst):
        # The newest old file cannot be made, and the first step back fails too (a scanner on the moved file).
        if dst.endswith(".log.1") and len(refused) < 2:
            refused.append(dst)
            return True
        return False

    refuse_moves(monkeypatch, newest_old_file_twice)
    for i in range(30):
        log.info("held %d %s", i, "y" * 100)
    assert every_log_line(tmp_path).count("line ") == 60 and every_log_line(tmp_path).count("held") == 30
