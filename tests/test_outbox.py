"""The durable outbox: schema, idempotent events, leases across processes, operator commands."""
from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from gitlab_feishu.outbox import LEASE_FURTHEST, Outbox
from gitlab_feishu.schema import SCHEMA_VERSION
from gitlab_feishu.rows import NewDelivery
from gitlab_feishu.settings import ConfigError, Settings
from gitlab_feishu.watched import check_files
from tests.conftest import another_program_locks
from tests.servers import ROOT

DAY = 24 * 3600.0


def planned(*recipients: str) -> list[NewDelivery]:
    return [NewDelivery("dm", r, "exact: demo", '{"schema":"2.0"}', f"uuid-{r}") for r in recipients]


@pytest.fixture
def outbox(tmp_path, clock) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", clock=clock)


def begin(outbox: Outbox, key: str = "idem:1", *recipients: str, lease: float = 10.0):
    return outbox.begin_event(key, "push", "group/project", planned(*(recipients or ("a@example.com",))),
                              lease_owner="me", lease_seconds=lease, retry_window=DAY)


def test_new_database_has_current_schema_version(outbox):
    assert outbox.schema_version == SCHEMA_VERSION


def test_database_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}").connection.close()
    with pytest.raises(ConfigError, match="newer release"):
        Outbox(path)


def test_a_newer_releases_outbox_is_refused_before_any_worker_starts(tmp_path):
    """gunicorn's master checks the files once: each worker refusing at boot ended in gunicorn's tracebacks."""
    settings = Settings(data_dir=tmp_path, owners_file=ROOT / "config" / "owners.json")
    newer = sqlite3.connect(tmp_path / "outbox.sqlite3")
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(ConfigError, match="newer release .* once that release has sent what it queued"):
        check_files(settings)


def test_a_damaged_outbox_is_refused_naming_the_file_and_how_to_save_its_cards(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(ConfigError, match=r"outbox\.sqlite3 cannot be read \(file is not a database\).*\.recover"):
        Outbox(path)


def test_older_schema_is_upgraded_on_open(tmp_path, monkeypatch):
    """A database at version 1 gains a later migration when a newer release opens it."""
    from gitlab_feishu import schema as module

    path = tmp_path / "outbox.sqlite3"
    begin(Outbox(path), "idem:old")
    monkeypatch.setitem(module.MIGRATIONS, SCHEMA_VERSION + 1, ("ALTER TABLE deliveries ADD COLUMN note TEXT",))
    monkeypatch.setattr(module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = Outbox(path)
    assert upgraded.schema_version == SCHEMA_VERSION + 1
    assert [row.recipient for row in upgraded.event_rows("idem:old")] == ["a@example.com"]


def test_a_start_does_not_wait_for_another_programs_write_transaction(tmp_path, monkeypatch):
    """An sqlite3 shell left in a transaction held every worker's start for 30 s, then failed it."""
    path = tmp_path / "outbox.sqlite3"
    begin(Outbox(path), "idem:before")
    monkeypatch.setattr("gitlab_feishu.outbox.BUSY_TIMEOUT", 0.2)     # a start that waited would fail at once
    with another_program_locks(path):
        reopened = Outbox(path)
    assert [row.recipient for row in reopened.event_rows("idem:before")] == ["a@example.com"]


ROUNDS = 30                    # fresh files each process opens at the same moment as the others


def _open_and_begin_together(folder: str, index: int, barrier) -> None:
    for round_ in range(ROUNDS):
        barrier.wait(10)            # a process that failed breaks it for the others
        begin(Outbox(Path(folder) / f"outbox-{round_}.sqlite3"), f"idem:{index}")


def test_processes_starting_together_share_one_database(tmp_path):
    """Workers starting at the same moment neither trip over the creation nor lose a write."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(6)
    processes = [context.Process(target=_open_and_begin_together, args=(str(tmp_path), i, barrier))
                 for i in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * 6
    assert [len(Outbox(tmp_path / f"outbox-{round_}.sqlite3").pending()) for round_ in range(ROUNDS)] == [6] * ROUNDS


def test_event_is_recorded_once(outbox):
    rows, none_earlier = begin(outbox, "idem:1", "a@example.com", "b@example.com")
    none_new, same_rows = begin(outbox, "idem:1", "a@example.com", "b@example.com")
    assert len(rows) == 2 and none_earlier == [] and none_new == []
    assert [r.id for r in rows] == [r.id for r in same_rows]


def test_a_repeat_records_only_recipients_added_since(outbox):
    [first], _ = begin(outbox, "idem:1", "a@example.com")
    [added], [earlier] = begin(outbox, "idem:1", "a@example.com", "new@example.com")
    assert added.recipient == "new@example.com" and earlier.id == first.id


def test_inline_rows_are_leased_and_not_claimed_by_the_worker(outbox, clock):
    begin(outbox, "idem:1", lease=10)
    assert outbox.claim_due(owner="worker", lease_seconds=60) == []
    clock.advance(11)      # the inline process died: its lease ran out
    assert [r.recipient for r in outbox.claim_due(owner="worker", lease_seconds=60)] == ["a@example.com"]


def test_a_claimed_row_is_not_claimed_twice(outbox, tmp_path, clock):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="503", next_attempt_at=clock())
    other_process = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    first = outbox.claim_due(owner="one", lease_seconds=60)
    second = other_process.claim_due(owner="two", lease_seconds=60)
    assert len(first) == 1 and second == []


def test_queued_row_waits_for_its_next_attempt(outbox, clock):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="503", next_attempt_at=clock() + 30)
    assert outbox.claim_due(owner="w", lease_seconds=60) == []
    assert outbox.next_due_at() == clock() + 30
    clock.advance(30)
    assert len(outbox.claim_due(owner="w", lease_seconds=60)) == 1


def test_a_clock_stepped_back_does_not_hold_a_queued_row_back_by_the_step(outbox, clock):
    """An NTP correction or a wrong clock put right: the row's next try is then an hour away."""
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="503", next_attempt_at=clock() + 30)
    clock.advance(-3600)
    assert outbox.undo_clock_step() == 1 and len(outbox.claim_due(owner="w", lease_seconds=60)) == 1


def test_a_clock_stepped_back_does_not_stretch_a_lease_by_the_step(outbox, clock):
    """Cut to the longest lease there is, not cleared: its owner may still be sending (a group post)."""
    begin(outbox)                                  # leased to the inline process for 10 s
    clock.advance(-3600)
    assert outbox.undo_clock_step() == 1
    assert outbox.claim_due(owner="worker", lease_seconds=60) == []
    clock.advance(LEASE_FURTHEST)
    assert [r.recipient for r in outbox.claim_due(owner="worker", lease_seconds=60)] == ["a@example.com"]


def test_a_clock_stepped_back_minutes_does_not_hold_a_retry_for_them(outbox, clock):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="503", next_attempt_at=clock() + 5)
    clock.advance(-25 * 60)
    assert outbox.undo_clock_step() == 1 and len(outbox.claim_due(owner="w", lease_seconds=60)) == 1


