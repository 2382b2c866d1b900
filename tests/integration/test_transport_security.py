"""Transport security, run for real: Redis over TLS with an ACL user, RabbitMQ with its own user.

A private ``redis-server`` is started with TLS only (no plain port), on a free
loopback port, with certificates this test makes with the ``openssl`` command
line (a CA, and a server certificate for 127.0.0.1 signed by it), the default
user disabled and one ACL user with a password and no dangerous commands.
RabbitMQ gets a vhost and a user of its own (not guest) through ``rabbitmqctl``.
A real workflow then runs end to end through those URLs: a worker process
started by the CLI, ``lf.Client.connect`` in this process, and ``ledgerflow
start --wait``. A wrong password and a missing CA fail with one clear line.
The redis-server is killed, and the user and vhost deleted, in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

import ledgerflow as lf
from tests.apps import arith
from tests.processes import ROOT, cli_env, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0
ACL_RULES = "~* &* +@all -@dangerous +client|unblock"
"""Least privilege that still runs ledgerflow: keys, streams and scripts, no FLUSHALL,
CONFIG, KEYS or DEBUG; CLIENT UNBLOCK wakes the stream watcher's blocked read."""


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    user: str
    password: str

    def url(self, *, password: str | None = None, ca: bool = True) -> str:
        secret = quote(self.password if password is None else password, safe="")
        query = f"?ssl_ca_certs={self.ca}" if ca else ""
        return f"rediss://{self.user}:{secret}@127.0.0.1:{self.port}/0{query}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test needs the openssl command line (apt-get install openssl)")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=ledgerflow test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return folder / "ca.pem"


