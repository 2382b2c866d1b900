"""ledgerflow.fastapi on real servers: the lifespan's client, the router, the example service.

Requests go through httpx's ASGI transport into the app (no socket), with the app's
lifespan entered as uvicorn would; a worker and a scheduler run in this process
(``running``), on the test's namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from ledgerflow.eventlog.events import EventType
from ledgerflow.eventlog.names import WEBHOOK_TOKEN_RE

import ledgerflow as lf
from ledgerflow.fastapi import MAX_BODY_BYTES, MAX_NESTING, ClientDep, lifespan, router
from tests.apps import arith, waiting
from tests.servers import Servers

pytestmark = pytest.mark.integration


WEBHOOK_SECRET = "test-secret"
ALLOWED = [arith.total, arith.failing, waiting.approval, waiting.webhook_receiver, "it_nap"]


@pytest.fixture(params=[None, WEBHOOK_SECRET], ids=["unsigned", "signed"])
def webhook_secret(request: pytest.FixtureRequest) -> str | None:
    secret: str | None = request.param
    return secret


@pytest.fixture
async def api(
    servers: Servers, namespace: str, running: lf.Client, webhook_secret: str | None
) -> AsyncIterator[httpx.AsyncClient]:
    """An app mounting the router for a few workflows, its lifespan entered."""
    opened = lifespan(amqp_url=servers.amqp_url, redis_url=servers.redis_url, namespace=namespace)
    app = FastAPI(lifespan=opened)
    app.include_router(router(workflows=ALLOWED, webhook_secret=webhook_secret), prefix="/lf")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_a_run_started_over_http_completes_and_reports_its_result(
    api: httpx.AsyncClient,
) -> None:
    started = await api.post("/lf/runs", json={"workflow": "it_total", "args": [3]})
    assert started.status_code == 201, started.text
    run_id = started.json()["run_id"]
    done = await api.get(f"/lf/runs/{run_id}/result", params={"wait": 20})
    assert done.status_code == 200, done.text
    assert done.json() == {
        "run_id": run_id,
        "status": "completed",
        "result": arith.expected_total(3),
    }
    status = (await api.get(f"/lf/runs/{run_id}")).json()
    assert status["status"] == "completed" and status["result"] == arith.expected_total(3)
    # The same run id again starts nothing new.
    again = await api.post("/lf/runs", json={"workflow": "it_total", "args": [3], "run_id": run_id})
    assert again.status_code == 201 and again.json()["run_id"] == run_id


async def test_a_failed_or_cancelled_run_answers_409_and_a_running_one_202(
    api: httpx.AsyncClient,
) -> None:
    failed = (await api.post("/lf/runs", json={"workflow": "it_failing", "args": ["no"]})).json()
    answer = await api.get(f"/lf/runs/{failed['run_id']}/result", params={"wait": 20})
    assert answer.status_code == 409 and answer.json()["status"] == "failed"
    status = (await api.get(f"/lf/runs/{failed['run_id']}")).json()
    assert status["status"] == "failed" and "no" in status["error"]["message"]

    napping = (await api.post("/lf/runs", json={"workflow": "it_nap", "args": [30]})).json()
    still = await api.get(f"/lf/runs/{napping['run_id']}/result")
    assert still.status_code == 202 and still.json()["status"] == "running"
    cancelled = await api.post(f"/lf/runs/{napping['run_id']}/cancel")
    assert cancelled.status_code == 202
    answer = await api.get(f"/lf/runs/{napping['run_id']}/result", params={"wait": 20})
    assert answer.status_code == 409 and answer.json()["status"] == "cancelled"


async def test_a_hook_is_resumed_over_http(api: httpx.AsyncClient) -> None:
    run_id = (await api.post("/lf/runs", json={"workflow": "wt_approval", "args": ["o-7"]})).json()[
        "run_id"
    ]
    for _ in range(100):
        resumed = await api.post("/lf/hooks/approve-o-7", json={"ok": True, "by": "ann"})
        if resumed.status_code != 404:
            break
        await api.get(f"/lf/runs/{run_id}/result", params={"wait": 0.1})  # not created yet
    assert resumed.status_code == 202 and resumed.json() == {"run_id": run_id}
    done = await api.get(f"/lf/runs/{run_id}/result", params={"wait": 20})
    assert done.json()["result"] == {"ok": True, "by": "ann"}
    used = await api.post("/lf/hooks/approve-o-7", json={})
    assert used.status_code == 404


async def webhook_token(client: lf.Client, run_id: str) -> str:
    """The token the run's webhook was created with, once it is in the log."""
    for _ in range(200):
        created = [e for e in await client.events(run_id) if e.type is EventType.HOOK_CREATED]
        if created:
            token: str = created[0].data["token"]
            return token
        await asyncio.sleep(0.05)
    raise AssertionError("the webhook was never created")


