"""The dashboard after retention removed a run: gone from the list, 404 in detail."""

from __future__ import annotations

from typing import Any

import httpx
from ledgerflow.eventlog.store import RemoveOutcome

from tests.dashboard.conftest import Runs


async def test_a_removed_run_is_not_listed_and_not_found(
    dashboard: str, finished_runs: Runs, backends: Any
) -> None:
    assert await backends.store.remove_run(finished_runs.failing) is RemoveOutcome.REMOVED
    async with httpx.AsyncClient(base_url=dashboard, timeout=30) as http:
        listed = {run["run_id"] for run in (await http.get("/api/runs")).json()["runs"]}
        assert listed == {finished_runs.parallel}
        detail = await http.get(f"/api/runs/{finished_runs.failing}")
        assert detail.status_code == 404
        assert (await http.get(f"/api/runs/{finished_runs.parallel}")).status_code == 200