def test_rows_waiting_their_turn_are_left_alone_when_the_clock_was_not_stepped(outbox, clock):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="503", next_attempt_at=clock() + 600)
    assert outbox.undo_clock_step() == 0 and outbox.claim_due(owner="w", lease_seconds=60) == []


def test_sent_row_never_changes_again(outbox):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "sent", attempts=1, message_id="om_1")
    outbox.finish(row.id, "queued", attempts=1, error="late timeout", next_attempt_at=0)
    [after] = outbox.event_rows("idem:1")
    assert (after.status, after.attempts, after.last_error) == ("sent", 1, None)


def test_counts_and_pending_list_queued_and_failed(outbox, clock):
    rows, _ = begin(outbox, "idem:1", "a@example.com", "b@example.com", "c@example.com")
    outbox.finish(rows[0].id, "sent", attempts=1, message_id="om_1")
    outbox.finish(rows[1].id, "failed", attempts=1, error="Feishu 230013: outside the availability range")
    outbox.finish(rows[2].id, "queued", attempts=1, error="HTTP 503", next_attempt_at=clock() + 5)
    assert outbox.counts() == {"queued": 1, "failed": 1}
    assert [(r.recipient, r.status) for r in outbox.pending()] == [("b@example.com", "failed"),
                                                                   ("c@example.com", "queued")]


def test_a_card_on_its_first_try_inside_a_webhook_is_not_counted_as_waiting(outbox, clock):
    [first], _ = begin(outbox, "idem:1", "a@example.com")        # leased to the webhook trying it now
    begin(outbox, "idem:2", "b@example.com")
    assert outbox.counts() == {"queued": 0, "failed": 0}
    outbox.finish(first.id, "queued", attempts=1, error="HTTP 503", next_attempt_at=clock() + 5)
    assert outbox.counts() == {"queued": 1, "failed": 0}
    clock.advance(11)                                              # the other's process died mid-try
    assert outbox.counts() == {"queued": 2, "failed": 0}


def test_a_card_left_to_the_retry_worker_stays_counted_while_it_works_on_it(outbox, clock):
    outbox.begin_event("idem:busy", "push", "group/project", planned("a@example.com"), lease_owner="me",
                       lease_seconds=0, retry_window=DAY, waiting="many webhooks in flight: left to the retry worker")
    assert outbox.counts()["queued"] == 1
    [claimed] = outbox.claim_due(owner="worker", lease_seconds=60)
    assert outbox.counts()["queued"] == 1 and claimed.last_error.startswith("many webhooks in flight")


