"""Argument types for run ids typed on the command line: bad usage, exit code 2.

argparse turns the error into ``ledgerflow ...: error: argument run_id: <rule>``
and exit status 2, before anything connects to a server.
"""

from __future__ import annotations

import argparse

from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.names import check_run_id


def run_id_arg(text: str) -> str:
    try:
        return check_run_id(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
