"""GitLab's REST API for projects, groups and project hooks, played with `responses` (no real GitLab).

Shapes follow GitLab's API docs (doc/api/projects.md, doc/api/groups.md, doc/api/project_webhooks.md,
doc/api/users.md): GET /user (`is_admin` only for an admin, as GitLab says it only to admins), GET /projects
(`membership=true`: only the member projects) and GET /groups/:id/projects (`include_subgroups`) with offset
pagination headers (x-page, x-per-page, x-next-page, x-total, x-total-pages and a Link header),
GET /projects/:id by id or URL-encoded path, GET/POST /projects/:id/hooks and PUT
/projects/:id/hooks/:hook_id. Groups are the namespaces of the projects. A hook never shows its tokens; with
`reports_token=True` it says `token_present` and `signing_token_present`, as GitLab 19.0+ does.
"""
from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import responses

BASE = "https://git.example.cn"
API = f"{BASE}/api/v4"
API_TOKEN = "glpat-TEST-api-token-0123"


def gitlab_project(id: int, path: str, name: str, *, archived: bool = False) -> dict:
    """A project as GET /projects/:id returns it, in part; `simple=true` listings leave out `archived`."""
    namespace, _, slug = path.rpartition("/")
    return {"id": id, "archived": archived, "description": None, "name": name,
            "name_with_namespace": f"{namespace} / {name}",
            "path": slug, "path_with_namespace": path, "created_at": "2024-03-01T08:00:00.000Z",
            "default_branch": "main", "tag_list": [], "topics": [],
            "ssh_url_to_repo": f"git@git.example.cn:{path}.git", "http_url_to_repo": f"{BASE}/{path}.git",
            "web_url": f"{BASE}/{path}", "avatar_url": None, "star_count": 0,
            "last_activity_at": "2024-03-02T08:00:00.000Z",
            "namespace": {"id": id + 100, "name": namespace, "path": namespace.rpartition("/")[2], "kind": "group",
                          "full_path": namespace, "parent_id": None, "avatar_url": None,
                          "web_url": f"{BASE}/groups/{namespace}"}}


def gitlab_hook(id: int, url: str, project_id: int = 1, **fields) -> dict:
    """A project hook as GET /projects/:id/hooks returns it: GitLab's defaults, then `fields`."""
    hook = {"id": id, "url": url, "name": "", "description": "", "project_id": project_id,
            "push_events": True, "push_events_branch_filter": "", "branch_filter_strategy": "wildcard",
            "issues_events": False, "confidential_issues_events": False, "merge_requests_events": False,
            "tag_push_events": False, "note_events": False, "confidential_note_events": False,
            "job_events": False, "pipeline_events": False, "wiki_page_events": False,
            "deployment_events": False, "releases_events": False, "milestone_events": False,
            "feature_flag_events": False, "emoji_events": False, "resource_access_token_events": False,
            "repository_update_events": False, "enable_ssl_verification": True,
            "alert_status": "executable", "disabled_until": None, "url_variables": [],
            "created_at": "2024-03-01T08:00:00.000Z", "custom_webhook_template": "", "custom_headers": []}
    hook.update(fields)
    return hook


