"""An application's own worker.py, scheduler.py, broker.py and eventlog.py never clash with ours.

The layers are installed as ``ledgerflow.worker`` and so on, so nothing but
``ledgerflow`` joins an application's import namespace. These processes run in
the application's directory, with the installed ledgerflow (not this checkout
on the path), exactly as a deployment would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.processes import ROOT, cli, processes
from tests.servers import Servers

pytestmark = pytest.mark.integration

# The application's own modules, named like ours, each with something the app uses.
OWN_MODULES = {
    "worker.py": "POOL = 'the app worker pool'\n",
    "scheduler.py": "CRON = 'the app cron table'\n",
    "broker.py": "FEES = {'standard': 2}\n",
    "eventlog.py": "AUDIT: list[str] = []\n",
}

SHOP = textwrap.dedent(
    """
    import broker
    import eventlog
    import scheduler
    import worker

    import ledgerflow as lf


    @lf.step(name="um_price")
    async def price(items: int) -> int:
        return items * 10 + broker.FEES["standard"]


    @lf.workflow(name="um_order")
    async def order(items: int) -> str:
        total = await price(items)
        return f"{total} via {worker.POOL}, {scheduler.CRON}, {len(eventlog.AUDIT)} audits"
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    for name, text in {**OWN_MODULES, "shop.py": SHOP}.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_distribution_installs_nothing_but_ledgerflow(tmp_path: Path) -> None:
    """Build the wheel (from a copy, so the checkout keeps no build output) and list it."""
    source = tmp_path / "src"
    source.mkdir()
    keep = [
        "pyproject.toml",
        "README.md",
        "ledgerflow",
        "eventlog",
        "broker",
        "worker",
        "scheduler",
    ]
    for name in keep:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("ledgerflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "ledgerflow",
        f"{wheel.name.split('-py')[0]}.dist-info",
    }
    for layer in ("eventlog", "broker", "worker", "scheduler"):
        assert f"ledgerflow/{layer}/__init__.py" in names
    assert "ledgerflow/py.typed" in names


async def test_an_app_with_modules_named_like_ours_runs_worker_scheduler_and_start(
    app_dir: Path, servers: Servers, backends: Any
) -> None:
    ns = backends.names.namespace
    own = {"PYTHONPATH": ""}  # the installed ledgerflow, the app from its own directory
    commands = [["worker", "shop", "--concurrency", "2"], ["scheduler", "shop"]]
    with processes(servers, ns, commands, env=own, cwd=app_dir) as procs:
        started = await asyncio.to_thread(
            cli,
            servers,
            ns,
            "--log-level",
            "error",
            "start",
            "shop:order",
            "--args",
            json.dumps([3]),
            "--wait",
            "--timeout",
            "60",
            env=own,
            cwd=app_dir,
            timeout=90,
        )
        assert all(p.poll() is None for p in procs), "a process exited"
    assert started.returncode == 0, started.stderr
    assert "32 via the app worker pool, the app cron table, 0 audits" in started.stdout