def test_a_card_waiting_for_a_pacing_turn_is_counted_as_queued(outbox, clock):
    # The webhook's turn wait ran out: put back with attempts 0 (delivery.py), lease released.
    [row], _ = begin(outbox, "idem:1", "a@example.com")
    outbox.finish(row.id, "queued", attempts=0, error="waiting for a turn under Feishu's rate limits",
                  next_attempt_at=clock() + 30)
    assert outbox.counts() == {"queued": 1, "failed": 0}
    outbox.claim_due(owner="worker", lease_seconds=60)             # not due yet: nothing claimed
    clock.advance(31)
    [claimed] = outbox.claim_due(owner="worker", lease_seconds=60)  # the retry worker waits for a turn
    assert outbox.counts() == {"queued": 1, "failed": 0}


def test_retry_failed_requeues_with_a_fresh_window_and_backoff(outbox, clock):
    [row], _ = begin(outbox)
    outbox.finish(row.id, "queued", attempts=1, error="HTTP 503", next_attempt_at=clock())
    outbox.finish(row.id, "failed", attempts=3, error="Feishu 99991672: missing permission")
    clock.advance(2 * DAY)
    assert outbox.retry_failed(retry_window=DAY) == 1
    [claimed] = outbox.claim_due(owner="w", lease_seconds=60)
    assert claimed.give_up_at == clock() + DAY and claimed.rounds == 0


def prune(outbox, **retention) -> int:
    return outbox.prune(**{"keep_seconds": 8 * DAY, "keep_failed_seconds": 30 * DAY,
                           "keep_pipeline_seconds": 90 * DAY, **retention})


def test_prune_forgets_the_pipelines_of_refs_quiet_for_its_retention(outbox, clock):
    outbox.record_finished_pipeline("42", "refs/heads/gone", 1, "failed")
    clock.advance(50 * DAY)
    outbox.record_finished_pipeline("42", "refs/heads/main", 2, "failed")
    clock.advance(50 * DAY)
    prune(outbox)
    assert outbox.record_finished_pipeline("42", "refs/heads/gone", 3, "success") is None
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 4, "success") == (2, "failed")


def test_a_sent_card_keeps_no_content_and_a_waiting_one_keeps_it(outbox):
    [sent, waiting], _ = begin(outbox, "idem:1", "a@example.com", "b@example.com")
    outbox.finish(sent.id, "sent", attempts=1, message_id="om_1")
    outbox.finish(waiting.id, "queued", attempts=1, error="503", next_attempt_at=0)
    assert [row.content for row in outbox.event_rows("idem:1")] == ["", waiting.content]


def test_prune_forgets_old_finished_events_only(outbox, clock):
    [done], _ = begin(outbox, "idem:done")
    outbox.finish(done.id, "sent", attempts=1, message_id="om_1")
    [waiting], _ = begin(outbox, "idem:waiting")
    outbox.finish(waiting.id, "queued", attempts=1, error="503", next_attempt_at=clock() + 5)
    clock.advance(3 * DAY)
    assert prune(outbox, keep_seconds=2 * DAY) == 1
    assert outbox.event_summary("idem:done") is None
    assert outbox.event_summary("idem:waiting") == ("push", "group/project")


def test_prune_forgets_failed_deliveries_after_their_own_retention_with_their_event(outbox, clock, caplog):
    # A departed owner (230013) fails on every push: those events must not be kept, and pinned, for ever.
    [sent, failed], _ = begin(outbox, "idem:old", "a@example.com", "gone@example.com")
    outbox.finish(sent.id, "sent", attempts=1, message_id="om_1")
    outbox.finish(failed.id, "failed", attempts=1, error="Feishu 230013")
    clock.advance(9 * DAY)
    assert prune(outbox) == 0                                   # failed 9 days ago: still listed
    assert outbox.counts()["failed"] == 1
    clock.advance(22 * DAY)
    with caplog.at_level(logging.INFO, logger="gitlab_feishu"):
        assert prune(outbox) == 1
    assert outbox.event_summary("idem:old") is None and outbox.event_rows("idem:old") == []
    assert "forgot 1 failed deliveries that last failed over 30 days ago" in caplog.text
    assert outbox.counts()["failed"] == 0 and outbox.pending() == []


def test_prune_keeps_an_event_whose_failed_row_was_retried_recently(outbox, clock):
    [row], _ = begin(outbox, "idem:old", "gone@example.com")
    outbox.finish(row.id, "failed", attempts=1, error="Feishu 230013")
    clock.advance(40 * DAY)
    outbox.retry_failed(retry_window=DAY)                      # queued again: never forgotten while queued
    assert prune(outbox) == 0
    outbox.finish(row.id, "failed", attempts=1, error="Feishu 230013")   # failed again today: kept 30 more days
    assert prune(outbox) == 0


