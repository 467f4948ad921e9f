"""Who may call the service: the client's real address behind proxies, and the source allowlist.

The client address is the TCP peer, unless the peer is one of TRUSTED_PROXIES:
then X-Forwarded-For is read from the right, skipping trusted proxies, and the
first address that is not one is the client. Entries further left were written
by the client itself and are never believed, so a forged left-most value
cannot win. (Werkzeug's ProxyFix trusts a fixed number of hops whoever the
peer is, which would let anyone who reaches the port directly pick an address.)
"""
from __future__ import annotations

import ipaddress
import logging
import re
from typing import Iterable

from flask import Flask, jsonify, request

from .settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PEER_KEY = "gitlab_feishu.peer"      # the WSGI environ keeps the TCP peer here once REMOTE_ADDR is resolved
UNKNOWN = "unknown"                  # REMOTE_ADDR when a trusted proxy wrote something that is not an address
_WITH_PORT = re.compile(r"\[([^\]]+)\](?::\d+)?|([\d.]+):\d+")   # [v6], [v6]:port, v4:port


def parse_address(text: str) -> IPAddress | None:
    """An IP address as proxies write it ("10.0.0.5", "[2001:db8::1]:443", "10.0.0.5:1234"), or None.

    An IPv4-mapped IPv6 address (::ffff:10.0.0.5, what a dual-stack socket
    reports for an IPv4 client) becomes the IPv4 address, so IPv4 entries match it.
    """
    text = text.strip()
    with_port = _WITH_PORT.fullmatch(text)
    if with_port:
        text = with_port.group(1) or with_port.group(2)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: tuple[Network, ...]) -> IPAddress | None:
    """The client's address for a request from `peer` carrying this X-Forwarded-For (None: unknown)."""
    address = parse_address(peer)
    if not in_networks(address, trusted_proxies) or not forwarded_for:
        return address
    for entry in reversed(forwarded_for.split(",")):
        address = parse_address(entry)
        if not in_networks(address, trusted_proxies):
            return address                                 # the first hop no trusted proxy vouches beyond
    return address                                         # every hop is a trusted proxy: the left-most one


class ClientAddress:
    """WSGI middleware: REMOTE_ADDR becomes the resolved client address, for the allowlist and every log line."""

    def __init__(self, wsgi_app, trusted_proxies: tuple[Network, ...]):
        self.wsgi_app = wsgi_app
        self.trusted_proxies = trusted_proxies

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR", "")
        # WSGI servers join repeated X-Forwarded-For lines with commas, in the order they arrived.
        address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies)
        environ[PEER_KEY] = peer
        environ["REMOTE_ADDR"] = str(address) if address is not None else UNKNOWN
        return self.wsgi_app(environ, start_response)


def refused(address: IPAddress | None, path: str, allowed: tuple[Network, ...]) -> bool:
    """Whether a request for `path` from `address` is refused by ALLOWED_SOURCES (empty: anyone may call)."""
    if not allowed or in_networks(address, allowed):
        return False
    # Local monitoring keeps working.
    return not (path == "/healthz" and address is not None and address.is_loopback)


def protect(app: Flask, settings: Settings) -> None:
    """Resolve client addresses and refuse sources outside ALLOWED_SOURCES before any other check."""
    app.wsgi_app = ClientAddress(app.wsgi_app, settings.trusted_proxies)
    if settings.trusted_proxies:
        log.info("X-Forwarded-For is read from requests through %s (TRUSTED_PROXIES)",
                 ", ".join(map(str, settings.trusted_proxies)))
    allowed = settings.allowed_sources
    if not allowed:
        return
    log.info("only %s may call this service (ALLOWED_SOURCES)", ", ".join(map(str, allowed)))

    @app.before_request
    def refuse_unknown_sources():
        # Runs before the view: nothing has been read from the body, no token or size checked.
        address = parse_address(request.remote_addr or "")
        if not refused(address, request.path, allowed):
            return None
        peer = request.environ.get(PEER_KEY, "")
        # A dual-stack listener names an IPv4 caller ::ffff:a.b.c.d: that is the caller, not a proxy.
        via = f" via {peer}" if peer and parse_address(peer) != address else ""
        # The path is the caller's text: logs.OneLineFormatter escapes what could forge a line.
        log.warning("refused %s %s from %s%s: not in ALLOWED_SOURCES", request.method, request.path,
                    request.remote_addr, via)
        return jsonify({"status": "error",
                        "reason": f"source address {request.remote_addr} is not allowed (ALLOWED_SOURCES)"}), 403
