"""`python webhook_server.py --wire-hooks [--dry-run | --check]`: the GitLab webhook of every owned project.

Lists the projects the API token's user is a member of (not archived), asks
owners.json (the same matcher the service uses) which of them it names, reads
their hooks, and hands everything to `hookplan`, then creates or updates what
the plan says and prints a table. GitLab's API is reached through
python-gitlab; the API token and the secret token are never printed.
"""
from __future__ import annotations

import dataclasses
import sys
from datetime import datetime, timezone
from typing import Callable

import gitlab
import requests

from .events import Project
from .hookplan import Listing, Step, check, check_report, desired_hook, plan, steps_report
from .owners import Owners, load_owners
from .settings import ConfigError, Settings

TIMEOUT_SECONDS = 15
PAGE_SIZE = 100                # GitLab's maximum per page
NEEDS = {
    "GITLAB_URL": "the address of your GitLab, e.g. https://gitlab.example.com",
    "GITLAB_API_TOKEN": "an access token with the `api` scope, of a Maintainer of the projects",
    "PUBLIC_URL": "the address GitLab reaches this service at, e.g. https://hooks.example.com",
    "GITLAB_WEBHOOK_SECRET": "the secret token every hook is given",
}
TOKEN_HELP = ("create a personal, group or project access token with the `api` scope whose user is a "
              "Maintainer of the projects, and set it as GITLAB_API_TOKEN")
NO_PERMISSION = "no permission: the token's user needs the Maintainer role here"
DONE = {"create": "created", "update": "updated", "skip": "skipped"}


class WiringError(Exception):
    """Stops the whole run (bad token, GitLab unreachable, nothing matched); the message says what to do."""


def wire_hooks(settings: Settings, *, dry_run: bool = False, check_only: bool = False,
               clock: Callable[[], datetime] | None = None) -> int:
    """Run `--wire-hooks`; 0 when every project is fine, 1 when one needs attention or the run stopped."""
    _require(settings)
    owners = load_owners(settings.owners_file)
    desired = desired_hook(settings.public_url, settings.notify_events)
    now = (clock or (lambda: datetime.now(timezone.utc)))()
    client = GitLab(settings)
    try:
        listings, unused_keys = client.owned_projects(owners)
        if check_only:
            lines, attention = check_report([check(listing, desired, now) for listing in listings])
        else:
            steps = [plan(listing, desired, now) for listing in listings]
            if not dry_run:
                steps = [client.apply(step, settings.gitlab_webhook_secret) for step in steps]
            lines, attention = steps_report(steps, dry_run)
        print("\n".join(lines))
        status = int(attention)
    except WiringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if unused_keys:
        print(f"Keys of {owners.path} that name none of these projects: {', '.join(unused_keys)} "
              "(projects the token's user is not a member of are not seen)")
    return status


