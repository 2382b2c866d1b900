"""Server URLs: checked before use, and never shown with their secrets.

A RabbitMQ or Redis URL carries credentials (``amqp://user:password@host``,
``rediss://user:password@host``, ``redis://host/0?password=...``), and every
error about a connection wants to say which server it was. Everything that puts
a URL into an error message or a log line goes through ``redact`` (or
``redact_text`` for text that may embed one), so a password never reaches a
terminal, a log shipper or a bug report.

``check_url`` rejects a malformed URL (unknown scheme, a port that is not a
number in 1..65535) with a ConfigurationError before any client library
sees it: those libraries raise bare ValueErrors, or hang, on such input. A
cluster URL (``redis+cluster://host:port,host:port``) names several nodes, each
checked the same way.

A setting may hold a comma-separated list of URLs (the nodes of a RabbitMQ
cluster): ``split_urls`` cuts it, and ``redact`` and ``redact_text`` hide the
credentials of every URL of a list, not only the last one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from .errors import ConfigurationError

MASK = "***"
CLUSTER_SUFFIX = "+cluster"
"""A scheme ending so (``redis+cluster``, ``rediss+cluster``) lists several nodes."""

_SECRET_KEYS = ("pass", "pwd", "secret", "token", "auth", "credential")
"""Query parameters whose values are hidden: any name containing one of these."""

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@]*):[^\s/@]*@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;][^=&\s]*(?:" + "|".join(_SECRET_KEYS) + r")[^=&\s]*=)[^&\s#]*", re.IGNORECASE
)


_LIST_COMMA = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://|,|$)")
"""A comma that separates URLs: one followed by the next URL's scheme, another comma or
the end. A comma inside a URL (RFC 3986 allows one unescaped in a password) is kept."""


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list, stripped; an empty item stays (as "") to be refused.

    ``"amqp://a/, amqp://b/"`` -> ``["amqp://a/", "amqp://b/"]``; one URL -> ``[url]``.
    """
    return [part.strip() for part in _LIST_COMMA.split(text.strip())]


def redact(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Works on the text rather than through ``urlsplit(...).port`` and friends, so a
    malformed URL (a bad port, a stray bracket) is still redacted instead of raising.
    A comma-separated list is redacted URL by URL.
    """
    parts = split_urls(url)
    if len(parts) > 1:
        return ",".join(redact(part) for part in parts)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_SECRET.sub(_mask_query, url)
    userinfo, at, hostpart = _split_userinfo(rest)
    host, tail = _netloc(hostpart)
    if at and ":" in userinfo:
        userinfo = f"{userinfo.split(':', 1)[0]}:{MASK}"
    return f"{scheme}://{userinfo}{at}{host}{_QUERY_SECRET.sub(_mask_query, tail)}"


def redact_text(text: str, urls: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log value) with every URL credential in it hidden.

    URL-shaped credentials are found by pattern. ``urls`` are the URLs the caller
    connected with: their passwords are also hidden where they appear on their own
    (a library may quote one without its URL), raw or percent-decoded.
    """
    urls = list(urls)
    for url in urls:
        text = text.replace(url, redact(url))
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(_mask_query, text)
    for secret in _secrets(urls):
        text = text.replace(secret, MASK)
    return text


def _mask_query(match: re.Match[str]) -> str:
    return f"{match['key']}{MASK}"


def _split_userinfo(rest: str) -> tuple[str, str, str]:
    """(userinfo, "@", the rest) of what follows ``scheme://``; ("", "", rest) without one.

    The last "@" before any query wins, so a password holding an unescaped "/" or
    "@" (which parsers misread as the path) is still taken whole and hidden.
    """
    end = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        return "", "", rest
    return rest[:at], "@", rest[at + 1 :]


def _netloc(rest: str) -> tuple[str, str]:
    """Split what follows ``scheme://`` into the netloc and the path/query/fragment."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end], rest[end:]


def _secrets(urls: Iterable[str]) -> list[str]:
    """The passwords and secret query values of ``urls``, longest first.

    A password equal to its user name is left alone: the name is shown anyway, and
    hiding every occurrence of ``guest`` would only garble the redacted URL.
    """
    found: set[str] = set()
    for url in (part for listed in urls for part in split_urls(listed)):
        userinfo, at, _rest = _split_userinfo(url.partition("://")[2])
        user, colon, password = userinfo.partition(":")
        if at and colon and password != user:
            found.add(password)
        for match in _QUERY_SECRET.finditer(url):
            found.add(url[match.end("key") : match.end()])
    # Too short to hide without mangling unrelated text ("a" would blank every "a").
    secrets = {s for s in found | {unquote(s) for s in found} if len(s) >= 4 and s != MASK}
    return sorted(secrets, key=len, reverse=True)


def check_url(url: str, schemes: Iterable[str], what: str) -> str:
    """``url`` if it can be used to reach ``what``; a ConfigurationError naming the flaw if not."""
    allowed = tuple(schemes)
    shown = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"{what} URL {shown!r} is malformed: {exc}") from None
    if parts.scheme not in allowed:
        expected = ", ".join(f"{s}://" for s in allowed)
        raise ConfigurationError(
            f"{what} URL {shown!r} has scheme {parts.scheme + '://' if parts.scheme else 'none'}; "
            f"expected one of {expected}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"{what} URL {shown!r} names no socket path")
        return url
    if _misplaced_at(url, parts.netloc):
        # Parsers end the host at the first "/", "?" or "#": a password holding one
        # unescaped is read as the path, so not even ``redact`` can tell what to hide.
        raise ConfigurationError(
            f"{what} URL {parts.scheme}://***: its user or password holds a character that "
            "must be percent-encoded ('/' as %2F, '?' as %3F, '#' as %23, '@' as %40)"
        )
    hosts = parts.netloc.rpartition("@")[2]
    if not parts.scheme.endswith(CLUSTER_SUFFIX):
        _check_port(hosts, shown, what)
        return url
    for hostport in hosts.split(","):
        if not _split_hostport(hostport)[0]:
            raise ConfigurationError(
                f"{what} URL {shown!r} has an empty node in its list (host:port,host:port)"
            )
        _check_port(hostport, shown, what)
    return url


def _misplaced_at(url: str, netloc: str) -> bool:
    """An "@" after the host that is not inside a query value: a user:password misparsed."""
    rest = url.partition("://")[2][len(netloc) :]
    at = rest.find("@")
    return at >= 0 and "=" not in rest[:at]


def _check_port(hostport: str, shown: str, what: str) -> None:
    host, port = _split_hostport(hostport)
    if hostport.startswith("[") and not host:
        raise ConfigurationError(f"{what} URL {shown!r} has an unclosed '[' in its host")
    if port is None:
        return
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigurationError(
            f"{what} URL {shown!r} has port {port!r}; expected a number from 1 to 65535"
        )


def _split_hostport(hostport: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port or None)."""
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket:
            return "", None
        return host, rest[1:] if rest.startswith(":") else None
    host, colon, port = hostport.partition(":")
    return host, port if colon else None
