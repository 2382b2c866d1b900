"""The CLI as a subprocess: bad usage is exit 2 with one line; stored text cannot drive a terminal.

Every bad invocation the README promises exit 2 for, and the configuration
mistakes that used to end in a traceback, are run for real. Then runs and
dead letters whose ids, names, errors and reasons hold terminal escape
sequences are printed by every non-JSON renderer, which must show them escaped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from ledgerflow.broker import QUEUE_HEADER, REASON_HEADER, Activation, encode_message
from ledgerflow.eventlog.events import EventType, NewEvent

import ledgerflow as lf
from ledgerflow.cli import build_parser
from ledgerflow.cli.format import printable
from tests.apps import arith
from tests.processes import ROOT, cli
from tests.servers import Servers

# ESC [2J clears the screen; CR rewrites the line; ESC ]0; retitles the window; U+202E
# reverses what follows; NEL (U+0085) and CSI (U+009B) are the 8-bit forms of newline and ESC [.
HOSTILE = "ok\x1b[2J\rFAKE\x1b]0;owned\x07\u202etxt.exe\x85\x9b31m"
CONTROL = ("\x1b", "\r", "\x07", "\u202e", "\x85", "\x9b")


def bare_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`ledgerflow ARGS` needing no server (the error comes before any connection)."""
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert says in last, result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "tests.apps.arith:it_total", "--args", "notjson"], "--args is not valid JSON"),
        (
            ["start", "tests.apps.arith:it_total", "--args", '{"a": 1}'],
            "--args must be a JSON list",
        ),
        (
            ["start", "tests.apps.arith:it_total", "--kwargs", "[1]"],
            "--kwargs must be a JSON object",
        ),
        (["start", "tests.apps.arith:it_total", "--args", "[" * 100_000], "not valid JSON"),
        (["start", "app_without_colon"], "expected APP:WORKFLOW"),
        (["start", ":it_total"], "expected APP:WORKFLOW"),
        (["start", "tests.apps.arith:"], "expected APP:WORKFLOW"),
        (["start", "tests.apps.arith:no_such_workflow"], "defines no workflow 'no_such_workflow'"),
        (["worker", "no.such.module"], "cannot import APP module 'no.such.module'"),
        (["scheduler", "no.such.module"], "cannot import APP module"),
        (["worker", "tests.apps.raises_at_import"], "raised RuntimeError while being imported"),
        (["worker", "tests.apps.raises_at_import", "--processes", "2"], "raised RuntimeError"),
        (["worker", "tests.apps.arith", "--metrics-port", "notaport"], "'notaport' is not a port"),
        (["worker", "tests.apps.arith", "--metrics-port", "70000"], "70000 is not a port number"),
        (["reconciler", "--metrics-port", "-1"], "-1 is not a port number"),
        (["dashboard", "--port", "65536"], "65536 is not a port number"),
        (["worker", "tests.apps.arith", "--concurrency", "0"], "invalid positive_int value: '0'"),
        (["worker", "tests.apps.arith", "--grace", "-1"], "(0 or more)"),
        (["worker", "tests.apps.arith", "--metrics-interval", "nan"], "(more than 0)"),
        (["reconciler", "--interval", "0"], "(more than 0)"),
        (["reconciler", "--lease-ttl", "0.0000001"], "shorter than a millisecond"),
        (["start", "tests.apps.arith:it_total", "--timeout", "-5"], "(more than 0)"),
        (["--redis-url", "redis://127.0.0.1:notaport/0", "runs", "list"], "port 'notaport'"),
        (["--amqp-url", "amqp://guest:guest@127.0.0.1:99999/", "queues"], "port '99999'"),
        (["--redis-url", "http://127.0.0.1:6379", "runs", "list"], "scheme http://"),
        (["runs", "list", "--limit", "100000000"], "invalid bounded_count value"),
        (["dlq", "list", "--limit", "10001"], "invalid bounded_count value"),
        (["worker", "tests.apps.arith", "--ack-after", "0.01"], "under the minimum of 1 s"),
        (["worker", "tests.apps.arith", "--stall-budget", "0"], "(more than 0)"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], says: str) -> None:
    result = bare_cli(*args)
    assert_usage_error(result, says)
    if not result.stderr.startswith("usage:"):
        # Our own errors are one line; argparse's come after its usage block.
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_app_error_is_escaped_too() -> None:
    """Even the message of an APP's import failure cannot carry an escape sequence."""
    result = bare_cli("worker", "tests.apps.raises_at_import")
    assert_usage_error(result, "refuses to load:\\x1b[2J\\rLEDGERFLOW_TEST_SETTING")
    assert not any(char in result.stderr for char in CONTROL), repr(result.stderr)
    escaped = bare_cli("start", f"tests.apps.arith:{HOSTILE}")
    assert_usage_error(escaped, "defines no workflow")
    assert not any(char in escaped.stderr for char in CONTROL), repr(escaped.stderr)
    assert "\\x1b[2J" in escaped.stderr