class GitLab:
    """The few GitLab API calls wiring makes, with errors turned into sentences a person can act on."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.gitlab_url
        # keep_base_url: follow pagination links at GITLAB_URL even if GitLab's external_url differs.
        self._gl = gitlab.Gitlab(settings.gitlab_url, private_token=settings.gitlab_api_token,
                                 timeout=TIMEOUT_SECONDS, keep_base_url=True)

    def owned_projects(self, owners: Owners) -> tuple[list[Listing], list[str]]:
        """The projects owners.json names among those the token's user is a member of, with their hooks,
        and the owners.json keys that named none of them."""
        seen = 0
        named: list[Project] = []
        # get_all: every page is fetched inside _call, so a failure on page 2 is reported like one on page 1.
        for project in self._call("list the projects", lambda: self._gl.projects.list(
                get_all=True, membership=True, archived=False, simple=True, order_by="id", sort="asc",
                per_page=PAGE_SIZE)):
            seen += 1
            candidate = Project(path=project.path_with_namespace, name=project.name,
                                web_url=project.attributes.get("web_url", ""), id=project.id)
            if owners.names(candidate):
                named.append(candidate)
        if not named:
            raise WiringError(_nothing_matched(seen, owners))
        unused = [entry.key for entry in owners.entries
                  if not any(dataclasses.replace(owners, entries=(entry,)).names(p) for p in named)]
        return [self._listing(project) for project in named], unused

    def apply(self, step: Step, secret: str) -> Step:
        """Create or update the hook as planned (the secret token is sent every time); the step as done."""
        if step.action not in ("create", "update"):
            return dataclasses.replace(step, action=DONE.get(step.action, step.action))
        hooks = self._gl.projects.get(step.project.id, lazy=True).hooks
        attributes = {**step.attributes, "token": secret}
        try:
            if step.action == "create":
                self._call("create the hook", lambda: hooks.create(attributes), per_project=True)
            else:
                self._call("update the hook", lambda: hooks.update(step.hook_id, attributes), per_project=True)
        except _ProjectFailed as exc:
            return Step(step.project, exc.action, str(exc))
        return Step(step.project, DONE[step.action], step.why)

    def _listing(self, project: Project) -> Listing:
        hooks = self._gl.projects.get(project.id, lazy=True).hooks
        try:
            found = self._call("read its hooks", lambda: hooks.list(get_all=True), per_project=True)
        except _ProjectFailed as exc:
            return Listing(project, problem=str(exc))
        return Listing(project, tuple(hook.attributes for hook in found))

    def _call(self, doing: str, call: Callable, *, per_project: bool = False):
        """Run one API call; a project-level refusal raises _ProjectFailed, anything else WiringError."""
        try:
            return call()
        except gitlab.GitlabAuthenticationError as exc:
            raise WiringError(f"GitLab refused GITLAB_API_TOKEN ({exc.error_message}): it is invalid, expired "
                              f"or revoked; {TOKEN_HELP}") from None
        except requests.exceptions.RequestException as exc:
            raise WiringError(f"GitLab at GITLAB_URL={self.url} is unreachable ({_network_reason(exc)}) "
                              "while trying to " + doing + "; check GITLAB_URL and the network") from None
        except gitlab.GitlabParsingError:
            raise WiringError(f"GITLAB_URL={self.url} does not answer like GitLab's API; set it to "
                              "GitLab's address without /api/v4") from None
        except gitlab.GitlabError as exc:
            if exc.response_code == 403 and "insufficient_scope" in str(exc.error_message):
                raise WiringError(f"GITLAB_API_TOKEN lacks the `api` scope (it may be read_api); {TOKEN_HELP}") \
                    from None
            answer = _answer(exc)
            if not per_project:
                raise WiringError(f"could not {doing}: {answer} (is GITLAB_URL={self.url} GitLab's address?)") \
                    from None
            if exc.response_code == 403:
                raise _ProjectFailed(NO_PERMISSION, "skipped") from None
            raise _ProjectFailed(f"could not {doing}: {answer}", "failed") from None


class _ProjectFailed(Exception):
    """One project could not be read or changed; it is listed (as `action`) and the run goes on."""

    def __init__(self, reason: str, action: str) -> None:
        super().__init__(reason)
        self.action = action


def _require(settings: Settings) -> None:
    values = {"GITLAB_URL": settings.gitlab_url, "GITLAB_API_TOKEN": settings.gitlab_api_token,
              "PUBLIC_URL": settings.public_url, "GITLAB_WEBHOOK_SECRET": settings.gitlab_webhook_secret}
    missing = [name for name, value in values.items() if not value]
    if missing:
        lines = "".join(f"\n  {name}: {NEEDS[name]}" for name in missing)
        raise ConfigError(f"--wire-hooks needs these settings in .env or the environment:{lines}")


def _nothing_matched(seen: int, owners: Owners) -> str:
    if not seen:
        return ("the token's user is a member of no (unarchived) project; add it as a Maintainer of the "
                "projects, or use a group access token")
    return (f"none of the {seen} projects the token's user is a member of matches a key of {owners.path}; "
            "check the keys with --match GROUP/PROJECT")


def _answer(exc: gitlab.GitlabError) -> str:
    """ "GitLab answered 404 Project Not Found"; GitLab's messages often start with the status already."""
    code, message = exc.response_code, str(exc.error_message)
    if code is None:
        return str(exc)
    return f"GitLab answered {message}" if message.startswith(str(code)) else f"GitLab answered {code} {message}"


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT_SECONDS} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "its TLS certificate was not accepted"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed: wrong address or port, DNS, firewall or proxy"
    return type(exc).__name__