def _wait_until_serving(server: TlsRedis, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        client = redis.Redis.from_url(server.url(), socket_timeout=2, socket_connect_timeout=2)
        try:
            if client.ping():
                return
        except redis.RedisError:
            assert process.poll() is None, f"redis-server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"redis-server did not serve TLS: {log.read_text()}"
            time.sleep(0.1)
        finally:
            client.close()


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    """A TLS-only redis-server with one ACL user; killed (and its files removed) afterwards."""
    if shutil.which("redis-server") is None:
        pytest.fail("the TLS test needs redis-server (with TLS support) on PATH")
    folder = Path(tempfile.mkdtemp(prefix="lf-tls-redis-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        ca = make_certificates(folder)
        # "/", "@" and ":" in the password: the URL must carry it percent-encoded.
        server = TlsRedis(_free_port(), ca, "ledgerflow", f"s3cret/@:{uuid.uuid4().hex[:8]}")
        (folder / "redis.conf").write_text(
            "\n".join(
                [
                    "port 0",
                    f"tls-port {server.port}",
                    "bind 127.0.0.1",
                    f"tls-cert-file {folder / 'server.pem'}",
                    f"tls-key-file {folder / 'server.key'}",
                    f"tls-ca-cert-file {ca}",
                    "tls-auth-clients no",
                    'save ""',
                    "appendonly no",
                    f"dir {folder}",
                    f"logfile {folder / 'redis.log'}",
                    "user default off",
                    f"user {server.user} on >{server.password} {ACL_RULES}",
                ]
            )
            + "\n"
        )
        process = subprocess.Popen(["redis-server", str(folder / "redis.conf")])
        _wait_until_serving(server, process, folder / "redis.log")
        yield server
    finally:
        if process is not None:
            process.kill()
            process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class AmqpUser:
    vhost: str
    user: str
    password: str

    def url(self, *, password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        return f"amqp://{self.user}:{secret}@127.0.0.1:5672/{quote(self.vhost, safe='')}"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def amqp_user() -> Iterator[AmqpUser]:
    """A vhost and a user with rights on it alone; both deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("the vhost test needs rabbitmqctl to create a user and a vhost")
    tag = uuid.uuid4().hex[:8]
    account = AmqpUser(f"lf-vhost-{tag}", f"lf-user-{tag}", f"amqp/pw@{tag}")
    try:
        _rabbitmqctl("add_vhost", account.vhost)
        _rabbitmqctl("add_user", account.user, account.password)
        _rabbitmqctl("set_permissions", "-p", account.vhost, account.user, ".*", ".*", ".*")
        yield account
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _rabbitmqctl("delete_user", account.user)
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _rabbitmqctl("delete_vhost", account.vhost)


def _cli(servers: Servers, namespace: str, env: dict[str, str], *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *args],
        env={**cli_env(servers, namespace), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_workflow_over_tls_redis_and_its_own_amqp_user(
    servers: Servers, namespace: str, tls_redis: TlsRedis, amqp_user: AmqpUser
) -> None:
    env = {"LEDGERFLOW_AMQP_URL": amqp_user.url(), "LEDGERFLOW_REDIS_URL": tls_redis.url()}
    worker = ["worker", "tests.apps.arith", "--with-scheduler", "--concurrency", "8"]
    with processes(servers, namespace, [worker], env=env) as procs:
        async with lf.Client.connect(
            amqp_user.url(), tls_redis.url(), namespace=namespace
        ) as client:
            run = await client.start(arith.total, 6)
            assert await run.result(timeout=60) == arith.expected_total(6)
        started = await asyncio.to_thread(
            _cli, servers, namespace, env, "start", "tests.apps.arith:it_total", "--args", "[4]",
            "--wait", "--timeout", "60",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[-1] == str(arith.expected_total(4))
        listed = await asyncio.to_thread(
            _cli, servers, namespace, env, "runs", "list", "--status", "completed"
        )
        assert listed.returncode == 0, listed.stderr
        assert run.run_id in listed.stdout
        assert all(proc.poll() is None for proc in procs), "the worker died"
    # The queues live in the user's vhost, not in guest's "/".
    listed_root = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "list_queues", "-p", "/", "name"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert namespace not in listed_root.stdout


def _one_line(result: Any) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def test_wrong_redis_password_and_missing_ca_are_one_clear_line(
    servers: Servers, namespace: str, tls_redis: TlsRedis, amqp_user: AmqpUser
) -> None:
    amqp = {"LEDGERFLOW_AMQP_URL": amqp_user.url()}
    wrong = _cli(
        servers, namespace, {**amqp, "LEDGERFLOW_REDIS_URL": tls_redis.url(password="wrong-pw")},
        "runs", "list",
    )  # fmt: skip
    assert wrong.returncode == 2, wrong.stderr
    assert "refused the login" in _one_line(wrong)
    assert "wrong-pw" not in wrong.stderr and tls_redis.password not in wrong.stderr

    no_ca = _cli(
        servers, namespace, {**amqp, "LEDGERFLOW_REDIS_URL": tls_redis.url(ca=False)},
        "runs", "list",
    )  # fmt: skip
    assert no_ca.returncode == 3, no_ca.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in _one_line(no_ca)
    assert quote(tls_redis.password, safe="") not in no_ca.stderr

    # TLS options on a plain URL are a configuration mistake; a plain client on the TLS
    # port gets no answer it understands.
    plain_url = tls_redis.url().replace("rediss://", "redis://", 1)
    for url, code, says in [
        (plain_url, 2, "need rediss://"),
        (plain_url.split("?")[0], 3, "is not reachable"),
    ]:
        plain = _cli(servers, namespace, {**amqp, "LEDGERFLOW_REDIS_URL": url}, "runs", "list")
        assert plain.returncode == code, plain.stderr
        assert says in _one_line(plain)


def test_wrong_amqp_password_and_foreign_vhost_are_one_clear_line(
    servers: Servers, namespace: str, amqp_user: AmqpUser
) -> None:
    wrong = _cli(
        servers, namespace, {"LEDGERFLOW_AMQP_URL": amqp_user.url(password="nope-nope")}, "queues"
    )
    assert wrong.returncode == 2, wrong.stderr
    assert "refused the login" in _one_line(wrong)
    # The user has no rights on "/": RabbitMQ refuses the vhost, not the password.
    other = amqp_user.url().rsplit("/", 1)[0] + "/"
    foreign = _cli(servers, namespace, {"LEDGERFLOW_AMQP_URL": other}, "queues")
    assert foreign.returncode == 2, foreign.stderr
    assert "refused to open virtual host '/'" in _one_line(foreign)
    assert amqp_user.password not in foreign.stderr + wrong.stderr
