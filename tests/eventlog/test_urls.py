"""URL credentials never reach a message or a log line; malformed URLs are one clear error."""

from __future__ import annotations

import pytest
from ledgerflow.eventlog.errors import ConfigurationError
from ledgerflow.eventlog.urls import check_url, redact, redact_text, split_urls

from ledgerflow.ops.logs import redact_secrets

SCHEMES = ("amqp", "amqps", "redis", "rediss", "unix")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://u:pw@h:5672/vh", "amqp://u:***@h:5672/vh"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqp://h/", "amqp://h/"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:S3cret@h/0", "redis://:***@h/0"),
        (
            "rediss://app:S3cret%2Fx@[::1]:6380/0?ssl_ca_certs=/tmp/ca.pem&password=Q1w2e3",
            "rediss://app:***@[::1]:6380/0?ssl_ca_certs=/tmp/ca.pem&password=***",
        ),
        ("redis://h/0?ssl_password=abcd&db=1", "redis://h/0?ssl_password=***&db=1"),
        ("unix:///run/redis.sock?password=hunter22", "unix:///run/redis.sock?password=***"),
        ("amqp://u:p@ss@host/", "amqp://u:***@host/"),  # an unescaped "@" in the password
        ("redis://:S3cret@h:notaport/0", "redis://:***@h:notaport/0"),  # malformed, still hidden
        (
            "amqp://u:pw@h/?heartbeat=15&auth_token=xyz",
            "amqp://u:***@h/?heartbeat=15&auth_token=***",
        ),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_text_finds_urls_and_known_passwords_in_any_text() -> None:
    urls = ["rediss://app:Pa%24%24word@h:6380/0", "amqp://guest:guest@h/"]
    text = (
        "Error connecting to rediss://app:Pa%24%24word@h:6380/0: WRONGPASS for Pa$$word; "
        "also amqp://other:xyz12@elsewhere/ and amqp://guest:guest@h/"
    )
    out = redact_text(text, urls)
    assert "Pa%24%24word" not in out and "Pa$$word" not in out and "xyz12" not in out
    assert "rediss://app:***@h:6380/0" in out
    assert "amqp://other:***@elsewhere/" in out
    assert "amqp://guest:***@h/" in out  # a password equal to its user keeps the user readable


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("amqp://h1/", ["amqp://h1/"]),
        ("amqp://h1/,amqp://h2/", ["amqp://h1/", "amqp://h2/"]),
        (" amqp://h1/ ,  amqps://h2:5671/vh ", ["amqp://h1/", "amqps://h2:5671/vh"]),
        ("amqp://u:p,w@h1/,amqp://h2/", ["amqp://u:p,w@h1/", "amqp://h2/"]),  # comma in a password
        ("redis://h/0?x=a,b", ["redis://h/0?x=a,b"]),  # comma in a query value
        ("amqp://h1/,,amqp://h2/", ["amqp://h1/", "", "amqp://h2/"]),
        ("amqp://h1/,", ["amqp://h1/", ""]),
    ],
)
def test_split_urls(text: str, parts: list[str]) -> None:
    assert split_urls(text) == parts


def test_every_url_of_a_list_is_redacted() -> None:
    listed = "amqp://u:OneS3cret@h1:5681/,amqp://u:TwoS3cret@h2:5682/, amqp://v:Thr3eS3cret@h3/"
    assert redact(listed) == "amqp://u:***@h1:5681/,amqp://u:***@h2:5682/,amqp://v:***@h3/"
    text = f"failed: {listed} (OneS3cret, TwoS3cret and Thr3eS3cret)"
    out = redact_text(text, [listed])
    for secret in ("OneS3cret", "TwoS3cret", "Thr3eS3cret"):
        assert secret not in out


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:70000/0", "port '70000'"),
        ("redis://127.0.0.1:notaport/0", "port 'notaport'"),
        ("amqp://u:pw@h:0/", "port '0'"),
        ("http://h/", "scheme http://"),
        ("127.0.0.1:6379", "scheme none"),
        ("redis://[::1:6379/0", "malformed"),
        ("amqp://u:pa/ss@h/vh", "percent-encoded"),
        ("amqp://u:p?ss@h/", "percent-encoded"),
        ("unix://", "socket path"),
    ],
)
def test_check_url_refuses_malformed_urls(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="URL") as info:
        check_url(url, SCHEMES, "Redis")
    assert says in str(info.value)
    for secret in ("pw", "pa/ss", "p?ss"):
        assert f":{secret}@" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://u:p%2F@[::1]:6380/0?ssl_ca_certs=/a/b.pem&ssl_cert_reqs=required",
        "amqp://guest:guest@127.0.0.1:5672/",
        "amqp://u:p@ss@h/",
        "redis://h/0?x=a@b",
        "unix:///run/redis.sock",
        "redis:///0",
    ],
)
def test_check_url_accepts_what_the_clients_accept(url: str) -> None:
    assert check_url(url, SCHEMES, "Redis") == url


def test_log_lines_carry_no_url_password() -> None:
    event = {
        "event": "infrastructure call failed; retrying",
        "error": "ConnectionError: rediss://app:LogS3cret@h:6380/0?password=QueryS3cret down",
        "exception": "Traceback ...\nValueError: amqp://u:TbS3cret@h/",
        "attempt": 3,
    }
    out = redact_secrets(None, "warning", dict(event))
    text = repr(out)
    for secret in ("LogS3cret", "QueryS3cret", "TbS3cret"):
        assert secret not in text
    assert out["attempt"] == 3 and out["event"] == event["event"]


def test_long_text_values_in_a_log_line_are_clipped() -> None:
    from ledgerflow.ops.logs import MAX_LOG_VALUE, bound_values

    event = {"event": "x", "error": "a" * 10 + "b" * 8_000_000 + "c" * 10, "n": 5}
    bounded = bound_values(None, "warning", dict(event))
    assert len(bounded["error"]) <= MAX_LOG_VALUE
    assert bounded["error"].startswith("a" * 10) and bounded["error"].endswith("c" * 10)
    assert "characters cut" in bounded["error"]
    assert bounded["n"] == 5 and bounded["event"] == "x"


def test_a_logged_exception_with_a_huge_message_stays_one_bounded_line() -> None:
    import subprocess
    import sys

    code = (
        "import structlog; from ledgerflow.ops.logs import configure_logging; "
        "configure_logging('info', json=True)\n"
        "try:\n    raise ValueError('x' * 5_000_000)\n"
        "except ValueError:\n    structlog.get_logger('t').exception('failed')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 20_000
    assert "characters cut" in lines[0]
