"""The dashboard's JSON API over real HTTP, on the real servers: filters, detail, DLQ, escaping."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.dashboard.conftest import GARBAGE, MARKUP, Runs


@pytest.fixture
async def http(dashboard: str) -> Any:
    async with httpx.AsyncClient(base_url=dashboard, timeout=30) as client:
        yield client


def _ids(body: dict[str, Any]) -> set[str]:
    return {run["run_id"] for run in body["runs"]}


async def test_runs_filters(http: httpx.AsyncClient, finished_runs: Runs) -> None:
    both = {finished_runs.parallel, finished_runs.failing}
    assert _ids((await http.get("/api/runs")).json()) == both

    failed = (await http.get("/api/runs", params={"status": "failed"})).json()
    assert _ids(failed) == {finished_runs.failing}
    assert failed["runs"][0]["workflow"] == "db_failing"
    assert failed["runs"][0]["status"] == "failed"

    completed = await http.get("/api/runs", params={"status": "completed"})
    assert _ids(completed.json()) == {finished_runs.parallel}
    by_workflow = await http.get("/api/runs", params={"workflow": "db_parallel"})
    assert _ids(by_workflow.json()) == {finished_runs.parallel}
    none = await http.get("/api/runs", params={"status": "failed", "workflow": "db_parallel"})
    assert _ids(none.json()) == set()
    assert _ids((await http.get("/api/runs", params={"limit": 1})).json()) < both
    # an empty filter (what the page sends for "all") means no filter
    assert _ids((await http.get("/api/runs", params={"status": ""})).json()) == both


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "exploded"}, "unknown status"),
        ({"limit": 0}, "limit"),
        ({"limit": "x"}, ""),
        ({"limit": 100_000_000}, "limit"),  # a page, never the whole index
        ({"workflow": "w" * 5000}, "workflow"),
    ],
)
async def test_bad_filters_are_client_errors(
    http: httpx.AsyncClient, params: dict[str, Any], says: str
) -> None:
    response = await http.get("/api/runs", params=params)
    assert response.status_code in (400, 422)
    assert says in str(response.json()["detail"])


@pytest.mark.parametrize("run_id", ["a|b", "x" * 201, "a%20b", "%1b%5b2J"])
async def test_a_run_id_outside_the_rule_is_a_client_error(
    http: httpx.AsyncClient, run_id: str
) -> None:
    response = await http.get(f"/api/runs/{run_id}")
    assert response.status_code == 400
    assert "invalid run id" in response.json()["detail"]


async def test_run_detail_has_bars_events_and_payloads(
    http: httpx.AsyncClient, finished_runs: Runs, running: Any
) -> None:
    response = await http.get(f"/api/runs/{finished_runs.parallel}")
    assert response.status_code == 200
    detail = response.json()
    assert detail["run"]["status"] == "completed"
    assert detail["run"]["args"] == [MARKUP]
    assert detail["run"]["result"] == ["a", "b", "c", MARKUP]

    bars = detail["bars"]
    assert [(b["id"], b["name"], b["status"]) for b in bars] == [
        (f"s{i}", "db_nap", "completed") for i in (1, 2, 3, 4)
    ]
    parallel, last = bars[:3], bars[3]
    assert max(b["start_ms"] for b in parallel) < min(b["end_ms"] for b in parallel), (
        f"the three gathered steps did not overlap in time: {parallel}"
    )
    assert last["start_ms"] >= max(b["end_ms"] for b in parallel)
    assert bars[0]["args"] == {"args": ["a", 0.4], "kwargs": {}}
    assert last["args"] == {"args": [MARKUP, 0.01], "kwargs": {}}

    events = await running.events(finished_runs.parallel)
    assert [e["id"] for e in detail["events"]] == [e.id for e in events]
    created = [e for e in detail["events"] if e["type"] == "step_created"]
    assert created[3]["data"]["args"] == {"args": [MARKUP, 0.01], "kwargs": {}}
    completed = [e for e in detail["events"] if e["type"] == "run_completed"]
    assert completed[0]["data"]["result"] == ["a", "b", "c", MARKUP]


async def test_failed_run_detail_names_the_error(
    http: httpx.AsyncClient, finished_runs: Runs
) -> None:
    detail = (await http.get(f"/api/runs/{finished_runs.failing}")).json()
    assert detail["run"]["status"] == "failed"
    assert detail["bars"][0]["status"] == "failed"
    assert detail["bars"][0]["error"]["type"] == "RuntimeError"
    assert MARKUP in detail["bars"][0]["error"]["message"]


async def test_unknown_run_is_404(http: httpx.AsyncClient, backends: Any) -> None:
    response = await http.get("/api/runs/no-such-run")
    assert response.status_code == 404
    assert "no-such-run" in response.json()["detail"]


async def test_dlq_lists_without_taking(
    http: httpx.AsyncClient, garbage_dead_letter: str, backends: Any
) -> None:
    for _ in range(2):  # looking twice changes nothing
        body = (await http.post("/api/dlq", json={})).json()
        assert body["depth"] == 1
        assert body["queue"] == backends.names.dead_queue
        [message] = body["messages"]
        assert message["message_id"] == message["id"] == garbage_dead_letter
        assert (message["kind"], message["run_id"], message["step"]) == ("?", None, None)
        assert "malformed" in message["reason"]
        assert message["queue"] == backends.names.runs_queue
        assert message["size"] == len(GARBAGE)
        assert message["decoded"]["$type"] == "malformed"
        assert message["decoded"]["body"]["len"] == len(GARBAGE)
        assert "<b>bold</b>" in message["decoded"]["body"]["text"]
    assert await backends.broker.queue_depth(backends.names.dead_queue) == 1
    delivery = await backends.broker.get(backends.names.dead_queue, timeout=5)
    assert delivery is not None
    # Still there, unchanged; each look was one return, counted on the dead queue only.
    assert (delivery.message_id, delivery.body) == (garbage_dead_letter, GARBAGE)
    assert delivery.delivery_count <= 3
    await delivery.ack()


async def test_page_is_served_with_a_strict_content_security_policy(
    http: httpx.AsyncClient, backends: Any
) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: the policy would block it anyway
    script = await http.get("/static/app.js")
    assert script.status_code == 200
    markup_sinks = re.findall(
        r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script.text
    )
    assert not markup_sinks, "render values with textContent, never as markup"
    api = await http.get("/api/runs")
    assert api.headers["content-type"] == "application/json"
    assert api.headers["content-security-policy"] == policy