def signed(body: bytes, secret: str | None) -> dict[str, str]:
    if secret is None:
        return {}
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Ledgerflow-Signature": f"sha256={digest}"}


async def test_a_webhook_call_resumes_its_run_with_the_request(
    api: httpx.AsyncClient, running: lf.Client, webhook_secret: str | None
) -> None:
    run_id = (await api.post("/lf/runs", json={"workflow": "wt_webhook", "args": [2]})).json()[
        "run_id"
    ]
    token = await webhook_token(running, run_id)
    assert WEBHOOK_TOKEN_RE.match(token), token
    body = json.dumps({"paid": 12}).encode()
    headers = {
        "content-type": "application/json",
        "x-sender": "shop",
        "authorization": "Bearer do-not-record",
        **signed(body, webhook_secret),
    }
    first = await api.post(f"/lf/webhooks/{token}?attempt=1", content=body, headers=headers)
    assert first.status_code == 202, first.text
    raw = b"\x00not json"
    second = await api.put(
        f"/lf/webhooks/{token}", content=raw, headers=signed(raw, webhook_secret)
    )
    assert second.status_code == 202, second.text
    done = await api.get(f"/lf/runs/{run_id}/result", params={"wait": 20})
    delivered = done.json()["result"]
    assert delivered[0]["method"] == "POST" and delivered[1]["method"] == "PUT"
    assert delivered[0]["json"] == {"paid": 12} and delivered[0]["query"] == {"attempt": "1"}
    assert delivered[0]["headers"]["x-sender"] == "shop"
    assert "authorization" not in delivered[0]["headers"]
    assert "x-ledgerflow-signature" not in delivered[0]["headers"]
    assert delivered[1]["json"] is None and delivered[1]["body"] is not None
    events = await running.events(run_id)
    log = json.dumps([e.data for e in events], default=str)
    assert "do-not-record" not in log
    # A replay from the log takes the recorded token, not a new random one: no divergence.
    replayed = lf.testing.replay(events, waiting.webhook_receiver, run_id=run_id)
    assert isinstance(replayed.outcome, lf.testing.Completed)
    # The run has ended: its webhook is disposed.
    late = await api.post(f"/lf/webhooks/{token}", content=body, headers=headers)
    assert late.status_code == 404


async def test_a_webhook_call_that_is_not_signed_right_records_nothing(
    api: httpx.AsyncClient, running: lf.Client, webhook_secret: str | None
) -> None:
    run_id = (await api.post("/lf/runs", json={"workflow": "wt_webhook"})).json()["run_id"]
    token = await webhook_token(running, run_id)
    body = b'{"paid": 1}'
    good = signed(body, webhook_secret)
    bad_signatures = [{}, {"X-Ledgerflow-Signature": "sha256=" + "0" * 64}]
    for headers in bad_signatures if webhook_secret else []:
        answer = await api.post(f"/lf/webhooks/{token}", content=body, headers=headers)
        assert answer.status_code == 401, answer.text
    # Tokens that are not a live webhook's: unknown, malformed, a plain hook's.
    for other in ["wh_" + "A" * 32, "wh_short", "approve-o-7", token + "x"]:
        answer = await api.post(f"/lf/webhooks/{other}", content=body, headers=good)
        assert answer.status_code == 404, (other, answer.text)
    events = await running.events(run_id)
    assert not any(e.type is EventType.HOOK_RECEIVED for e in events)
    answer = await api.post(f"/lf/webhooks/{token}", content=body, headers=good)
    assert answer.status_code == 202
    done = await api.get(f"/lf/runs/{run_id}/result", params={"wait": 20})
    assert done.json()["result"][0]["json"] == {"paid": 1}


