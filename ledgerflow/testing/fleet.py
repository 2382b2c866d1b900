"""Run ``ledgerflow`` worker, scheduler and reconciler processes for a test, and stop them.

Integration tests, the benchmark and the chaos driver all need the same thing:
real CLI processes on real servers in one namespace, whose logs can be read
afterwards, and which are stopped however the test ends. This module is that,
once, and users may run their own integration tests with it::

    env = cli_env(amqp_url, redis_url, namespace)
    fleet = Fleet(env, log_dir)
    fleet.add("worker", ["worker", "myapp"])
    fleet.add("scheduler", ["scheduler", "myapp"])
    fleet.start_all()
    try:
        await fleet.wait_until_consuming(amqp_url, {names.step_queue(): 1})
        ...
    finally:
        fleet.stop_all()

Logs go to one file per process, never to a pipe: a pipe nobody reads blocks
the process the moment it logs a burst (reconnect warnings during an outage).
A restarted process appends to its file after a marker line.

Stopping is SIGTERM to all, one shared deadline for all of them to exit (the
CLI drains and exits 0), then SIGKILL. It blocks, so that no cancellation of
the caller's task can skip it and leave processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity

from ledgerflow.broker.rabbitmq import connect_first

DEFAULT_STOP_TIMEOUT = 20.0
"""Seconds every process together gets to exit after SIGTERM (their grace is less)."""

DEFAULT_READY_TIMEOUT = 60.0


def cli_env(
    amqp_url: str,
    redis_url: str,
    namespace: str,
    *,
    log_level: str = "warning",
    pythonpath: str | Path | None = None,
) -> dict[str, str]:
    """This process's environment, pointed at the servers and the namespace.

    ``pythonpath`` is where the processes import the app from (a checkout's root).
    """
    env = {
        **os.environ,
        "LEDGERFLOW_AMQP_URL": amqp_url,
        "LEDGERFLOW_REDIS_URL": redis_url,
        "LEDGERFLOW_NAMESPACE": namespace,
        "LEDGERFLOW_LOG_LEVEL": log_level,
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


@dataclass
class FleetProcess:
    """One process slot: restarts reuse the slot and append to its log."""

    name: str
    role: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[str]:
        """The non-empty lines it logged (at warning level: everything that went wrong)."""
        return [line for line in self.log_text().splitlines() if line.strip()]

    def tail(self, lines: int = 3) -> str:
        """The last lines of its log on one line, for a report."""
        if not self.log_path.exists():
            return "(no log)"
        return " | ".join(self.log_text().strip().splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class Stopped:
    """How one process ended when the fleet stopped."""

    name: str
    returncode: int | None
    killed: bool
    """It ignored SIGTERM for the whole timeout and was SIGKILLed."""

    @property
    def clean(self) -> bool:
        """Exited 0, or by SIGTERM's default action (a process still importing has no
        handler yet: that is Python's default, not a failure to stop)."""
        return not self.killed and self.returncode in (0, -signal.SIGTERM)


class Fleet:
    """``python -m ledgerflow`` processes sharing one environment and one log directory."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        cwd: Path | None = None,
        options: Sequence[str] = (),
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        """``options`` go before every command (global ones, such as ``--loop``)."""
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd
        self.options = list(options)
        self.stop_timeout = stop_timeout
        self.procs: list[FleetProcess] = []

    def add(
        self,
        role: str,
        command: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> FleetProcess:
        """A slot for ``ledgerflow <command>`` (not started); ``env`` overrides the fleet's."""
        name = name or f"{role}-{len(self.of(role))}"
        proc = FleetProcess(
            name, role, list(command), self.log_dir / f"{name}.log", dict(env or {})
        )
        self.procs.append(proc)
        return proc

    def of(self, role: str) -> list[FleetProcess]:
        return [p for p in self.procs if p.role == role]

    def spawn(self, proc: FleetProcess) -> None:
        """Start (or start again) one slot's process."""
        with open(proc.log_path, "ab" if proc.starts else "wb") as log_file:
            if proc.starts:
                log_file.write(f"--- fleet: restart {proc.starts} ---\n".encode())
                log_file.flush()
            proc.popen = subprocess.Popen(
                [sys.executable, "-m", "ledgerflow", *self.options, *proc.command],
                env={**self.env, **proc.env},
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        proc.starts += 1
        proc.expected_exit = False

    def start_all(self) -> None:
        for proc in self.procs:
            self.spawn(proc)

    async def kill(self, proc: FleetProcess) -> None:
        """SIGKILL one process and wait for it to be gone (``spawn`` starts it again)."""
        popen = proc.popen
        if popen is None:
            raise RuntimeError(f"{proc.name} was never started")
        proc.expected_exit = True
        if popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(popen.wait)

    async def kill_and_restart(self, proc: FleetProcess, pause: float) -> str:
        """SIGKILL, wait ``pause``, start again: a crash and a supervisor's restart."""
        await self.kill(proc)
        popen = proc.popen
        assert popen is not None
        await asyncio.sleep(pause)
        self.spawn(proc)
        return f"{proc.name} (pid {popen.pid}, back after {pause:.1f} s)"

    def reap(self) -> list[str]:
        """Processes that exited without being asked to: report them and start them again."""
        crashed = []
        for proc in self.procs:
            if proc.popen is None or proc.expected_exit or proc.popen.poll() is None:
                continue
            crashed.append(
                f"{proc.name} exited {proc.popen.returncode} on its own; log tail: {proc.tail()}"
            )
            self.spawn(proc)
        return crashed

    def stop_all(self) -> list[Stopped]:
        """SIGTERM everything, SIGKILL what has not exited by the shared deadline."""
        for proc in self.procs:
            proc.expected_exit = True
            if proc.alive and proc.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        stopped = []
        for proc in self.procs:
            if proc.popen is None:
                continue
            killed = False
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = True
                proc.popen.kill()
                proc.popen.wait()
            stopped.append(Stopped(proc.name, proc.popen.returncode, killed))
        return stopped

    def log_lines(self) -> dict[str, list[str]]:
        """Each process's non-empty log lines, by name."""
        return {proc.name: proc.log_lines() for proc in self.procs}

    async def wait_until_consuming(
        self,
        amqp_url: str,
        consumers: Mapping[str, int],
        timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> float:
        """Block until each queue has at least its number of consumers; the seconds it took.

        Consuming is when a process is ready: it has connected, declared and
        subscribed. A process that exits meanwhile fails the wait with its log's tail.
        """
        began = time.monotonic()
        connection = await connect_first(amqp_url)
        try:
            while True:
                dead = [p for p in self.procs if p.popen is not None and p.returncode is not None]
                if dead:
                    raise RuntimeError(
                        f"{dead[0].name} exited with {dead[0].returncode}:\n"
                        f"{dead[0].log_text()[-2000:]}"
                    )
                counts = {q: await consumer_count(connection, q) for q in consumers}
                if all(counts[q] >= wanted for q, wanted in consumers.items()):
                    return time.monotonic() - began
                if time.monotonic() - began > timeout:
                    seen = ", ".join(f"{q} {counts[q]}/{n}" for q, n in consumers.items())
                    raise RuntimeError(
                        f"processes not consuming after {timeout:g} s (consumers: {seen})"
                    )
                await asyncio.sleep(0.1)
        finally:
            await connection.close()


async def consumer_count(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Consumers on a queue, by a passive declare on a throwaway channel.

    A queue nobody has declared yet has no consumers (a process still starting).
    """
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    except ChannelNotFoundEntity:
        return 0
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
