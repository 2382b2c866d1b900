"""An order workflow: check stock and the customer in parallel, charge, ship, notify.

Run it with `make demo`, or by hand against running servers:

    ledgerflow worker examples.orders &
    ledgerflow scheduler examples.orders &
    ledgerflow start examples.orders:process_order --args '["order-1", ["apple", "pear"]]' --wait
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from decimal import Decimal

import ledgerflow as lf

PRICES = {"apple": Decimal("0.50"), "pear": Decimal("0.75"), "fig": Decimal("1.20")}


@lf.serializable  # a class that travels between processes is registered by name
@dataclass
class Receipt:
    order_id: str
    total: Decimal
    charge_id: str
    tracking: str


@lf.step
async def reserve_stock(item: str) -> Decimal:
    await asyncio.sleep(random.uniform(0.01, 0.05))  # a warehouse API call
    if item not in PRICES:
        raise lf.FatalError(f"no such item: {item}")
    return PRICES[item]


@lf.step
async def check_customer(order_id: str) -> bool:
    await asyncio.sleep(0.02)
    return True


@lf.step
async def charge(order_id: str, amount: Decimal) -> str:
    # The idempotency key is stable across retries: pass it to the payment API.
    key = lf.step_context().idempotency_key
    await asyncio.sleep(0.03)
    return f"ch_{abs(hash(key)) % 10**8:08d}"


@lf.step
async def ship(order_id: str, items: list[str]) -> str:
    await asyncio.sleep(0.02)
    return f"TRACK-{order_id.upper()}-{len(items)}"


@lf.step
async def notify(order_id: str, tracking: str) -> None:
    await asyncio.sleep(0.01)


@lf.workflow
async def process_order(order_id: str, items: list[str]) -> Receipt:
    *prices, ok = await asyncio.gather(
        *(reserve_stock(item) for item in items), check_customer(order_id)
    )
    if not ok:
        raise lf.FatalError(f"customer check failed for {order_id}")
    total = sum(prices, Decimal("0"))
    charge_id = await charge(order_id, total)
    tracking = await ship(order_id, items)
    await notify(order_id, tracking)
    return Receipt(order_id=order_id, total=total, charge_id=charge_id, tracking=tracking)
