"""Start ledgerflow CLI processes for tests, and always stop them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.servers import Servers

ROOT = Path(__file__).resolve().parent.parent


def cli_env(servers: Servers, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "LEDGERFLOW_AMQP_URL": servers.amqp_url,
        "LEDGERFLOW_REDIS_URL": servers.redis_url,
        "LEDGERFLOW_NAMESPACE": namespace,
        "LEDGERFLOW_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }


def cli(
    servers: Servers,
    namespace: str,
    *args: str,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *args],
        env={**cli_env(servers, namespace), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def processes(
    servers: Servers,
    namespace: str,
    commands: Sequence[Sequence[str]],
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `ledgerflow <command>` processes for the block; SIGTERM (then SIGKILL) after.

    ``env`` overrides variables of ``cli_env`` (other server URLs, say); ``cwd`` is
    where they run (an application's own directory).
    """
    # Logs go to files, never to a pipe nobody reads: a full pipe would block the
    # process the moment it logs a burst (say, reconnect warnings during an outage).
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    procs = []
    for index, command in enumerate(commands):
        with open(log_dir / f"{index}-{command[0]}.log", "wb") as log_file:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ledgerflow", *command],
                    env={**cli_env(servers, namespace), **(env or {})},
                    cwd=cwd,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            )
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(log_dir, ignore_errors=True)
