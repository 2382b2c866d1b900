"""``ledgerflow dashboard [--host] [--port] [--allowed-host NAME]``: serve the web dashboard.

Wired into the parser with one ``register`` call. The web
server is an optional extra: without it the command says how to install it
(exit 2) instead of failing with an ImportError.

Who may use it is decided in ``dashboard.access`` (Host names, the optional
``LEDGERFLOW_DASHBOARD_TOKEN``); this command only gathers the settings and
warns, at start, when the page is reachable from other hosts.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import structlog

# No web framework in here: the access rules load without the dashboard extra.
from ledgerflow.dashboard.access import Access, is_loopback
from ledgerflow.worker.backend import connect
from ledgerflow.worker.process import run_until_signalled

from .args import port_number
from .common import EXIT_OK, EXIT_USAGE, settings_of

DEFAULT_PORT = 8080
INSTALL_HINT = "pip install 'ledgerflow[dashboard]'"

log = structlog.get_logger("ledgerflow.dashboard")


def missing_server_packages() -> list[str]:
    """The web server's packages (fastapi, uvicorn) that cannot be imported here."""
    return [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]


def say_server_missing(what: str, hint: str) -> bool:
    """Print how to install the web server's packages if any is missing; whether one was.

    Shared by the commands that serve HTTP (``dashboard``, ``webhooks serve``): without
    their extra they exit 2 with this line instead of failing on an ImportError.
    """
    missing = missing_server_packages()
    if missing:
        print(
            f"ledgerflow: {what} needs {' and '.join(missing)}, which are not "
            f"installed; install them with: {hint}",
            file=sys.stderr,
        )
    return bool(missing)


async def cmd_dashboard(args: argparse.Namespace) -> int:
    if say_server_missing("the dashboard", INSTALL_HINT):
        return EXIT_USAGE
    from ledgerflow.dashboard.app import create_app
    from ledgerflow.dashboard.server import DashboardServer

    access = Access.from_env(args.host, args.allowed_host or ())
    warn_if_exposed(args.host, access)
    async with connect(settings_of(args)) as backends:
        server = DashboardServer(
            create_app(backends.store, backends.broker, access), host=args.host, port=args.port
        )

        async def start() -> None:
            await server.start()
            print(f"ledgerflow dashboard on {server.url} (namespace {backends.names.namespace})")

        await run_until_signalled(start, server.stop, what="dashboard")
    return EXIT_OK


def warn_if_exposed(host: str, access: Access) -> None:
    """A structured warning when other hosts can reach the page (never the token itself)."""
    if is_loopback(host):
        return
    log.warning(
        "dashboard listening on a non-loopback address",
        host=host,
        allowed_hosts=sorted(access.allowed_hosts),
        token_required=access.token is not None,
    )
    if access.token is None:
        log.warning(
            "dashboard reachable from other hosts without a token: anyone who can reach it "
            "reads every run's payloads; set LEDGERFLOW_DASHBOARD_TOKEN",
            host=host,
        )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the top-level commands."""
    dashboard = sub.add_parser(
        "dashboard", help="a web page of runs, their timelines and the dead-letter queue"
    )
    dashboard.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help="default %(default)s"
    )
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default %(default)s)"
    )
    dashboard.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; also "
        "$LEDGERFLOW_DASHBOARD_ALLOWED_HOSTS, comma-separated). Loopback names and the "
        "--host address are always allowed; any other Host gets 400 (DNS rebinding)",
    )
    dashboard.set_defaults(handler=cmd_dashboard)
