"""Delivering recorded cards: inline retries within the deadline, queueing, permanent failures, the worker."""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gitlab_feishu.delivery import Deliverer, backoff
from gitlab_feishu.feishu import UNKNOWN_EMAIL, FeishuError

from gitlab_feishu.outbox import Outbox
from gitlab_feishu.rows import NewDelivery, feishu_uuid
from gitlab_feishu.pacing import Pacer, dm_quotas, lookup_quotas
from gitlab_feishu.worker import RetryWorker, is_gone, process_owner

DAY = 24 * 3600.0
OPEN_IDS = {"a@example.com": "ou_a", "b@example.com": "ou_b", "c@example.com": "ou_c"}


class StubFeishu:
    """Feishu as the Deliverer sees it: scripted answers per open_id, every call recorded."""

    def __init__(self, clock):
        self.clock = clock
        self.directory = dict(OPEN_IDS)
        self.answers: dict[str, list] = {}
        self.lookup_errors: list[FeishuError] = []     # raised one per lookup call, in order
        self.forgotten: list[str] = []
        self.lookups: list[list[str]] = []
        self.sends: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve_open_ids(self, emails, budget=None, *, recheck_unknown=False, before_lookup=None):
        if before_lookup is not None:                  # caches nothing: every email is looked up
            before_lookup()
        self.lookups.append(list(emails))
        if self.lookup_errors:
            raise self.lookup_errors.pop(0)
        return {email: self.directory.get(email) for email in emails}

    def forget_open_id(self, email):
        self.forgotten.append(email)

    def send_card(self, open_id, content, uuid, budget=None):
        with self.lock:
            self.sends.append((open_id, uuid))
            answer = self.answers.get(open_id, []).pop(0) if self.answers.get(open_id) else "om_ok"
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(budget)
        return answer


def transient(message="HTTP 503", retry_after=None):
    return FeishuError(message, http_status=503, retryable=True, retry_after=retry_after)


def permanent(code=230013):
    return FeishuError("Bot has NO availability to this user", code=code, http_status=400,
                       hint="add the user to the app's availability range")


@pytest.fixture
def outbox(tmp_path, clock):
    return Outbox(tmp_path / "outbox.sqlite3", clock=clock)


@pytest.fixture
def feishu(clock):
    return StubFeishu(clock)


@pytest.fixture
def deliverer(outbox, feishu, clock):
    pool = ThreadPoolExecutor(max_workers=8)
    yield Deliverer(outbox, feishu, pool=pool, retry_base=5.0, clock=clock, sleep=clock.sleep)
    pool.shutdown()


def record(outbox, *recipients, key="idem:1"):
    planned = [NewDelivery("dm", r, "exact: demo", '{"schema":"2.0"}', f"uuid-{key}-{r}") for r in recipients]
    return outbox.begin_event(key, "push", "group/project", planned, lease_owner="me", lease_seconds=15,
                              retry_window=DAY)[0]


def status(outbox, key="idem:1"):
    return [(row.recipient, row.status) for row in outbox.event_rows(key)]


def test_card_is_sent_and_recorded(outbox, deliverer, feishu, clock):
    rows = record(outbox, "a@example.com")
    outcomes = deliverer.deliver(rows, deadline=clock() + 5)
    assert [o.status for o in outcomes.values()] == ["sent"]
    assert feishu.sends == [("ou_a", feishu_uuid("idem:1", "dm", "ou_a"))]   # the person's uuid, not the email's
    assert status(outbox) == [("a@example.com", "sent")]


def test_open_id_recipients_need_no_lookup(outbox, deliverer, feishu, clock):
    deliverer.deliver(record(outbox, "ou_direct"), deadline=clock() + 5)
    assert feishu.lookups == [] and feishu.sends[0][0] == "ou_direct"


def test_all_emails_of_an_event_are_looked_up_in_one_call(outbox, deliverer, feishu, clock):
    deliverer.deliver(record(outbox, "a@example.com", "b@example.com", "c@example.com"), deadline=clock() + 5)
    assert feishu.lookups == [["a@example.com", "b@example.com", "c@example.com"]]
    assert sorted(open_id for open_id, _ in feishu.sends) == ["ou_a", "ou_b", "ou_c"]


