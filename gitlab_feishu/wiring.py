"""`python webhook_server.py --wire-hooks [--dry-run | --check]`: the GitLab webhook of every owned project.

Finds the projects owners.json names (the same matcher the service routes
with) through `gitlab_api`, reads their hooks, and hands everything to
`hookplan`, then creates or updates what the plan says and prints it as a table.
The API token and the secret token are never printed.
"""
from __future__ import annotations

import dataclasses
import sys
import unicodedata
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

from .gitlab_api import TOKEN_HELP, Found, GitLab, WiringError
from .hookplan import HookStatus, Step, check, desired_hook, plan
from .owners import Owners, load_owners
from .owners_format import too_short
from .settings import ConfigError, Settings

NEEDS = {
    "GITLAB_URL": "the address of your GitLab, e.g. https://gitlab.example.com",
    "GITLAB_API_TOKEN": "an access token with the `api` scope, of a Maintainer of the projects",
    "PUBLIC_URL": "the address GitLab reaches this service at, e.g. https://hooks.example.com",
    "GITLAB_WEBHOOK_SECRET": "the secret token every hook is given",
}
HIDDEN = ("GitLab answered 404: no such project, or a private one the token's user is not a member of; add the "
          "user as a Maintainer, or correct the key")


def wire_hooks(settings: Settings, *, dry_run: bool = False, check_only: bool = False,
               clock: Callable[[], datetime] | None = None) -> int:
    """Run `--wire-hooks`; 0 when every project is fine, 1 when one needs attention or the run stopped."""
    _require(settings)
    owners = load_owners(settings.owners_file)
    desired = desired_hook(settings.public_url, settings.notify_events, signed=bool(settings.gitlab_signing_token))
    now = (clock or (lambda: datetime.now(timezone.utc)))()
    client = GitLab(settings)
    try:
        found = client.owned_projects(owners)
        if not found.projects:
            _report_problems(owners, found)
            raise WiringError(_nothing_matched(found, owners))
        listings = [client.listing(project) for project in found.projects]
    except WiringError as exc:
        return _stopped(exc)
    except KeyboardInterrupt:
        return _stopped(WiringError("interrupted (Ctrl+C) while reading GitLab, before any change: nothing was "
                                    "changed"))
    error = None
    if check_only:
        lines, attention = check_report([check(listing, desired, now) for listing in listings])
    else:
        steps = [plan(listing, desired, now) for listing in listings]
        if not dry_run:
            steps, error = client.apply_all(steps, settings.gitlab_webhook_secret, settings.gitlab_signing_token)
        elif any(step.action in ("create", "update") for step in steps):
            error = _short_of_api_scope(client.token_scopes())
        lines, attention = steps_report(steps, dry_run)
    print("\n".join([f"Hook URL: {desired.url}", *lines]))
    status = int(attention)
    _report_problems(owners, found)
    _report_unused(owners, found)
    return _stopped(error) if error else max(status, 1 if found.problems else 0)


def _require(settings: Settings) -> None:
    values = {"GITLAB_URL": settings.gitlab_url, "GITLAB_API_TOKEN": settings.gitlab_api_token,
              "PUBLIC_URL": settings.public_url, "GITLAB_WEBHOOK_SECRET": settings.gitlab_webhook_secret}
    missing = [name for name, value in values.items() if not value]
    if missing:
        lines = "".join(f"\n  {name}: {NEEDS[name]}" for name in missing)
        raise ConfigError(f"--wire-hooks needs these settings in .env or the environment:{lines}")
    # A token is printable ASCII; anything else (pasted through an input method) cannot go into a header.
    if not all(" " < char < "\x7f" for char in settings.gitlab_api_token):
        raise ConfigError("GITLAB_API_TOKEN holds characters no GitLab token has (spaces or non-ASCII, e.g. "
                          "pasted through an input method): copy the token again")


