"""The console reports: --outbox (what waits or failed, and why), --retry-failed, --match (who hears about
an event, and which entries and filters decided it)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from .events import Project
from .setting_values import os_text
from .settings import Settings


def show_outbox(settings: Settings) -> int:
    from .rows import shown

    outbox = _outbox(settings)
    rows = outbox.pending()
    counts = outbox.counts()
    now = outbox.clock()
    sending = sum(1 for row in rows if row.on_first_try(now))      # counts() leaves these out: say what they are
    print(f"{outbox.path}: {counts['queued']} queued, {counts['failed']} failed"
          + (f", {sending} on a first try (inside a webhook now, or left by a stopped process: the retry"
             " thread takes those over)" if sending else ""))
    for row in rows:
        status = "trying" if row.on_first_try(now) else row.status
        when = "" if row.status == "failed" else f", next try {_time(row.next_attempt_at)}"
        print(f"#{row.id} {status:<6} to {shown(row)} ({row.rule}) since {_time(row.created_at)},"
              f" {_count(row.attempts, 'attempt')}{when}")
        if row.last_error:
            print(f"    {row.last_error}")
    return 0


def retry_failed(settings: Settings) -> int:
    from .service import RETRY_WINDOW

    count = _outbox(settings).retry_failed(retry_window=RETRY_WINDOW)
    print(f"{_count(count, 'failed delivery', 'failed deliveries')} queued again; the running service sends "
          "them within seconds")
    return 0


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def show_match(settings: Settings, path: str, name: str | None, *, branch: str | None = None,
               event: str = "push", default_branch: str = "main", protected: bool | None = None) -> int:
    """Explain which owners.json entries and filters decide who hears about such an event."""
    from .owners import load_owners

    owners = load_owners(settings.owners_file)
    path = path.strip("/")
    project = Project(path=path, name=name or path.rsplit("/", 1)[-1], default_branch=default_branch)
    if event == "tag_push":
        branch = None                     # tags ignore branch filters
    elif branch:
        branch = branch.removeprefix("refs/heads/")   # as GitLab's ref, which the service routes without the prefix
    routing = owners.route(_Probe(event, project, branch, protected if event in ("push", "pipeline") else None))
    what = event.replace("_", " ") + (f" to {branch}" if branch else "")
    print(f"{project.path} ({project.name}), {what}, default branch {default_branch}:")
    for note in routing.notes:
        print(f"  {note}")
    if branch is None and event != "tag_push" and any("(branches: " in note for note in routing.notes):
        print("  branch filters were not checked: pass --branch to check them")
    if branch is not None and protected is None and event in ("push", "pipeline") \
            and any(":protected" in note for note in routing.notes):
        print(f"  :protected counted only the default branch ({default_branch}) as protected; for real pushes and "
              "pipelines GitLab says whether the branch is protected: pass --protected yes or no")
    if protected is not None and event not in ("push", "pipeline"):
        print(f"  --protected was not used: GitLab's {event.replace('_', ' ')} payloads do not say whether a branch "
              "is protected, so :protected counts only the default branch")
    if event not in settings.notify_events:
        print(f"nobody is notified: {event} events are turned off (NOTIFY_EVENTS)")
    elif routing.matches:
        print("notifies: " + ", ".join(match.shown for match in routing.matches))
    else:
        print(f"nobody is notified (see {os_text(str(settings.owners_file))})")
    return 0


@dataclass(frozen=True)
class _Probe:
    """An event as routing sees it, made up from the command line."""
    kind: str
    project: Project
    branch: str | None
    ref_protected: bool | None = None     # unknown: :protected counts the default branch only


def _outbox(settings: Settings):
    from .outbox import Outbox

    return Outbox(settings.data_dir / "outbox.sqlite3")


def _time(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
