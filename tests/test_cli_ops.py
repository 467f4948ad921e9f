"""`python webhook_server.py --match PROJECT_PATH`, and serving on a port that is taken."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from gitlab_feishu import cli
from tests.servers import ROOT, ServiceProcess, free_port, service_env, wait_for


@pytest.fixture
def run(settings, monkeypatch, capsys):
    """cli.main with the test settings (never the developer's .env); returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli.Settings, "from_env", classmethod(lambda cls: settings))

    def run(*argv: str):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.mark.parametrize(("argv", "expected"), [
    (["--match", "mike/diaspora"], ["exact: mike/diaspora -> mike@example.com",
                                    "exact: mike/diaspora -> ou_0123456789abcdef0123456789abcdef"]),
    (["--match", "farm/nainai-farm", "--name", "N_奶奶的小农院"], ["exact: N_奶奶的小农院 -> lisi@example.com",
                                                                "exact: N_奶奶的小农院 -> wangwu@example.com"]),
    (["--match", "grouptwogame/yeshui-client", "--name", "Y_野水发财（客户端）"],
     ["fuzzy: Y_野水发财 -> zhangsan@example.com"]),
    (["--match", "/games/测试项目/"], ["exact: 测试项目 -> test@example.com"]),   # the last segment is the name
])
def test_match_lists_who_is_notified_and_by_which_rule(run, argv, expected):
    code, out, _ = run(*argv)
    assert code == 0
    lines = [line.strip() for line in out.splitlines()]
    assert all(line in lines for line in expected)
    assert lines[-1] == "notifies: " + ", ".join(line.split(" -> ")[1] for line in expected)


@pytest.mark.parametrize(("content", "problem"), [
    ('{\n  "a": "x@example.com",\n  "b": "y@example.com"\n', "line 4"),                         # half saved
    ('{\n  "a": "x@example.com",\n  "测试项目": "test@example"\n}', 'line 3: key "测试项目"'),  # a bad email
])
def test_match_with_an_invalid_owners_file_fails_naming_file_and_line(run, owners_file, content, problem):
    owners_file.write_text(content, encoding="utf-8")
    code, out, err = run("--match", "mike/diaspora")
    assert code != 0 and out == ""
    assert err.startswith(f"error: {owners_file}, ") and problem in err and "Traceback" not in err


def test_match_as_a_process_prints_chinese_whatever_the_console(tmp_path):
    owners = tmp_path / "owners.json"
    owners.write_text(json.dumps({"测试项目": "test@example.com"}, ensure_ascii=False), encoding="utf-8-sig")
    env = service_env(OWNERS_FILE=str(owners))
    del env["PYTHONUTF8"]
    env["PYTHONIOENCODING"] = "ascii"          # the worst console there is: nothing may crash on Chinese
    result = subprocess.run([sys.executable, "webhook_server.py", "--match", "demo/测试项目"], cwd=ROOT,
                            capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"test@example.com" in result.stdout


def test_a_port_in_use_is_one_clear_error_not_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(HOST="127.0.0.1", PORT=str(port), OWNERS_FILE=str(ROOT / "config" / "owners.json"),
                          DATA_DIR=str(tmp_path / "data"), LOG_DIR=str(tmp_path / "logs"))
        result = subprocess.run([sys.executable, "webhook_server.py"], cwd=ROOT, capture_output=True, env=env,
                                timeout=30)
    stderr = result.stderr.decode("utf-8")
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}:" in stderr and "set PORT in .env" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("host", ["999.1.1.1", "not a host"])
def test_a_host_that_is_no_address_is_one_clear_error_not_a_traceback(tmp_path, host):
    env = service_env(HOST=host, PORT=str(free_port()), OWNERS_FILE=str(ROOT / "config" / "owners.json"),
                      DATA_DIR=str(tmp_path / "data"), LOG_DIR=str(tmp_path / "logs"))
    result = subprocess.run([sys.executable, "webhook_server.py"], cwd=ROOT, capture_output=True, env=env, timeout=30)
    stderr = result.stderr.decode("utf-8")
    assert result.returncode == 2 and f"error: HOST={host!r} is not an address of this machine" in stderr
    assert "Traceback" not in stderr


def test_gunicorn_on_a_host_that_is_no_address_does_not_blame_another_program(tmp_path):
    env = service_env(HOST="192.0.2.99", PORT=str(free_port()), OWNERS_FILE=str(ROOT / "config" / "owners.json"),
                      DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "webhook_server:app"],
                            cwd=ROOT, capture_output=True, env=env, timeout=30)
    stderr = result.stderr.decode("utf-8")
    assert result.returncode != 0 and "error: cannot listen on 192.0.2.99:" in stderr
    assert "set HOST in .env" in stderr and "another program" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::"])      # HOST=:: binds 0.0.0.0 too
