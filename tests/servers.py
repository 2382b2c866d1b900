"""Find the RabbitMQ and Redis the integration tests talk to.

Order: the URLs in LEDGERFLOW_AMQP_URL / LEDGERFLOW_REDIS_URL (defaulting to
the local ports), then testcontainers where a Docker engine runs, else a
failure that says exactly how to start the servers.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

HOW_TO_START = """\
ledgerflow's integration tests need RabbitMQ and Redis.
Point LEDGERFLOW_AMQP_URL / LEDGERFLOW_REDIS_URL at running servers, or start local ones:
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \\
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  rabbitmq-server -detached
or run `make services` (local servers, or development containers where Docker runs)."""


@dataclass(frozen=True)
class Servers:
    amqp_url: str
    redis_url: str


def reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=timeout
        ):
            return True
    except OSError:
        return False


def docker_running() -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def configured() -> Servers:
    return Servers(
        amqp_url=os.environ.get("LEDGERFLOW_AMQP_URL", DEFAULT_AMQP_URL),
        redis_url=os.environ.get("LEDGERFLOW_REDIS_URL", DEFAULT_REDIS_URL),
    )
