"""``ledgerflow dashboard [--host] [--port]``: serve the web dashboard.

Kept apart from cli.py so it is wired in with one ``register`` call. The web
server is an optional extra: without it the command says how to install it
(exit 2) instead of failing with an ImportError.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from worker.backend import connect
from worker.process import run_until_signalled

# The module, not its names: cli.py imports this one while it is itself being imported.
from . import cli

DEFAULT_PORT = 8080
INSTALL_HINT = "pip install 'ledgerflow[dashboard]'"


def missing_server_packages() -> list[str]:
    """The dashboard extra's packages that cannot be imported here."""
    return [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]


async def cmd_dashboard(args: argparse.Namespace) -> int:
    missing = missing_server_packages()
    if missing:
        print(
            f"ledgerflow: the dashboard needs {' and '.join(missing)}, which are not "
            f"installed; install them with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return cli.EXIT_USAGE
    from .dashboard.app import create_app
    from .dashboard.server import DashboardServer

    async with connect(cli.settings_of(args)) as backends:
        server = DashboardServer(
            create_app(backends.store, backends.broker), host=args.host, port=args.port
        )

        async def start() -> None:
            await server.start()
            print(f"ledgerflow dashboard on {server.url} (namespace {backends.names.namespace})")

        await run_until_signalled(start, server.stop, what="dashboard")
    return cli.EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the top-level commands."""
    dashboard = sub.add_parser(
        "dashboard", help="a web page of runs, their timelines and the dead-letter queue"
    )
    dashboard.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default %(default)s)"
    )
    dashboard.set_defaults(handler=cmd_dashboard)
