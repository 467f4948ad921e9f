"""The few GitLab API calls `--wire-hooks` makes, through python-gitlab, with errors as sentences a person
can act on; the API token is never printed.

Which projects: a key that can match fuzzily or by a `*` pattern needs a
listing (every project for an instance admin, else the user's own); a key that
is a group or project path the listing does not hold is looked up too, adding
the projects there the user is not a member of (an admin's listing holds them
already).
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Callable
from urllib.parse import urljoin, urlsplit

import gitlab
import requests

from .events import Project
from .hookplan import URL_REFUSED_HINT, Listing, Step
from .owners import Owners
from .owners_format import too_short
from .settings import Settings

TIMEOUT_SECONDS = 15
PAGE_SIZE = 100                # GitLab's maximum per page
TOKEN_HELP = ("create a personal, group or project access token with the `api` scope whose user is a "
              "Maintainer of the projects, and set it as GITLAB_API_TOKEN")
# requests, under python-gitlab, reads REQUESTS_CA_BUNDLE from the process environment (not from .env).
CA_HELP = ("if GitLab's certificate is self-signed or from your company's own CA, set REQUESTS_CA_BUNDLE to "
           "that CA certificate (a .pem file) in the environment and run again")
NO_PERMISSION = "no permission: the token's user needs the Maintainer role here"
# What GitLab's own nginx answers while Puma or Workhorse behind it is down or restarting.
GATEWAY_ERRORS = frozenset({502, 503, 504})
GATEWAY_HINT = "GitLab's web server answered, but GitLab behind it did not: it may be restarting or down; try again later"
INTERRUPTED = "interrupted (Ctrl+C); run it again: a second run does only what is left"
DONE = {"create": "created", "update": "updated", "skip": "skipped"}
NOT_DONE = "not done"
# A key GitLab could have as a group or project path (ASCII segments joined by "/"); others are never looked up.
PATH_KEY = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
LISTED = dict(get_all=True, archived=False, simple=True, order_by="id", sort="asc", per_page=PAGE_SIZE)


class WiringError(Exception):
    """Stops the whole run (bad token, GitLab unreachable, nothing matched); the message says what to do."""


class TokenRefused(WiringError):
    """GitLab refused GITLAB_API_TOKEN itself."""


@dataclasses.dataclass(frozen=True)
class Found:
    """The projects owners.json names, and what the search saw on the way."""
    projects: tuple[Project, ...]    # by id, each once
    seen: int                        # distinct projects looked at, named or not
    admin: bool | None               # whether the listing was an admin's; None when no listing was needed
    problems: tuple[tuple[str, str], ...] = ()   # (key, why) for keys GitLab refused to expand
    hidden: tuple[str, ...] = ()     # project-path keys GitLab answered 404 for


class GitLab:
    """The few GitLab API calls wiring makes, with errors turned into sentences a person can act on."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.gitlab_url
        self._moved_to: str | None = None       # where GITLAB_URL redirects to (another scheme, host or port)
        session = requests.Session()
        session.hooks["response"].append(self._note_redirect)
        # keep_base_url: follow pagination links at GITLAB_URL even if GitLab's external_url differs.
        self._gl = gitlab.Gitlab(settings.gitlab_url, private_token=settings.gitlab_api_token,
                                 timeout=TIMEOUT_SECONDS, keep_base_url=True, session=session)

    def _note_redirect(self, response, *args, **kwargs) -> None:
        """A redirect of the same path to another origin (http:// to https://, another host): python-gitlab
        follows it for a GET, but refuses it for the POST and PUT of the real run, so every change would
        fail. (A moved project's old path redirects to /projects/:id, another path, and is followed.)"""
        if response.is_redirect and self._moved_to is None:
            target = urlsplit(urljoin(response.url, response.headers.get("location", "")))
            here = urlsplit(response.url)
            if (target.scheme, target.netloc) != (here.scheme, here.netloc) and target.path == here.path:
                base = urlsplit(self.url)
                self._moved_to = base._replace(scheme=target.scheme, netloc=target.netloc).geturl()

    def owned_projects(self, owners: Owners) -> Found:
        """The projects owners.json names, found as the module docstring says, by id."""
        seen: dict[int, object] = {}
        admin = None
        if any(entry.glob is not None or entry.fragments for entry in owners.entries):
            # Such a key may name any project whose path or name holds it: only a listing finds them all.
            admin = self._is_admin()
            # get_all: every page is fetched inside _call, so a failure on page 2 is reported like one on page 1.
            listed = self._call("list the projects", lambda: self._gl.projects.list(
                **LISTED, **({} if admin else {"membership": True})))
            seen.update((project.id, project) for project in listed)
        problems, hidden = [], []
        if not admin:
            known = {project.path_with_namespace.casefold() for project in seen.values()}
            for key, path in _path_keys(owners):
                if path.casefold() in known:
                    continue                # a project the listing holds already
                try:
                    expanded = self._expand(path)
                except _ProjectFailed as exc:
                    problems.append((key, exc.failure))
                    continue
                if expanded is None:
                    hidden.append(key)
                seen.update((project.id, project) for project in expanded or ())
        named = (_project(found) for _, found in sorted(seen.items()))
        return Found(tuple(p for p in named if owners.names(p)), len(seen), admin, tuple(problems), tuple(hidden))

    def _is_admin(self) -> bool:
        """Whether the token's user is an instance admin, whose listing holds every project. Only a refused
        token stops here; if GitLab will not say, the user's own projects are listed (a network failure then
        stops the listing, with its reason)."""
        try:
            self._call("identify the token's user", self._gl.auth)
        except TokenRefused:
            raise
        except WiringError:
            return False
        return bool(self._gl.user.attributes.get("is_admin"))

    def token_scopes(self) -> tuple[str, ...] | None:
        """The scopes of GITLAB_API_TOKEN, or None when GitLab does not say (before 15.5, or not a
        personal, group or project access token)."""
        try:
            token = self._gl.personal_access_tokens.get("self")
        except (gitlab.GitlabError, requests.RequestException):
            return None
        scopes = token.attributes.get("scopes")
        return tuple(scopes) if isinstance(scopes, list) else None

    def listing(self, project: Project) -> Listing:
        """The project's hooks, or why they could not be read."""
        hooks = self._gl.projects.get(project.id, lazy=True).hooks
        try:
            found = self._call("read its hooks", lambda: hooks.list(get_all=True), per_project=True)
        except _ProjectFailed as exc:
            return Listing(project, problem=str(exc))
        return Listing(project, tuple(hook.attributes for hook in found))

    def apply_all(self, steps: list[Step], secret: str,
                  signing_token: str = "") -> tuple[list[Step], WiringError | None]:
        """Apply the steps in order; after an error that stops the run, the changes left are not done."""
        done: list[Step] = []
        error = None
        for step in steps:
            if error is not None and step.action in ("create", "update"):
                done.append(Step(step.project, NOT_DONE, f"{step.action} not tried after the error below; {step.why}"))
                continue
            try:
                done.append(self.apply(step, secret, signing_token))
            except (WiringError, KeyboardInterrupt) as exc:
                error = exc if isinstance(exc, WiringError) else WiringError(INTERRUPTED)
                done.append(Step(step.project, NOT_DONE, f"{step.action} interrupted by the error below; {step.why}"))
        return done, error

    def apply(self, step: Step, secret: str, signing_token: str = "") -> Step:
        """Create or update the hook as planned (the secret and signing tokens are sent every time); the step
        as done."""
        if step.action not in ("create", "update"):
            return dataclasses.replace(step, action=DONE.get(step.action, step.action))
        hooks = self._gl.projects.get(step.project.id, lazy=True).hooks
        # Without the signing token, a hook made here would send unsigned deliveries the service refuses.
        attributes = {**step.attributes, "token": secret, **({"signing_token": signing_token} if signing_token else {})}
        try:
            if step.action == "create":
                answer = self._call("create the hook", lambda: hooks.create(attributes), per_project=True).attributes
            else:
                answer = self._call("update the hook", lambda: hooks.update(step.hook_id, attributes), per_project=True)
        except _ProjectFailed as exc:
            url_refused = exc.code == 422 and "url" in exc.failure.lower()
            return Step(step.project, exc.action, f"{exc}; {URL_REFUSED_HINT}" if url_refused else str(exc))
        # GitLab 19.0+ says it has the signing token; one that says nothing (before 19.0) cannot sign.
        if signing_token and answer.get("signing_token_present") is not True:
            return Step(step.project, "failed", f"{step.why}; but {SIGNING_IGNORED}")
        return Step(step.project, DONE[step.action], step.why)

    def _expand(self, path: str) -> list | None:
        """The unarchived project at `path`, else the projects of the group there (subgroups included); None
        when GitLab answers that neither exists at a path with a namespace (it says so of a private project
        to a non-member too)."""
        if "/" in path:                 # a project always has a namespace
            try:
                project = self._call("read the project", lambda: self._gl.projects.get(path), per_project=True)
                return [] if project.attributes.get("archived") else [project]
            except _ProjectFailed as exc:
                if exc.code != 404:
                    raise
        # lazy: one request, GET /groups/:path/projects (404 when there is no such group the user can see).
        group = self._gl.groups.get(path, lazy=True)
        try:
            return self._call("list the group's projects", lambda: group.projects.list(
                **LISTED, include_subgroups=True, with_shared=False), per_project=True)
        except _ProjectFailed as exc:
            if exc.code != 404:
                raise
            return None if "/" in path else []

    def _call(self, doing: str, call: Callable, *, per_project: bool = False):
        """Run one API call; a project-level refusal raises _ProjectFailed, anything else WiringError."""
        refused_redirect = False
        try:
            answer = call()
        except gitlab.RedirectError:
            refused_redirect = True
        except gitlab.GitlabAuthenticationError as exc:
            raise TokenRefused(f"GitLab refused GITLAB_API_TOKEN ({exc.error_message}): it is invalid, expired "
                              f"or revoked; {TOKEN_HELP}") from None
        except requests.exceptions.RequestException as exc:
            if _speaks_plain_http(exc):
                advice = "that port answers plain HTTP: write GITLAB_URL with http://"
            elif isinstance(exc, requests.exceptions.SSLError):
                advice = CA_HELP
            else:
                advice = "check GITLAB_URL and the network"
            raise WiringError(f"GitLab at GITLAB_URL={self.url} is unreachable ({_network_reason(exc)}) "
                              f"while trying to {doing}; {advice}") from None
        except gitlab.GitlabParsingError:
            raise WiringError(f"GITLAB_URL={self.url} does not answer like GitLab's API; set it to "
                              "GitLab's address without /api/v4") from None
        except gitlab.GitlabError as exc:
            if exc.response_code == 403 and "insufficient_scope" in str(exc.error_message):
                raise WiringError(f"GITLAB_API_TOKEN lacks the `api` scope (it may be read_api); {TOKEN_HELP}") \
                    from None
            failure = f"could not {doing}: {_answer(exc)}"
            if exc.response_code in GATEWAY_ERRORS:
                failure += f" ({GATEWAY_HINT})"
            if not per_project:
                hint = "" if exc.response_code in GATEWAY_ERRORS else f" (is GITLAB_URL={self.url} GitLab's address?)"
                raise WiringError(failure + hint) from None
            if exc.response_code == 403:
                raise _ProjectFailed(NO_PERMISSION, "skipped", 403, failure) from None
            raise _ProjectFailed(failure, "failed", exc.response_code, failure) from None
        if self._moved_to is not None or refused_redirect:
            where = f"to {self._moved_to}; set GITLAB_URL={self._moved_to}" if self._moved_to else \
                "elsewhere; set GITLAB_URL to GitLab's own address"
            raise WiringError(f"GITLAB_URL={self.url} redirects {where} (GitLab does not take changes "
                              "through a redirect)")
        return answer


