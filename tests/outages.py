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
