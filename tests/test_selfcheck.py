"""The start-up self-check of the Feishu app credentials, against the fake Feishu over real HTTP."""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import time
from types import SimpleNamespace

import pytest
import requests
import waitress

from gitlab_feishu import cli
from gitlab_feishu.app import create_app
from gitlab_feishu.feishu import FeishuClient
from gitlab_feishu.feishu_errors import FeishuError
from gitlab_feishu.selfcheck import FIRST_RETRY, CredentialCheck
from gitlab_feishu.shared_cache import SharedCache
from tests.conftest import gitlab_headers, load_payload
from tests.fake_feishu import FakeFeishu
from tests.servers import ServiceProcess, free_port, service_env, wait_for


def check(url: str, app_id: str = "cli_test_app", secret: str = "test-secret") -> CredentialCheck:
    return CredentialCheck(FeishuClient(url, app_id, secret), budget=2.0)


@pytest.fixture
def running():
    """Apps whose background threads are stopped (and joined) after the test."""
    apps = []
    yield apps
    for app in apps:
        app.extensions["gitlab_feishu"].stop()


@pytest.fixture
def silent_feishu(running):
    """A Feishu that accepts connections and never answers (the kernel completes the handshake).

    Closed before `running` stops the apps: the reset ends a self-check waiting on it at once.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_good_credentials_are_reported_working(fake, caplog):
    credentials = check(fake.url)
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        assert credentials.check() is True
    assert credentials.describe() == "ok: tenant token fetched"
    assert "Feishu credentials ok" in caplog.text


@pytest.mark.parametrize(("app_id", "secret", "code", "setting"), [
    ("cli_wrong_app", "test-secret", 10003, "FEISHU_APP_ID"),
    ("cli_test_app", "wrong-secret", 10014, "FEISHU_APP_SECRET"),
])
def test_bad_credentials_are_rejected_naming_feishus_code(fake, caplog, app_id, secret, code, setting):
    credentials = check(fake.url, app_id, secret)
    with caplog.at_level(logging.ERROR, logger="gitlab_feishu.selfcheck"):
        assert credentials.check() is True
    assert credentials.describe().startswith(f"rejected: {code} ")
    assert setting in credentials.describe() and "wrong-secret" not in credentials.describe()
    [record] = [r for r in caplog.records if r.name == "gitlab_feishu.selfcheck"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(f"Feishu credentials rejected: {code} ")


def test_unreachable_feishu_is_unknown_until_a_later_check_succeeds():
    port = free_port()                       # nothing listens here yet
    credentials = check(f"http://127.0.0.1:{port}")
    assert credentials.check() is False
    assert credentials.describe().startswith("unknown: Feishu unreachable (cannot reach Feishu")
    with FakeFeishu(port=port):
        assert credentials.check() is True
    assert credentials.describe() == "ok: tenant token fetched"


class Answers:
    """A stand-in FeishuClient whose credential checks give the next answer each time."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def check_credentials(self, budget):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_refused_credentials_are_checked_again_until_they_work():
    """An app re-enabled (or an IP allow-list fixed) in the console: no restart, and /healthz recovers."""
    refused = FeishuError("getting a tenant_access_token: Feishu 99991662: app is disabled", code=99991662)
    credentials = CredentialCheck(Answers(refused, refused, "tenant token fetched"))
    waits = []
    credentials.check_until_ok(lambda seconds: waits.append(seconds) and False)
    assert credentials.describe() == "ok: tenant token fetched" and credentials.refused is False
    assert waits == [FIRST_RETRY, 2 * FIRST_RETRY]


def test_a_refusal_checked_again_is_logged_once(caplog):
    refused = FeishuError("getting a tenant_access_token: Feishu 99991401: ip not allowed", code=99991401)
    credentials = CredentialCheck(Answers(refused, refused, refused))
    waits = iter([False, False, True])
    with caplog.at_level(logging.INFO, logger="gitlab_feishu.selfcheck"):
        credentials.check_until_ok(lambda seconds: next(waits))
    assert [r.levelno for r in caplog.records if r.name == "gitlab_feishu.selfcheck"] == [logging.ERROR]


