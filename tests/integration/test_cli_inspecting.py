"""Read-only CLI commands show any run, even one holding objects of classes they cannot import."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from ledgerflow.eventlog.events import EventType, NewEvent

from tests.processes import cli
from tests.servers import Servers

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Invoice:
    """Defined only here: the CLI subprocess never imports this module."""

    number: str
    cents: int


async def test_runs_show_and_state_display_unknown_classes(servers: Servers, backends: Any) -> None:
    run_id = "inspect-unknown-class"
    invoice = Invoice("INV-7", 1250)
    data = {"workflow": "billing", "args": [invoice], "kwargs": {}}
    await backends.store.append(
        run_id,
        [
            NewEvent.of(EventType.RUN_CREATED, data=data, workflow="billing"),
            NewEvent.of(EventType.RUN_STARTED),
            NewEvent.of(EventType.RUN_COMPLETED, data={"result": invoice}),
        ],
    )
    ns = backends.names.namespace
    shown = await asyncio.to_thread(cli, servers, ns, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "Invoice(number='INV-7', cents=1250)" in shown.stdout
    state = await asyncio.to_thread(cli, servers, ns, "runs", "state", run_id, "--json")
    assert state.returncode == 0, state.stderr
    assert "INV-7" in json.dumps(json.loads(state.stdout))
