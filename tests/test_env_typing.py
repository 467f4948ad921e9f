"""What Notepad with a Chinese input method does to .env values, read as the person meant them."""
from __future__ import annotations

import pytest

from gitlab_feishu.settings import Settings


def from_env_file(tmp_path, text: str) -> Settings:
    env_file = tmp_path / ".env"
    env_file.write_text(text, encoding="utf-8-sig")
    return Settings.from_env({}, env_file=env_file)


@pytest.mark.parametrize("separator", ["，", "；", "、"])
def test_full_width_separators_split_a_list(tmp_path, separator):
    settings = from_env_file(tmp_path, f"ADMIN_EMAILS=张三@example.com{separator}lisi@example.com\n")
    assert settings.admin_emails == ("张三@example.com", "lisi@example.com")
