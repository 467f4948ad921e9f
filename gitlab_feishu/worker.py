"""The retry worker: a thread in each service process that drains the outbox.

Rows are leased through the outbox, so any number of processes can run one;
whatever was queued before a crash or restart is picked up when it is due.
"""
from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import Callable

from .delivery import Deliverer
from .db import Complaint, is_file_trouble, is_locked, why_unwritable
from .outbox import Outbox

log = logging.getLogger(__name__)

BATCH_BUDGET = 20.0          # seconds one round of retries may take
LEASE_SECONDS = 60.0         # longer than a round, so a live worker never loses its rows
KEEP_EVENTS_SECONDS = 8 * 24 * 3600   # idempotency keys outlive Resend in a hook's Recent events (7 days)
KEEP_FAILED_SECONDS = 30 * 24 * 3600  # failed deliveries stay listed (--outbox) and resendable (--retry-failed)
KEEP_PIPELINES_SECONDS = 90 * 24 * 3600   # a ref's last pipeline: "fixed" after three quiet months is worth little
STATUS_LOG_INTERVAL = 300.0
PRUNE_INTERVAL = 3600.0
QUEUE_WATCH_INTERVAL = 30.0
LEASE_CHECK_INTERVAL = 1.0   # how often leases held by processes that are gone are freed


def process_owner() -> str:
    """A name for this process's leases, unique across hosts, processes and restarts."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_gone(owner: str) -> bool:
    """Whether `owner` (a process_owner) was a process on this host, in this PID namespace, that no
    longer runs.

    Its leases can then be taken at once rather than when they run out (a send cut short by SIGKILL
    would otherwise wait up to LEASE_SECONDS). Containers sharing a DATA_DIR and a hostname have
    their own PID namespaces, so a pid is only judged where it means the same process. Only POSIX
    can ask cheaply (on Windows, os.kill would end the process): elsewhere, False.
    """
    host, namespace, pid, *_ = owner.split(":") + ["", "", ""]
    if os.name != "posix" or not namespace or (host, namespace) != (socket.gethostname(), _pid_namespace()) \
            or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)         # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False                 # exists, owned by someone else
    return False


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")   # Linux
    except OSError:
        return ""


class RetryWorker:
    """Claims due deliveries and attempts them again, with backoff decided by the Deliverer."""

    def __init__(self, outbox: Outbox, deliverer: Deliverer, *, retry_base: float,
                 clock: Callable[[], float] = time.time, owner: str | None = None,
                 watch_queue: Callable[[int], None] | None = None):
        self.outbox = outbox
        self.deliverer = deliverer
        self.clock = clock
        self.owner = owner or process_owner()
        # Poll often enough to honour short backoffs (tests use RETRY_BASE_SECONDS well under a second).
        self.poll_interval = min(1.0, max(retry_base / 2, 0.05))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: dict[str, float] = {}   # housekeeping task -> when it is next due
        self.watch_queue = watch_queue      # told the queued count now and then (the backlog alert)
        self._storage_trouble = Complaint(log)

    def run_once(self) -> int:
        """Attempt every delivery that is due now; returns how many were attempted."""
        rows = self.outbox.claim_due(owner=self.owner, lease_seconds=LEASE_SECONDS)
        if rows:
            outcomes = self.deliverer.deliver(rows, deadline=self.clock() + BATCH_BUDGET, retry_inline=False)
            sent = sum(1 for outcome in outcomes.values() if outcome.status == "sent")
            log.info("retried %d queued deliveries: %d sent", len(rows), sent)
        return len(rows)

    def housekeeping(self) -> None:
        """Log what is waiting now and then, free rows of dead processes, forget old finished events."""
        now = self.clock()
        if self._due("status log", STATUS_LOG_INTERVAL, now):
            counts = self.outbox.counts()
            if counts["queued"] or counts["failed"]:
                log.warning("outbox: %d queued, %d failed (python webhook_server.py --outbox lists them)",
                            counts["queued"], counts["failed"])
        if self._due("lease check", LEASE_CHECK_INTERVAL, now):
            if self.outbox.undo_clock_step():
                log.warning("the clock was set back: queued deliveries due later by the step are due now")
            gone = [owner for owner in self.outbox.lease_owners() if is_gone(owner)]
            if self.outbox.release_leases(gone):
                log.warning("took over deliveries leased to stopped processes: %s", ", ".join(gone))
        if self._due("prune", PRUNE_INTERVAL, now):
            self.outbox.prune(keep_seconds=KEEP_EVENTS_SECONDS, keep_failed_seconds=KEEP_FAILED_SECONDS,
                              keep_pipeline_seconds=KEEP_PIPELINES_SECONDS)
        if self.watch_queue is not None and self._due("queue watch", QUEUE_WATCH_INTERVAL, now):
            self.watch_queue(self.outbox.counts()["queued"])

    def _due(self, task: str, interval: float, now: float) -> bool:
        """Whether `task` is due, booking its next turn if so. A turn further off than `interval` was booked
        before the clock was stepped back: it is due now, not an hour later."""
        if now < self._next.get(task, now) <= now + interval:
            return False
        self._next[task] = now + interval
        return True

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll (something is due)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retry-worker", daemon=True)
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """Stop after the round under way; `wait` for it (up to BATCH_BUDGET and a margin)."""
        self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=BATCH_BUDGET + 5)

    def _report(self, exc: Exception, what: str) -> None:
        if self._stop.is_set() and isinstance(exc, RuntimeError) and "shutdown" in str(exc):   # Python's, at exit
            log.info("retry worker %s cut short by the stop (%s); its cards are tried again after the next start",
                     what, exc)
        elif isinstance(exc, sqlite3.Error) and is_file_trouble(exc):
            # One line until the trouble changes, not a traceback from every round of every worker.
            why = "is locked by another program" if is_locked(exc) else f"cannot be used ({exc}: {why_unwritable(exc)})"
            self._storage_trouble(f"retry worker: {self.outbox.path} {why}; trying again")
        else:
            log.exception("retry worker %s failed", what)

    def _run(self) -> None:
        while not self._stop.is_set():
            worked = True
            try:
                self.housekeeping()
            except Exception as exc:   # a housekeeping failure must not hold up the retries
                worked = False
                self._report(exc, "housekeeping")
            try:
                while self.run_once() and not self._stop.is_set():
                    pass
            except Exception as exc:   # keep retrying; a bad round must not end the thread
                worked = False
                self._report(exc, "round")
            if worked:                 # said again if it comes back
                self._storage_trouble.resolved()
            self._wake.wait(self.poll_interval)
            self._wake.clear()