def test_on_windows_a_port_something_accepts_on_is_refused_before_waitress_shares_it(monkeypatch, host):
    """waitress's SO_REUSEADDR lets a second program bind a taken port on Windows: a connection probe finds it."""
    monkeypatch.setattr(cli.sys, "platform", "win32")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(OSError) as refused:
            cli.refuse_a_port_windows_would_share(host, port)
    assert refused.value.errno == errno.EADDRINUSE and f"port {port}" in str(refused.value)


def test_on_windows_a_port_nothing_listens_on_is_left_to_waitress(monkeypatch):
    monkeypatch.setattr(cli.sys, "platform", "win32")
    cli.refuse_a_port_windows_would_share("127.0.0.1", free_port())          # a port in TIME_WAIT is such a port too


def gunicorn_on(port: int, tmp_path) -> subprocess.CompletedProcess:
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                           "webhook_server:app"], cwd=ROOT, capture_output=True, env=env, timeout=30)


def test_gunicorn_on_a_port_another_program_holds_stops_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gunicorn_on(port, tmp_path)
    stderr = result.stderr.decode("utf-8")
    assert result.returncode != 0
    assert f"error: cannot listen on 127.0.0.1:{port}:" in stderr and "set PORT in .env" in stderr
    assert "Traceback" not in stderr


def test_a_second_copy_under_gunicorn_does_not_share_the_port_of_the_first(tmp_path):
    port = free_port()
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "first"))
    with ServiceProcess(env, tmp_path / "first.log", port=port, workers=None):
        result = gunicorn_on(port, tmp_path)
    assert result.returncode != 0
    assert f"error: cannot listen on 127.0.0.1:{port}:" in result.stderr.decode("utf-8")


@pytest.mark.parametrize("command", [["webhook_server.py"], ["-m", "gunicorn", "-c", "gunicorn.conf.py",
                                                            "webhook_server:app"]])
def test_an_invalid_setting_stops_either_server_with_one_line(command):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, timeout=30,
                            env=service_env(PORT="abc"))
    assert result.returncode != 0
    assert result.stderr.decode("utf-8").strip() == \
        "error: PORT='abc' is not valid: use a port number from 1 to 65535"


def test_gunicorn_with_preload_is_refused_with_one_line(tmp_path):
    """Each worker must build the app after the fork: its threads would not survive one."""
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--preload", "--bind",
                             "127.0.0.1:0", "webhook_server:app"], cwd=ROOT, capture_output=True, env=env, timeout=30)
    assert result.returncode != 0
    assert "error: do not run this service with --preload" in result.stderr.decode("utf-8")


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_gunicorn_listens_on_an_ipv6_host_from_the_settings(tmp_path, host):
    port = free_port()
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"),
                      HOST=host, PORT=str(port))
    service = ServiceProcess(env, tmp_path / "service.log", port=port, workers=None,
                             command=[sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "webhook_server:app"])
    service.url = f"http://[::1]:{port}"
    with service:
        assert f"Listening at: http://[::1]:{port}" in service.log()