def test_prune_works_in_batches(outbox, clock):
    for n in range(7):
        [row], _ = begin(outbox, f"idem:{n}")
        outbox.finish(row.id, "sent", attempts=1, message_id=f"om_{n}")
    clock.advance(9 * DAY)
    assert prune(outbox, batch=3) == 7
    assert outbox.last_sent_at() is None


def test_prune_holds_the_write_lock_only_for_work_on_the_keys_of_its_batch(outbox, clock):
    """Every webhook of every process waits while a batch holds the lock: under it, prune neither searches the
    events (the kept ones would be read again by every batch) nor reads failed rows through the status index."""
    for n in range(4):
        [row], _ = begin(outbox, f"idem:{n}", "gone@example.com")
        outbox.finish(row.id, "failed", attempts=1, error="Feishu 230013")
    clock.advance(31 * DAY)
    conn = outbox._connect()
    statements = []
    conn.set_trace_callback(statements.append)
    try:
        assert prune(outbox, batch=2) == 4
    finally:
        conn.set_trace_callback(None)
    locked, inside = [], False
    for sql in statements:
        inside = sql == "BEGIN IMMEDIATE" or (inside and sql not in ("COMMIT", "ROLLBACK"))
        locked += [sql] if inside else []
    plans = [step[3] for sql in locked if sql.startswith(("SELECT", "DELETE")) and "pipeline_refs" not in sql
             for step in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert not [step for step in plans if "events_created" in step or "deliveries_status_updated" in step], plans


def test_the_last_delivery_time_is_read_from_an_index(outbox):
    plan = [row[3] for row in outbox._connect().execute(
        "EXPLAIN QUERY PLAN SELECT MAX(updated_at) FROM deliveries WHERE status = 'sent'")]
    assert any("COVERING INDEX deliveries_status_updated" in step for step in plan), plan


def test_a_version_1_database_gains_the_pipeline_history(tmp_path):
    from gitlab_feishu.schema import MIGRATIONS

    path = tmp_path / "outbox.sqlite3"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    upgraded = Outbox(path)
    assert upgraded.schema_version == SCHEMA_VERSION
    assert upgraded.record_finished_pipeline("42", "refs/heads/main", 1, "failed") is None


def test_finished_pipelines_are_remembered_per_project_and_ref(outbox):
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 5, "failed") is None
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 6, "success") == (5, "failed")
    assert outbox.record_finished_pipeline("42", "refs/heads/dev", 7, "success") is None
    assert outbox.record_finished_pipeline("43", "refs/heads/main", 8, "success") is None
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 9, "success") == (6, "success")


def test_an_older_pipeline_does_not_replace_a_newer_one(outbox):
    outbox.record_finished_pipeline("42", "refs/heads/main", 10, "failed")
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 9, "success") == (10, "failed")
    assert outbox.record_finished_pipeline("42", "refs/heads/main", 11, "success") == (10, "failed")


def test_recording_an_event_gives_up_after_its_timeout_when_another_program_holds_the_lock(outbox):
    with another_program_locks(outbox.path), pytest.raises(sqlite3.OperationalError, match="locked"):
        outbox.begin_event("idem:1", "push", "group/project", planned("a@example.com"), lease_owner="me",
                           lease_seconds=10, retry_window=DAY, timeout=0)


def test_an_outcome_a_lock_kept_out_is_written_before_the_next_claim_so_the_card_is_not_sent_again(
        outbox, monkeypatch, caplog, clock):
    [row], _ = begin(outbox)
    monkeypatch.setattr("gitlab_feishu.outbox.LOCK_WAIT", 0)
    with another_program_locks(outbox.path):
        outbox.finish(row.id, "sent", attempts=1, message_id="om_1")
    assert "it is locked by another program" in caplog.text
    clock.advance(60)                              # the inline attempt's lease has run out
    assert outbox.claim_due(owner="worker", lease_seconds=30) == []
    [sent] = outbox.event_rows("idem:1")
    assert sent.status == "sent"


def test_an_outcome_a_full_disk_kept_out_is_kept_too(outbox, monkeypatch, caplog, clock):
    [row], _ = begin(outbox)
    real_write = outbox._db.write

    def full_disk(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(outbox._db, "write", full_disk)
    outbox.finish(row.id, "sent", attempts=1, message_id="om_1")
    assert "database or disk is full" in caplog.text
    monkeypatch.setattr(outbox._db, "write", real_write)          # space freed
    clock.advance(60)
    assert outbox.claim_due(owner="worker", lease_seconds=30) == []
    assert [r.status for r in outbox.event_rows("idem:1")] == ["sent"]
