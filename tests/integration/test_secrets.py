"""Passwords in the server URLs never reach the terminal or the logs; misconfiguration is exit 2.

Real servers and the CLI as a subprocess (at debug log level, so every line a
failing connection can produce is captured), with a password in both URLs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import aio_pika
import pytest
from ledgerflow.eventlog.errors import ConfigurationError, ServiceUnavailableError
from ledgerflow.eventlog.settings import Settings
from ledgerflow.worker.backend import connect

from tests.processes import ROOT, cli_env
from tests.servers import Servers

pytestmark = pytest.mark.integration

AMQP_SECRET = "AmqpPw-7fd1e2"
REDIS_SECRET = "RedisPw-91ab3c"
QUERY_SECRET = "QueryPw-55e0aa"


def run(
    servers: Servers, namespace: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *args],
        env={**cli_env(servers, namespace), "LEDGERFLOW_LOG_LEVEL": "debug", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    shown = result.stdout + result.stderr
    for secret in (AMQP_SECRET, REDIS_SECRET, QUERY_SECRET):
        assert secret not in shown, shown
    assert "Traceback" not in shown, shown


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["runs", "list"], ["worker", "tests.apps.arith"]])
async def test_unreachable_servers_never_show_the_passwords(
    servers: Servers, namespace: str, command: list[str]
) -> None:
    amqp = f"amqp://guest:{AMQP_SECRET}@127.0.0.1:1/"
    redis_urls = [
        f"redis://:{REDIS_SECRET}@127.0.0.1:1/0",
        f"rediss://app:{REDIS_SECRET}@127.0.0.1:1/0?password={QUERY_SECRET}&ssl_cert_reqs=none",
    ]
    for redis_url in redis_urls:
        down = await asyncio.to_thread(
            run,
            servers,
            namespace,
            *command,
            LEDGERFLOW_AMQP_URL=amqp,
            LEDGERFLOW_REDIS_URL=redis_url,
        )
        assert down.returncode == 3, down.stderr
        assert "Redis at redis" in one_line(down) and "***" in down.stderr
        assert_no_secret(down)
    # Redis is fine this time; RabbitMQ is the one that cannot be reached.
    down = await asyncio.to_thread(run, servers, namespace, "--amqp-url", amqp, *command)
    assert down.returncode == 3, down.stderr
    assert "amqp://guest:***@127.0.0.1:1/" in one_line(down)
    assert_no_secret(down)


async def test_a_refused_login_is_a_configuration_error(servers: Servers, namespace: str) -> None:
    refused = await asyncio.to_thread(
        run,
        servers,
        namespace,
        "--amqp-url",
        f"amqp://guest:{AMQP_SECRET}@127.0.0.1:5672/",
        "runs",
        "list",
    )
    assert refused.returncode == 2, refused.stderr
    assert "refused the login" in one_line(refused)
    assert_no_secret(refused)

    no_vhost = await asyncio.to_thread(
        run,
        servers,
        namespace,
        "--amqp-url",
        f"amqp://guest:guest@127.0.0.1:5672/{namespace}",
        "queues",
    )
    assert no_vhost.returncode == 2, no_vhost.stderr
    assert f"virtual host {namespace!r}" in one_line(no_vhost)


async def test_in_process_errors_redact_too(servers: Servers, namespace: str) -> None:
    settings = Settings(f"amqp://guest:{AMQP_SECRET}@127.0.0.1:1/", servers.redis_url, namespace)
    with pytest.raises(ServiceUnavailableError) as info:
        async with connect(settings):
            pass
    assert AMQP_SECRET not in str(info.value) and "guest:***@127.0.0.1:1" in str(info.value)
    bad_port = Settings(servers.amqp_url, f"redis://:{REDIS_SECRET}@127.0.0.1:99999/0", namespace)
    with pytest.raises(ConfigurationError, match="port '99999'") as info:
        async with connect(bad_port):
            pass
    assert REDIS_SECRET not in str(info.value)


async def _declare_classic_runs_queue(servers: Servers, queue: str) -> None:
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)  # classic, no dead-lettering
    finally:
        await connection.close()


async def test_a_topology_mismatch_is_reported_as_such(
    servers: Servers, namespace: str, names: Any, amqp_cleanup: list[str]
) -> None:
    """Not "unreachable" (exit 3): the queue exists with other settings (exit 2), say so."""
    await _declare_classic_runs_queue(servers, names.runs_queue)
    settings = Settings(servers.amqp_url, servers.redis_url, namespace)
    with pytest.raises(ConfigurationError, match="already exists with different settings"):
        async with connect(settings):
            pass
    for command in (["queues"], ["worker", "tests.apps.arith"]):
        result = await asyncio.to_thread(run, servers, namespace, *command)
        assert result.returncode == 2, result.stderr
        line = one_line(result)
        assert names.runs_queue in line and "different settings" in line
        assert "not reachable" not in line
