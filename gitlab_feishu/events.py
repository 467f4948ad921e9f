"""What GitLab told us, as plain immutable values.

`gitlab.parse_event` builds these from a payload; matching and rendering read
them. They hold no I/O and no settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
        if self.created or not self.project.web_url:
            return self.branch_url
        if self.total_commits == 1 and len(self.commits) == 1 and self.commits[0].url:
            return self.commits[0].url
        return f"{self.project.web_url}/-/compare/{self.before}...{self.after}"

    @property
    def idempotency_key(self) -> str:
        return f"push:{self.project.id or self.project.path}:{self.ref}:{self.before}:{self.after}"


def is_blank_sha(sha: str) -> bool:
    """GitLab's all-zero SHA (40 zeros, or 64 in SHA-256 repositories)."""
    return len(sha) in (40, 64) and set(sha) == {"0"}


Event = PushEvent