def test_each_new_verdict_is_logged_at_its_level(caplog):
    """Feishu unreachable at the start, then one refusal, then another, then working: four lines."""
    unreachable = FeishuError("getting a tenant_access_token: cannot reach Feishu", retryable=True)
    credentials = CredentialCheck(Answers(
        unreachable, unreachable,
        FeishuError("getting a tenant_access_token: Feishu 99991401: ip not allowed", code=99991401),
        FeishuError("getting a tenant_access_token: Feishu 99991662: app disabled", code=99991662),
        "tenant token fetched"))
    with caplog.at_level(logging.INFO, logger="gitlab_feishu.selfcheck"):
        credentials.check_until_ok(lambda seconds: False)
    assert [r.levelno for r in caplog.records if r.name == "gitlab_feishu.selfcheck"] == [
        logging.WARNING, logging.ERROR, logging.ERROR, logging.INFO]


def test_checking_again_ends_when_told_to_stop():
    refused = FeishuError("getting a tenant_access_token: Feishu 99991401: ip not allowed", code=99991401)
    credentials = CredentialCheck(Answers(refused))
    credentials.check_until_ok(lambda seconds: True)          # stopping
    assert credentials.refused is True


@pytest.mark.parametrize("code", [10003, 10014])
def test_a_wrong_app_id_or_secret_is_not_checked_again(code):
    """Only an edit of .env and a restart put it right: asking Feishu again would only fill the log."""
    refused = FeishuError(f"getting a tenant_access_token: Feishu {code}: invalid", code=code)
    credentials = CredentialCheck(Answers(refused))
    waits = []
    credentials.check_until_ok(lambda seconds: waits.append(seconds) and False)
    assert waits == [] and credentials.refused is True


def test_start_up_is_not_blocked_by_a_silent_feishu(settings, silent_feishu, running):
    started = time.monotonic()
    app = create_app(dataclasses.replace(settings, feishu_base_url=silent_feishu))
    running.append(app)
    assert time.monotonic() - started < 1.0
    assert app.test_client().get("/healthz").json["feishu_credentials"] == "unknown: not checked yet"


def test_healthz_says_feishu_is_unreachable(settings, running):
    app = create_app(settings)               # settings point Feishu at a closed port
    running.append(app)
    assert app.extensions["gitlab_feishu"].credentials.wait(5)
    assert app.test_client().get("/healthz").json["feishu_credentials"].startswith("unknown: Feishu unreachable (")


@pytest.mark.parametrize(("secret", "status"), [("test-secret", "ok"), ("wrong-secret", "degraded")])
def test_healthz_is_degraded_while_feishu_refuses_the_credentials(settings, fake, running, secret, status):
    app = create_app(dataclasses.replace(settings, feishu_base_url=fake.url, feishu_app_secret=secret))
    running.append(app)
    assert app.extensions["gitlab_feishu"].credentials.wait(5)
    assert app.test_client().get("/healthz").json["status"] == status


def test_healthz_follows_the_token_fetches_of_cards_after_the_first_check(settings, fake, monkeypatch):
    """The App Secret reset in the Feishu console while the service runs: the next token refresh is refused,
    and /healthz says so until a token comes again."""
    fake.reset()
    fake.add_user("zhangsan@example.com")
    app = create_app(dataclasses.replace(settings, feishu_base_url=fake.url), background=False)
    client = app.test_client()
    assert app.extensions["gitlab_feishu"].credentials.check() is True

    def push():
        client.post("/gitlab-webhook", data=json.dumps(load_payload("chinese_push.json"), ensure_ascii=False),
                    headers=gitlab_headers())
        return client.get("/healthz").json

    monkeypatch.setattr(fake, "app_secret", "reset-in-the-console")
    fake.revoke_tokens()
    health = push()
    assert health["status"] == "degraded" and health["feishu_credentials"].startswith("rejected: 10014 ")
    monkeypatch.setattr(fake, "app_secret", "test-secret")          # put back in the console
    health = push()
    assert (health["status"], health["feishu_credentials"]) == ("ok", "ok: tenant token fetched")


