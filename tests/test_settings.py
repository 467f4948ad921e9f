""".env as ops write it: any of Notepad's encodings, the real environment winning, secrets kept out of reprs."""
from __future__ import annotations

import codecs
import logging

import pytest

from gitlab_feishu.settings import ConfigError, Settings

ENV_TEXT = "# 飞书应用\nFEISHU_APP_ID=cli_a1b2\nFEISHU_APP_SECRET=s3cr3t\nOWNERS_FILE=/srv/通知服务/owners.json\n"


@pytest.mark.parametrize("data", [
    ENV_TEXT.encode("utf-8"),
    codecs.BOM_UTF8 + ENV_TEXT.encode("utf-8"),                   # Notepad's "UTF-8 with BOM"
    codecs.BOM_UTF16_LE + ENV_TEXT.encode("utf-16-le"),           # Notepad's "Unicode"
    ENV_TEXT.encode("gbk"),                                       # an "ANSI" save on a Chinese Windows
], ids=["utf-8", "utf-8-bom", "utf-16", "gbk"])
def test_env_file_is_read_whatever_notepad_saved_it_as(tmp_path, data):
    env_file = tmp_path / ".env"
    env_file.write_bytes(data)
    settings = Settings.from_env({}, env_file=env_file)
    assert (settings.feishu_app_id, settings.feishu_app_secret) == ("cli_a1b2", "s3cr3t")
    assert settings.owners_file.as_posix() == "/srv/通知服务/owners.json"


@pytest.mark.parametrize(("data", "read_as"), [(codecs.BOM_UTF16_LE + ENV_TEXT.encode("utf-16-le"), "UTF-16"),
                                               (ENV_TEXT.encode("gbk"), "GBK")])
def test_env_file_not_in_utf8_is_read_with_a_warning(tmp_path, caplog, data, read_as):
    env_file = tmp_path / ".env"
    env_file.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        Settings.from_env({}, env_file=env_file)
    assert f"was read as {read_as}" in caplog.text and "Encoding: UTF-8" in caplog.text


def test_env_file_that_is_no_text_says_how_to_resave_it(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"FEISHU_APP_ID=\xff\xfe\xfa\n\x81")
    with pytest.raises(ConfigError, match=r"\.env is not readable as UTF-8, UTF-16 or GBK.*Encoding: UTF-8"):
        Settings.from_env({}, env_file=env_file)


def test_the_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("FEISHU_APP_ID=from_file\nPORT=6000\n", encoding="utf-8")
    settings = Settings.from_env({"FEISHU_APP_ID": "from_env"}, env_file=env_file)
    assert (settings.feishu_app_id, settings.port) == ("from_env", 6000)


def test_secrets_stay_out_of_the_repr():
    settings = Settings(feishu_app_secret="app-secret-value", gitlab_webhook_secret="hook-secret-value",
                        gitlab_api_token="glpat-secret-value")
    assert not any(secret in repr(settings) for secret in ("app-secret-value", "hook-secret-value",
                                                            "glpat-secret-value"))


@pytest.mark.parametrize("level", ["verbose", "trace", "5"])
def test_an_unknown_log_level_is_refused_naming_the_levels(level):
    with pytest.raises(ConfigError, match=f"LOG_LEVEL='{level}' is not valid: use one of DEBUG, INFO, WARNING, ERROR"):
        Settings.from_env({"LOG_LEVEL": level}, env_file=None)


def test_log_level_ignores_case():
    assert Settings.from_env({"LOG_LEVEL": "debug"}, env_file=None).log_level == "DEBUG"


