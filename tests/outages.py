"""Stop and start the real servers for outage tests, always leaving them running."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

RABBITMQCTL = shutil.which("rabbitmqctl")


def rabbitmqctl(*args: str, timeout: float = 120) -> None:
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed here")
    subprocess.run([RABBITMQCTL, *args], check=True, capture_output=True, timeout=timeout)


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise AssertionError(f"port {port} did not open within {timeout} s")


@contextlib.contextmanager
def rabbitmq_app_stopped() -> Iterator[None]:
    """`rabbitmqctl stop_app` for the block; `start_app` afterwards, even on failure."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        wait_port(5672)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbit_env(key: str) -> str:
    """The RabbitMQ node's current value of ``rabbit`` application setting ``key`` (Erlang text)."""
    if RABBITMQCTL is None:
        pytest.skip("rabbitmqctl is not installed here")
    done = subprocess.run(
        [RABBITMQCTL, "eval", f"application:get_env(rabbit, {key})."],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


def set_rabbit_env(key: str, value: str) -> None:
    """Set (or, for ``undefined``, unset) a ``rabbit`` application setting at runtime."""
    if value == "undefined":
        rabbitmqctl("eval", f"application:unset_env(rabbit, {key}).")
    else:
        rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {value}).")


@contextlib.contextmanager
def rabbit_env_changed(**values: int) -> Iterator[None]:
    """Change ``rabbit`` application settings for the block; restore them after, even on failure.

    Changed at runtime, on the node every test shares: keep the block short.
    """
    saved: dict[str, str] = {}
    try:
        for key, value in values.items():
            previous = rabbit_env(key)
            saved[key] = previous[len("{ok,") : -1] if previous.startswith("{ok,") else "undefined"
            set_rabbit_env(key, str(value))
        yield
    finally:
        for key, previous in saved.items():
            set_rabbit_env(key, previous)