def _short_of_api_scope(scopes: tuple[str, ...] | None) -> WiringError | None:
    # A dry run changes nothing, so only the token's own scopes tell whether the real run could.
    if scopes is None or "api" in scopes:
        return None
    return WiringError(f"GITLAB_API_TOKEN has the scopes {', '.join(scopes) or 'none'}, not `api`: the real run "
                       f"would stop at its first change; {TOKEN_HELP}")


def _stopped(exc: WiringError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _nothing_matched(found: Found, owners: Owners) -> str:
    if found.admin is None:
        return f"no key of {owners.path} is the path of a group or project the token's user can see"
    if not found.seen:
        return ("GitLab has no (unarchived) project" if found.admin else
                "the token's user is a member of no (unarchived) project; add it as a Maintainer of the "
                "projects, or use a group access token")
    where = "on GitLab" if found.admin else "the token's user is a member of"
    return (f"none of the {found.seen} projects {where} matches a key of {owners.path}; "
            "check the keys with --match GROUP/PROJECT")


def _report_problems(owners: Owners, found: Found) -> None:
    for key, why in found.problems:
        print(f"Key {key} of {owners.path}: {why}")


def _report_unused(owners: Owners, found: Found) -> None:
    refused = {key for key, _ in found.problems}
    # A key too short to match was named in a warning when the file was read.
    unused = [entry.key for entry in owners.entries if entry.key not in refused and not too_short(entry.key)
              and not any(dataclasses.replace(owners, entries=(entry,)).names(project) for project in found.projects)]
    hidden = [key for key in unused if key in found.hidden]
    if hidden:
        print(f"Keys of {owners.path} that name none of these projects: {', '.join(hidden)} ({HIDDEN})")
    if unused := [key for key in unused if key not in found.hidden]:
        unseen = {True: "the token's user is an admin, so every unarchived project was seen",
                  False: "projects the token's user is not a member of are not seen, unless a key is their "
                         "group's or their own path",
                  None: "no group or project the token's user can see has such a path"}[found.admin]
        print(f"Keys of {owners.path} that name none of these projects: {', '.join(unused)} ({unseen})")


# --- the tables --------------------------------------------------------------------------------

SECRET_NOTE = ("Secret token: sent with every hook created or updated. GitLab never shows it; before 19.0 it "
               "does not even say whether a hook has one (\"unknown\").")


def steps_report(steps: Sequence[Step], dry_run: bool) -> tuple[list[str], bool]:
    """The table of what was (or would be) done, and whether a project needs attention."""
    lines = _table(("project", "action", "details"), [(step.project.path, step.action, step.why) for step in steps])
    counts = Counter(step.action for step in steps)
    summary = ", ".join(f"{action} {count}" for action, count in counts.items())
    lines.append(f"{_projects(len(steps))}: {summary}." + (" Dry run: nothing was changed." if dry_run else ""))
    if counts.keys() & {"create", "update", "created", "updated"} or any(step.secret_unknown for step in steps):
        lines.append(SECRET_NOTE)
    return lines, bool(counts.keys() & {"skip", "skipped", "failed"})


def check_report(statuses: Sequence[HookStatus]) -> tuple[list[str], bool]:
    """The `--check` table, its hints and summary, and whether a project needs attention."""
    rows = [(s.project.path, s.hook, s.secret, s.triggers, s.state) for s in statuses]
    lines = _table(("project", "hook", "secret", "triggers", "state"), rows)
    lines += [f"{status.project.path}: {hint}" for status in statuses for hint in status.hints]
    attention = sum(status.attention for status in statuses)
    lines.append(f"{_projects(len(statuses))}: {attention} need{'s' if attention == 1 else ''} attention.")
    if any(status.secret.startswith("unknown") for status in statuses):
        lines.append(SECRET_NOTE)
    return lines, bool(attention)


def _projects(count: int) -> str:
    return f"{count} project{'' if count == 1 else 's'}"


def _table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, as a console shows it (a Chinese character takes two columns);
    the last one is left ragged."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header) - 1)]
    return ["  ".join([cell + " " * (width - _width(cell)) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()
            for row in cells]


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
