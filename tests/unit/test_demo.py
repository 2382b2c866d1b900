"""`make demo`'s fallback: the order example runs embedded when no servers are reachable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_falls_back_to_embedded_mode_without_servers() -> None:
    env = {
        **os.environ,
        "LEDGERFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
        "LEDGERFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    }
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Redis at redis://127.0.0.1:1/0 is not reachable" in done.stdout
    assert "embedded in-memory mode" in done.stdout
    assert "process_order completed" in done.stdout
    assert done.stdout.count("step_completed") == 7
    assert "result: Receipt(order_id='order-42', total=Decimal('2.45')" in done.stdout
