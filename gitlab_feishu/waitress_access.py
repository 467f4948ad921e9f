"""Under waitress, a caller outside ALLOWED_SOURCES is refused once its request's headers are in.

waitress reads a whole request, body included, before the app runs: a refused caller sending a body over
GitLab's limit got waitress's own 413, and one holding its body back got no answer at all, where gunicorn
(which hands the app the socket) answers the allowlist's 403 at once. Here the headers decide, as they do
for the app (access.py): a refused request reaches the app without its body, and the app answers 403 and
logs it as for any refused caller; the connection then closes, and nothing more the caller sends is parsed.
"""
from __future__ import annotations

from functools import partial

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer

from .access import Network, client_address, refused


def listeners(server) -> list[BaseWSGIServer]:
    """The listening sockets of `server` (what waitress.create_server made): one, or one per address."""
    found = server.map.values() if isinstance(server, MultiSocketServer) else [server]
    return [listener for listener in found if isinstance(listener, BaseWSGIServer)]


def refuse_early(server, allowed: tuple[Network, ...], trusted_proxies: tuple[Network, ...]) -> None:
    """Make `server` check the source of each request from its headers."""
    if not allowed:
        return
    for listener in listeners(server):
        listener.channel_class = partial(SourceCheckingChannel, allowed=allowed, trusted_proxies=trusted_proxies)


class SourceCheckingChannel(HTTPChannel):
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