def test_healthz_in_dry_run_checks_nothing(settings):
    app = create_app(dataclasses.replace(settings, feishu_app_id=""), background=False)
    assert app.test_client().get("/healthz").json["feishu_credentials"] == "not checked: dry run"


@pytest.fixture
def serve(monkeypatch, capsys, running):
    """Run cli.serve up to the point waitress would start; return its banner."""
    class Server:                           # bound, never run
        task_dispatcher = SimpleNamespace(shutdown=lambda timeout: None)

        def run(self) -> None:
            pass

    monkeypatch.setattr(waitress, "create_server", lambda app, **options: running.append(app) or Server())
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)     # not this test process's SIGTERM
    monkeypatch.setattr("gitlab_feishu.logs.configure_logging", lambda settings, to_file: None)

    def run(settings) -> str:
        assert cli.serve(settings) == 0
        return capsys.readouterr().out
    return run


def test_a_second_ctrl_c_while_the_retry_round_finishes_stops_without_a_traceback(settings, serve, monkeypatch, capsys):
    def interrupted(app, wait=True):
        if wait:
            raise KeyboardInterrupt
    monkeypatch.setattr("gitlab_feishu.app.stop_background", interrupted)
    assert cli.serve(settings) == 0                         # `serve` has made waitress's server return at once
    assert "stopped without waiting for the webhooks or the retry round" in capsys.readouterr().err


def test_a_second_ctrl_c_while_webhooks_are_in_flight_still_tells_the_retry_thread_to_stop(settings, serve,
                                                                                           monkeypatch, running):
    """Otherwise its next round meets the delivery threads Python shuts down at exit: an ERROR and a traceback."""
    def interrupted():
        raise KeyboardInterrupt
    server = SimpleNamespace(run=interrupted, task_dispatcher=SimpleNamespace(shutdown=lambda timeout: None))
    monkeypatch.setattr(waitress, "create_server", lambda app, **options: running.append(app) or server)
    assert cli.serve(settings) == 0
    assert running[-1].extensions["gitlab_feishu"].worker._stop.is_set()


@pytest.mark.parametrize(("secret", "line"), [
    ("test-secret", "  feishu:  credentials ok: tenant token fetched"),
    ("wrong-secret", "  feishu:  credentials rejected: 10014 app secret invalid: the app secret is wrong"),
])
def test_waitress_banner_says_whether_the_credentials_work(settings, fake, serve, secret, line):
    banner = serve(dataclasses.replace(settings, feishu_base_url=fake.url, feishu_app_secret=secret))
    assert line in banner


def test_waitress_banner_waits_only_briefly_for_the_check(settings, silent_feishu, serve, monkeypatch):
    monkeypatch.setattr(cli, "SELF_CHECK_WAIT", 0.2)
    banner = serve(dataclasses.replace(settings, feishu_base_url=silent_feishu))
    assert "  feishu:  credentials unknown: still checking" in banner


def test_each_gunicorn_worker_checks_in_the_background(fake, tmp_path):
    (tmp_path / "owners.json").write_text('{"demo": "demo@example.com"}', encoding="utf-8")
    env = service_env(FEISHU_APP_ID="cli_test_app", FEISHU_APP_SECRET="wrong-secret", FEISHU_BASE_URL=fake.url,
                      OWNERS_FILE=str(tmp_path / "owners.json"), DATA_DIR=str(tmp_path / "data"))
    with ServiceProcess(env, tmp_path / "service.log") as service:
        wait_for(lambda: service.log().count("Feishu credentials rejected: 10014") >= 2, timeout=10)
        state = requests.get(service.url + "/healthz", timeout=2).json()["feishu_credentials"]
    assert service.log().count("Feishu credentials rejected: 10014") == 2      # one per worker
    assert state.startswith("rejected: 10014 app secret invalid")


def test_waitress_banner_in_dry_run(settings, serve):
    banner = serve(dataclasses.replace(settings, feishu_app_id="", admin_emails=("ops@example.com",)))
    assert "  mode:    dry-run (FEISHU_APP_ID not set" in banner
    assert "  feishu:  credentials not checked: dry run" in banner
    assert "  alerts:  off in dry-run" in banner           # nothing is sent, alerts neither


