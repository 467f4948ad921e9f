"""waitress's connections, made to answer as the service does under gunicorn (`python webhook_server.py`).

A request waitress itself refuses (a header it cannot parse, a body over GitLab's 25 MB) is answered in JSON,
as every other answer of this service is, not in waitress's plain text (gthread_worker.py does the same for
gunicorn).

A caller outside ALLOWED_SOURCES is refused once its request's headers are in. waitress reads a whole request,
body included, before the app runs: a refused caller sending a body over GitLab's limit got the 413, and one
holding its body back got no answer at all, where gunicorn (which hands the app the socket) answers the
allowlist's 403 at once. Here the headers decide, as they do for the app (access.py): a refused request
reaches the app without its body, and the app answers 403 and logs it as for any refused caller; the
connection then closes, and nothing more the caller sends is parsed.
"""
from __future__ import annotations

import json
from functools import partial

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask

from .access import Network, client_address, refused
from .app import TOO_LARGE


def listeners(server) -> list[BaseWSGIServer]:
    """The listening sockets of `server` (what waitress.create_server made): one, or one per address."""
    found = server.map.values() if isinstance(server, MultiSocketServer) else [server]
    return [listener for listener in found if isinstance(listener, BaseWSGIServer)]


def take_over(server, allowed: tuple[Network, ...], trusted_proxies: tuple[Network, ...]) -> None:
    """Make `server`'s connections this module's: JSON errors, and the source checked from the headers."""
    channel = partial(SourceCheckingChannel, allowed=allowed, trusted_proxies=trusted_proxies) if allowed \
        else ServiceChannel
    for listener in listeners(server):
        listener.channel_class = channel


class JsonErrorTask(ErrorTask):
    def execute(self):
        error = self.request.error
        reason = TOO_LARGE if error.code == 413 else f"{error.reason}: {error.body}" if error.body else error.reason
        body = json.dumps({"status": "error", "reason": reason}).encode("utf-8")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class ServiceChannel(HTTPChannel):
    error_task_class = JsonErrorTask


class SourceCheckingChannel(ServiceChannel):
    def __init__(self, server, sock, addr, adj, map=None, *, allowed, trusted_proxies):
        super().__init__(server, sock, addr, adj, map=map)
        self.refused = False
        peer = addr[0] if isinstance(addr, tuple) else ""

        def refuses(path: str, forwarded_for: str | None) -> bool:
            self.refused = refused(client_address(peer, forwarded_for, trusted_proxies), path, allowed)
            return self.refused

        self.parser_class = partial(BodylessWhenRefused, refuses=refuses)

    def received(self, data):
        if self.refused:          # the rest of a refused request, or more of them: read and dropped
            return True
        return super().received(data)


class BodylessWhenRefused(HTTPRequestParser):
    def __init__(self, adj, *, refuses):
        super().__init__(adj)
        self.refuses = refuses

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        if self.refuses(self.path, self.headers.get("X_FORWARDED_FOR")):
            # Complete without a body: waitress hands it to the app at once, and closes after the answer.
            self.headers["CONTENT_LENGTH"] = "0"
            self.headers["CONNECTION"] = "close"
            self.content_length, self.chunked, self.body_rcv = 0, False, None
            self.expect_continue, self.connection_close = False, True
