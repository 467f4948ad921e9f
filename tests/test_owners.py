"""owners.json: loading, validation, encodings, matching and hot reload."""
from __future__ import annotations

import json
import logging
import os
import threading
import unicodedata
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gitlab_feishu.watched import FileWatcher, WatchedFile
from gitlab_feishu.events import Person, Project, PushEvent
from gitlab_feishu.owners import Match, OwnersFile, load_owners
from gitlab_feishu.settings import ConfigError
from tests.conftest import shipped_file

LOGGER = "gitlab_feishu.owners"


def write_owners(tmp_path: Path, content: dict | str | bytes, name: str = "owners.json") -> Path:
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content, ensure_ascii=False, indent=2)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def push(path: str, name: str = "", branch: str = "main", **project) -> PushEvent:
    return PushEvent(project=Project(path=path, name=name, **project), actor=Person(), ref=f"refs/heads/{branch}",
                     before="1" * 40, after="2" * 40)


def match(owners, path: str, name: str = "") -> list[Match]:
    return owners.match(push(path, name))


# --- matching ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, path, name, tier", [
    # the shipped example keys name projects through their Chinese display name
    ("Y_野水发财", "games/yeshui", "Y_野水发财", "exact"),
    ("y_野水发财", "games/yeshui", "Y_野水发财", "exact"),
    ("Y_野水发财", "games/yeshui-client", "Y_野水发财（客户端）", "fuzzy"),
    ("Y_野水发财", "games/yeshui", "野水发财", "fuzzy"),
    ("Y_野水发财", "tools/yarn", "Yarn", None),              # the 1-character part "Y" never matches
    ("N_奶奶的小农院", "farm/grandma", "N_奶奶的小农院", "exact"),
    ("N_奶奶的小农院", "farm/grandma", "奶奶的小农院 第二版", "fuzzy"),
    ("测试项目", "qa/test", "测试项目", "exact"),
    ("测试项目", "qa/test", "测试项目-新版", "fuzzy"),
    ("测试项目", "qa/test", "正式项目", None),
    ("Ｙ＿野水发财", "games/yeshui", "Y_野水发财", "exact"),       # full-width input-method letters
    ("野水 发财", "shop/tree", "发财树", "fuzzy"),                # parts split at spaces
    # groups and runs of whole path segments
    ("grouptwogame/sub/client", "grouptwogame/sub/client", "客户端", "exact"),
    ("GroupTwoGame", "grouptwogame/sub/client", "客户端", "exact"),
    ("grouptwogame/sub", "grouptwogame/sub/client", "", "exact"),
    ("sub/client", "grouptwogame/sub/client", "", "exact"),
    ("client", "grouptwogame/sub/client", "", "exact"),
    ("grouptwogame/", "grouptwogame/sub/client", "", "exact"),
    ("grouptwogame/client", "grouptwogame/sub/client", "", None),   # not a consecutive run
    ("group", "grouptwogame/sub/client", "", "fuzzy"),              # part of a segment only
    # near misses
    ("infra-tools", "platform/infra-tools", "", "exact"),
    ("infra-tools", "platform/infra-tools-v2", "", "fuzzy"),
    ("platform/infra-tools", "platform/infra-tools-v2", "", "fuzzy"),
    ("platform/infra-tools", "ops/tools", "", None),
    ("tools", "platform/infra-tools", "", "fuzzy"),
    ("game client", "mobile/client-app", "", "fuzzy"),
    ("x_y", "x/y", "", None),
    # one character never matches, not even a whole segment or the name (loading the file warns)
    ("a", "a/b", "", None),
    ("云", "cloud/app", "云", None),
    ("a", "abc/def", "", None),
    ("云", "cloud/app", "云服务", None),
])
def test_match_table(tmp_path, key, path, name, tier):
    owners = load_owners(write_owners(tmp_path, {key: "owner@example.com"}))
    expected = [Match("owner@example.com", f"{tier}: {key}")] if tier else []
    assert match(owners, path, name) == expected


@pytest.mark.parametrize("key", ["a", "云", " b ", "c/"])
def test_a_key_too_short_to_match_is_named_in_a_warning(tmp_path, key):
    owners = load_owners(write_owners(tmp_path, {"grouptwogame": "lead@example.com", key: "owner@example.com"}))
    [warning] = owners.warnings
    assert f"line 3: key \"{key}\" is shorter than 2 characters, so it never matches" in warning