@pytest.mark.parametrize(("changes", "url"), [
    ({"public_url": "https://hooks.example.cn"}, "https://hooks.example.cn/gitlab-webhook"),
    ({"public_url": "https://example.cn/notify/gitlab-webhook/"}, "https://example.cn/notify/gitlab-webhook"),
    ({"host": "192.168.1.20", "port": 8080}, "http://192.168.1.20:8080/gitlab-webhook"),
    ({"host": "fd00::20", "port": 8080}, "http://[fd00::20]:8080/gitlab-webhook"),
])
def test_banner_webhook_url_is_the_one_to_paste_into_gitlab(settings, changes, url):
    assert cli.webhook_url(dataclasses.replace(settings, **changes)) == url


def test_banner_webhook_url_on_all_interfaces_names_this_machine(settings):
    url = cli.webhook_url(dataclasses.replace(settings, host="0.0.0.0", port=5000))
    assert url.startswith("http://") and url.endswith(":5000/gitlab-webhook") and "0.0.0.0" not in url


SIGNING_TOKEN = "whsec_" + "a2V5LWZvci1zaWduaW5nLWV4YW1wbGVzLTMyYnl0ZXM="


@pytest.mark.parametrize(("secret", "signing", "line"), [
    ("s3cret", "", "  secret:  set\n"),
    ("", "", "  secret:  NOT SET - anyone who can reach this port can send"),
    ("", SIGNING_TOKEN, "  secret:  not set; deliveries must carry a valid GitLab 19 signature"),
])
def test_banner_says_how_deliveries_are_verified(settings, serve, secret, signing, line):
    banner = serve(dataclasses.replace(settings, feishu_app_id="", gitlab_webhook_secret=secret,
                                       gitlab_signing_token=signing))
    assert line in banner


def test_no_open_endpoint_warning_when_deliveries_are_signed(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        create_app(dataclasses.replace(settings, feishu_app_id="", gitlab_webhook_secret="",
                                       gitlab_signing_token=SIGNING_TOKEN), background=False)
    assert "GITLAB_WEBHOOK_SECRET is not set" not in caplog.text


def test_a_worker_that_takes_the_shared_token_hears_that_the_credentials_work_again(fake, tmp_path, monkeypatch):
    """Under gunicorn one worker refreshes the token and the others take it from the shared cache: all of
    them, not only the one that fetched it, stop saying the secret is refused."""
    fake.reset()
    shared = SharedCache(tmp_path / "feishu_cache.sqlite3")
    clients = [FeishuClient(fake.url, "cli_test_app", "test-secret", shared=shared) for _ in range(2)]
    checks = [CredentialCheck(client) for client in clients]
    for client, credentials in zip(clients, checks):
        client.on_token_answer = credentials.heard
    monkeypatch.setattr(fake, "app_secret", "reset-in-the-console")
    for client in clients:
        with pytest.raises(FeishuError):
            client.tenant_token()
    assert all(credentials.refused for credentials in checks)
    monkeypatch.setattr(fake, "app_secret", "test-secret")          # put back in the console
    fetched_by_first, taken_by_second = (client.tenant_token() for client in clients)
    assert fetched_by_first == taken_by_second
    assert [credentials.kind for credentials in checks] == ["ok", "ok"]


def test_an_outage_at_a_token_refresh_leaves_the_credentials_verdict_alone(fake, caplog):
    """Feishu unreachable (or a webhook's deadline spent) at a refresh says nothing about the credentials; no
    background check runs any more to take back an "unknown ... checking again in the background"."""
    fake.reset()
    client = FeishuClient(fake.url, "cli_test_app", "test-secret")
    credentials = CredentialCheck(client)
    client.on_token_answer = credentials.heard
    assert credentials.check() is True
    credentials.heard(FeishuError("getting a tenant_access_token: connection refused", retryable=True))
    assert credentials.describe() == "ok: tenant token fetched"
