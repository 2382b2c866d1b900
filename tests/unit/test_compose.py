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


def _service(name: str) -> str:
    """A service's block, up to the next top-level key of ``services``."""
    return re.split(r"\n  \S", COMPOSE.split(f"\n  {name}:\n", 1)[1], maxsplit=1)[0]


def test_the_cluster_profile_is_three_rabbitmq_nodes_and_leaves_the_default_alone() -> None:
    from ledgerflow.broker.urls import amqp_urls

    node = COMPOSE.split("x-rabbitmq-node: &rabbitmq-node\n", 1)[1].split("\n\n", 1)[0]
    assert "profiles: [cluster]" in node
    # One cookie for all three, required at start, written owner-only, never a default.
    assert 'LEDGERFLOW_RABBITMQ_COOKIE: "${LEDGERFLOW_RABBITMQ_COOKIE:-}"' in node
    assert "umask 077" in node and "/var/lib/rabbitmq/.erlang.cookie" in node
    assert "exit 2; }" in node and "exec docker-entrypoint.sh rabbitmq-server" in node
    assert "target: /etc/rabbitmq/conf.d/40-cluster.conf" in node
    cluster_conf = COMPOSE.split("  rabbitmq-cluster:\n", 1)[1].split("\n\n", 1)[0]
    assert "cluster_formation.peer_discovery_backend = classic_config" in cluster_conf
    for i in (1, 2, 3):
        assert f"cluster_formation.classic_config.nodes.{i} = rabbit@rabbitmq-{i}" in cluster_conf
        block = _service(f"rabbitmq-{i}")
        assert "<<: *rabbitmq-node" in block and f"hostname: rabbitmq-{i}" in block
        assert f"rabbitmq-{i}-data:/var/lib/rabbitmq" in block
        assert "ports:" not in block
        if i > 1:  # joins node 1 once it is up, so no two nodes race to found the cluster
            assert "rabbitmq-1: { condition: service_healthy }" in block

    on_cluster = COMPOSE.split("x-ledgerflow-on-the-cluster: &ledgerflow-on-the-cluster\n", 1)[1]
    on_cluster = on_cluster.split("\n\n", 1)[0]
    assert "profiles: [cluster]" in on_cluster
    env = {"LEDGERFLOW_RABBITMQ_PASSWORD": "a1b2c3", "LEDGERFLOW_REDIS_PASSWORD": "d4e5f6"}
    listed = re.search(r'LEDGERFLOW_AMQP_URL: "([^"]+)"', on_cluster)
    assert listed is not None
    assert amqp_urls(_interpolated(listed.group(1), env)) == tuple(
        f"amqp://ledgerflow:a1b2c3@rabbitmq-{i}:5672/ledgerflow" for i in (1, 2, 3)
    )
    for i in (1, 2, 3):
        assert f"rabbitmq-{i}: {{ condition: service_healthy }}" in on_cluster
    for role in ("worker", "scheduler", "reconciler"):
        assert "<<: *ledgerflow-on-the-cluster" in _service(f"cluster-{role}")
        # The default stack still runs on the single node, with no profile.
        default = _service(role)
        assert "<<: *ledgerflow\n" in default + "\n" and "profiles" not in default
    assert "profiles" not in _service("rabbitmq") and "profiles" not in _service("redis")


def test_the_cluster_profile_runs_on_a_six_node_redis_cluster_with_replica_durability() -> None:
    from ledgerflow.eventlog.durability import Durability
    from ledgerflow.eventlog.redis_client import REDIS_SCHEMES

    node = COMPOSE.split("x-redis-node: &redis-node\n", 1)[1].split("\n\n", 1)[0]
    assert "profiles: [cluster]" in node and "--cluster-enabled yes" in node
    assert "${LEDGERFLOW_REDIS_ADMIN_PASSWORD:?" in node
    # Secrets go into files readable by redis only, never onto a command line.
    assert "masterauth" not in node.split("exec docker-entrypoint.sh", 1)[1]
    assert "user default off" in node and "umask 077" in node
    for i in range(1, 7):
        assert f'  redis-{i}: {{ <<: *redis-node, volumes: ["redis-{i}-data:/data"] }}' in (COMPOSE)
    init = _service("redis-cluster-init")
    assert "--cluster-replicas 1" in init and "--user admin" in init
    assert "cluster_slots_assigned:16384" in init  # formed once, left alone after
    on_cluster = COMPOSE.split("x-ledgerflow-on-the-cluster: &ledgerflow-on-the-cluster\n", 1)[1]
    on_cluster = on_cluster.split("\n\n", 1)[0]
    env = {"LEDGERFLOW_REDIS_PASSWORD": "d4e5f6"}
    found = re.search(r'LEDGERFLOW_REDIS_URL: "([^"]+)"', on_cluster)
    assert found is not None
    url = _interpolated(found.group(1), env)
    check_url(url, REDIS_SCHEMES, "Redis")
    assert url.startswith("redis+cluster://ledgerflow:d4e5f6@redis-1:6379,")
    assert url.count(",") == 5
    mode = re.search(r'LEDGERFLOW_REDIS_DURABILITY: "([^"]+)"', on_cluster)
    assert mode is not None
    Durability.parse(mode.group(1))
    assert "redis-cluster-init: { condition: service_completed_successfully }" in on_cluster
    assert "replicas: 2" in _service("cluster-scheduler")
