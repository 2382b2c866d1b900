"""The reference deployment (compose.yaml) keeps its promises: no open ports, no default logins.

Docker cannot run here, so the file is checked as text: every published port is
bound to 127.0.0.1, the passwords are required from the environment, there is
no guest, the Redis ACL is the one the TLS/ACL integration test runs ledgerflow
under, RabbitMQ's message size ceiling is set, and a reconciler runs.
"""

from __future__ import annotations

import re

from ledgerflow.broker.topology import MAX_MESSAGE_BYTES
from ledgerflow.eventlog.urls import check_url

from tests.integration.test_transport_security import ACL_RULES
from tests.processes import ROOT

COMPOSE = (ROOT / "compose.yaml").read_text()
RABBITMQ_CONF = COMPOSE.split("  rabbitmq-ledgerflow:\n", 1)[1].split("\n\n", 1)[0]
SETTINGS = "\n".join(
    line.split("  # ")[0] for line in COMPOSE.splitlines() if not line.lstrip().startswith("#")
)
"""compose.yaml without its comments."""


def _interpolated(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as docker compose expands them."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return env.get(name, default or "")

    return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", value, text)


def test_every_published_port_is_loopback_only() -> None:
    published = re.findall(r'"([0-9.:]+:\d+:\d+)"', COMPOSE)
    assert len(published) == 3, published  # AMQP, management, Redis
    assert all(port.startswith("127.0.0.1:") for port in published), published


def test_credentials_come_from_the_environment() -> None:
    # The only mention: guest, should it ever exist, may log in from inside the container only.
    assert "guest" not in SETTINGS.replace("loopback_users.guest = true", "")
    for name in ("LEDGERFLOW_RABBITMQ_PASSWORD", "LEDGERFLOW_REDIS_PASSWORD"):
        assert f"${{{name}:?" in COMPOSE, f"{name} must be required, with no default"
    assert "user default off" in COMPOSE
    assert f"user ledgerflow on >%s {ACL_RULES}" in COMPOSE
    assert "requirepass" not in SETTINGS


def test_the_service_urls_are_built_from_the_same_variables() -> None:
    env = {"LEDGERFLOW_RABBITMQ_PASSWORD": "a1b2c3", "LEDGERFLOW_REDIS_PASSWORD": "d4e5f6"}
    amqp = re.search(r'LEDGERFLOW_AMQP_URL: "([^"]+)"', COMPOSE)
    redis = re.search(r'LEDGERFLOW_REDIS_URL: "([^"]+)"', COMPOSE)
    assert amqp is not None and redis is not None
    amqp_url = _interpolated(amqp.group(1), env)
    redis_url = _interpolated(redis.group(1), env)
    assert amqp_url == "amqp://ledgerflow:a1b2c3@rabbitmq:5672/ledgerflow"
    assert redis_url == "redis://ledgerflow:d4e5f6@redis:6379/0"
    check_url(amqp_url, ("amqp",), "RabbitMQ")
    check_url(redis_url, ("redis",), "Redis")
    rabbit = _interpolated(COMPOSE.split("  rabbitmq:", 1)[1].split("\n  redis:", 1)[0], env)
    assert 'RABBITMQ_DEFAULT_USER: "ledgerflow"' in rabbit
    assert 'RABBITMQ_DEFAULT_PASS: "a1b2c3"' in rabbit
    assert 'RABBITMQ_DEFAULT_VHOST: "ledgerflow"' in rabbit


def test_rabbitmq_message_size_ceiling_is_mounted() -> None:
    assert re.search(rf"^\s*max_message_size = {MAX_MESSAGE_BYTES}$", RABBITMQ_CONF, re.MULTILINE)
    assert "source: rabbitmq-ledgerflow" in COMPOSE
    assert "target: /etc/rabbitmq/conf.d/30-ledgerflow.conf" in COMPOSE


def test_a_reconciler_runs_in_the_reference_deployment() -> None:
    assert re.search(r"^  reconciler:$", COMPOSE, re.MULTILINE)
    assert 'exec ledgerflow reconciler"' in COMPOSE
    reconciler = COMPOSE.split("\n  reconciler:", 1)[1].split("\nvolumes:", 1)[0]
    assert "replicas: 2" in reconciler and "<<: *ledgerflow" in reconciler
