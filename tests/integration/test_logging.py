"""Structured logs (issue 7, item 2): step fields on every line, JSON off a terminal, levels."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import structlog
from ledgerflow.scheduler.client import Client
from structlog.testing import capture_logs

import ledgerflow as lf
from ledgerflow.ops.logs import add_pid
from tests.apps import observed
from tests.processes import ROOT, cli_env
from tests.servers import Servers

pytestmark = pytest.mark.integration

STEP_FIELDS = ("run_id", "workflow", "step", "corr", "attempt", "pid")


async def test_log_lines_of_a_steps_own_code_carry_the_step_fields(running: lf.Client) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars, add_pid]) as logs:
        run = await running.start(observed.greeter, "ada")
        assert await run.result(timeout=15) == "hello ada"
    greetings = [e for e in logs if e["event"] == "greeting"]
    assert [e["attempt"] for e in greetings] == [1, 2]
    for line in greetings:
        assert {k: line[k] for k in STEP_FIELDS} == {
            "run_id": run.run_id,
            "workflow": "ob_greeter",
            "step": "ob_greet",
            "corr": "s1",
            "attempt": line["attempt"],
            "pid": os.getpid(),
        }
    # Nothing leaks out of the step: the scheduler's line has no step fields.
    finished = next(e for e in logs if e["event"] == "run finished")
    assert finished["workflow"] == "ob_greeter"
    assert "step" not in finished and "attempt" not in finished


def run_worker_logging(
    servers: Servers, namespace: str, flags: list[str], env_level: str
) -> tuple[list[dict[str, Any]], int, str]:
    """Run a `worker --with-scheduler` subprocess through one run; its stderr lines, pid, run id."""
    env = {**cli_env(servers, namespace), "LEDGERFLOW_LOG_LEVEL": env_level}
    with tempfile.TemporaryFile() as stderr:
        command = [*flags, "worker", "tests.apps.observed", "--with-scheduler"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledgerflow", *command],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,  # a file, not a terminal: JSON lines
        )
        try:
            run_id = asyncio.run(_one_run(servers, namespace))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        stderr.seek(0)
        text = stderr.read().decode()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return lines, proc.pid, run_id


async def _one_run(servers: Servers, namespace: str) -> str:
    async with Client.connect(servers.amqp_url, servers.redis_url, namespace=namespace) as client:
        run = await client.start(observed.greeter, "grace")
        assert await run.result(timeout=30) == "hello grace"
        return run.run_id


@pytest.mark.parametrize(
    ("flags", "env_level"),
    [(["--log-level", "debug"], "warning"), ([], "debug")],
    ids=["flag", "env"],
)
def test_debug_level_json_lines_carry_run_workflow_step_corr_attempt_pid(
    servers: Servers, namespace: str, backends: Any, flags: list[str], env_level: str
) -> None:
    lines, pid, run_id = run_worker_logging(servers, namespace, flags, env_level)
    recorded = [e for e in lines if e["event"] == "step recorded"]
    assert [(e["attempt"], e["outcome"]) for e in recorded] == [
        (1, "step_retrying"),
        (2, "step_completed"),
    ]
    for line in recorded + [e for e in lines if e["event"] == "greeting"]:
        assert line["run_id"] == run_id
        assert line["workflow"] == "ob_greeter"  # attempt 2 came by the timer loop
        assert (line["step"], line["corr"], line["pid"]) == ("ob_greet", "s1", pid)
        assert line["level"] in ("debug", "info")
        assert "timestamp" in line
    retry = next(e for e in lines if e["event"] == "step retry dispatched")
    assert (retry["workflow"], retry["step"], retry["attempt"]) == ("ob_greeter", "ob_greet", 2)


def test_warning_level_leaves_out_info_and_debug(
    servers: Servers, namespace: str, backends: Any
) -> None:
    lines, pid, run_id = run_worker_logging(servers, namespace, ["--log-level", "warning"], "debug")
    assert {e["level"] for e in lines} <= {"warning", "error", "critical"}
    loud = [e for e in lines if e["event"] == "greeting loudly"]
    assert [e["attempt"] for e in loud] == [1, 2]
    assert all(e["run_id"] == run_id and e["pid"] == pid for e in loud)
    assert not [e for e in lines if e["event"] in ("greeting", "step recorded")]


def test_console_output_on_a_terminal_json_otherwise() -> None:
    """The same configuration call picks the renderer from whether stderr is a TTY."""
    code = (
        "import sys, structlog; from ledgerflow.ops.logs import configure_logging; "
        "configure_logging('info'); structlog.get_logger('t').info('hello', run_id='r1')"
    )
    piped = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    line = json.loads(piped.stderr)
    assert (line["event"], line["run_id"], line["level"]) == ("hello", "r1", "info")
    primary, secondary = os.openpty()
    try:
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, stderr=secondary, check=True, timeout=30
        )
        os.close(secondary)
        text = os.read(primary, 4096).decode()
    finally:
        os.close(primary)
    assert "hello" in text and "run_id" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