@pytest.mark.parametrize(("name", "value", "says"), [
    ("PORT", "abc", "use a port number from 1 to 65535"),
    ("PORT", "70000", "use a port number from 1 to 65535"),
    ("DELIVERY_DEADLINE_SECONDS", "soon", "use a number of seconds from"),
    ("DELIVERY_DEADLINE_SECONDS", "30", "use a number of seconds from"),
    ("DELIVERY_DEADLINE_SECONDS", "nan", "use a number of seconds from"),
    ("RETRY_BASE_SECONDS", "5s", "use a number of seconds from"),
    ("ALERT_QUEUE_THRESHOLD", "0", "use a whole number, 1 or more"),
    ("ALERT_QUEUE_THRESHOLD", "many", "use a whole number, 1 or more"),
    ("FEISHU_PACING", "maybe", "use true or false"),
    ("FEISHU_BASE_URL", "open.feishu.cn", "must start with http:// or https://"),
    ("FEISHU_BASE_URL", "https://", "with a host"),
    ("FEISHU_BASE_URL", "https://open feishu.cn", "no spaces"),
    ("FEISHU_BASE_URL", "https://open.feishu.cn:443x", "the port after the host"),
    ("GITLAB_URL", "https://git.example.cn:80x", "the port after the host"),
    ("PUBLIC_URL", "https://", "with a host"),
    ("PUBLIC_URL", "https://hooks.example.cn:0", "the port after the host"),
    ("ADMIN_EMAILS", "张三 <ops@example.com>", "neither an email address nor a Feishu open_id"),
    ("ADMIN_EMAILS", "ops@example", "neither an email address nor a Feishu open_id"),
    ("NOTIFY_EVENTS", ",", "name at least one of push"),
    ("ALLOWED_SOURCES", "10.0.0.0/8 192.168.0.0/16", "several separated by commas"),
    ("GITLAB_URL", "https://git.example.cn/api/v4", "without /api/v4"),
    ("NOTIFY_EVENTS", "、", "or leave it empty for all of them"),
])
def test_a_bad_value_is_refused_saying_what_to_write(name, value, says):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value}, env_file=None)
    assert str(raised.value).startswith(f"{name}={value!r} is not valid: ") and says in str(raised.value)


def test_a_mapping_of_settings_takes_their_names_or_their_fields_and_lists():
    settings = Settings.from_mapping({"FEISHU_APP_ID": "cli_a", "feishu_app_secret": "s", "port": 8080,
                                      "admin_emails": ["a@example.com", "ou_b"], "notify_self": False})
    assert (settings.feishu_app_id, settings.feishu_app_secret, settings.port) == ("cli_a", "s", 8080)
    assert settings.admin_emails == ("a@example.com", "ou_b") and settings.notify_self is False


def test_a_mapping_with_a_name_that_is_no_setting_is_refused():
    with pytest.raises(ConfigError, match="'FEISHU_APPID' is not a setting"):
        Settings.from_mapping({"FEISHU_APPID": "cli_a"})


def test_paths_given_as_text_are_paths(tmp_path):
    settings = Settings(data_dir=str(tmp_path / "data"), owners_file="config/owners.json")
    assert settings.data_dir == tmp_path / "data" and settings.owners_file.is_absolute()


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_may_be_written_in_brackets(host):
    assert Settings.from_mapping({"HOST": host}).host == "::1"


@pytest.mark.parametrize("url", ["https://open.feishu.cn/", "http://127.0.0.1:8080", "http://[::1]:5000/sub/"])
def test_a_url_with_host_and_port_is_taken(url):
    assert Settings.from_mapping({"FEISHU_BASE_URL": url}).feishu_base_url == url.rstrip("/")


@pytest.mark.parametrize("raw", ["gitlab-ci-bot,Deploy@Example.com", "@gitlab-ci-bot, deploy@example.com",
                                 "gitlab-ci-bot deploy@example.com", "gitlab-ci-bot，deploy@example.com"])
def test_ignore_pushers_takes_usernames_as_gitlab_shows_them_and_any_separator(raw):
    """GitLab shows a username as @name; neither a username nor an email holds a space or a comma."""
    assert Settings.from_mapping({"IGNORE_PUSHERS": raw}).ignore_pushers == {"gitlab-ci-bot", "deploy@example.com"}


@pytest.mark.parametrize("email", ["zhangsan+ci@example.com", "张三@例子.中国", "müller@bücher.de",
                                   "jose\u0301@example.com", "ou_7d8a6e6df7621556ce0d21922b676706ccs"])
def test_addresses_real_companies_use_are_not_taken_for_input_method_typing(email):
    assert Settings.from_mapping({"ADMIN_EMAILS": email}).admin_emails == (email,)
