"""What GitLab told us, as plain immutable values.

`gitlab.parse_event` builds these from a payload; matching and rendering read
them. They hold no I/O and no settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import quote


@dataclass(frozen=True)
class Project:
    path: str                    # path_with_namespace, ASCII: "group/sub/project"
    name: str                    # display name, often Chinese: "Y_野水发财（客户端）"
    web_url: str = ""
    id: int | None = None
    default_branch: str = ""


@dataclass(frozen=True)
class Person:
    name: str = ""
    username: str = ""
    email: str = ""              # "" when GitLab hides it (null, "" or "[REDACTED]")

    @property
    def label(self) -> str:
        """"Name (username)", or whichever of the two GitLab sent."""
        if self.name and self.username and self.name != self.username:
            return f"{self.name} ({self.username})"
        return self.name or self.username or self.email


@dataclass(frozen=True)
class Commit:
    id: str
    message: str
    url: str = ""
    author: Person = field(default_factory=Person)
    timestamp: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def title(self) -> str:
        """First non-empty line of the message."""
        for line in self.message.splitlines():
            if line.strip():
                return line.strip()
        return ""


@dataclass(frozen=True)
class PushEvent:
    """A Push Hook: commits pushed to a branch, or a branch created or deleted."""
    project: Project
    actor: Person
    ref: str                     # "refs/heads/main"
    before: str
    after: str
    commits: tuple[Commit, ...] = ()   # as GitLab sends them: at most 20, oldest first
    total_commits: int = 0
    ref_protected: bool | None = None
    kind: str = "push"

    @property
    def branch(self) -> str:
        return self.ref.removeprefix("refs/heads/")

    @property
    def created(self) -> bool:
        return is_blank_sha(self.before)

    @property
    def deleted(self) -> bool:
        return is_blank_sha(self.after)

    @property
    def branch_url(self) -> str:
        return f"{self.project.web_url}/-/tree/{quote(self.branch, safe='/', errors='replace')}" if self.project.web_url else ""

    @property
    def change_url(self) -> str:
        """Where the primary button points: the branch when created, else the commit or the compare view."""
        if self.deleted:
            return f"{self.project.web_url}/-/branches" if self.project.web_url else ""
        if self.created or not self.project.web_url or not (self.before and self.after):
            return self.branch_url          # nothing to compare (GitLab left a side out)
        if self.total_commits == 1 and len(self.commits) == 1 and self.commits[0].url:
            return self.commits[0].url
        if not self.total_commits and not self.commits:
            # A rewind: the new head is an ancestor of the old, so before...after is empty; this shows what went.
            return f"{self.project.web_url}/-/compare/{self.after}...{self.before}"
        return f"{self.project.web_url}/-/compare/{self.before}...{self.after}"

    @property
    def idempotency_key(self) -> str:
        return f"push:{self.project.id or self.project.path}:{self.ref}:{self.before}:{self.after}"


@dataclass(frozen=True)
class TagPushEvent:
    """A Tag Push Hook: a tag created or deleted."""
    project: Project
    actor: Person
    ref: str                     # "refs/tags/v1.0.0"
    before: str
    after: str                   # for an annotated tag, the tag object, not the commit
    commit_sha: str = ""         # the tagged commit (checkout_sha); "" on deletion
    commit: Commit | None = None  # the tagged commit as current GitLab sends it; older GitLab sends none
    message: str | None = None   # the annotation; None for a lightweight tag
    ref_protected: bool | None = None
    kind: ClassVar[str] = "tag_push"
    branch: ClassVar[None] = None   # branch filters never apply to tags

    @property
    def tag(self) -> str:
        return self.ref.removeprefix("refs/tags/")

    @property
    def deleted(self) -> bool:
        return is_blank_sha(self.after)

    @property
    def tag_url(self) -> str:
        """The tag's page, or the tag list once it is deleted."""
        if not self.project.web_url:
            return ""
        if self.deleted:
            return f"{self.project.web_url}/-/tags"
        return f"{self.project.web_url}/-/tags/{quote(self.tag, safe='', errors='replace')}"

    @property
    def idempotency_key(self) -> str:
        return f"tag_push:{self.project.id or self.project.path}:{self.ref}:{self.before}:{self.after}"