def test_tls_url_against_a_plain_server_is_one_line(servers: Servers, namespace: str) -> None:
    result = cli(
        servers,
        namespace,
        "--redis-url",
        servers.redis_url.replace("redis://", "rediss://", 1),
        "runs",
        "list",
        timeout=90,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "is not reachable" in line and "TLS" in line


# --- stored text in the terminal ------------------------------------------------------------


def assert_escaped(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode in (0, 1), result.stderr
    for stream in (result.stdout, result.stderr):
        assert not any(char in stream for char in CONTROL), repr(stream)
    assert "\\x1b[2J\\rFAKE" in result.stdout, result.stdout


async def hostile_runs(running: lf.Client, backends: Any) -> tuple[str, str]:
    """A real failed run with a hostile error; a written run with a hostile workflow and step.

    (Run ids themselves are refused unless printable: see test_integrity.)
    """
    failed = await running.start(arith.failing, HOSTILE, run_id="run-ok")
    with pytest.raises(lf.WorkflowFailedError):
        await failed.result(timeout=30)
    written = "written-ok"
    await backends.store.append(
        written,
        [
            NewEvent.of(EventType.RUN_CREATED, data={"workflow": HOSTILE}, workflow=HOSTILE),
            NewEvent.of(EventType.RUN_STARTED),
            NewEvent.of(EventType.STEP_CREATED, "s1", data={"name": HOSTILE, "queue": "default"}),
        ],
    )
    return failed.run_id, written


async def test_runs_commands_escape_stored_text(
    servers: Servers, running: lf.Client, backends: Any
) -> None:
    failed, written = await hostile_runs(running, backends)
    ns = backends.names.namespace

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(cli, servers, ns, *args)

    for run_id in (failed, written):
        for command in ("show", "state", "events"):
            assert_escaped(await run("runs", command, run_id))
    listed = await run("runs", "list", "--limit", "10")
    assert_escaped(listed)
    assert "\\x1b[2J" in listed.stdout  # the hostile workflow name, escaped

    # JSON output is escaped by json.dumps, and round-trips to the stored text.
    for args in (("runs", "events", failed, "--json"), ("runs", "show", written, "--json")):
        result = await run(*args)
        assert result.returncode == 0 and not any(c in result.stdout for c in CONTROL)
    events = [
        json.loads(line)
        for line in (await run("runs", "events", failed, "--json")).stdout.splitlines()
    ]
    assert events[0]["data"]["args"] == [HOSTILE]


async def test_dlq_commands_escape_stored_text(servers: Servers, backends: Any) -> None:
    ns, names = backends.names.namespace, backends.names
    message_id = f"dead-{HOSTILE}"
    await backends.broker.publish(
        names.dead_queue,
        encode_message(Activation(f"run-{HOSTILE}")),
        headers={REASON_HEADER: f"reason {HOSTILE}", QUEUE_HEADER: f"queue-{HOSTILE}"},
        message_id=message_id,
    )
    await backends.broker.publish(
        names.dead_queue,
        HOSTILE.encode(),
        headers={REASON_HEADER: HOSTILE, f"x-{HOSTILE}": HOSTILE},
        message_id=f"raw-{HOSTILE}",
    )
    listed = await asyncio.to_thread(cli, servers, ns, "dlq", "list")
    assert_escaped(listed)
    for key in (message_id, f"raw-{HOSTILE}"):
        shown = await asyncio.to_thread(cli, servers, ns, "dlq", "show", key)
        assert shown.returncode == 0, shown.stderr
        assert_escaped(shown)
        assert printable(key) in shown.stdout
    missing = await asyncio.to_thread(cli, servers, ns, "dlq", "show", f"nope-{HOSTILE}")
    assert missing.returncode == 4 and "\x1b" not in missing.stderr
    as_json = await asyncio.to_thread(cli, servers, ns, "dlq", "list", "--json")
    assert not any(c in as_json.stdout for c in CONTROL)
    assert {m["reason"] for m in json.loads(as_json.stdout)["messages"]} == {
        f"reason {HOSTILE}",
        HOSTILE,
    }


@pytest.mark.parametrize("command", [["worker", "app"], ["scheduler", "app"], ["reconciler"]])
def test_metrics_listen_on_this_host_only_by_default(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--metrics-port", "9100"])
    assert (args.metrics_addr, args.metrics_port) == ("127.0.0.1", 9100)