@pytest.mark.parametrize("answers", [
    [transient()],
    [transient("HTTP 429", retry_after=1), transient("HTTP 429", retry_after=1)],
    [transient("read timeout")],
])
def test_transient_errors_are_retried_inline_with_the_same_uuid(outbox, deliverer, feishu, clock, answers):
    feishu.answers["ou_a"] = list(answers)
    outcomes = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5)
    assert [o.status for o in outcomes.values()] == ["sent"]
    assert len({uuid for _, uuid in feishu.sends}) == 1 and len(feishu.sends) == len(answers) + 1


def test_rate_limit_reset_beyond_the_deadline_queues_until_the_reset(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient("HTTP 429", retry_after=52)]
    start = clock()
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=start + 5).values()
    [row] = outbox.event_rows("idem:1")
    assert outcome.status == "queued" and "429" in outcome.error
    assert row.next_attempt_at == pytest.approx(start + 52)
    assert len(feishu.sends) == 1


def test_a_rate_limit_reset_of_zero_still_backs_off_inline(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient("HTTP 429", retry_after=0) for _ in range(1000)]
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "queued"
    assert len(feishu.sends) <= 6      # 0.2, 0.4, 0.8, 1.6 s apart, as without a reset


def test_permanent_error_fails_without_retry(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [permanent()]
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "failed" and "availability range" in outcome.error
    assert len(feishu.sends) == 1
    assert status(outbox) == [("a@example.com", "failed")]


def test_unknown_email_fails_and_sends_nothing(outbox, deliverer, feishu, clock):
    [outcome] = deliverer.deliver(record(outbox, "nobody@example.com"), deadline=clock() + 5).values()
    assert outcome == type(outcome)("failed", UNKNOWN_EMAIL)
    assert feishu.sends == []


def test_lookup_outage_queues_the_deliveries(outbox, deliverer, feishu, clock):
    feishu.lookup_errors = [transient("connection refused")] * 100
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "queued" and feishu.sends == []


@pytest.mark.parametrize("error", [transient("HTTP 500"), transient("99991400 rate limited", retry_after=1.0)])
def test_a_transient_lookup_error_is_retried_within_the_request(outbox, deliverer, feishu, clock, error):
    feishu.lookup_errors = [error]
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "sent" and len(feishu.lookups) == 2 and len(feishu.sends) == 1


def test_rows_that_need_no_lookup_do_not_wait_for_it(outbox, deliverer, feishu, clock):
    sent = threading.Event()
    feishu.answers["ou_direct"] = [lambda budget: (sent.set(), "om_x")[1]]

    def slow_lookup(emails, budget=None, *, recheck_unknown=False, before_lookup=None):
        assert sent.wait(5), "the open_id row waited for the email lookup"
        return {email: feishu.directory.get(email) for email in emails}
    feishu.resolve_open_ids = slow_lookup
    outcomes = deliverer.deliver(record(outbox, "ou_direct", "a@example.com"), deadline=clock() + 5)
    assert [outcome.status for outcome in outcomes.values()] == ["sent", "sent"]


def test_a_refused_cached_open_id_is_looked_up_again_once(outbox, deliverer, feishu, clock):
    """A cached open_id that Feishu no longer accepts is refused with 230001."""
    feishu.answers["ou_a"] = [permanent(230001)]

    def forget(email):                  # what a fresh lookup returns for this app
        feishu.forgotten.append(email)
        feishu.directory[email] = "ou_a2"
    feishu.forget_open_id = forget
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "sent" and feishu.forgotten == ["a@example.com"]
    assert [open_id for open_id, _ in feishu.sends] == ["ou_a", "ou_a2"]


def test_a_refused_open_id_that_stays_the_same_fails_for_good(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [permanent(230001), permanent(230001)]
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "failed" and len(feishu.sends) == 1


def test_a_sixth_card_to_one_person_within_a_second_still_goes_inline(tmp_path, outbox, feishu, clock):
    """Feishu allows one person 5 cards a second: the sixth waits for its turn inside the request."""
    pacer = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0, pacer=pacer, clock=clock,
                              sleep=clock.sleep)
        outcomes = [deliverer.deliver(record(outbox, "a@example.com", key=f"idem:{n}"), deadline=clock() + 5)
                    for n in range(7)]
    assert [outcome.status for result in outcomes for outcome in result.values()] == ["sent"] * 7


def test_outage_longer_than_the_deadline_queues_with_backoff(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient()] * 100
    start = clock()
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=start + 5).values()
    [row] = outbox.event_rows("idem:1")
    assert outcome.status == "queued"
    assert clock() <= start + 5
    assert row.attempts == len(feishu.sends) and row.next_attempt_at > clock()