class FakeGitLab:
    """Projects and their hooks in memory, served through `responses` callbacks."""

    def __init__(self, rsps: responses.RequestsMock, projects: list[dict], hooks: dict[int, list[dict]] | None = None,
                 *, page_size: int = 100, forbidden: tuple[int, ...] = (), reports_token: bool = False,
                 admin: bool = False, members: tuple[int, ...] | None = None,
                 refused_groups: tuple[str, ...] = (), signs: bool = True,
                 scopes: tuple[str, ...] | None = ("api",)) -> None:
        self.projects = projects      # every project the token's user can see (all of them for an admin)
        self.admin = admin
        self.members = members        # the ids of those it is a member of; None: all of them
        self.refused_groups = refused_groups   # group paths answered 403
        self.hooks = {p["id"]: list((hooks or {}).get(p["id"], [])) for p in projects}
        self.page_size = page_size
        self.forbidden = forbidden
        self.reports_token = reports_token
        self.signs = signs            # False: the webhook_signing_token feature flag is off, signing_token ignored
        self.scopes = scopes          # the token's, as /personal_access_tokens/self says; None: GitLab before 15.5
        self._next_id = 1000
        hooks_url = re.compile(rf"{re.escape(API)}/projects/(\d+)/hooks(?:\?.*)?$")
        hook_url = re.compile(rf"{re.escape(API)}/projects/(\d+)/hooks/(\d+)$")
        query = r"(?:\?.*)?$"
        for method, url, callback in ((responses.GET, f"{API}/user", self._user),
                                      (responses.GET, f"{API}/personal_access_tokens/self", self._token),
                                      (responses.GET, f"{API}/projects", self._list_projects),
                                      (responses.GET, re.compile(rf"{re.escape(API)}/projects/([^/?]+){query}"),
                                       self._get_project),
                                      (responses.GET, re.compile(rf"{re.escape(API)}/groups/([^/?]+)/projects{query}"),
                                       self._list_group_projects),
                                      (responses.GET, hooks_url, self._list_hooks),
                                      (responses.POST, hooks_url, self._create_hook),
                                      (responses.PUT, hook_url, self._update_hook)):
            rsps.add_callback(method, url, callback=callback, content_type="application/json")

    def _user(self, request):
        user = {"id": 42, "username": "wirer", "name": "Wiring Bot", "state": "active", "locked": False,
                "avatar_url": None, "web_url": f"{BASE}/wirer", "bot": False}
        return 200, {}, json.dumps({**user, "is_admin": True} if self.admin else user)

    def _token(self, request):
        if self.scopes is None:
            return 404, {}, json.dumps({"message": "404 Not Found"})
        return 200, {}, json.dumps({"id": 9, "name": "wiring", "revoked": False, "active": True, "user_id": 42,
                                    "scopes": list(self.scopes), "created_at": "2026-01-05T08:00:00.000Z",
                                    "last_used_at": None, "expires_at": "2027-01-05"})

    def _list_projects(self, request):
        query = _query(request)
        projects = self.projects
        if query.get("membership", "").lower() == "true" and self.members is not None:
            projects = [p for p in projects if p["id"] in self.members]
        return self._page(request, query, projects)

    def _get_project(self, request):
        wanted = unquote(re.search(r"/projects/([^/?]+)", request.url)[1]).casefold()   # paths ignore case
        found = [p for p in self.projects if wanted in (str(p["id"]), p["path_with_namespace"].casefold())]
        if not found:
            return 404, {}, json.dumps({"message": "404 Project Not Found"})
        return 200, {}, json.dumps(found[0])

    def _list_group_projects(self, request):
        group, query = unquote(re.search(r"/groups/([^/?]+)/projects", request.url)[1]), _query(request)
        if group in self.refused_groups:
            return 403, {}, json.dumps({"message": "403 Forbidden"})
        namespaces = {p["namespace"]["full_path"] for p in self.projects}
        if not any(f"{ns}/".startswith(f"{group}/") for ns in namespaces):
            return 404, {}, json.dumps({"message": "404 Group Not Found"})
        subgroups = query.get("include_subgroups", "").lower() == "true"
        return self._page(request, query, [p for p in self.projects if p["namespace"]["full_path"] == group or (
            subgroups and p["namespace"]["full_path"].startswith(f"{group}/"))])

    def _page(self, request, query: dict, items: list[dict]):
        """One page of `items` with GitLab's offset pagination headers (20 per page unless asked)."""
        if query.get("archived", "").lower() == "false":
            items = [p for p in items if not p["archived"]]
        if query.get("simple", "").lower() == "true":
            items = [{k: v for k, v in p.items() if k != "archived"} for p in items]
        per_page = min(int(query.get("per_page", 20)), self.page_size)
        page = int(query.get("page", 1))
        total_pages = max(1, -(-len(items) // per_page))
        shown = items[(page - 1) * per_page: page * per_page]
        headers = {"x-page": str(page), "x-per-page": str(per_page), "x-total": str(len(items)),
                   "x-total-pages": str(total_pages), "x-next-page": str(page + 1) if page < total_pages else "",
                   "x-prev-page": str(page - 1) if page > 1 else ""}
        links = [("first", 1), ("last", total_pages)] + ([("next", page + 1)] if page < total_pages else [])
        url = request.url.split("?")[0]
        headers["Link"] = ", ".join(f'<{url}?{urlencode({**query, "page": n})}>; rel="{rel}"' for rel, n in links)
        return 200, headers, json.dumps(shown)

    def _list_hooks(self, request):
        project_id = _project_id(request)
        if project_id in self.forbidden:
            return 403, {}, json.dumps({"message": "403 Forbidden"})
        return self._page(request, _query(request), [self._shown(hook) for hook in self.hooks[project_id]])

    def _create_hook(self, request):
        project_id = _project_id(request)
        self._next_id += 1
        fields = self._accepted(json.loads(request.body))
        hook = gitlab_hook(self._next_id, fields.pop("url"), project_id, token=fields.pop("token", ""),
                           signing_token=fields.pop("signing_token", ""), **fields)
        self.hooks[project_id].append(hook)
        return 201, {}, json.dumps(self._shown(hook))

    def _update_hook(self, request):
        ids = re.search(r"projects/(\d+)/hooks/(\d+)", request.path_url)
        project_id, hook_id = int(ids[1]), int(ids[2])
        hook = next((h for h in self.hooks[project_id] if h["id"] == hook_id), None)
        if hook is None:
            return 404, {}, json.dumps({"message": "404 Not found"})
        hook.update(self._accepted(json.loads(request.body)))
        return 200, {}, json.dumps(self._shown(hook))

    def _accepted(self, fields: dict) -> dict:
        if not self.signs:
            fields.pop("signing_token", None)
        return fields

    def _shown(self, hook: dict) -> dict:
        """GitLab never returns the tokens; 19.0+ says whether each is set."""
        shown = {k: v for k, v in hook.items() if k not in ("token", "signing_token")}
        if self.reports_token:
            shown["token_present"] = bool(hook.get("token"))
            shown["signing_token_present"] = bool(hook.get("signing_token"))
        return shown


def _query(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}


def _project_id(request) -> int:
    return int(re.search(r"projects/(\d+)/hooks", request.path_url)[1])
