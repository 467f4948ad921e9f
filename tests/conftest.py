"""Shared fixtures: settings built explicitly (never from the developer's environment), fake clocks, payloads."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from gitlab_feishu.app import create_app
from gitlab_feishu.settings import Settings
from tests.fake_feishu import FakeFeishu
from tests.servers import PROXY_VARIABLES

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "s3cret-token"
OWNERS = {
    "Y_野水发财": "zhangsan@example.com",
    "N_奶奶的小农院": ["lisi@example.com", "wangwu@example.com"],
    "测试项目": "test@example.com",
    "mike/diaspora": ["mike@example.com", "ou_0123456789abcdef0123456789abcdef"],
}
OWNER_OPEN_ID = "ou_0123456789abcdef0123456789abcdef"    # an owner written as an open_id: sent to without a lookup


OWNER_EMAILS = tuple(dict.fromkeys(email for value in OWNERS.values()
                                   for email in ([value] if isinstance(value, str) else value) if "@" in email))


def add_owners(fake: FakeFeishu, *, unavailable: tuple[str, ...] = ()) -> None:
    """Make every owner in OWNERS a user of `fake`, so any test can run alone (its users outlive reset())."""
    for email in OWNER_EMAILS:
        fake.add_user(email, available=email not in unavailable)
    fake.add_user("open-id-owner@example.com", OWNER_OPEN_ID)


@contextlib.contextmanager
def another_program_locks(path: Path) -> Iterator[None]:
    """An sqlite3 shell left in a write transaction on a database file (the outbox)."""
    shell = sqlite3.connect(path, isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        shell.execute("ROLLBACK")
        shell.close()


def shipped_file(relative: str, tmp_path: Path) -> Path:
    """The committed version of a config file (config/owners.json, config/users.json), not the working copy:
    the README has operators edit these in place, and their edits must not fail the test run."""
    root = Path(__file__).resolve().parent.parent
    try:
        content = subprocess.run(["git", "show", f"HEAD:./{relative}"], cwd=root, capture_output=True,
                                 check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return root / relative          # not a git checkout (an unpacked archive): the file as shipped
    copy = tmp_path / Path(relative).name
    copy.write_bytes(content)
    return copy


def load_payload(name: str) -> dict:
    """A GitLab payload from tests/fixtures/gitlab (the API-doc capture is unwrapped to its request body)."""
    data = json.loads((FIXTURES / "gitlab" / name).read_text(encoding="utf-8"))
    return data.get("request_data", data)


def gitlab_headers(event: str = "Push Hook", *, token: str | None = SECRET, key: str | None = None) -> dict:
    """The headers GitLab sends with a project hook delivery (a fresh Idempotency-Key unless given)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/18.6.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Instance": "https://git.example.cn",
        "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": key or str(uuid.uuid4()),
    }
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return headers


class FakeClock:
    """A wall clock that only moves when told to; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    advance = sleep


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_from_the_environment():
    with pytest.MonkeyPatch.context() as patch:      # session-wide: module fixtures start servers too
        for name in PROXY_VARIABLES:
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def fake():
    """A fake Feishu for one test module: a real HTTP server on 127.0.0.1 (modules add their users)."""
    with FakeFeishu() as server:
        yield server


@pytest.fixture
def feishu(fake):
    """The fake Feishu, emptied, knowing every owner in the test owners.json (modules may define their own)."""
    fake.reset()
    add_owners(fake)
    return fake


@pytest.fixture
def app(settings, feishu):
    """The app in-process, sending to the fake Feishu; no background threads."""
    app = create_app(dataclasses.replace(settings, feishu_base_url=feishu.url), background=False)
    yield app
    app.extensions["gitlab_feishu"].stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def owners_file(tmp_path: Path) -> Path:
    path = tmp_path / "owners.json"
    path.write_text(json.dumps(OWNERS, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path, owners_file: Path) -> Settings:
    """Live-mode settings pointing at an unroutable Feishu; tests that send replace the URL."""
    return Settings(feishu_app_id="cli_test_app", feishu_app_secret="test-secret",
                    feishu_base_url="http://127.0.0.1:9", gitlab_webhook_secret=SECRET,
                    owners_file=owners_file, users_file=tmp_path / "users.json",
                    data_dir=tmp_path / "data", log_dir=tmp_path / "logs", retry_base_seconds=5.0)