def test_a_send_ending_past_the_deadline_on_the_requests_own_thread_is_not_logged_as_late(outbox, deliverer, feishu,
                                                                                           clock, caplog):
    """GitLab is told "sent": it was answered after the send, not before."""
    caplog.set_level(logging.INFO)
    feishu.answers["ou_a"] = [lambda budget: (clock.advance(10), "om_late")[1]]
    [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "sent" and "after GitLab was answered" not in caplog.text


def test_several_owners_are_sent_concurrently(outbox, feishu, clock):
    """Three sends that each wait for the others can only finish if they run at the same time."""
    barrier = threading.Barrier(3, timeout=5)
    for open_id in ("ou_a", "ou_b", "ou_c"):
        feishu.answers[open_id] = [lambda budget: (barrier.wait(), "om_x")[1]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0)   # real clock: the barrier waits for real
        outcomes = deliverer.deliver(record(outbox, "a@example.com", "b@example.com", "c@example.com"),
                                     deadline=clock.now + 10 ** 9)
    assert [o.status for o in outcomes.values()] == ["sent"] * 3


@pytest.mark.parametrize(("rounds", "seconds"), [(1, 5), (2, 10), (3, 20), (7, 320), (8, 600), (30, 600)])
def test_backoff_doubles_from_the_base_up_to_ten_minutes(rounds, seconds):
    assert backoff(rounds, 5.0) == seconds


def test_worker_retries_once_a_round_with_doubling_backoff(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient()] * 3     # the request's round takes two, the worker's first round one
    deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 0.5)
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w")
    assert worker.run_once() == 0                  # not due yet
    waits = []
    while outbox.counts()["queued"]:
        waits.append(outbox.next_due_at() - clock())
        clock.advance(waits[-1])
        assert worker.run_once() == 1
    assert waits == [pytest.approx(5), pytest.approx(10)]
    assert status(outbox) == [("a@example.com", "sent")]
    assert len(feishu.sends) == 4 and len({uuid for _, uuid in feishu.sends}) == 1


@pytest.mark.parametrize(("error", "logged"), [
    # At exit Python shuts the delivery threads down under a round still submitting: not a failure to report.
    ("cannot schedule new futures after interpreter shutdown", "cut short by the stop"),
    ("dictionary changed size during iteration", "retry worker round failed"),    # a bug: its traceback stays
])
def test_an_error_in_a_round_while_stopping_is_reported_as_what_it_is(outbox, clock, caplog, error, logged):
    class Stopping:
        def deliver(self, rows, deadline, retry_inline):
            worker.stop()
            raise RuntimeError(error)
    record(outbox, "a@example.com", "b@example.com")
    outbox.release_leases(["me"])
    worker = RetryWorker(outbox, Stopping(), retry_base=5.0, clock=clock, owner="w")
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        worker._run()
    assert logged in caplog.text
    assert ("Traceback" in caplog.text) is (logged == "retry worker round failed")


def test_a_damaged_outbox_is_one_line_not_a_traceback_every_round(outbox, clock, caplog):
    class Damaged:
        def claim_due(self, **kwargs):
            raise sqlite3.DatabaseError("file is not a database")
        path = outbox.path
    worker = RetryWorker(Damaged(), None, retry_base=5.0, clock=clock, owner="w")
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        for _ in range(3):
            try:
                worker.run_once()
            except sqlite3.DatabaseError as exc:
                worker._report(exc, "round")
    assert "Traceback" not in caplog.text
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot be used (file is not a database" in line


def test_a_statement_sqlite_refuses_is_a_bug_and_keeps_its_traceback(outbox, clock, caplog):
    worker = RetryWorker(outbox, None, retry_base=5.0, clock=clock, owner="w")
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        worker._report(sqlite3.OperationalError("no such column: nosuchcol"), "round")
    assert "Traceback" in caplog.text or caplog.records[0].exc_info


def test_each_delivery_the_worker_sends_is_logged_with_its_webhooks_key(outbox, deliverer, feishu, clock, caplog):
    """The webhook's own line said queued; grepping its key shows whether the card went out after all."""
    feishu.answers["ou_a"] = [transient()] * 2
    [row] = record(outbox, "a@example.com")
    deliverer.deliver([row], deadline=clock() + 0.5)
    clock.advance(outbox.next_due_at() - clock())
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        assert RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w").run_once() == 1
    assert f"delivery to a@example.com for {row.event_key} sent on retry" in caplog.text


def test_the_workers_housekeeping_runs_on_time_after_the_clock_is_stepped_back(outbox, deliverer, clock):
    watched = []
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w", watch_queue=watched.append)
    worker.housekeeping()
    clock.advance(-3600)
    worker.housekeeping()                          # not an hour later
    assert len(watched) == 2


def test_a_rate_limit_reset_further_off_than_the_longest_backoff_waits_only_that(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient("HTTP 429", retry_after=float("inf"))]
    [row] = record(outbox, "a@example.com")
    deliverer.deliver([row], deadline=clock() + 0.1, retry_inline=False)
    assert outbox.next_due_at() == clock() + 600


def test_a_clock_stepped_back_during_a_send_does_not_stretch_the_webhooks_deadline(outbox, deliverer, feishu,
                                                                                    clock):
    """An NTP correction mid-request: the retries stop when the time there was runs out, not an hour later."""
    budgets = []

    def failing(budget):
        budgets.append(budget)
        if len(budgets) == 1:
            clock.advance(-3600)                   # stepped back during the first send
        raise transient()

    feishu.answers["ou_a"] = [failing] * 50
    deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 4.7)
    assert len(budgets) > 1 and max(budgets) <= 4.7     # each try's time, and the pauses, within the 4.7 s there were