@pytest.mark.parametrize(("key", "warned"), [
    ("Y_野水发财*", True),                       # a pattern over the display name: patterns match paths only
    ("grouptwogame/yeshui client*", True),
    ("GroupTwoGame/yeshui-*", False),            # paths compare ignoring case
    ("*/client-*", False),
    ("grouptwogame/v1.2_x*", False),
])
def test_a_pattern_that_cannot_match_a_gitlab_path_is_named_in_a_warning(tmp_path, key, warned):
    owners = load_owners(write_owners(tmp_path, {"grouptwogame": "lead@example.com", key: "owner@example.com"}))
    assert bool(owners.warnings) is warned
    if warned:
        assert f'line 3: key "{key}" is a * pattern, which matches a project\'s path' in owners.warnings[0]


@pytest.mark.parametrize("glob", ["*", "＊"])             # the full-width star of a Chinese input method too
def test_a_one_character_glob_still_matches_every_project(tmp_path, glob):
    owners = load_owners(write_owners(tmp_path, {glob: "owner@example.com"}))
    assert owners.warnings == () and match(owners, "any/project", "任何") == [Match("owner@example.com", f"exact: {glob}")]


def test_every_exact_match_counts(tmp_path):
    """A group owner and a project owner are both notified."""
    owners = load_owners(write_owners(tmp_path, {"grouptwogame": "lead@example.com",
                                                 "client": "dev@example.com"}))
    assert match(owners, "grouptwogame/client") == [Match("lead@example.com", "exact: grouptwogame"),
                                                    Match("dev@example.com", "exact: client")]


def test_exact_tier_beats_fuzzy(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"Y_野水发财": "fuzzy@example.com",
                                                 "野水发财": "exact@example.com"}))
    assert match(owners, "games/yeshui", "野水发财") == [Match("exact@example.com", "exact: 野水发财")]


def test_every_fuzzy_match_counts_in_file_order(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"infra": "a@example.com", "tools": "b@example.com"}))
    assert match(owners, "platform/infra-tools-v2") == [Match("a@example.com", "fuzzy: infra"),
                                                        Match("b@example.com", "fuzzy: tools")]


def test_recipient_named_by_several_keys_is_notified_once_by_the_first_rule(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"grouptwogame": ["Lead@Example.com", "a@example.com"],
                                                 "client": ["lead@example.com", "b@example.com"]}))
    assert match(owners, "grouptwogame/client") == [Match("Lead@Example.com", "exact: grouptwogame"),
                                                    Match("a@example.com", "exact: grouptwogame"),
                                                    Match("b@example.com", "exact: client")]


def test_open_id_values_are_used_as_written(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"client": ["ou_7d8a6e6df7621556ce0d21922b676706",
                                                            "dev@example.com"]}))
    assert [m.recipient for m in match(owners, "g/client")] == ["ou_7d8a6e6df7621556ce0d21922b676706",
                                                                 "dev@example.com"]


def _names_something(key: str) -> bool:
    return bool(unicodedata.normalize("NFKC", key).casefold().strip().strip("/"))


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=12).filter(_names_something), min_size=1, max_size=5,
                     unique=True),
       path=st.text(max_size=30), name=st.text(max_size=20))
def test_any_project_gets_each_recipient_at_most_once(tmp_path_factory, keys, path, name):
    file = write_owners(tmp_path_factory.mktemp("o"), {k: ["a@example.com", "A@example.com"] for k in keys})
    found = match(load_owners(file), path, name)
    assert len(found) <= 1 and all(m.rule.split(": ", 1)[1] in keys for m in found)


def test_project_nobody_owns_matches_nobody(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"grouptwogame": "lead@example.com"}))
    assert match(owners, "other/project", "别的项目") == []


