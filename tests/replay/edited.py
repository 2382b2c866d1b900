"""Deliberately edited copies of the golden workflows, for the divergence tests.

Each is what a well-meaning change to ``examples.orders.process_order`` (or to
``tests.apps.arith.total``) might look like, registered under its own name so it
can be replayed against the history the original recorded. Module-level, so
``ledgerflow replay FILE tests.replay.edited:NAME`` can import them too.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import ledgerflow as lf
from examples.orders import (
    Receipt,
    charge,
    check_customer,
    notify,
    reserve_stock,
    ship,
)
from tests.apps.arith import add, slow_add


async def _prices(order_id: str, items: list[str]) -> Decimal:
    *prices, ok = await asyncio.gather(
        *(reserve_stock(item) for item in items), check_customer(order_id)
    )
    if not ok:
        raise lf.FatalError(f"customer check failed for {order_id}")
    return sum((Decimal(str(p)) for p in prices), Decimal("0"))


@lf.step(name="golden_audit")
async def audit(order_id: str) -> None:
    """A step the edited workflow adds at the end."""


@lf.workflow(name="golden_ship_before_charge")
async def ship_before_charge(order_id: str, items: list[str]) -> Receipt:
    """ship and charge swapped: s4 was charge, the code now ships there."""
    total = await _prices(order_id, items)
    tracking = await ship(order_id, items)
    charge_id = await charge(order_id, total)
    await notify(order_id, tracking)
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)


@lf.workflow(name="golden_notify_before_ship")
async def notify_before_ship(order_id: str, items: list[str]) -> Receipt:
    """A notification moved before shipping: s5 was ship, the code now notifies there."""
    total = await _prices(order_id, items)
    charge_id = await charge(order_id, total)
    await notify(order_id, "pending")
    tracking = await ship(order_id, items)
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)


@lf.workflow(name="golden_without_notify")
async def without_notify(order_id: str, items: list[str]) -> Receipt:
    """notify removed: the log recorded it at s6, the code no longer calls anything there."""
    total = await _prices(order_id, items)
    charge_id = await charge(order_id, total)
    tracking = await ship(order_id, items)
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)


@lf.workflow(name="golden_with_audit")
async def with_audit(order_id: str, items: list[str]) -> Receipt:
    """A step added at the end: the finished log has nothing at s7."""
    total = await _prices(order_id, items)
    charge_id = await charge(order_id, total)
    tracking = await ship(order_id, items)
    await notify(order_id, tracking)
    await audit(order_id)
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)


@lf.workflow(name="golden_with_shipping_fee")
async def with_shipping_fee(order_id: str, items: list[str]) -> Receipt:
    """Same calls, another result: only the end of the log can tell."""
    total = await _prices(order_id, items)
    charge_id = await charge(order_id, total)
    tracking = await ship(order_id, items)
    await notify(order_id, tracking)
    total += Decimal("4.99")
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)


@lf.workflow(name="golden_forgiving")
async def forgiving(order_id: str, items: list[str]) -> str:
    """Catches the failure the log recorded as the end of the run."""
    try:
        await _prices(order_id, items)
    except lf.StepFailedError as exc:
        return f"skipped: {exc.message}"
    return "ok"


@lf.workflow(name="golden_with_coupon")
async def with_coupon(order_id: str, items: list[str], coupon: str) -> Receipt:
    """A new required argument: the recorded start no longer fits."""
    return await ship_before_charge(order_id, items)


@lf.workflow(name="golden_total_slow")
async def total_slow(n: int) -> int:
    """tests.apps.arith.total with its summing chain moved to another step (s<n+1>)."""
    parts = await asyncio.gather(*(add(i, i) for i in range(n)))
    acc = 0
    for part in parts:
        acc = await slow_add(acc, part)
    return acc
