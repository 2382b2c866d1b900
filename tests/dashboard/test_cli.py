"""``ledgerflow dashboard``: wired into the CLI, and a clear message without the extra."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
import structlog.testing

from ledgerflow import cli
from ledgerflow.cli.dashboard import warn_if_exposed
from ledgerflow.dashboard.access import Access
from tests.processes import ROOT, cli_env
from tests.servers import Servers


def test_dashboard_is_a_command() -> None:
    args = cli.build_parser().parse_args(["dashboard", "--port", "9123"])
    assert (args.port, args.host) == (9123, "127.0.0.1")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the logging set-up ``cli.main`` does in-process.

    It points structlog at the ``sys.stderr`` of the moment, which here is
    pytest's capture of this one test; once that is closed, every later test
    that logs would fail with "I/O operation on closed file".
    """
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
def test_without_the_extra_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert cli.main(["dashboard"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "uvicorn" in err
    assert "pip install 'ledgerflow[dashboard]'" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_command_serves_until_sigterm(
    servers: Servers, namespace: str, amqp_cleanup: list[str], redis_client: Any
) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ledgerflow", "dashboard", "--port", str(port)],
        env=cli_env(servers, namespace),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the dashboard did not start listening"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["runs"] == []
        assert "ledgerflow" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert f"http://127.0.0.1:{port}" in out
        assert namespace in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    ("host", "token", "warnings"),
    [
        ("127.0.0.1", None, []),
        ("::1", None, []),
        ("0.0.0.0", "tok-secret-1", ["dashboard listening on a non-loopback address"]),
        (
            "10.0.0.5",
            None,
            [
                "dashboard listening on a non-loopback address",
                "dashboard reachable from other hosts without a token: anyone who can reach it "
                "reads every run's payloads; set LEDGERFLOW_DASHBOARD_TOKEN",
            ],
        ),
    ],
)
def test_exposure_warnings(host: str, token: str | None, warnings: list[str]) -> None:
    access = Access.for_bind(host, token=token)
    with structlog.testing.capture_logs() as logs:
        warn_if_exposed(host, access)
    assert [entry["event"] for entry in logs] == warnings
    assert all(entry["log_level"] == "warning" for entry in logs)
    if warnings:
        assert logs[0]["token_required"] is (token is not None)
    assert token is None or token not in repr(logs)


def test_the_command_checks_host_and_token(
    servers: Servers, namespace: str, amqp_cleanup: list[str], redis_client: Any
) -> None:
    """Listening everywhere: it warns, answers only allowed Host names, and wants the token."""
    port = _free_port()
    token = "cli-dashboard-token-0123456789"
    env = {
        **cli_env(servers, namespace),
        "LEDGERFLOW_DASHBOARD_TOKEN": token,
        "LEDGERFLOW_DASHBOARD_ALLOWED_HOSTS": "ops.example",
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ledgerflow", "dashboard", "--host", "0.0.0.0"),
            *("--port", str(port), "--allowed-host", "dash.example"),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/api/runs"
    good = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(url, headers=good, timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the dashboard did not start listening"
                time.sleep(0.1)
        assert response.status_code == 200
        assert httpx.get(url, timeout=5).status_code == 401
        for name, status in [("dash.example", 200), ("ops.example:80", 200), ("evil.example", 400)]:
            answer = httpx.get(url, headers={**good, "Host": name}, timeout=5)
            assert answer.status_code == status, name
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "dashboard listening on a non-loopback address" in err
        assert "without a token" not in err
        assert token not in out + err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_port_in_use_is_one_configuration_error(
    servers: Servers, namespace: str, amqp_cleanup: list[str], redis_client: Any
) -> None:
    """uvicorn exits the process (code 3, "unreachable") on a bind failure; we say what it is."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "ledgerflow", "dashboard", "--port", str(port)],
            env=cli_env(servers, namespace),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr.strip().splitlines()[-1]
