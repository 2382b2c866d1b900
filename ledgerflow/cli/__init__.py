"""The ``ledgerflow`` command line (the console script is ``ledgerflow.cli:main``).

One module per command group (``processes``, ``start``, ``runs``,
``consistency``, ``hooks``, ``replay``, ``dlq``, ``queues``, ``dashboard``),
exit codes and settings in ``common``, argument types in ``args``, output in
``format``; ``entry`` wires them into one parser. No module of the package
imports the package itself, so there is no import cycle to work around.
"""

from .common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from .entry import build_parser, main

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
