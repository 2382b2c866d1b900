"""``ledgerflow schedules ...`` end to end: the CLI as a subprocess, on the real servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest
from ledgerflow.eventlog.names import Names
from ledgerflow.eventlog.schedules import MAX_CALL_BYTES
from ledgerflow.scheduler.schedules import build_spec

from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


async def run(servers: Servers, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, servers, ns, "schedules", *args)


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


async def test_add_list_pause_resume_delete(servers: Servers, backends: Any) -> None:
    ns = backends.names.namespace
    added = parsed(
        await run(
            servers,
            ns,
            "add",
            "nightly",
            "--workflow",
            "tests.apps.scheduled:tick",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--args",
            '["night"]',
            "--missed",
            "catch-up:2",
            "--json",
        )
    )
    assert added["outcome"] == "created"
    assert (added["workflow"], added["args"], added["kwargs"]) == ("sched_tick", ["night"], {})
    assert (added["cron"], added["timezone"], added["every_seconds"]) == (
        "30 2 * * *",
        "Europe/Berlin",
        None,
    )
    assert (added["missed"], added["overlap"], added["source"], added["paused"]) == (
        "catch_up:2",
        "skip",
        "cli",
        False,
    )
    assert added["next_tick"] is not None and added["runs"] == 0
    text = await run(servers, ns, "add", "often", "--workflow", "sched_tick", "--every", "5m")
    assert text.returncode == 0, text.stderr
    assert "schedule often created: every 300s, next tick" in text.stdout

    listed = parsed(await run(servers, ns, "list", "--json"))
    assert [s["name"] for s in listed] == ["nightly", "often"]
    table = await run(servers, ns, "list")
    assert table.returncode == 0
    assert "30 2 * * * (Europe/Berlin)" in table.stdout and "every 300s" in table.stdout

    paused = parsed(await run(servers, ns, "pause", "nightly", "--json"))
    assert (paused["changed"], paused["paused"], paused["next_tick"]) == (True, True, None)
    again = await run(servers, ns, "pause", "nightly")
    assert (again.returncode, again.stdout.strip()) == (0, "schedule nightly was already paused")
    listed = {s["name"]: s for s in parsed(await run(servers, ns, "list", "--json"))}
    assert listed["nightly"]["paused"] and not listed["often"]["paused"]
    resumed = parsed(await run(servers, ns, "resume", "nightly", "--json"))
    assert (resumed["changed"], resumed["paused"]) == (True, False)
    assert resumed["next_tick"] is not None

    taken = await run(servers, ns, "add", "often", "--workflow", "sched_tick", "--every", "1m")
    assert taken.returncode == 1
    assert "'often' exists already" in taken.stderr
    replaced = parsed(
        await run(
            servers, ns, "add", "often", "--workflow", "sched_tick", "--every", "1m", "--replace",
            "--json",
        )
    )  # fmt: skip
    assert (replaced["outcome"], replaced["every_seconds"]) == ("updated", 60)

    assert parsed(await run(servers, ns, "delete", "often", "--json")) == {
        "name": "often",
        "deleted": True,
    }
    gone = await run(servers, ns, "delete", "often")
    assert gone.returncode == 4 and "no schedule is named 'often'" in gone.stderr
    for verb in ("pause", "resume"):
        assert (await run(servers, ns, verb, "often")).returncode == 4
    assert [s["name"] for s in parsed(await run(servers, ns, "list", "--json"))] == ["nightly"]


async def test_a_schedule_declared_in_code_is_deleted_only_with_force(
    servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    spec = build_spec("from-code", "sched_tick", every=60, args=["x"], source="code")  # type: ignore[arg-type]
    await backends.store.put_schedule(spec, next_ms=await backends.store.now_ms() + 60_000)
    refused = await run(servers, ns, "delete", "from-code")
    assert refused.returncode == 2 and "declared in code" in refused.stderr
    assert (await run(servers, ns, "delete", "from-code", "--force")).returncode == 0


BAD_ADDS = [
    (["bad:name", "--workflow", "w", "--every", "1m"], "invalid schedule name"),
    (["x" * 65, "--workflow", "w", "--every", "1m"], "invalid schedule name"),
    (["n", "--workflow", "w", "--cron", "61 * * * *"], "Bad minute"),
    (["n", "--workflow", "w", "--cron", "* * *"], "Wrong number of fields"),
    (["n", "--workflow", "w", "--cron", "0 3 * * *", "--timezone", "Mars/Base"], "time zone"),
    (["n", "--workflow", "w", "--cron", "0 3 * * *", "--timezone", "../etc"], "time zone"),
    (["n", "--workflow", "w", "--every", "1m", "--timezone", "UTC"], "time zone applies"),
    (["n", "--workflow", "w", "--every", "0s"], "whole seconds"),
    (["n", "--workflow", "w", "--every", "1.5s"], "--every"),
    (["n", "--workflow", "w", "--every", "400d"], "whole seconds"),
    (["n", "--workflow", "w", "--every", "1m", "--cron", "* * * * *"], "not allowed with"),
    (["n", "--workflow", "w"], "one of the arguments --cron --every is required"),
    (["n", "--workflow", "w", "--every", "1m", "--args", "{}"], "--args must be a JSON list"),
    (["n", "--workflow", "w", "--every", "1m", "--args", "[1"], "--args is not valid JSON"),
    (["n", "--workflow", "w", "--every", "1m", "--missed", "catch-up:101"], "catch up 0"),
    (["n", "--workflow", "w", "--every", "1m", "--missed", "later"], "skip or catch-up:N"),
    (["n", "--workflow", "w", "--every", "1m", "--overlap", "queue"], "invalid choice"),
    (["n", "--workflow", "w\x1b[2J", "--every", "1m"], "not printable"),
    (["n", "--workflow", "tests.apps.scheduled:nope", "--every", "1m"], "no workflow 'nope'"),
    (["n", "--workflow", "tests.apps.scheduled:tick", "--every", "1m"], "bad arguments"),
    (["n", "--workflow", "nosuchapp.x:wf", "--every", "1m"], "cannot import APP"),
]


@pytest.mark.parametrize(("argv", "error"), BAD_ADDS)
async def test_hostile_input_is_refused_saying_what(
    servers: Servers, backends: Any, argv: list[str], error: str
) -> None:
    refused = await run(servers, backends.names.namespace, "add", *argv)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert error in refused.stderr
    assert await backends.store.read_schedules() == []


async def test_oversized_arguments_are_refused(servers: Servers, backends: Any) -> None:
    big = json.dumps(["x" * (MAX_CALL_BYTES + 1)])
    refused = await run(
        servers, backends.names.namespace, "add", "n", "--workflow", "w", "--every", "1m",
        "--args", big,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "arguments of schedule 'n'" in refused.stderr and "limit" in refused.stderr


async def test_stored_data_is_printed_escaped(
    servers: Servers, backends: Any, redis_client: Any, names: Names
) -> None:
    """A hash written around ledgerflow shows as unreadable, its text escaped."""
    ns = names.namespace
    await redis_client.hset(names.schedule("evil"), mapping={"workflow": "\x1b[2Jwf"})
    await redis_client.sadd(names.schedule_names(), "evil", "bad\x1b[31mname")
    text = await run(servers, ns, "list")
    assert text.returncode == 0
    assert "\x1b" not in text.stdout
    assert "unreadable" in text.stdout and "bad\\x1b[31mname" in text.stdout
    listed = parsed(await run(servers, ns, "list", "--json"))
    assert [s["name"] for s in listed] == ["bad\x1b[31mname", "evil"]
    assert all("error" in s for s in listed)
