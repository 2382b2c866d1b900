"""``ledgerflow webhooks serve``: a process that receives lf.create_webhook() calls.

The server runs as the CLI runs it (a child process, loopback, the shared secret from
LEDGERFLOW_WEBHOOK_SECRET); a worker and a scheduler run in this process. A signed
call resumes the run; an unsigned one is refused and records nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from ledgerflow.eventlog.events import EventType

import ledgerflow as lf
from ledgerflow import cli
from tests.apps import waiting
from tests.processes import ROOT, cli_env
from tests.servers import Servers

pytestmark = pytest.mark.integration
SECRET = "cli-secret"


def test_webhooks_serve_is_a_command_on_loopback_by_default() -> None:
    args = cli.build_parser().parse_args(["webhooks", "serve", "--port", "9124"])
    assert (args.port, args.host) == (9124, "127.0.0.1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_signed_call_to_the_served_webhook_resumes_the_run(
    servers: Servers, namespace: str, running: lf.Client
) -> None:
    run = await running.start(waiting.webhook_receiver)
    token = ""
    for _ in range(200):
        created = [e for e in await running.events(run.run_id) if e.type is EventType.HOOK_CREATED]
        if created:
            token = created[0].data["token"]
            break
        await asyncio.sleep(0.05)
    assert token
    port = _free_port()
    env = {**cli_env(servers, namespace), "LEDGERFLOW_WEBHOOK_SECRET": SECRET}
    command = [sys.executable, "-m", "ledgerflow", "webhooks", "serve", "--port", str(port)]
    process = await asyncio.to_thread(
        functools.partial(
            subprocess.Popen,
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    url = f"http://127.0.0.1:{port}/webhooks/{token}"
    body = b'{"status": "paid"}'
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    unsigned = await http.post(url, content=body)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.communicate()
                    assert time.monotonic() < deadline, "webhooks serve did not start listening"
                    await asyncio.sleep(0.1)
            assert unsigned.status_code == 401
            answer = await http.post(
                url, content=body, headers={"X-Ledgerflow-Signature": signature}
            )
            assert answer.status_code == 202, answer.text
            assert answer.json() == {"run_id": run.run_id}
        delivered = await run.result(timeout=20)
        assert delivered[0]["json"] == {"status": "paid"}
        received = [
            e for e in await running.events(run.run_id) if e.type is EventType.HOOK_RECEIVED
        ]
        assert len(received) == 1  # the unsigned call recorded nothing
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode == 0, err
        assert "signatures required" in out and SECRET not in out + err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
