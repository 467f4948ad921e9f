"""Pacing: sends stay inside Feishu's quotas across processes, without waiting longer than needed."""
from __future__ import annotations

from collections import defaultdict

import pytest

from gitlab_feishu.pacing import Pacer, Quota, bot_quotas, dm_quotas

FEISHU_LIMITS = {"app": [(50, 1.0), (1000, 60.0)], "user": [(5, 1.0)], "bot": [(5, 1.0), (100, 60.0)]}


@pytest.fixture
def pacer(tmp_path, clock):
    return Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)


def most_in_any_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_first_send_goes_at_once(pacer, clock):
    start = clock()
    assert pacer.wait_turn(dm_quotas("ou_a"), deadline=start + 5) == 0
    assert clock() == start


def test_sixth_send_to_one_user_waits_for_the_window(pacer, clock):
    start = clock()
    for _ in range(6):
        assert pacer.wait_turn(dm_quotas("ou_a"), deadline=start + 5) == 0
    assert 1.0 < clock() - start < 1.3


def test_other_users_are_not_held_up_by_a_busy_one(pacer, clock):
    start = clock()
    for _ in range(5):
        pacer.wait_turn(dm_quotas("ou_a"), deadline=start + 5)
    assert pacer.wait_turn(dm_quotas("ou_b"), deadline=start + 5) == 0
    assert clock() == start


def test_no_turn_before_the_deadline_returns_false_without_taking_one(pacer, clock):
    for _ in range(5):
        pacer.wait_turn(dm_quotas("ou_a"), deadline=clock() + 5)
    assert pacer.wait_turn(dm_quotas("ou_a"), deadline=clock() + 0.5) > 0
    assert pacer.try_turn(dm_quotas("ou_a")) > 0


def test_processes_share_one_log(tmp_path, clock):
    first = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    second = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    for pacer in (first, second, first, second, first):
        assert pacer.try_turn(dm_quotas("ou_a")) == 0
    assert second.try_turn(dm_quotas("ou_a")) > 0


@pytest.mark.parametrize(("quotas", "kind"), [(dm_quotas, "user"), (bot_quotas, "bot")])
def test_a_burst_stays_inside_feishu_limits_and_drains_near_the_minimum(pacer, clock, quotas, kind):
    """300 sends to 10 recipients, as a burst would make them: every real window holds, and it is fast."""
    sent: dict[str, list[float]] = defaultdict(list)
    start = clock()
    pending = [f"recipient-{i % 10}" for i in range(300)]
    while pending:                                  # one send at a time, each taking the earliest turn
        recipient = pending.pop(0)
        assert pacer.wait_turn(quotas(recipient), deadline=clock() + 120) == 0
        sent[recipient].append(clock())
    everything = [at for times in sent.values() for at in times]
    for times in sent.values():
        for count, seconds in FEISHU_LIMITS[kind]:
            assert most_in_any_window(times, seconds) <= count
    if kind == "user":
        for count, seconds in FEISHU_LIMITS["app"]:
            assert most_in_any_window(everything, seconds) <= count
    quota_bound = 300 / 50 if kind == "user" else 30 / 100 * 60   # app 50/s; a bot 100/min
    assert clock() - start <= 1.5 * quota_bound


def test_bot_quota_never_records_the_webhook_url(pacer):
    url = "https://open.feishu.cn/open-apis/bot/v2/hook/secret-token"
    [quota] = bot_quotas(url)
    assert "secret-token" not in quota.key
    assert quota == Quota(quota.key, quota.windows)


def test_a_clock_stepped_back_does_not_hold_sends_back_for_the_size_of_the_step(pacer, clock):
    start = clock()
    for _ in range(5):
        assert pacer.try_turn(dm_quotas("ou_a")) == 0
    clock.now = start - 3600                      # NTP steps the clock back an hour
    assert pacer.wait_turn(dm_quotas("ou_a"), deadline=clock() + 5) == 0
    assert clock() - (start - 3600) <= 1.5       # a window's wait at most, not the hour


def test_sends_made_before_the_clock_was_stepped_back_still_count_toward_feishus_quota(pacer, clock):
    """Ignored, a sixth card to one person within the second went out, and Feishu refused it (230020)."""
    start = clock()
    for _ in range(5):
        assert pacer.try_turn(dm_quotas("ou_a")) == 0
    clock.now = start - 3600
    assert pacer.try_turn(dm_quotas("ou_a")) > 0


# --- holds: Feishu refused a send for a quota all the same --------------------------------------

def test_a_hold_keeps_every_send_under_that_quota_waiting_for_the_reset(pacer, clock):
    [app, _] = dm_quotas("ou_a")
    pacer.hold(app, 3)
    assert pacer.try_turn(dm_quotas("ou_b")) == pytest.approx(3)
    start = clock()
    assert pacer.wait_turn(dm_quotas("ou_b"), deadline=start + 5) == 0
    assert clock() - start >= 3


def test_a_hold_leaves_other_quotas_alone(pacer):
    [_, user] = dm_quotas("ou_a")
    pacer.hold(user, 3)
    assert pacer.try_turn(dm_quotas("ou_b")) == 0
    assert pacer.try_turn(bot_quotas("https://open.feishu.cn/open-apis/bot/v2/hook/x")) == 0
    assert pacer.try_turn(dm_quotas("ou_a")) > 0


@pytest.mark.parametrize(("reset", "held"), [(None, 1.0), (0, 1.0), (2, 2.0), (3600, 62.0)])
def test_a_hold_lasts_the_reset_but_at_least_a_second_and_at_most_the_longest_window(pacer, reset, held):
    [app, _] = dm_quotas("ou_a")
    pacer.hold(app, reset)
    assert pacer.try_turn([app]) == pytest.approx(held)


def test_a_hold_is_shared_by_every_process(tmp_path, clock):
    first = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    second = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    first.hold(dm_quotas("ou_a")[0], 2)
    assert second.try_turn(dm_quotas("ou_b")) == pytest.approx(2)


def test_a_shorter_hold_does_not_cut_a_longer_one(pacer):
    [app, _] = dm_quotas("ou_a")
    pacer.hold(app, 30)
    pacer.hold(app, 2)
    assert pacer.try_turn([app]) == pytest.approx(30)


def test_a_hold_from_before_the_clock_was_stepped_back_is_not_kept(pacer, clock):
    [app, _] = dm_quotas("ou_a")
    start = clock()
    pacer.hold(app, 30)
    clock.now = start - 3600
    assert pacer.try_turn([app]) == 0
    pacer.hold(app, 2)
    clock.advance(0.5)
    assert pacer.try_turn([app]) == pytest.approx(1.5)
