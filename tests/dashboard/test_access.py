"""Who may use the dashboard: Host names (DNS rebinding), the bearer token, state-changing GETs.

Over real HTTP on the real servers, with forged headers as an attacker's page
(or a rebound DNS name) would send them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from ledgerflow.dashboard.access import Access, host_of, is_loopback
from ledgerflow.dashboard.app import create_app
from tests.dashboard.conftest import TOKEN

Serve = Callable[[Access], Awaitable[str]]

# --- the rules, without a server -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost.", "localhost"),
        ("[::1]:80", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("dash.example.com:443", "dash.example.com"),
        ("evil.example:80:80", None),
        ("[::1", None),
        ("[not-v6]:80", None),
        ("a b", None),
        ("", None),
        ("host:port", None),
    ],
)
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert host_of(header) == name


def test_default_hosts_are_loopback_names_and_the_bound_address() -> None:
    assert Access().host_allowed("localhost:8080")
    assert not Access().host_allowed("attacker.example:8080")
    assert not Access().host_allowed(None)
    bound = Access.for_bind("10.1.2.3", ["Dash.Example.com"])
    assert bound.host_allowed("10.1.2.3:8080") and bound.host_allowed("dash.example.com")
    assert bound.host_allowed("127.0.0.1")
    # A wildcard bind is not a name anyone may use: only loopback and what is listed.
    assert Access.for_bind("0.0.0.0").allowed_hosts == Access().allowed_hosts


def test_environment_adds_hosts_and_the_token() -> None:
    env = {
        "LEDGERFLOW_DASHBOARD_ALLOWED_HOSTS": " a.example , b.example:8080,",
        "LEDGERFLOW_DASHBOARD_TOKEN": " secret-1 ",
    }
    access = Access.from_env("127.0.0.1", ["c.example"], env=env)
    assert {"a.example", "b.example", "c.example"} <= access.allowed_hosts
    assert access.token == "secret-1"
    assert Access.from_env("127.0.0.1", env={"LEDGERFLOW_DASHBOARD_TOKEN": ""}).token is None


def test_token_comparison() -> None:
    access = Access(token=TOKEN)
    assert access.token_accepted(f"Bearer {TOKEN}")
    assert access.token_accepted(f"bearer {TOKEN}")
    for wrong in (None, "", TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer "):
        assert not access.token_accepted(wrong), wrong
    assert Access().token_accepted(None)  # no token set: no header needed


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("dash.example.com", False),
    ],
)
def test_loopback_binds(bind: str, loopback: bool) -> None:
    assert is_loopback(bind) is loopback


# --- over HTTP ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/runs", "/api/runs/some-run"])
async def test_a_foreign_host_header_is_refused(serve_dashboard: Serve, path: str) -> None:
    base = await serve_dashboard(Access.for_bind("127.0.0.1", ["dash.example.com"]))
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        rebound = await http.get(path, headers={"Host": "attacker.example:8080"})
        assert rebound.status_code == 400
        assert "Host" in rebound.json()["detail"]
        assert rebound.headers["content-security-policy"].startswith("default-src 'none'")
        forwarded = await http.post("/api/dlq", json={}, headers={"Host": "attacker.example"})
        assert forwarded.status_code == 400
        listed = await http.get(path, headers={"Host": "dash.example.com:8080"})
        assert listed.status_code in (200, 404)  # 404: the run does not exist, but we got in
        local = await http.get(path)
        assert local.status_code in (200, 404)


async def test_with_a_token_every_api_route_wants_it(serve_dashboard: Serve) -> None:
    base = await serve_dashboard(Access(token=TOKEN))
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for method, path in [("GET", "/api/runs"), ("GET", "/api/runs/x"), ("POST", "/api/dlq")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await http.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in response.text
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/api/runs", headers=good)).status_code == 200
        assert (await http.get("/api/runs/x", headers=good)).status_code == 404
        assert (await http.post("/api/dlq", headers=good, json={})).status_code == 200
        # The page itself holds no data: it loads, and asks for the token.
        page = await http.get("/")
        assert page.status_code == 200 and 'id="token-view"' in page.text


async def test_reading_the_dead_queue_is_not_a_get(
    serve_dashboard: Serve, garbage_dead_letter: str, backends: Any
) -> None:
    """An <img>, a link or a cross-site form cannot make the dashboard take the dead queue."""
    base = await serve_dashboard(Access())
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.get("/api/dlq")).status_code == 405
        assert (await http.head("/api/dlq")).status_code == 405
        form = await http.post("/api/dlq", data={"limit": "5"})  # what a <form> sends
        assert form.status_code == 415
        plain = await http.post(
            "/api/dlq", content=b'{"limit": 5}', headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415  # what a no-cors fetch may send
        cross = await http.post("/api/dlq", json={}, headers={"Origin": "https://attacker.example"})
        assert cross.status_code == 403
        huge = await http.post("/api/dlq", json={"pad": "x" * 5000})
        assert huge.status_code == 413
        for bad in ([1], {"limit": "all"}, {"limit": True}, {"limit": 0}):
            assert (await http.post("/api/dlq", json=bad)).status_code == 400, bad
    # None of those held the message: its first delivery from the dead queue is this one.
    delivery = await backends.broker.get(backends.names.dead_queue, timeout=5)
    assert delivery is not None and delivery.message_id == garbage_dead_letter
    assert delivery.delivery_count == 1
    await delivery.nack(requeue=True)

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        same_origin = await http.post("/api/dlq", json={"limit": 5}, headers={"Origin": base})
    assert same_origin.status_code == 200
    assert [m["id"] for m in same_origin.json()["messages"]] == [garbage_dead_letter]


def test_no_get_route_changes_state(backends: Any) -> None:
    """The routes, enumerated: the dead queue (the one read with an effect) is POST only."""
    app = create_app(backends.store, backends.broker)
    methods = {
        route.path: set(route.methods)
        for route in app.routes
        if hasattr(route, "methods") and route.methods
    }
    assert methods.pop("/api/dlq") == {"POST"}
    assert all(found <= {"GET", "HEAD"} for found in methods.values()), methods
    assert set(methods) == {"/", "/api/runs", "/api/runs/{run_id}"}
