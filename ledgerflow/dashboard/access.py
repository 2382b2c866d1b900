"""Who may use the dashboard: trusted Host names, an optional bearer token, same-origin writes.

The dashboard shows every payload of every run, so:

* **Host header.** A page on an attacker's domain can rebind that domain's DNS to
  127.0.0.1 and then read the dashboard as same-origin (DNS rebinding); the only
  thing that tells such a request apart is its ``Host`` header. Requests whose
  Host is not a loopback name, the address the server is bound to, or a name
  the operator allowed (``--allowed-host``, ``LEDGERFLOW_DASHBOARD_ALLOWED_HOSTS``)
  get 400 before anything runs.
* **Token.** With ``LEDGERFLOW_DASHBOARD_TOKEN`` set, every ``/api`` route wants
  ``Authorization: Bearer <token>`` (compared in constant time). A header, never
  a cookie: a browser attaches cookies to cross-site requests, not headers.
* **Writes.** Reading the dead queue takes its messages and gives them back, so
  it is a POST, and a POST must carry a JSON body (a cross-site ``<form>`` or
  ``<img>`` cannot send one without a CORS preflight, which this app never
  grants) and, when the browser names its Origin, come from an allowed host.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

TOKEN_ENV: Final = "LEDGERFLOW_DASHBOARD_TOKEN"
ALLOWED_HOSTS_ENV: Final = "LEDGERFLOW_DASHBOARD_ALLOWED_HOSTS"

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS: Final = frozenset({"", "0.0.0.0", "::"})

_NAME = re.compile(r"^[a-z0-9_.-]+\Z")
_PORT = re.compile(r"^[0-9]{1,5}\Z")


@dataclass(frozen=True)
class Access:
    """The names the dashboard answers to and the token it wants (None: no token)."""

    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    token: str | None = None

    @classmethod
    def for_bind(
        cls, bind: str, extra_hosts: Iterable[str] = (), token: str | None = None
    ) -> Access:
        """Loopback names, the bound address itself (unless a wildcard) and ``extra_hosts``."""
        hosts = set(LOOPBACK_NAMES)
        if bind not in WILDCARD_BINDS:
            hosts.add(normal_host(bind))
        for extra in extra_hosts:
            name = host_of(extra) or normal_host(extra)
            if name:
                hosts.add(name)
        return cls(allowed_hosts=frozenset(hosts), token=token or None)

    @classmethod
    def from_env(
        cls, bind: str, extra_hosts: Iterable[str] = (), env: dict[str, str] | None = None
    ) -> Access:
        """``for_bind`` plus the hosts and token in the environment."""
        environ = os.environ if env is None else env
        listed = [h.strip() for h in environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
        token = environ.get(TOKEN_ENV, "").strip() or None
        return cls.for_bind(bind, [*extra_hosts, *listed], token)

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's Host header names this server."""
        name = host_of(header or "")
        return name is not None and name in self.allowed_hosts

    def origin_allowed(self, origin: str | None) -> bool:
        """A missing Origin passes (not every client sends one); a present one must be ours."""
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and self.host_allowed(parts.netloc)

    def token_accepted(self, authorization: str | None) -> bool:
        """``Authorization: Bearer <token>``, compared in constant time; anything if no token."""
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


def normal_host(name: str) -> str:
    """Lower case, no brackets, no trailing dot, IP literals in one spelling: as compared."""
    text = name.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def host_of(header: str) -> str | None:
    """The name in a Host header (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    text = header.strip()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.match(rest[1:]))):
            return None
        try:
            return str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None  # a bracketed name that is no IPv6 address
    name, colon, port = text.partition(":")
    if colon and not _PORT.match(port):
        return None
    name = normal_host(name)
    return name if _NAME.match(name) else None


def is_loopback(bind: str) -> bool:
    """Whether listening on ``bind`` keeps the server to this host."""
    name = normal_host(bind)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