def test_waitress_on_every_ipv6_address_takes_ipv4_too_as_gunicorn_does(tmp_path):
    """HOST=:: : the banner's LAN address and send_test_webhook.py's 127.0.0.1 must answer."""
    port = free_port()
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"),
                      LOG_DIR=str(tmp_path / "logs"), HOST="::", PORT=str(port))
    service = ServiceProcess(env, tmp_path / "service.log", port=port, command=[sys.executable, "webhook_server.py"])
    with service:
        for url in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_settings_given_to_gunicorn_with_e_reach_the_workers(tmp_path):
    """`gunicorn -e NAME=value` (or raw_env) puts settings in the environment after gunicorn.conf.py is read."""
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    service = ServiceProcess(env, tmp_path / "service.log", workers=1)
    service.command[-1:-1] = ["-e", "FEISHU_APP_ID=cli_from_e", "-e", "FEISHU_APP_SECRET=from-e",
                              "-e", f"FEISHU_BASE_URL=http://127.0.0.1:{free_port()}"]
    with service:
        assert requests.get(service.url + "/healthz", timeout=5).json()["mode"] == "live"


def test_gunicorn_starts_without_an_error_line_where_home_is_not_writable(tmp_path):
    """A system user's home is not writable (README's unit): gunicorn's control socket must not be tried."""
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"), HOME="/proc")
    env.pop("XDG_RUNTIME_DIR", None)
    service = ServiceProcess(env, tmp_path / "service.log", workers=None)
    with service:
        log = service.log()
    assert f"Listening at: http://127.0.0.1:{service.port}" in log
    assert "[ERROR]" not in log


def test_a_usr2_upgrade_starts_the_new_gunicorn_on_the_port_the_old_one_holds(tmp_path):
    """gunicorn's zero-downtime upgrade: the new master inherits the socket; the taken-port check must not stop it."""
    env = service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    service = ServiceProcess(env, tmp_path / "service.log")
    with service:
        os.kill(service.process.pid, signal.SIGUSR2)
        # the new master starts and boots its own two workers (or stops at the taken-port check)
        # ... whose workers build the app (each says it runs in dry-run) or fail to boot
        wait_for(lambda: service.log().count("dry run, cards are written to the log") >= 4
                 or "error: cannot listen" in service.log() or "Traceback" in service.log(), 15)
        log = service.log()
    assert log.count("Starting gunicorn") == 2 and log.count("dry run, cards are written to the log") >= 4
    assert "error: cannot listen" not in log and "Traceback" not in log


@pytest.mark.parametrize("command", [["webhook_server.py"], ["-m", "gunicorn", "-c", "gunicorn.conf.py",
                                                            "webhook_server:app"]])