@dataclass(frozen=True)
class MergeRequestEvent:
    """A Merge Request Hook whose action is worth a card (see parse_merge_request for which)."""
    project: Project             # the target project
    actor: Person                # who acted (GitLab's `user`)
    action: str                  # open, reopen, merge, close, approved, or ready (a draft made ready)
    id: int | None
    iid: int
    title: str
    source_branch: str
    target_branch: str
    url: str
    author: Person | None = None  # the MR's author, when the payload names them
    fork_path: str = ""          # the fork the source branch is in; "" when it is the target project
    description: str = ""
    reviewers: tuple[Person, ...] = ()
    assignees: tuple[Person, ...] = ()
    updated_at: str = ""
    kind: ClassVar[str] = "merge_request"
    ref_protected: ClassVar[None] = None   # not in merge request payloads

    @property
    def branch(self) -> str:
        """Branch filters compare the target branch: where the change lands."""
        return self.target_branch

    @property
    def reference(self) -> str:
        """How GitLab writes it in text: "!17"."""
        return f"!{self.iid}"

    @property
    def idempotency_key(self) -> str:
        return (f"merge_request:{self.project.id or self.project.path}:{self.id or self.iid}:{self.action}:"
                f"{self.updated_at}")


@dataclass(frozen=True)
class Job:
    name: str
    stage: str
    failure_reason: str = ""


@dataclass(frozen=True)
class PipelineEvent:
    """A Pipeline Hook: a pipeline changed status. Only failures, and successes that end one, notify."""
    project: Project
    actor: Person                # who triggered it (GitLab's `user`)
    id: int
    status: str                  # GitLab's: failed, success, canceled, running, pending, ...
    ref: str                     # a branch or tag name, without refs/...
    tag: bool
    url: str
    iid: int | None = None
    sha: str = ""
    source: str = ""             # push, web, schedule, merge_request_event, ...
    commit: Commit | None = None
    failed_jobs: tuple[Job, ...] = ()
    duration: int | None = None  # seconds
    finished_at: str = ""        # as GitLab wrote it: a job retried makes the pipeline finish again
    fixed: bool = False          # set by the service: a success after a failure on the same ref
    ref_protected: bool | None = None   # GitLab's object_attributes.protected_ref (current versions send it)
    merge_request_iid: int | None = None  # a merge request pipeline's MR: its real ref is refs/merge-requests/IID/...
    name: str = ""               # GitLab's object_attributes.name (workflow:name in .gitlab-ci.yml), when set
    fork_merge_request_url: str = ""    # a merge request pipeline whose source branch is in a fork: the MR's page
    kind: ClassVar[str] = "pipeline"

    @property
    def branch(self) -> str:
        """Branch filters compare the ref, a tag's included: `main` never lets a tag pipeline through."""
        return self.ref

    @property
    def ref_url(self) -> str:
        if self.fork_merge_request_url:         # the branch is the fork's: this project has none by that name
            return self.fork_merge_request_url
        if not self.project.web_url or not self.ref:
            return ""
        kind = "tags" if self.tag else "tree"
        return f"{self.project.web_url}/-/{kind}/{quote(self.ref, safe='/', errors='replace')}"

    @property
    def idempotency_key(self) -> str:
        return f"pipeline:{self.project.id or self.project.path}:{self.id}:{self.status}:{self.finished_at}"


@dataclass(frozen=True)
class Ignored:
    """A delivery that is valid but notifies nobody; `reason` is shown to GitLab and logged."""
    reason: str


def is_blank_sha(sha: str) -> bool:
    """GitLab's all-zero SHA (40 zeros, or 64 in SHA-256 repositories)."""
    return len(sha) in (40, 64) and set(sha) == {"0"}


Event = PushEvent | TagPushEvent | MergeRequestEvent | PipelineEvent