def test_a_clock_stepped_back_during_the_email_lookup_does_not_stretch_the_webhooks_deadline(outbox, deliverer,
                                                                                              feishu, clock):
    """The sends after the lookup used to take the wall deadline afresh: an hour's step gave them an hour."""
    lookup = feishu.resolve_open_ids

    def stepping(*args, **kwargs):
        clock.advance(-3600)
        return lookup(*args, **kwargs)
    feishu.resolve_open_ids = stepping
    budgets = []
    feishu.answers["ou_a"] = [lambda budget: (budgets.append(budget), "om_1")[1]]
    feishu.answers["ou_b"] = [lambda budget: (budgets.append(budget), "om_2")[1]]
    deliverer.deliver(record(outbox, "a@example.com", "b@example.com"), deadline=clock() + 4.7)
    assert len(budgets) == 2 and max(budgets) <= 4.7


def test_worker_picks_up_what_a_crashed_process_left(tmp_path, outbox, feishu, clock):
    record(outbox, "a@example.com")            # recorded, leased, never attempted: the process died
    clock.advance(16)
    restarted = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(restarted, feishu, pool=pool, retry_base=5.0, clock=clock, sleep=clock.sleep)
        assert RetryWorker(restarted, deliverer, retry_base=5.0, clock=clock).run_once() == 1
    assert status(restarted) == [("a@example.com", "sent")]


def leased_to(outbox, owner: str) -> None:
    """One delivery recorded by the process `owner`, its lease running for another minute."""
    planned = [NewDelivery("dm", "a@example.com", "exact: demo", '{"schema":"2.0"}', "uuid-1")]
    outbox.begin_event("idem:1", "push", "group/project", planned, lease_owner=owner, lease_seconds=60,
                       retry_window=DAY)


def test_worker_takes_over_at_once_what_a_killed_process_had_leased(outbox, deliverer, feishu, clock):
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    leased_to(outbox, process_owner().replace(f":{os.getpid()}:", f":{dead_pid}:"))
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock)
    worker.housekeeping()                      # the clock stands still: the lease has not run out
    assert worker.run_once() == 1 and status(outbox) == [("a@example.com", "sent")]


def test_worker_leaves_the_leases_of_live_processes_alone(outbox, deliverer, clock):
    leased_to(outbox, process_owner())
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock)
    worker.housekeeping()
    assert worker.run_once() == 0


@pytest.mark.parametrize("owner", [
    "other-host:{ns}:{pid}:x",          # another machine
    "{host}:4026531999:{pid}:x",        # another container with the same hostname
    "{host}:{pid}:x",                   # a lease from before namespaces were recorded
])
def test_a_pid_is_only_judged_where_it_means_the_same_process(owner):
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    mine = process_owner().split(":")
    assert is_gone(process_owner().replace(f":{os.getpid()}:", f":{dead_pid}:"))
    assert not is_gone(owner.format(host=mine[0], ns=mine[1], pid=dead_pid))