async def test_webhook_tokens_are_random_and_reserved(
    api: httpx.AsyncClient, running: lf.Client
) -> None:
    runs = [
        (await api.post("/lf/runs", json={"workflow": "wt_webhook"})).json()["run_id"]
        for _ in range(3)
    ]
    tokens = {await webhook_token(running, r) for r in runs}
    assert len(tokens) == 3
    for run_id in runs:
        await api.post(f"/lf/runs/{run_id}/cancel")
    # A plain hook may not take a webhook's prefix: its run fails saying why.
    bad = await running.start(waiting.approval_with_token, "wh_mine")
    with pytest.raises(lf.WorkflowFailedError, match="create_webhook"):
        await bad.result(timeout=20)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"workflow": "it_chain", "args": [1]}, 404, "no workflow"),  # registered, not allowed
        ({"workflow": "nope"}, 404, "no workflow"),
        ({"workflow": ["it_total"]}, 404, "no workflow"),
        ({"workflow": "it_total", "args": {"n": 1}}, 400, "args must be"),
        ({"workflow": "it_total", "args": [1], "run_id": 7}, 400, "run_id must be"),
        ({"workflow": "it_total", "args": [1], "run_id": "bad id!"}, 422, "invalid run id"),
        ({"workflow": "it_total", "args": [1, 2, 3]}, 422, ""),  # does not fit total(n)
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_a_bad_start_request_is_refused_and_starts_nothing(
    api: httpx.AsyncClient, running: lf.Client, body: Any, status: int, says: str
) -> None:
    answer = await api.post("/lf/runs", json=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]


async def test_hostile_bodies_are_bounded_before_they_are_used(api: httpx.AsyncClient) -> None:
    huge = json.dumps({"workflow": "it_total", "args": ["x" * MAX_BODY_BYTES]})
    answer = await api.post("/lf/runs", content=huge, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    deep = "[" * (MAX_NESTING + 5) + "]" * (MAX_NESTING + 5)
    answer = await api.post("/lf/hooks/any-token", content=deep)
    assert answer.status_code == 400 and "nested" in answer.json()["detail"]
    very_deep = "[" * 100_000 + "]" * 100_000
    answer = await api.post("/lf/runs", content=very_deep)
    assert answer.status_code in (400, 413)
    answer = await api.post("/lf/runs", content=b"\xff{not json")
    assert answer.status_code == 400 and "not JSON" in answer.json()["detail"]


async def test_unknown_and_malformed_run_ids(api: httpx.AsyncClient) -> None:
    assert (await api.get("/lf/runs/no-such-run")).status_code == 404
    assert (await api.get("/lf/runs/no-such-run/result")).status_code == 404
    assert (await api.get("/lf/runs/bad%20id")).status_code == 400
    assert (await api.get("/lf/runs/x/result", params={"wait": 61})).status_code == 400
    assert (await api.post("/lf/hooks/nobody-holds-this", json={})).status_code == 404


async def test_an_app_without_the_lifespan_says_how_to_add_it() -> None:
    app = FastAPI()

    @app.get("/x")
    async def uses(client: ClientDep) -> str:
        return "unreachable"

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with pytest.raises(RuntimeError, match=r"lifespan=ledgerflow\.fastapi\.lifespan"):
            await http.get("/x")


async def test_the_example_order_service(
    servers: Servers, namespace: str, running: lf.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGERFLOW_AMQP_URL", servers.amqp_url)
    monkeypatch.setenv("LEDGERFLOW_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("LEDGERFLOW_NAMESPACE", namespace)
    from examples.orders_api import app

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            order = {"order_id": "order-42", "items": ["apple", "pear"]}
            placed = await http.post("/orders", json=order)
            assert placed.status_code == 201, placed.text
            assert placed.json()["run_id"] == "order-42"
            assert (await http.post("/orders", json=order)).json()["run_id"] == "order-42"
            done = await http.get("/ledgerflow/runs/order-42/result", params={"wait": 30})
            assert done.status_code == 200, done.text
            receipt = done.json()["result"]
            assert "order-42" in json.dumps(receipt) and "1.25" in json.dumps(receipt)
            refused = await http.post("/orders", json={"order_id": "bad id", "items": []})
            assert refused.status_code == 422
