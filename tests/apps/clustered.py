"""Every shape the RabbitMQ cluster tests run, in one APP module for their processes.

Fan-outs and chains of steps (arith), runs that continue as new (chains), durable
sleeps and hooks (waiting), steps that fail and are retried (flaky).
"""

from __future__ import annotations

from tests.apps import arith, chains, flaky, waiting

__all__ = ["arith", "chains", "flaky", "waiting"]
