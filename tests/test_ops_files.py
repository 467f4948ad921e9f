"""The files ops touch: the Windows batch files, .env.example and the README's settings table."""
from __future__ import annotations

import re

import pytest

from gitlab_feishu.settings import ENV_NAMES, Settings
from tests.conftest import shipped_file
from tests.servers import ROOT

BATCH_FILES = ("start_server.bat", "send_test_webhook.bat")


def read_bytes(name: str) -> bytes:
    return (ROOT / name).read_bytes()


@pytest.mark.parametrize("name", BATCH_FILES)
def test_batch_file_is_ascii_with_crlf_everywhere(name):
    data = read_bytes(name)
    assert data.isascii(), "cmd reads a batch file in the console code page: keep it ASCII"
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n")
    assert "*.bat -text" in read_bytes(".gitattributes").decode("ascii")   # whatever core.autocrlf says


@pytest.mark.parametrize("name", BATCH_FILES)
@pytest.mark.parametrize("command", ["chcp 65001", 'cd /d "%~dp0"', "set PYTHONUTF8=1", "pause"])
def test_batch_file_sets_up_the_console_and_folder(name, command):
    """UTF-8 console, the script's own folder (not System32 under "Run as administrator"), a window that stays."""
    lines = read_bytes(name).decode("ascii").splitlines()
    assert any(line.startswith(command) or line == f'if "%~1"=="" {command}' for line in lines)


@pytest.mark.parametrize("command", [
    "py -3 -c",                                        # the Python launcher first
    "python -c",                                       # then python on PATH
    "python.org",                                      # or how to install it
    "Add python.exe to PATH",
    "-m venv .venv",                                   # .venv on the first run
    "-m pip install --disable-pip-version-check -r requirements.txt",
    "fc /b requirements.txt .venv\\requirements.installed",   # again when requirements.txt changed
    "copy /y requirements.txt .venv\\requirements.installed",
    'copy ".env.example" ".env"',                      # .env on the first run, opened for filling in
    "notepad",
    '".venv\\Scripts\\python.exe" webhook_server.py %*',   # the service itself
    "if %errorlevel% neq 0 goto :stopped",             # its failure (a crash's negative code too) keeps the window open
])
def test_start_server_does_each_step(command):
    assert command in read_bytes("start_server.bat").decode("ascii")


def test_start_server_pauses_on_every_failure_path():
    text = read_bytes("start_server.bat").decode("ascii")
    labels = set(re.findall(r"goto :(\w+)", text))
    for label in labels - {"venv_ready", "requirements_ready", "start"}:
        block = text.split(f"\r\n:{label}\r\n", 1)[1].split("\r\n\r\n", 1)[0]
        assert "pause" in block or "goto :fail" in block, label
    assert 'set "VENV_PY=.venv\\Scripts\\python.exe"' in text


def test_start_server_repairs_a_venv_cut_short_before_installing():
    """A .venv whose creation was interrupted has python.exe but no pip: `pip install` would fail with "No module
    named pip" and the mirror advice after it would not help. ensurepip restores pip offline, else the user is
    told to delete .venv."""
    text = read_bytes("start_server.bat").decode("ascii")
    check = '"%VENV_PY%" -m pip --version >nul 2>&1 || "%VENV_PY%" -m ensurepip --default-pip || goto :venv_unfinished'
    assert check in text
    assert text.index(check) < text.index("-m pip install")
    assert "Delete the .venv folder" in text.split("\r\n:venv_unfinished\r\n", 1)[1].split("\r\n\r\n", 1)[0]


def test_send_test_webhook_bat_runs_the_script_with_the_venv_and_passes_arguments():
    text = read_bytes("send_test_webhook.bat").decode("ascii")
    assert '".venv\\Scripts\\python.exe" send_test_webhook.py %*' in text
    assert "set result=%errorlevel%" in text and "exit /b %result%" in text and "start_server.bat first" in text
    # It pauses only when double-clicked: run with options from a script, it must not wait for a key.
    assert "\r\npause\r\n" not in text and text.count('if "%~1"=="" pause') == 2


@pytest.mark.parametrize("name, pattern", [(".env.example", ".env.example"), ("config/owners.json", "config/*.json"),
                                           ("config/users.json", "config/*.json")])
def test_files_opened_in_notepad_have_crlf_line_endings_git_keeps(name, pattern, tmp_path):
    """Notepad before Windows 10 1809 (Server 2016) shows a file with LF endings as one line. (config/*.json as
    committed: an operator who edits them in place with an LF editor must not fail the test run.)"""
    data = shipped_file(name, tmp_path).read_bytes() if name.startswith("config/") else read_bytes(name)
    assert data.count(b"\n") == data.count(b"\r\n") > 0
    assert f"{pattern} -text" in read_bytes(".gitattributes").decode("ascii")


def env_example_lines() -> dict[str, str]:
    """NAME -> value for every `NAME=value` line of .env.example."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return dict(re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=(.*)$", text))


@pytest.mark.parametrize("name", ENV_NAMES)
def test_every_setting_is_in_env_example(name):
    assert name in env_example_lines()


def test_env_example_as_copied_holds_the_real_defaults_and_runs_in_dry_run():
    assert Settings.from_env({}, env_file=ROOT / ".env.example") == Settings()
    assert Settings().dry_run


@pytest.mark.parametrize("name", ENV_NAMES)
def test_each_env_example_setting_has_a_one_line_explanation_above_it(name):
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
    # The nearest line above that is not a setting (HOST and PORT share one explanation).
    above = next(line for line in reversed(lines[:index]) if not re.match(r"[A-Z][A-Z0-9_]*=", line))
    assert above.startswith("# ") and len(above) > 10


def readme_settings() -> set[str]:
    """Every `NAME` in the first column of the README's settings table."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("|")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


@pytest.mark.parametrize("name", ENV_NAMES)
def test_every_setting_is_in_the_readme_table(name):
    assert name in readme_settings()