def test_a_broken_owners_json_stops_either_server_with_one_line_though_a_good_copy_is_kept(tmp_path, command):
    """A fresh start refuses it; only a process started later by a running service routes by the last good copy."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "last-good-owners.json").write_text('{"a": "a@example.com"}', encoding="utf-8")
    owners = tmp_path / "owners.json"
    owners.write_text('{\n  "a": "a@example.com",\n  "测试项目": "test@example"\n}', encoding="utf-8-sig")
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, timeout=30,
                            env=service_env(OWNERS_FILE=str(owners), DATA_DIR=str(tmp_path / "data"),
                                            LOG_DIR=str(tmp_path / "logs"), PORT=str(free_port())))
    stderr = result.stderr.decode("utf-8")
    [error] = [line for line in stderr.splitlines() if "error" in line.lower()]      # gunicorn's INFO line aside
    assert result.returncode != 0 and error.startswith(f"error: {owners}, line 3: key \"测试项目\"")
    assert "Traceback" not in stderr and "Booting worker" not in stderr


@pytest.mark.parametrize("command", [["webhook_server.py"], ["-m", "gunicorn", "-c", "gunicorn.conf.py",
                                                            "webhook_server:app"]])
def test_a_data_dir_that_cannot_be_a_folder_stops_either_server_with_one_line(tmp_path, command):
    (tmp_path / "data").write_text("a file where the folder belongs", encoding="utf-8")
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, timeout=30,
                            env=service_env(OWNERS_FILE=str(ROOT / "config" / "owners.json"),
                                            DATA_DIR=str(tmp_path / "data"), LOG_DIR=str(tmp_path / "logs"),
                                            PORT=str(free_port())))
    stderr = result.stderr.decode("utf-8")
    [error] = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert result.returncode != 0
    assert error == f"error: DATA_DIR={tmp_path / 'data'} cannot be made a folder: File exists"
    assert "Traceback" not in stderr


def test_outbox_lists_each_waiting_card_and_retry_failed_counts_in_words(run, settings):
    from gitlab_feishu.outbox import Outbox
    from gitlab_feishu.rows import NewDelivery

    outbox = Outbox(settings.data_dir / "outbox.sqlite3")
    new, _ = outbox.begin_event("idem:1", "push", "mike/diaspora",
                                [NewDelivery("dm", r, "exact: mike/diaspora", "{}", f"uuid-{r}")
                                 for r in ("a@example.com", "b@example.com")], lease_owner="me", lease_seconds=10,
                                retry_window=3600)
    outbox.finish(new[0].id, "queued", attempts=1, error="Feishu down", next_attempt_at=outbox.clock() + 60)
    outbox.finish(new[1].id, "failed", attempts=3, error="230013: outside the availability range")
    code, out, _ = run("--outbox")
    assert code == 0 and "1 queued, 1 failed" in out
    assert "to a@example.com (exact: mike/diaspora) since " in out and ", 1 attempt, next try " in out
    assert ", 3 attempts\n    230013" in out
    assert run("--retry-failed")[1].startswith("1 failed delivery queued again;")


def test_outbox_header_agrees_with_its_list_for_a_card_on_its_first_try(run, settings):
    """A card whose first try is under way (or whose process was killed during it) is listed: the header must
    not say "0 queued" above it without a word about what it is."""
    from gitlab_feishu.outbox import Outbox
    from gitlab_feishu.rows import NewDelivery

    outbox = Outbox(settings.data_dir / "outbox.sqlite3")
    outbox.begin_event("idem:2", "push", "mike/diaspora",
                       [NewDelivery("dm", "a@example.com", "exact: mike/diaspora", "{}", "uuid-a")],
                       lease_owner="a-process-that-was-killed", lease_seconds=60, retry_window=3600)
    code, out, _ = run("--outbox")
    header, row = out.splitlines()[:2]
    assert code == 0 and header.endswith("0 queued, 0 failed, 1 on a first try (inside a webhook now, or left by"
                                         " a stopped process: the retry thread takes those over)")
    assert row.startswith("#") and " trying to a@example.com (exact: mike/diaspora) since " in row


def test_outbox_piped_into_head_ends_without_a_traceback(tmp_path):
    from gitlab_feishu.outbox import Outbox
    from gitlab_feishu.rows import NewDelivery

    owners = tmp_path / "owners.json"
    owners.write_text('{"测试项目": "test@example.com"}', encoding="utf-8")
    outbox = Outbox(tmp_path / "data" / "outbox.sqlite3")
    outbox.begin_event("idem:3", "push", "demo/x",
                       [NewDelivery("dm", f"u{n}@example.com", "exact: 测试项目", "{}", f"uuid-{n}")
                        for n in range(2000)], lease_owner="gone", lease_seconds=60, retry_window=3600)
    env = service_env(OWNERS_FILE=str(owners), DATA_DIR=str(tmp_path / "data"))
    reader = subprocess.Popen([sys.executable, "webhook_server.py", "--outbox"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()                      # what `| head -1` does
    stderr = reader.stderr.read().decode("utf-8", "replace")
    reader.wait(timeout=30)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
