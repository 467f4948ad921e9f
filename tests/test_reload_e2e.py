"""Editing owners.json while the real service runs under gunicorn with 2 workers.

Each worker looks at the file on every webhook and, in the background, every
second; the waits are short polls with a timeout.
Which worker handled a push is read from the log, whose lines carry the pid.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import uuid

import pytest
import requests

from tests.conftest import SECRET, gitlab_headers, load_payload
from gitlab_feishu.settings import ENV_NAMES
from tests.servers import ROOT, ServiceProcess, free_port, service_env, wait_for

FEW_SECONDS = 8.0                  # "within a few seconds", with slack for a busy box
KEY = "Y_野水发财"                 # matches chinese_push.json's project, fuzzily


@pytest.fixture(scope="module")
def fake(fake):
    for email in ("zhangsan@example.com", "lisi@example.com", "wangwu@example.com"):
        fake.add_user(email)
    return fake


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    path = tmp_path_factory.mktemp("reload") / "owners.json"
    save(path, {KEY: "zhangsan@example.com"})
    return path


@pytest.fixture(scope="module")
def service(fake, owners):
    env = service_env(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="test-secret", FEISHU_BASE_URL=fake.url,
                      GITLAB_WEBHOOK_SECRET=SECRET, OWNERS_FILE=str(owners), DATA_DIR=str(owners.parent / "data"),
                      LOG_DIR=str(owners.parent / "logs"), RETRY_BASE_SECONDS="0.3",
                      FEISHU_PACING="off")   # many pushes to one owner in a second: pacing would queue some
    with ServiceProcess(env, owners.parent / "service.log", workers=2) as server:
        yield server


def save(path, owners: dict | str) -> None:
    """Save like Windows Notepad does: UTF-8 with a BOM."""
    text = owners if isinstance(owners, str) else json.dumps(owners, ensure_ascii=False, indent=2)
    path.write_text(text, encoding="utf-8-sig")


def workers(service) -> set[str]:
    """The pids of the workers running now (a killed or reloaded one stays in the log)."""
    booted = set(re.findall(r"Booting worker with pid: (\d+)", service.log()))
    return {pid for pid in booted if os.path.exists(f"/proc/{pid}")}


def push(service) -> tuple[str, list[str]]:
    """Send a push; (pid of the worker that handled it, the recipients it was routed to)."""
    key = str(uuid.uuid4())
    response = requests.post(service.url + "/gitlab-webhook", headers=gitlab_headers(key=key), timeout=10,
                             data=json.dumps(load_payload("chinese_push.json"), ensure_ascii=False).encode())
    assert response.status_code == 200 and response.json()["status"] == "sent", response.text
    [pid] = re.findall(rf"\[(\d+)\] push .* key=idem:{key}", service.log())
    return pid, sorted(d["to"] for d in response.json()["deliveries"])


def healthz_error(service) -> str | None:
    return requests.get(service.url + "/healthz", timeout=5).json()["owners"]["last_error"]


def until_every_worker(service, since: int, pattern: str, routed: list[str], *, old: list[str] | None = None):
    """Push (and ask /healthz) until every worker has logged `pattern` after offset `since` of the log and
    its latest push was routed to `routed`; with `old`, a push may also be routed to `old`, until then."""
    deadline = time.monotonic() + FEW_SECONDS
    latest: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        pid, recipients = push(service)
        assert recipients in ([routed] if old is None else [old, routed])
        latest[pid] = recipients
        healthz_error(service)                    # the other worker may answer this one: it checks the file too
        logged = set(re.findall(rf"\[(\d+)\] [^\n]*{pattern}", service.log()[since:]))
        if logged >= workers(service) and all(latest.get(pid) == routed for pid in workers(service)):
            return
        time.sleep(0.05)
    pytest.fail(f"not every worker logged {pattern!r} and routed to {routed} within {FEW_SECONDS} s:\n"
                f"{service.log()[since:]}")


def healthz_agrees(service, check) -> None:
    """Several /healthz answers in a row (from whichever worker) satisfy `check`."""
    deadline, in_a_row = time.monotonic() + FEW_SECONDS, 0
    while in_a_row < 6:
        assert time.monotonic() < deadline, healthz_error(service)
        in_a_row = in_a_row + 1 if check(healthz_error(service)) else 0
        time.sleep(0.02)


def test_an_edit_applies_in_every_worker_within_seconds(service, owners):
    until_every_worker(service, 0, "Booting worker", ["zhangsan@example.com"])   # both have loaded the file
    assert len(workers(service)) == 2
    since = len(service.log())
    save(owners, {KEY: "lisi@example.com", "其他项目": "wangwu@example.com"})
    until_every_worker(service, since, "owners.json reloaded: 2 entries", ["lisi@example.com"],
                       old=["zhangsan@example.com"])
    assert all(push(service)[1] == ["lisi@example.com"] for _ in range(6))


BROKEN_EDITS = [
    ('{\n  "Y_野水发财": [\n    "wangwu@example.com",\n', "not valid JSON"),      # saved halfway
    ('{\n  "Y_野水发财": "wangwu@example"\n}', "is not an email address"),        # a typo
]


def test_broken_edits_keep_the_last_good_routing_show_on_healthz_and_the_next_good_save_applies(service, owners):
    last_good = push(service)[1]
    for broken, message in BROKEN_EDITS:
        since = len(service.log())
        save(owners, broken)
        until_every_worker(service, since, f"line \\d+.*{message}.*still routing with the last good version",
                           last_good)
        healthz_agrees(service, lambda error, message=message: error is not None and message in error
                       and str(owners) in error)

    since = len(service.log())
    save(owners, {KEY: ["lisi@example.com", "wangwu@example.com"]})
    until_every_worker(service, since, "owners.json reloaded", ["lisi@example.com", "wangwu@example.com"],
                       old=last_good)
    healthz_agrees(service, lambda error: error is None)


def test_a_broken_edit_is_logged_by_every_worker_before_any_webhook_arrives(service, owners):
    """Ops see the mistake in the log right after saving, not at the next push."""
    until_every_worker(service, 0, "Booting worker", push(service)[1])
    for content, pattern in [(BROKEN_EDITS[0][0], "not valid JSON"), ({KEY: "zhangsan@example.com"}, "reloaded")]:
        since = len(service.log())
        save(owners, content)
        deadline = time.monotonic() + FEW_SECONDS
        while set(re.findall(rf"\[(\d+)\] [^\n]*{pattern}", service.log()[since:])) < workers(service):
            assert time.monotonic() < deadline, service.log()[since:]
            time.sleep(0.05)


@pytest.mark.parametrize("restart", ["worker killed", "reload"])
def test_a_worker_started_after_a_broken_save_routes_by_the_last_good_version(service, owners, restart):
    """gunicorn replaces a worker that died, and all of them on a reload (HUP): a broken file must not stop them."""
    last_good = push(service)[1]
    since = len(service.log())
    save(owners, f'{{\n  "{KEY}": "{restart.split()[0]}@example"\n}}')      # an error no worker has logged yet
    until_every_worker(service, since, "still routing with the last good version", last_good)
    before = workers(service)
    since = len(service.log())
    if restart == "worker killed":
        os.kill(int(min(before)), signal.SIGKILL)
    else:
        os.kill(service.process.pid, signal.SIGHUP)
    wait_for(lambda: re.search(r"\[(\d+)\] [^\n]*routing with the last good version \(1 entries\)",
                               service.log()[since:]), FEW_SECONDS)
    new = workers(service) - before
    assert new and service.process.poll() is None
    assert all(push(service)[1] == last_good for _ in range(6))
    healthz_agrees(service, lambda error: error is not None and "is not an email address" in error)
    save(owners, {KEY: last_good})


def test_a_reload_or_a_new_worker_after_a_broken_edit_of_env_keeps_the_service_running(fake, tmp_path):
    """A typo in .env, then `systemctl reload` (HUP) or a worker that died: gunicorn's master exited on the
    reload, and a replacement worker's failed boot stopped gunicorn altogether."""
    project = tmp_path / "project"               # a copy: .env is read from the project's own folder
    shutil.copytree(ROOT / "gitlab_feishu", project / "gitlab_feishu", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("webhook_server.py", "gunicorn.conf.py"):
        shutil.copy(ROOT / name, project / name)
    save(tmp_path / "owners.json", {KEY: "zhangsan@example.com"})
    port = free_port()
    settings = dict(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="test-secret", FEISHU_BASE_URL=fake.url,
                    GITLAB_WEBHOOK_SECRET=SECRET, OWNERS_FILE=str(tmp_path / "owners.json"), HOST="127.0.0.1",
                    PORT=str(port), DATA_DIR=str(tmp_path / "data"), FEISHU_PACING="off")
    env_file = project / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()), encoding="utf-8")
    environment = {name: value for name, value in service_env().items() if name not in ENV_NAMES}
    # A PORT given with -e sets no address: the reload must keep listening where the start did.
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--workers", "2",
               "-e", f"PORT={free_port()}", "webhook_server:app"]
    with ServiceProcess(environment, tmp_path / "service.log", port=port, cwd=project, command=command) as server:
        push(server)
        with env_file.open("a", encoding="utf-8") as env:
            env.write("DELIVERY_DEADLINE_SECONDS=soon\n")
        first = workers(server)
        os.kill(server.process.pid, signal.SIGHUP)
        assert wait_for(lambda: len(workers(server)) == 2 and not workers(server) & first, timeout=FEW_SECONDS)
        reloaded = workers(server)
        os.kill(int(min(reloaded)), signal.SIGKILL)
        assert wait_for(lambda: len(workers(server) - reloaded) == 1 and len(workers(server)) == 2,
                        timeout=FEW_SECONDS)                                            # its replacement
        for _ in range(4):
            push(server)
        assert server.process.poll() is None
    assert "DELIVERY_DEADLINE_SECONDS='soon' is not valid" in server.log()
    assert "the reload keeps the settings the service ran with until .env is fixed" in server.log()
    assert "Worker failed to boot" not in server.log()