class _ProjectFailed(Exception):
    """One project (or key) could not be read or changed; it is listed (as `action`) and the run goes on."""

    def __init__(self, reason: str, action: str, code: int | None, failure: str) -> None:
        super().__init__(reason)
        self.action, self.code, self.failure = action, code, failure


def _path_keys(owners: Owners) -> list[tuple[str, str]]:
    """(key as written, path to look up) for each key that could be a group or project path."""
    keys = {}
    for entry in owners.entries:
        path = unicodedata.normalize("NFKC", entry.key).strip().strip("/")
        if entry.glob is None and PATH_KEY.fullmatch(path) and not too_short(entry.key):
            keys.setdefault(path.casefold(), (entry.key, path))     # GitLab's paths ignore case
    return list(keys.values())


def _project(found) -> Project:
    """A project as the matcher sees it, from any of GitLab's project shapes."""
    return Project(path=found.path_with_namespace, name=found.name,
                   web_url=found.attributes.get("web_url", ""), id=found.id)


SIGNING_IGNORED = ("GitLab ignored the signing token (GitLab before 19.0 cannot sign; on 19.0+ the "
                   "webhook_signing_token feature flag is off), so the service will refuse this hook's deliveries: "
                   "ask a GitLab administrator, or unset GITLAB_SIGNING_TOKEN")


