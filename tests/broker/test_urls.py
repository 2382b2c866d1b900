"""The RabbitMQ URL list: every URL checked before anything connects, errors say which."""

from __future__ import annotations

import pytest
from ledgerflow.broker import RabbitBroker
from ledgerflow.broker.topology import (
    QUORUM_SIZE_ENV,
    quorum_arguments,
    quorum_size_from_env,
    work_queue_arguments,
)
from ledgerflow.broker.urls import MAX_URLS, amqp_urls
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.names import Names

SECRET = "Pw-s3cret"


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", ("amqp://guest:guest@127.0.0.1:5672/",)),
        (
            "amqp://u:p@n1:5672/vh, amqp://u:p@n2:5672/vh,amqps://u:p@n3:5671/vh",
            ("amqp://u:p@n1:5672/vh", "amqp://u:p@n2:5672/vh", "amqps://u:p@n3:5671/vh"),
        ),
        (["amqp://n1/", " amqp://n2 "], ("amqp://n1/", "amqp://n2")),  # "/" and none: vhost "/"
        ("amqp://u:p@[::1]:5672/", ("amqp://u:p@[::1]:5672/",)),
    ],
)
def test_valid_lists(text: str | list[str], urls: tuple[str, ...]) -> None:
    assert amqp_urls(text) == urls


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the RabbitMQ URL is empty"),
        ("  ", "the RabbitMQ URL is empty"),
        (f"amqp://u:{SECRET}@n1/,,amqp://n2/", "has an empty entry (at 2)"),
        (f"amqp://u:{SECRET}@n1/,", "has an empty entry (at 2)"),
        (f"amqp://u:{SECRET}@n1/,http://n2/", "RabbitMQ (node 2 of 2) URL 'http://n2/' has scheme"),
        (
            f"amqp://u:{SECRET}@n1/,amqp://n2:99999/",
            "(node 2 of 2) URL 'amqp://n2:99999/' has port",
        ),
        (f"amqp://u:{SECRET}@:5672/", "names no host"),
        (f"amqp://n1/,amqp://u:{SECRET}@/", "(node 2 of 2) URL 'amqp://u:***@/' names no host"),
        (f"amqp://u:{SECRET}@n1/,amqp://u:{SECRET}@n1/", "(node 2 of 2) URL"),
        (f"amqp://u:{SECRET}@n1/a,amqp://u:{SECRET}@n2/b", "must name the same virtual host"),
        ("redis://n1/0", "scheme redis://; expected one of amqp://, amqps://"),
        (",".join(f"amqp://n{i}/" for i in range(MAX_URLS + 1)), f"at most {MAX_URLS}"),
    ],
)
def test_bad_lists_are_one_clear_error_without_the_password(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        amqp_urls(text)
    assert says in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_url_listed_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="is listed twice"):
        amqp_urls("amqp://n1/,amqp://n2/,amqp://n1/")


def test_the_broker_checks_its_urls_before_connecting() -> None:
    with pytest.raises(ConfigurationError, match=r"\(node 3 of 3\)"):
        RabbitBroker("amqp://n1/,amqp://n2/,amqp://n3:0/", Names("tu"))
    broker = RabbitBroker(["amqp://n1/", "amqp://n2/?heartbeat=5"], Names("tu"))
    # A heartbeat is added to each URL that names none; a URL's own is kept.
    assert broker.urls == ("amqp://n1/?heartbeat=15", "amqp://n2/?heartbeat=5")
    assert broker.connected_url is None


@pytest.mark.parametrize(
    ("raw", "size"), [("", None), ("  ", None), ("3", 3), (" 5 ", 5), ("1", 1)]
)
def test_quorum_size_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, size: int | None
) -> None:
    monkeypatch.setenv(QUORUM_SIZE_ENV, raw)
    assert quorum_size_from_env() == size


@pytest.mark.parametrize(
    ("raw", "says"),
    [("three", "whole number"), ("0", "from 1 to"), ("-1", "from 1 to"), ("1000", "from 1 to")],
)
def test_a_bad_quorum_size_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str, says: str) -> None:
    monkeypatch.setenv(QUORUM_SIZE_ENV, raw)
    with pytest.raises(ConfigurationError, match=says):
        quorum_size_from_env()


def test_the_quorum_size_is_sent_only_when_set() -> None:
    names = Names("tu")
    assert "x-quorum-initial-group-size" not in quorum_arguments(None)
    assert quorum_arguments(3)["x-quorum-initial-group-size"] == 3
    arguments = work_queue_arguments(names, 20, 5)
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-quorum-initial-group-size"] == 5
    with pytest.raises(ConfigurationError, match="from 1 to"):
        RabbitBroker("amqp://n1/", names, quorum_size=0)
