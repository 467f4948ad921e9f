"""A Linux C locale with UTF-8 mode off (LC_ALL=C, PYTHONUTF8=0): Python hands Chinese from the environment
and the command line over as surrogate escapes. The service reads them as the UTF-8 text they were."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading

from werkzeug.serving import make_server

from gitlab_feishu.app import create_app
from gitlab_feishu.settings import Settings
from tests.servers import ROOT, service_env


def escaped(text: str) -> str:
    """`text` as os.environ and sys.argv show it under LC_ALL=C with PYTHONUTF8=0."""
    return text.encode("utf-8").decode("ascii", "surrogateescape")


def test_a_chinese_secret_from_the_environment_is_the_text_it_was():
    settings = Settings.from_env({"GITLAB_WEBHOOK_SECRET": escaped("密钥-secret")}, env_file=None)
    assert settings.gitlab_webhook_secret == "密钥-secret"


def test_a_chinese_path_from_the_environment_keeps_the_bytes_the_file_system_knows():
    settings = Settings.from_env({"OWNERS_FILE": escaped("/srv/服务/owners.json")}, env_file=None)
    assert os.fsencode(settings.owners_file) == "/srv/服务/owners.json".encode("utf-8")


def test_healthz_shows_such_a_path_as_chinese(settings, tmp_path):
    folder = tmp_path / "服务"
    folder.mkdir()
    (folder / "owners.json").write_text('{"测试项目": "test@example.com"}', encoding="utf-8")
    local = dataclasses.replace(settings, owners_file=escaped(str(folder / "owners.json")), feishu_app_id="")
    health = create_app(local, background=False).test_client().get("/healthz")
    assert health.status_code == 200
    assert health.json["owners"]["path"] == str(folder / "owners.json")


def test_send_test_webhook_under_a_c_locale_sends_the_chinese_it_was_given(tmp_path):
    received = []
    def app(environ, start_response):
        received.append(json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "sent", "deliveries": []}']
    server = make_server("127.0.0.1", 0, app)
    threading.Thread(target=server.handle_request, daemon=True).start()
    env = service_env(LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", GITLAB_WEBHOOK_SECRET="密钥")
    env["PYTHONUTF8"] = "0"
    env.pop("PYTHONIOENCODING", None)
    result = subprocess.run([sys.executable, "send_test_webhook.py", "--url",
                             f"http://127.0.0.1:{server.server_port}/gitlab-webhook", "--user", "李四",
                             "--branch", "feature/登录界面"], cwd=ROOT, env=env, capture_output=True, timeout=30)
    server.server_close()
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    [payload] = received
    assert (payload["user_name"], payload["ref"]) == ("李四", "refs/heads/feature/登录界面")


def test_a_chinese_path_from_env_file_is_usable_under_a_c_locale(tmp_path):
    """LOG_DIR=日志 in .env (real text, not escapes) must not end in a UnicodeEncodeError traceback at start."""
    folder = tmp_path / "项目"
    folder.mkdir()
    script = ("import os, sys\n"
              "from pathlib import Path\n"
              "from gitlab_feishu.settings import Settings\n"
              "s = Settings.from_env({}, env_file=Path(sys.argv[1]))\n"
              "s.data_dir.mkdir(parents=True)\n")
    env_file = folder / ".env"
    env_file.write_text(f"DATA_DIR={folder}/数据\n", encoding="utf-8")
    env = service_env(LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0")
    env["PYTHONUTF8"] = "0"
    result = subprocess.run([sys.executable, "-c", script, os.fsencode(env_file)], cwd=ROOT, env=env,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert (folder / "数据").is_dir()


def test_match_under_a_c_locale_finds_a_chinese_key(tmp_path):
    owners = tmp_path / "owners.json"
    owners.write_text('{"测试项目": "test@example.com"}', encoding="utf-8")
    env = service_env(LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", OWNERS_FILE=str(owners))
    env["PYTHONUTF8"] = "0"
    result = subprocess.run([sys.executable, "webhook_server.py", "--match", "demo/ceshi", "--name", "测试项目"],
                            cwd=ROOT, env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert b"notifies: test@example.com" in result.stdout