def _answer(exc: gitlab.GitlabError) -> str:
    """ "GitLab answered 404 Project Not Found"; GitLab's messages often start with the status already."""
    code, message = exc.response_code, str(exc.error_message)
    if code is None:
        return str(exc)
    if message.lstrip().startswith("<"):       # a web page (a proxy, or GITLAB_URL not GitLab): not worth printing
        return f"GitLab answered {code} with a web page instead of an API answer"
    return f"GitLab answered {message}" if message.startswith(str(code)) else f"GitLab answered {code} {message}"


def _speaks_plain_http(exc: Exception) -> bool:
    """An https:// URL whose port answers plain HTTP: OpenSSL reads the answer as a broken TLS record
    ("wrong version number"; OpenSSL 3.2 and later say "record layer failure")."""
    text = str(exc).upper().replace(" ", "_")
    return isinstance(exc, requests.exceptions.SSLError) and ("WRONG_VERSION_NUMBER" in text
                                                              or "RECORD_LAYER_FAILURE" in text)


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT_SECONDS} s"
    if _speaks_plain_http(exc):
        return "the TLS handshake got a plain HTTP answer"
    if isinstance(exc, requests.exceptions.SSLError):
        return "its TLS certificate was not accepted"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed: wrong address or port, DNS, firewall or proxy"
    return type(exc).__name__
