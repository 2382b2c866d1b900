"""``ledgerflow runs export`` and ``ledgerflow replay``: in process, and end to end on servers."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledgerflow import testing
from ledgerflow.cli import build_parser
from tests.apps.arith import expected_total, total
from tests.processes import cli
from tests.servers import Servers

HERE = Path(__file__).resolve().parent
OK = HERE / "orders_ok.jsonl"


async def run_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Parse and run one command in this process, as main() would minus its error mapping."""
    args = build_parser().parse_args(list(argv))
    code: int = await args.handler(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lf_cli(servers: Servers, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess."""
    return cli(servers, namespace, *args)


# --- replay, in process (no servers needed) ------------------------------------------------


async def test_replay_of_a_consistent_golden_exits_0_with_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await run_command(capsys, "replay", str(OK), "examples.orders:process_order")
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    assert out.startswith("run golden-orders-ok (process_order): 21 events replayed, consistent")


async def test_replay_against_edited_code_exits_1_naming_the_position(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await run_command(
        capsys, "replay", str(OK), "tests.replay.edited:notify_before_ship"
    )
    assert (code, out) == (1, "")
    assert "diverged at s5: the log recorded step 'ship', the code now does step 'notify'" in err


async def test_replay_of_a_bad_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(OK.read_text().replace('"type": "step_created"', '"type": 7', 1))
    code, _, err = await run_command(capsys, "replay", str(bad), "examples.orders:process_order")
    assert code == 2
    assert f"{bad}, line 4: the event's 'type' must be a str" in err
    code, _, err = await run_command(
        capsys, "replay", str(tmp_path / "missing.jsonl"), "examples.orders:process_order"
    )
    assert code == 2
    assert "cannot read history file" in err


# --- export and replay, end to end -----------------------------------------------------------


async def _finished_total(client: Any, n: int) -> str:
    run = await client.start(total, n)
    assert await run.result(timeout=10) == expected_total(n)
    run_id: str = run.run_id
    return run_id


async def test_export_then_replay_a_real_run(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    run_id = await _finished_total(running, 3)
    exported = await asyncio.to_thread(lf_cli, servers, namespace, "runs", "export", run_id)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith('{"ledgerflow_history": 1, "run_id": "' + run_id)
    history = tmp_path / "run.jsonl"
    history.write_text(exported.stdout)

    replayed = await asyncio.to_thread(
        lf_cli, servers, namespace, "replay", str(history), "tests.apps.arith:total"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert f"run {run_id} (it_total)" in replayed.stdout
    assert "consistent; completed with 6" in replayed.stdout

    diverged = await asyncio.to_thread(
        lf_cli, servers, namespace, "replay", str(history), "tests.replay.edited:total_slow"
    )
    assert diverged.returncode == 1
    assert "diverged at s4: the log recorded step 'it_add', the code now does step " in (
        diverged.stderr
    )


async def test_export_to_a_file_and_of_a_missing_run(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    run_id = await _finished_total(running, 2)
    target = tmp_path / "out.jsonl"
    exported = await asyncio.to_thread(
        lf_cli, servers, namespace, "runs", "export", run_id, "--output", str(target)
    )
    assert exported.returncode == 0, exported.stderr
    events = await running.events(run_id)
    assert exported.stdout == f"exported {len(events)} events of run {run_id} to {target}\n"
    assert list(testing.load_history(target)) == events
    assert testing.replay(target, total).finished

    missing = await asyncio.to_thread(lf_cli, servers, namespace, "runs", "export", "no-such-run")
    assert missing.returncode == 4
    assert "run 'no-such-run' does not exist" in missing.stderr


async def test_export_of_a_run_with_large_values_replays_from_the_file_alone(
    running: Any, servers: Servers, namespace: str, tmp_path: Path
) -> None:
    from tests.apps import large

    run = await running.start(large.round_trip, 200_000, "cli")
    await run.result(timeout=60)
    history = tmp_path / "large.jsonl"
    exported = await asyncio.to_thread(
        lf_cli, servers, namespace, "runs", "export", run.run_id, "--output", str(history)
    )
    assert exported.returncode == 0, exported.stderr
    assert sum(line.startswith('{"blob"') for line in history.read_text().splitlines()) == 2
    replayed = await asyncio.to_thread(
        lf_cli, servers, namespace, "replay", str(history), "tests.apps.large:round_trip"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "consistent; completed with" in replayed.stdout