def test_worker_gives_up_after_the_retry_window(outbox, deliverer, feishu, clock):
    feishu.answers["ou_a"] = [transient()] * 1000
    deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 1)
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w")
    while outbox.counts()["queued"]:
        clock.advance(max(outbox.next_due_at() - clock(), 0))
        worker.run_once()
    [row] = outbox.event_rows("idem:1")
    assert row.status == "failed" and "gave up" in row.last_error
    assert clock() - row.created_at >= DAY


def test_a_card_overdue_after_a_resume_gets_another_try_before_it_is_given_up(outbox, deliverer, feishu, clock):
    """A VM resumed a day later: its first try may meet a network not up yet; the retry window passed asleep."""
    feishu.answers["ou_a"] = [transient()] * 1000
    deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 1)
    worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w")
    clock.advance(DAY + 3600)
    worker.run_once()
    [row] = outbox.event_rows("idem:1")
    assert row.status == "queued" and row.give_up_at == pytest.approx(clock() + 600)    # the window reopened
    while outbox.counts()["queued"]:               # retried with its backoff until the reopened window closes
        clock.advance(max(outbox.next_due_at() - clock(), 0))
        worker.run_once()
    [row] = outbox.event_rows("idem:1")
    assert row.status == "failed" and row.attempts > 3 and clock() == pytest.approx(row.give_up_at)


def test_a_card_in_its_window_after_a_restart_keeps_its_backoff(outbox, deliverer, feishu, clock):
    """A stop of half an hour is no reason to wait ten minutes for the next try."""
    feishu.answers["ou_a"] = [transient()] * 1000
    deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 1)
    clock.advance(1800)
    RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w").run_once()
    [row] = outbox.event_rows("idem:1")
    assert row.next_attempt_at - clock() <= backoff(row.rounds, 5.0) and row.give_up_at == row.created_at + DAY