def test_shipped_owners_file_loads_with_its_three_examples(tmp_path):
    owners = load_owners(shipped_file("config/owners.json", tmp_path))
    assert len(owners) == 3 and owners.warnings == ()
    assert [m.recipient for m in match(owners, "farm/grandma", "N_奶奶的小农院")] == [
        "lisi@example.com", "wangwu@example.com"]


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, words", [
    ('{\n  "测试项目": "test@example"\n}', 2, ['"测试项目"', "test@example", "not an email"]),
    ('{\n  "a": "x@y.zz",\n  "测试项目": "te st@example.com"\n}', 3, ['"测试项目"', "te st@example.com"]),
    ('{\n  "测试项目": "ou_abc-123"\n}', 2, ['"测试项目"', "ou_abc-123"]),
    ('{\n  "测试项目": "ｚｈａｎｇｓａｎ@example.com"\n}', 2, ["not an email", "full-width or invisible", "half-width"]),
    ('{\n  "测试项目": "zhang\u200bsan@example.com"\n}', 2, ["not an email", "full-width or invisible"]),
    ('{\n  "N_奶奶的小农院": []\n}', 2, ['"N_奶奶的小农院"', "empty"]),
    ('{\n  "测试项目": "a@example.com",\n  "测试项目": "b@example.com"\n}', 3,
     ['"测试项目"', "twice", "first on line 2"]),
    ('{\n  "a": "x@example.com",\n}', 2, ["not valid JSON", '"a": "x@example.com",', "comma after the last"]),
    ('{\n  "a": "x@example.com",\n\n  "b": ["y@example.com",]\n}', 4, ['"b": ["y@example.com",]', "remove it"]),
    ('{\n  "a": "x@example.com"\n  "测试项目": "y@example.com"\n}', 2, ['"a": "x@example.com")', "comma is missing"]),
    ('{\n  "a": "x@example.com" "b": "y@example.com"\n}', 2, ["column 24", "delimiter"]),
    ('{\n  "a": "x@example.com",\n  "b": "y@example.com"\n', 4, ["ends too soon"]),       # saved halfway
    ('{\n  "a": "x@example.com",\n  "b": "y@example.com\n}\n', 3, ["column 22", "closing double quote"]),
    ('{\n  "a": "x@example.com",\n  "b": "y@exa', 3, ["column 8", "never ends"]),         # saved mid-string
    ('{\n  "a": "x@example.com",\n  "b": "y@exa\n  ', 3, ["ends too soon", "closing double quote"]),
    ('{\n  “测试项目”: "a@example.com"\n}', 2, ["not valid JSON", "ASCII quotes"]),
    ('{\n  // 游戏二组的项目\n  "测试项目": "a@example.com"\n}', 2, ["not valid JSON", "JSON has no comments"]),
    ('{\n  "a": "x@example.com",\n  # 注释\n  "测试项目": "a@example.com"\n}', 3, ["JSON has no comments"]),
    ('["a@example.com"]', 1, ["top level must be a JSON object", "not a list"]),
    ('{\n  "client": 5\n}', 2, ['"client"', "the number 5"]),
    ('{\n  "client": ["a@example.com", null]\n}', 2, ['"client"', "null"]),
    ('{\n  "": "a@example.com"\n}', 2, ["key is empty"]),
    ('{\n  "／": "a@example.com"\n}', 2, ["key is empty"]),
    ('{\n  "x": "tools@example.com",\n  "tools": "nobody"\n}', 3, ['"tools"', "nobody"]),
])
def test_invalid_file_names_file_line_and_problem(tmp_path, text, line, words):
    path = write_owners(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    message = str(raised.value)
    assert str(path) in message and f"line {line}" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("text", [
    '{\n  "g/x": {"chats": [{\n    "url": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a-6978",\n'
    '    "secret": "qZ8xK2mN7pL4vB9w"\n    "x": 1\n  }]}\n}\n',
    '{\n  "g/x": {"chats": [{\n    "secret": "qZ8xK2mN7pL4vB9w",\n'
    '    "url": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a-6978"\n    "x": 1\n  }]}\n}\n',
    '{\n  "g/x": {"chats": [\n    "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a-6978"\n'
    '    "https://open.feishu.cn/open-apis/bot/v2/hook/9a8b7c6d-5e4f-4a3b"\n  ]}\n}\n',
    '{\n  "g/x": {"chats": [\n    {"url": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e", "secret": "qZ8xK2mN7pL4vB9w"}\n'
    '    "x"\n  ]}\n}\n',
    '{\n  "g/x": {"chats": [\n    {"url": "https:\\/\\/h.cn\\/hook\\/0f1e2d3c", "secret": "q\\"Z8xK2mN7pL4vB9w"}\n'
    '    "x"\n  ]}\n}\n',                                                 # "\/" and "\"" as JSON may write them
    '{\n  "g/x": {"chats": [{"url": "https://h.cn/open-apis/bot/v2/hook/0f1e2d3c", "secret":\n'
    '    "qZ8xK2mN7pL4vB9w"\n    "x": 1\n  }]}\n}\n',                        # the secret on a line of its own
    '{\n  "g/x": {"chats": [{"url": "https://h.cn/open-apis/bot/v2/hook/0f1e2d3c", "secret"\n'
    '    : "qZ8xK2mN7pL4vB9w"\n    "x": 1\n  }]}\n}\n',                      # its colon too
    '{\n  "g/x": {"chats": [\n    {"url": "https:\\u002f\\u002fh.cn\\u002Fhook\\u002f0f1e2d3c", '
    '"secr\\u0065t": "qZ8xK2mN7pL4vB9w"}\n    "x"\n  ]}\n}\n',                # any character written as \\uXXXX
])
def test_a_json_error_never_quotes_a_bots_token_or_secret(tmp_path, text):
    # The quoted line reaches the log and /healthz: a missing comma after a bot's URL or secret must not show it.
    path = write_owners(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    message = str(raised.value)
    assert "comma is missing" in message and "(" in message
    assert "Z8xK2" not in message and "0f1e2d" not in message and "9a8b7c" not in message


def test_empty_file_is_refused(tmp_path):
    path = write_owners(tmp_path, "  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_owners(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_owners(tmp_path / "owners.json")


def test_keys_may_share_owners(tmp_path):
    owners = load_owners(write_owners(tmp_path, {"a": "x@example.com", "b": ["x@example.com"]}))
    assert len(owners) == 2


# --- encodings --------------------------------------------------------------------------------

CHINESE = '{\n  "测试项目": "test@example.com"\n}'


def test_utf8_with_bom_is_normal(tmp_path, caplog):
    owners = load_owners(write_owners(tmp_path, CHINESE.encode("utf-8-sig")))
    assert owners.warnings == () and not caplog.records
    assert match(owners, "qa/test", "测试项目")[0].rule == "exact: 测试项目"


def test_utf16_with_bom_is_decoded_with_a_warning(tmp_path, caplog):
    path = write_owners(tmp_path, CHINESE.encode("utf-16"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        owners = load_owners(path)
    assert "UTF-16" in owners.warnings[0] and str(path) in owners.warnings[0]
    assert caplog.records[0].getMessage() == owners.warnings[0]
    assert match(owners, "qa/test", "测试项目")[0].recipient == "test@example.com"


def test_gbk_is_decoded_with_a_warning(tmp_path, caplog):
    path = write_owners(tmp_path, CHINESE.encode("gbk"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        owners = load_owners(path)
    assert "GBK" in owners.warnings[0] and "UTF-8" in owners.warnings[0]
    assert caplog.records[0].levelno == logging.WARNING
    assert match(owners, "qa/test", "测试项目")[0].rule == "exact: 测试项目"


def test_undecodable_file_is_refused_naming_the_encoding(tmp_path):
    path = write_owners(tmp_path, '{\n  "café": "a@example.com"\n}'.encode("cp1252"))
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    message = str(raised.value)
    assert str(path) in message and "not UTF-8" in message and "line 2" in message
    assert "Save As" in message


def test_gbk_bytes_that_do_not_parse_are_refused_not_guessed(tmp_path):
    path = write_owners(tmp_path, "测试项目 = test@example.com".encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_owners(path)


def test_a_big5_save_is_refused_not_read_as_garbled_gbk(tmp_path):
    path = write_owners(tmp_path, '{"野水發財（客戶端）": "a@example.com"}'.encode("big5"))
    with pytest.raises(ConfigError, match="nor GBK .*Big5 or another encoding.*Save As"):
        load_owners(path)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_named(tmp_path, encoding):
    path = write_owners(tmp_path, CHINESE.encode(encoding))
    with pytest.raises(ConfigError, match="UTF-16 without a byte-order mark.*Save As"):
        load_owners(path)


def test_gbk_save_with_a_typo_names_the_encoding_and_the_line(tmp_path):
    text = '{\r\n  "Y_野水发财": "zhangsan@example.com",\r\n  "测试项目"： "test@example.com"\r\n}\r\n'
    path = write_owners(tmp_path, text.encode("gbk"))
    with pytest.raises(ConfigError) as raised:
        load_owners(path)
    message = str(raised.value)
    assert str(path) in message and "read as GBK" in message and "line 3 column 9" in message
    assert "Chinese" in message and "nor readable as GBK" not in message


def test_deeply_nested_non_utf8_file_is_refused_not_a_traceback(tmp_path):
    path = write_owners(tmp_path, '{"测试": '.encode("gbk") + b"[" * 100_000)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_owners(path)


# --- hot reload -------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def save(path: Path, content: dict | str, mtime_s: int) -> None:
    """Write like an editor would, with a distinct mtime so the change is visible at any clock resolution."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "owners.json"
    save(path, {"client": "old@example.com"}, 1_700_000_000)
    clock = FakeClock()
    return path, clock, OwnersFile(path, clock=clock, check_interval=2.0)


def recipients(owners_file: OwnersFile) -> list[str]:
    return [m.recipient for m in owners_file.current().match(push("g/client"))]


def test_good_edit_applies_after_check_interval_not_before(watched):
    path, clock, owners_file = watched
    save(path, {"client": "new@example.com"}, 1_700_000_100)
    clock.now += 1.9
    assert recipients(owners_file) == ["old@example.com"]
    clock.now += 0.1
    assert recipients(owners_file) == ["new@example.com"]


def test_by_default_the_next_use_after_a_save_routes_by_it(tmp_path):
    path = tmp_path / "owners.json"
    save(path, {"client": "old@example.com"}, 1_700_000_000)
    owners_file = OwnersFile(path)
    save(path, {"client": "new@example.com"}, 1_700_000_001)
    assert recipients(owners_file) == ["new@example.com"]


def test_an_edit_of_the_same_size_that_keeps_the_old_mtime_applies(watched):
    """`cp -p`, `rsync -a` or a restored backup: other content, same size, the old modification time."""
    path, clock, owners_file = watched
    before = path.stat()
    path.write_text(json.dumps({"client": "new@example.com"}), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    clock.now += 2
    assert recipients(owners_file) == ["new@example.com"]


def test_an_edit_that_leaves_size_and_times_as_they_were_is_found_by_its_content(tmp_path, monkeypatch):
    """Windows keeps a file's size, times and identity through a restore over it with the old modification time:
    the background watcher reads the content too."""
    path = tmp_path / "owners.json"
    save(path, {"client": "old@example.com"}, 1_700_000_000)
    monkeypatch.setattr(OwnersFile, "_stat", lambda self: (1, 2, 3, 4))      # what Windows would show throughout
    owners_file = OwnersFile(path)
    path.write_text(json.dumps({"client": "new@example.com"}), encoding="utf-8")
    assert recipients(owners_file) == ["old@example.com"]                    # a webhook looks at the times only
    owners_file.look_inside()
    assert recipients(owners_file) == ["new@example.com"]


def test_unchanged_file_is_not_reloaded(watched):
    _, clock, owners_file = watched
    before = owners_file.current()
    clock.now += 10
    assert owners_file.current() is before


def test_broken_edit_keeps_last_good_routing_and_reports(watched, caplog):
    path, clock, owners_file = watched
    save(path, '{\n  "client": "new@example.com",\n', 1_700_000_100)
    clock.now += 2
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert recipients(owners_file) == ["old@example.com"]
    error = owners_file.state()["last_error"]
    assert str(path) in error and "line 3" in error
    assert caplog.records[-1].levelno == logging.ERROR and error in caplog.records[-1].getMessage()


def test_watcher_checks_the_files_without_anyone_asking():
    class Counting:
        def __init__(self):
            self.checked = threading.Event()

        def current(self):
            self.checked.set()

    files = [Counting(), Counting()]
    watcher = FileWatcher(files, interval=0.01)
    watcher.start()
    try:
        assert all(f.checked.wait(5) for f in files)
    finally:
        watcher.stop()


def test_a_save_that_cannot_be_read_yet_is_read_at_the_next_use(watched, monkeypatch, caplog):
    """An editor or a virus scanner may hold the file a moment after it was saved."""
    path, clock, owners_file = watched
    save(path, {"client": "new@example.com"}, 1_700_000_100)
    clock.now += 2
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "in use")))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert recipients(owners_file) == ["old@example.com"]
        clock.now += 2
        assert recipients(owners_file) == ["old@example.com"]
        monkeypatch.setattr(Path, "read_bytes", real_read)
        clock.now += 2
        assert recipients(owners_file) == ["new@example.com"]
    assert [r.getMessage().count("cannot be read") for r in caplog.records] == [1, 0]   # said once, then reloaded


def test_a_file_nested_too_deeply_is_refused_with_its_name(tmp_path):
    path = write_owners(tmp_path, ("[" * 100_000 + "]" * 100_000).encode())
    with pytest.raises(ConfigError, match="nested far too deeply"):
        load_owners(path)


def test_a_use_during_a_reload_waits_for_the_new_version(tmp_path):
    path = tmp_path / "slow.json"
    path.write_text("1", encoding="utf-8")
    loading, release = threading.Event(), threading.Event()

    def slow_load(p: Path) -> list[str]:
        text = p.read_text(encoding="utf-8")
        if text == "22":
            loading.set()
            release.wait(5)
        return [text]
    watched = WatchedFile(path, slow_load, log=logging.getLogger(LOGGER))
    path.write_text("22", encoding="utf-8")
    seen: list = []
    first = threading.Thread(target=lambda: seen.append(watched.current()))
    first.start()
    assert loading.wait(5)
    second = threading.Thread(target=lambda: seen.append(watched.current()))
    second.start()
    release.set()
    first.join(5), second.join(5)
    assert seen == [["22"], ["22"]]


def test_the_watcher_survives_a_check_that_fails():
    class FailingOnce:
        def __init__(self):
            self.calls, self.checked = 0, threading.Event()

        def current(self):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("surprise")
            self.checked.set()

    failing = FailingOnce()
    watcher = FileWatcher([failing], interval=0.01)
    watcher.start()
    try:
        assert failing.checked.wait(5)
    finally:
        watcher.stop()


def test_next_good_save_clears_the_error(watched, caplog):
    path, clock, owners_file = watched
    save(path, {"client": "bad email"}, 1_700_000_100)
    clock.now += 2
    owners_file.current()
    save(path, {"client": ["new@example.com", "ou_abc123"]}, 1_700_000_200)
    clock.now += 2
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert recipients(owners_file) == ["new@example.com", "ou_abc123"]
    assert owners_file.state()["last_error"] is None
    assert caplog.records[-1].levelno == logging.INFO and "reloaded" in caplog.records[-1].getMessage()


def test_deleted_file_keeps_last_good_routing_until_it_returns(watched):
    path, clock, owners_file = watched
    path.unlink()
    clock.now += 2
    assert recipients(owners_file) == ["old@example.com"]
    assert "not found" in owners_file.state()["last_error"]
    save(path, {"client": "back@example.com"}, 1_700_000_100)
    clock.now += 2
    assert recipients(owners_file) == ["back@example.com"]


def test_state_reports_path_entries_and_load_time(watched):
    path, _, owners_file = watched
    state = owners_file.state()
    assert state["path"] == str(path) and state["entries"] == 1 and state["last_error"] is None
    assert datetime.fromisoformat(state["loaded_at"]).tzinfo is not None


def test_invalid_file_at_start_raises(tmp_path):
    path = write_owners(tmp_path, '{"client": []}')
    with pytest.raises(ConfigError, match="empty"):
        OwnersFile(path, clock=FakeClock())


# A process the running service starts later (a gunicorn worker replacing a dead one, a reload) may find the
# file broken: it routes by the copy the last good load kept, as the running processes do.

def test_a_good_load_keeps_a_copy_for_later_processes(tmp_path):
    path = write_owners(tmp_path, {"client": "old@example.com"})
    OwnersFile(path, last_good=tmp_path / "data" / "last-good-owners.json")
    assert (tmp_path / "data" / "last-good-owners.json").read_bytes() == path.read_bytes()


def test_a_process_started_after_a_broken_save_routes_by_the_last_good_version(tmp_path, caplog):
    path, copy = write_owners(tmp_path, {"client": "old@example.com"}), tmp_path / "last-good-owners.json"
    OwnersFile(path, last_good=copy)
    save(path, '{"client": "new@example"}', 1_700_000_100)
    later = OwnersFile(path, last_good=copy)
    assert recipients(later) == ["old@example.com"]
    assert later.current().path == path and "is not an email" in later.state()["last_error"]
    assert "routing with the last good version (1 entries)" in caplog.text


def test_the_next_good_save_applies_and_becomes_the_copy(tmp_path):
    path, copy = write_owners(tmp_path, {"client": "old@example.com"}), tmp_path / "last-good-owners.json"
    watched = OwnersFile(path, last_good=copy)
    save(path, '{"client": ', 1_700_000_100)
    assert recipients(watched) == ["old@example.com"] and b"old@" in copy.read_bytes()   # a broken save is not kept
    save(path, {"client": "new@example.com"}, 1_700_000_200)
    assert recipients(watched) == ["new@example.com"] and copy.read_bytes() == path.read_bytes()


def test_a_process_started_while_the_file_cannot_be_read_reads_it_at_the_next_use(tmp_path, monkeypatch):
    """An editor or a virus scanner holding the file must not leave the new process on the copy for good."""
    path, copy = write_owners(tmp_path, {"client": "old@example.com"}), tmp_path / "last-good-owners.json"
    OwnersFile(path, last_good=copy)
    save(path, {"client": "new@example.com"}, 1_700_000_100)
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real_read(self) if self == copy else
                        (_ for _ in ()).throw(PermissionError(13, "in use")))
    later = OwnersFile(path, last_good=copy)
    assert recipients(later) == ["old@example.com"]
    monkeypatch.setattr(Path, "read_bytes", real_read)
    assert recipients(later) == ["new@example.com"] and later.state()["last_error"] is None


def test_the_copy_is_readable_by_the_service_user_only_and_shows_its_own_age(tmp_path):
    """owners.json may hold group bots' URLs and signing secrets; /healthz must not call an old copy new."""
    path, copy = write_owners(tmp_path, {"client": "old@example.com"}), tmp_path / "last-good-owners.json"
    OwnersFile(path, last_good=copy)
    assert copy.stat().st_mode & 0o777 == 0o600 and list(tmp_path.glob("*.tmp")) == []
    os.utime(copy, (1_700_000_000, 1_700_000_000))
    save(path, '{"client": ', 1_700_000_100)
    assert OwnersFile(path, last_good=copy).state()["loaded_at"] == "2023-11-14T22:13:20+00:00"


@pytest.mark.parametrize("copy", [None, "missing", "broken"])
def test_without_a_good_copy_a_broken_file_still_stops_the_start(tmp_path, copy):
    path = write_owners(tmp_path, '{"client": []}')
    kept = tmp_path / "last-good-owners.json"
    if copy == "broken":
        kept.write_text('{"client": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path.name}.*empty"):
        OwnersFile(path, last_good=None if copy is None else kept)


@pytest.mark.parametrize(("text", "named"), [
    ('{\n  "team": [\n    "a@example.com",\n    "d@example,com"\n  ]\n}\n', 'line 2: key "team": "d@example,com" (line 4)'),
    ('{\n  "team": {"owners": [\n    "a@example.com",\n    "d@example,com"]}\n}\n',
     'line 2: key "team", field "owners": "d@example,com" (line 4)'),
    ('{\n  "team": ["a@example.com", "d@example,com"]\n}\n', 'line 2: key "team": "d@example,com" is not'),
])
def test_a_bad_owner_in_a_list_over_several_lines_is_named_with_its_own_line(tmp_path, text, named):
    with pytest.raises(ConfigError) as raised:
        load_owners(write_owners(tmp_path, text))
    assert named in str(raised.value)


def test_the_lines_of_owners_are_looked_for_only_to_name_a_bad_one(tmp_path, monkeypatch):
    """Walking every list again at every reload made a large owners.json several times slower to read."""
    from gitlab_feishu import owners_format

    def walked(*_):
        raise AssertionError("element_lines called for a good list")
    monkeypatch.setattr(owners_format, "element_lines", walked)
    text = '{\n  "team": [\n    "a@example.com",\n    "b@example.com"\n  ],\n  "ops": {"owners": [\n    "c@example.com"]}\n}\n'
    assert len(load_owners(write_owners(tmp_path, text))) == 2
