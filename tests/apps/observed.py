"""A workflow whose step logs and fails once, for the logging tests (issue 7, item 2)."""

from __future__ import annotations

import structlog

import ledgerflow as lf

log = structlog.get_logger("tests.observed")


@lf.step(name="ob_greet", retry=lf.RetryPolicy(max_attempts=3, initial=0.05, jitter=0.0))
async def greet(name: str) -> str:
    """Logs from the step's own code; its first attempt fails, so attempt 2 comes by a timer."""
    attempt = lf.step_context().attempt
    log.info("greeting", who=name)
    log.warning("greeting loudly", who=name)
    if attempt == 1:
        raise ConnectionError("first attempt fails")
    return f"hello {name}"


@lf.workflow(name="ob_greeter")
async def greeter(name: str) -> str:
    return await greet(name)