def test_a_card_waiting_for_a_full_minute_window_is_not_claimed_again_and_again(tmp_path, outbox, feishu, clock):
    """The app's 1,000 a minute used up: the card comes back when a turn may be free, not in a tight loop
    of the retry worker claiming it and putting it back (each time a write to the outbox and a log line)."""
    pacer = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    for n in range(1000):                                   # 50 a second for 20 seconds
        assert pacer.wait_turn(dm_quotas(f"ou_{n}"), deadline=clock() + 5) == 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0, pacer=pacer, clock=clock,
                              sleep=clock.sleep)
        [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
        assert outcome.status == "queued" and feishu.sends == []
        assert outbox.next_due_at() - clock() > 30          # the window frees a minute after it filled
        worker = RetryWorker(outbox, deliverer, retry_base=5.0, clock=clock, owner="w")
        assert worker.run_once() == 0                       # not claimed again meanwhile
        clock.advance(outbox.next_due_at() - clock())
        assert worker.run_once() == 1
    assert outbox.counts()["queued"] == 0 and len(feishu.sends) == 1


def test_email_lookups_take_turns_under_their_own_quota(tmp_path, outbox, feishu, clock):
    """A burst to many owners nobody has looked up yet: the 51st lookup within the window waits its turn
    (and is queued for then) instead of meeting Feishu's 429."""
    pacer = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    for _ in range(50):
        assert pacer.wait_turn(lookup_quotas(), deadline=clock() + 5) == 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0, pacer=pacer, clock=clock,
                              sleep=clock.sleep)
        started = clock()
        [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "sent" and len(feishu.lookups) == 1
    assert clock() - started >= 1.0                     # it waited for the window to move on


def test_a_card_waiting_for_a_lookup_turn_is_not_counted_as_a_failed_round(tmp_path, outbox, feishu, clock):
    """Like a card waiting for a send turn (attempts 0): nothing reached Feishu, so no round and no backoff;
    it comes back when the lookup quota has room."""
    pacer = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    for _ in range(1000):                              # the minute's lookups are used up
        assert pacer.try_turn(lookup_quotas()) == 0
        clock.advance(0.03)
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0, pacer=pacer, clock=clock,
                              sleep=clock.sleep)
        [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    assert outcome.status == "queued" and not feishu.lookups and not feishu.sends
    [row] = outbox.event_rows("idem:1")
    assert (row.attempts, row.rounds) == (0, 0)


def test_a_lookup_feishu_refused_then_left_waiting_for_a_turn_shows_feishus_error(tmp_path, outbox, feishu, clock):
    """Turn, a 500 from the lookup, then no second turn in time: the row shows the 500 and counts the round."""
    pacer = Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep)
    for _ in range(999):                                   # the minute's lookups all but used up
        assert pacer.try_turn(lookup_quotas()) == 0
        clock.advance(0.03)
    feishu.lookup_errors = [FeishuError("looking up open_ids by email: HTTP 500", retryable=True, http_status=500)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        deliverer = Deliverer(outbox, feishu, pool=pool, retry_base=5.0, pacer=pacer, clock=clock, sleep=clock.sleep)
        [outcome] = deliverer.deliver(record(outbox, "a@example.com"), deadline=clock() + 5).values()
    [row] = outbox.event_rows("idem:1")
    assert outcome.status == "queued" and "HTTP 500" in row.last_error
    assert (row.attempts, row.rounds) == (1, 1) and len(feishu.lookups) == 1
    assert row.next_attempt_at - clock() > 20                # when the minute's window frees, not at once


# --- Feishu refused for a quota all the same: every send under it waits out the reset -------------

def rate_limited(code=99991400, retry_after=1.0):
    return FeishuError(f"sending a card: Feishu {code}", code=code, http_status=429 if code == 99991400 else 400,
                       retryable=True, retry_after=retry_after, rate_limited=True)


@pytest.fixture
def paced(tmp_path, outbox, feishu, clock):
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield Deliverer(outbox, feishu, pool=pool, retry_base=5.0, clock=clock, sleep=clock.sleep,
                        pacer=Pacer(tmp_path / "pacing.sqlite3", clock=clock, sleep=clock.sleep))


def test_an_app_rate_limit_holds_the_next_card_to_anyone_until_the_reset(paced, outbox, feishu, clock):
    feishu.answers["ou_a"] = [rate_limited(retry_after=1)]
    start = clock()
    [first] = paced.deliver(record(outbox, "a@example.com"), deadline=start + 0.5).values()
    [second] = paced.deliver(record(outbox, "b@example.com", key="idem:2"), deadline=clock() + 5).values()
    assert (first.status, second.status) == ("queued", "sent")
    assert feishu.sends[-1][0] == "ou_b" and clock() - start >= 1


def test_a_reset_longer_than_a_webhook_waits_queues_the_next_card_without_sending_it(paced, outbox, feishu, clock):
    feishu.answers["ou_a"] = [rate_limited(retry_after=30)]
    start = clock()
    paced.deliver(record(outbox, "a@example.com"), deadline=start + 5)
    [second] = paced.deliver(record(outbox, "b@example.com", key="idem:2"), deadline=clock() + 5).values()
    assert second.status == "queued" and [open_id for open_id, _ in feishu.sends] == ["ou_a"]
    [row] = outbox.event_rows("idem:2")
    assert row.next_attempt_at == pytest.approx(start + 30, abs=0.1)


def test_one_users_rate_limit_holds_only_their_cards(paced, outbox, feishu, clock):
    feishu.answers["ou_a"] = [rate_limited(230020, retry_after=30)]
    start = clock()
    paced.deliver(record(outbox, "a@example.com"), deadline=start + 5)
    [other] = paced.deliver(record(outbox, "b@example.com", key="idem:2"), deadline=start + 5).values()
    [same] = paced.deliver(record(outbox, "a@example.com", key="idem:3"), deadline=start + 5).values()
    assert (other.status, same.status) == ("sent", "queued") and clock() - start < 2


def test_a_rate_limited_lookup_holds_the_next_lookup(paced, outbox, feishu, clock):
    feishu.lookup_errors = [rate_limited(retry_after=30)]
    paced.deliver(record(outbox, "a@example.com"), deadline=clock() + 5)
    [second] = paced.deliver(record(outbox, "b@example.com", key="idem:2"), deadline=clock() + 5).values()
    assert second.status == "queued" and len(feishu.lookups) == 1


def test_a_quota_refusal_with_an_hour_long_reset_waits_no_longer_than_the_pacers_hold(paced, outbox, feishu, clock):
    """A reset header of 3600 (a lie, or a proxy's): the app is held for a minute; the refused card with it."""
    feishu.answers["ou_a"] = [rate_limited(retry_after=3600)]
    start = clock()
    paced.deliver(record(outbox, "a@example.com"), deadline=start + 5)
    [second] = paced.deliver(record(outbox, "b@example.com", key="idem:2"), deadline=clock() + 5).values()
    [refused] = outbox.event_rows("idem:1")
    [held] = outbox.event_rows("idem:2")
    assert second.status == "queued"
    assert refused.next_attempt_at <= held.next_attempt_at + 1 and refused.next_attempt_at - start < 65
