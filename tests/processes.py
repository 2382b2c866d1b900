"""Start ledgerflow CLI processes for tests, and always stop them.

The processes themselves are ``ledgerflow.testing.fleet``'s (shared with the
benchmark and the chaos driver); this only points them at the test's servers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ledgerflow.testing.fleet import Fleet
from ledgerflow.testing.fleet import cli_env as fleet_env
from tests.servers import Servers

ROOT = Path(__file__).resolve().parent.parent


def cli_env(servers: Servers, namespace: str) -> dict[str, str]:
    return fleet_env(servers.amqp_url, servers.redis_url, namespace, pythonpath=ROOT)


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
    log_dir = Path(tempfile.mkdtemp(prefix=f"lf-{namespace}-"))
    fleet = Fleet({**cli_env(servers, namespace), **(env or {})}, log_dir, cwd=cwd)
    for index, command in enumerate(commands):
        fleet.add(command[0], command, name=f"{index}-{command[0]}")
    try:
        fleet.start_all()
        yield [proc.popen for proc in fleet.procs if proc.popen is not None]
    finally:
        fleet.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)
