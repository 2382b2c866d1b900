"""Workflows and steps the hostile-payload tests run (tests/integration/test_hostile_payloads.py).

``Parcel`` is a plain dataclass, never registered: it decodes in a process that
allows this module, as ``ledgerflow worker tests.apps.hostile`` does for its APP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ledgerflow as lf


def nest(depth: int) -> Any:
    """``depth`` lists inside one another around a 1."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@dataclasses.dataclass(frozen=True)
class Parcel:
    label: str
    weight: int


@lf.step(name="hp_echo")
async def echo(value: Any) -> Any:
    return value


@lf.step(name="hp_deep_result", retry=lf.RetryPolicy(max_attempts=1))
async def deep_result(depth: int) -> Any:
    return nest(depth)


@lf.workflow(name="hp_echo_nested")
async def echo_nested(depth: int) -> Any:
    """Builds the value inside the workflow: the step call is the call site."""
    return await echo(nest(depth))


@lf.workflow(name="hp_passthrough")
async def passthrough(value: Any) -> Any:
    return await echo(value)


@lf.workflow(name="hp_result_of_depth")
async def result_of_depth(depth: int) -> Any:
    return await deep_result(depth)


@lf.workflow(name="hp_hook")
async def wait_for_payload(token: str) -> Any:
    return await lf.create_hook(token=token)


@lf.workflow(name="hp_weigh")
async def weigh(parcel: Parcel) -> Parcel:
    heavier = await echo(Parcel(parcel.label, parcel.weight + 1))
    assert isinstance(heavier, Parcel)
    return heavier
