"""What Notepad with a Chinese input method does to .env values, read as the person meant them."""
from __future__ import annotations

import logging

import pytest

from gitlab_feishu.settings import ConfigError, Settings


def from_env_file(tmp_path, text: str) -> Settings:
    env_file = tmp_path / ".env"
    env_file.write_text(text, encoding="utf-8-sig")
    return Settings.from_env({}, env_file=env_file)


@pytest.mark.parametrize("separator", ["，", "；", "、"])
def test_full_width_separators_split_a_list(tmp_path, separator):
    settings = from_env_file(tmp_path, f"ADMIN_EMAILS=张三@example.com{separator}lisi@example.com\n")
    assert settings.admin_emails == ("张三@example.com", "lisi@example.com")


def test_a_double_quoted_windows_path_that_lost_a_backslash_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"OWNERS_FILE=.*\\n.*without quotes"):
        from_env_file(tmp_path, 'OWNERS_FILE="C:\\服务\\new\\owners.json"\n')


def test_a_windows_path_without_quotes_keeps_its_backslashes(tmp_path):
    settings = from_env_file(tmp_path, "OWNERS_FILE=C:\\服务\\new\\owners.json\n")
    assert "C:\\服务\\new\\owners.json" in str(settings.owners_file)


def test_an_admin_may_be_an_open_id(tmp_path):
    settings = from_env_file(tmp_path, "ADMIN_EMAILS=ops@example.com, ou_7d8a6e6df7621556ce0d21922b676706\n")
    assert settings.admin_emails == ("ops@example.com", "ou_7d8a6e6df7621556ce0d21922b676706")


def test_an_admin_that_is_neither_email_nor_open_id_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"ADMIN_EMAILS.*'张三' is neither an email address nor a Feishu open_id"):
        from_env_file(tmp_path, "ADMIN_EMAILS=张三\n")


@pytest.mark.parametrize(("line", "says"), [
    ('DATA_DIR="D:\\gitlab 通知\\data\\"', "ending in a backslash"),       # \" reads as an escaped quote
    ("DATA_DIR='D:\\gitlab\\data\\'", "ending in a backslash"),            # so does \'
    ('DATA_DIR="D:\\gitlab\\data\\"  # the outbox', "ending in a backslash"),   # a comment after it
    ('GITLAB_URL="https://git.example.cn" the server', "closed on the same line"),
    ("set PORT=8080", "write NAME=value"),
])
def test_a_line_python_dotenv_would_skip_with_the_next_ones_stops_the_start(tmp_path, line, says):
    env_file = tmp_path / ".env"
    env_file.write_text(f'{line}\r\nGITLAB_WEBHOOK_SECRET="tok-123"\r\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, env_file=env_file)
    assert str(caught.value).startswith(f"{env_file}, line 1: cannot be read as NAME=value")
    assert says in str(caught.value) and "tok-123" not in str(caught.value)


def test_a_secret_holding_a_dollar_brace_is_taken_as_written(tmp_path):
    settings = from_env_file(tmp_path, "GITLAB_WEBHOOK_SECRET=pa${HOME}word\n")
    assert settings.gitlab_webhook_secret == "pa${HOME}word"


@pytest.mark.parametrize(("line", "meant"), [("FEISHU_APPID=cli_a", "FEISHU_APP_ID"),
                                             ("feishu_app_id=cli_a", "FEISHU_APP_ID"),
                                             ("OWNER_FILE=owners.json", "OWNERS_FILE")])
def test_a_name_that_is_almost_a_setting_is_named_with_the_one_it_looks_like(tmp_path, caplog, line, meant):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        from_env_file(tmp_path, line + "\nHTTPS_PROXY=http://proxy:3128\n")
    [record] = caplog.records
    assert f"is not a setting, so it sets nothing; did you mean {meant}?" in record.getMessage()


def test_a_line_without_an_equals_sign_is_named_by_its_line_without_quoting_it(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        settings = from_env_file(tmp_path, "FEISHU_APP_ID=cli_a\nFEISHU_APP_SECRET:s3cr3t\n")
    assert settings.feishu_app_secret == ""
    [record] = caplog.records
    assert "line 2: there is no '=' on this line, so it sets nothing" in record.getMessage()
    assert "s3cr3t" not in caplog.text


def test_a_full_width_equals_sign_is_named_as_the_cause(tmp_path, caplog):
    """A Chinese input method in full-width mode types ＝: the line sets nothing, and the warning says why."""
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        settings = from_env_file(tmp_path, "GITLAB_WEBHOOK_SECRET＝中文密钥\n")
    assert settings.gitlab_webhook_secret == ""
    [record] = caplog.records
    assert "its ＝ is full-width" in record.getMessage() and "中文密钥" not in caplog.text


def test_a_name_typed_in_full_width_letters_is_named_with_the_setting_it_means(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gitlab_feishu"):
        from_env_file(tmp_path, "ＦＥＩＳＨＵ_APP_ID=cli_a\n")
    [record] = caplog.records
    assert "did you mean FEISHU_APP_ID? (typed with full-width letters" in record.getMessage()
