"""``ledgerflow webhooks serve [--host] [--port]``: receive ``lf.create_webhook()`` calls.

For a deployment without a FastAPI service of its own: a small HTTP server whose only
route is ``/webhooks/{token}`` (``ledgerflow.fastapi.webhook_router``). It listens on
loopback unless told otherwise (put it behind the proxy that faces the senders). The
shared secret for signatures comes from ``LEDGERFLOW_WEBHOOK_SECRET``, never from the
command line, where any user of the host could read it.
"""

from __future__ import annotations

import argparse
import os

from ledgerflow.scheduler import Client
from ledgerflow.worker.backend import connect
from ledgerflow.worker.process import run_until_signalled

from .args import port_number
from .common import EXIT_OK, EXIT_USAGE, settings_of
from .dashboard import say_server_missing

DEFAULT_PORT = 8090
INSTALL_HINT = "pip install 'ledgerflow[fastapi]'"


async def cmd_serve(args: argparse.Namespace) -> int:
    if say_server_missing("webhooks serve", INSTALL_HINT):
        return EXIT_USAGE
    from fastapi import FastAPI

    from ledgerflow.dashboard.server import DashboardServer
    from ledgerflow.fastapi import SECRET_ENV, STATE_KEY, webhook_router

    async with connect(settings_of(args)) as backends:
        app = FastAPI(title="ledgerflow webhooks", docs_url=None, redoc_url=None)
        setattr(app.state, STATE_KEY, Client(backends.store, backends.broker))
        app.include_router(webhook_router())
        server = DashboardServer(app, host=args.host, port=args.port)

        async def start() -> None:
            await server.start()
            signed = "signatures required" if os.environ.get(SECRET_ENV) else "no signatures"
            print(
                f"ledgerflow webhooks on {server.url}/webhooks/<token> "
                f"(namespace {backends.names.namespace}; {signed})",
                flush=True,
            )

        await run_until_signalled(start, server.stop, what="webhooks")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks serve`` to the top-level commands."""
    webhooks = sub.add_parser("webhooks", help="receive lf.create_webhook() calls over HTTP")
    commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    serve = commands.add_parser("serve", help="an HTTP server for /webhooks/<token>")
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="default %(default)s")
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default %(default)s)"
    )
    serve.set_defaults(handler=cmd_serve)
