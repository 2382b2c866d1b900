"""Workflows and steps with values large enough to be stored out of line."""

from __future__ import annotations

import hashlib

import ledgerflow as lf

TEN_MB = 10 * 1024 * 1024


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lf.step(name="lg_make")
async def make(size: int, seed: str) -> bytes:
    """A result of ``size`` bytes, different per seed, that does not compress to nothing."""
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


@lf.step(name="lg_measure")
async def measure(data: bytes, *, label: str = "") -> dict[str, object]:
    return {"size": len(data), "sha256": digest(data), "label": label}


@lf.workflow(name="lg_round_trip")
async def round_trip(size: int, seed: str) -> dict[str, object]:
    """A large step result, read by the workflow, sent on as a step argument, returned."""
    data = await make(size, seed)
    facts = await measure(data, label="passed on")
    return {"head": data[:16], "facts": facts, "echo": data}


@lf.workflow(name="lg_big_args")
async def big_args(data: bytes) -> str:
    facts = await measure(data)
    return str(facts["sha256"])


@lf.workflow(name="lg_hook")
async def big_hook() -> int:
    hook = lf.create_hook("lg-hook-token")
    payload = await hook
    return len(payload)
