"""The RabbitMQ URLs of a deployment: one node, or a comma-separated list of a cluster's nodes.

``LEDGERFLOW_AMQP_URL`` and ``--amqp-url`` take either. Every URL of a list is
checked here, before anything connects, so a typo in the third node's URL is
one clear ConfigurationError at start-up rather than a failover that fails
hours later, when the first two nodes are down. Errors name the URL by its
place in the list and show it redacted.

The URLs of one list must be one cluster seen from different nodes: the same
virtual host on each (users, permissions and queues are cluster-wide, a
virtual host is not a per-node choice), and no URL twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.urls import check_url, redact, split_urls

AMQP_SCHEMES: Final = ("amqp", "amqps")

MAX_URLS: Final = 64
"""More nodes than any RabbitMQ cluster has (the docs advise against more than 7)."""


def amqp_urls(text: str | Sequence[str]) -> tuple[str, ...]:
    """The checked URLs of ``text`` (one URL, a comma-separated list, or a sequence), in order."""
    listed = text if isinstance(text, str) else ",".join(text)
    parts = split_urls(text) if isinstance(text, str) else [u.strip() for u in text]
    if not any(parts):
        raise ConfigurationError("the RabbitMQ URL is empty; expected amqp://user:password@host/")
    if len(parts) > MAX_URLS:
        raise ConfigurationError(
            f"the RabbitMQ URL list has {len(parts)} entries; at most {MAX_URLS} are accepted"
        )
    urls: list[str] = []
    vhosts: list[str] = []
    for index, url in enumerate(parts):
        what = "RabbitMQ" if len(parts) == 1 else f"RabbitMQ (node {index + 1} of {len(parts)})"
        if not url:
            raise ConfigurationError(
                f"the RabbitMQ URL list {redact(listed)!r} has an empty entry (at {index + 1}): "
                "separate URLs with single commas"
            )
        check_url(url, AMQP_SCHEMES, what)
        parts_of = urlsplit(url)
        if not parts_of.hostname:
            raise ConfigurationError(f"{what} URL {redact(url)!r} names no host")
        if url in urls:
            raise ConfigurationError(f"{what} URL {redact(url)!r} is listed twice")
        urls.append(url)
        vhosts.append(unquote(parts_of.path[1:]) or "/")
    if len(set(vhosts)) > 1:
        shown = ", ".join(f"{redact(u)} -> {v!r}" for u, v in zip(urls, vhosts, strict=True))
        raise ConfigurationError(
            "the RabbitMQ URLs of one list must name the same virtual host (they are nodes of "
            f"one cluster): {shown}"
        )
    return tuple(urls)


def shown(urls: Sequence[str]) -> str:
    """The URLs for a message or a log line: redacted, comma-separated."""
    return ", ".join(redact(url) for url in urls)
