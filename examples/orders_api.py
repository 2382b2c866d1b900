"""A producer service: an order API that starts the order workflow and reports on it.

Run it next to a worker and a scheduler of ``examples.orders`` (``uvicorn`` is in the
``dashboard`` extra)::

    ledgerflow worker examples.orders --with-scheduler &
    uvicorn examples.orders_api:app --host 127.0.0.1 --port 8000
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"order_id": "order-1", "items": ["apple", "pear"]}'
    curl 'localhost:8000/ledgerflow/runs/order-1/result?wait=10'

The service's own endpoint takes a typed body and chooses the run id (the order id,
so a client retrying the POST starts nothing twice); the mounted router adds status,
results, cancellation and hook resumption for every run of ``process_order``.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field

from examples.orders import process_order
from ledgerflow.fastapi import ClientDep, lifespan, router

app = FastAPI(title="orders", lifespan=lifespan())
app.include_router(router(workflows=[process_order]), prefix="/ledgerflow")


class Order(BaseModel):
    order_id: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    items: list[str] = Field(min_length=1, max_length=50)


@app.post("/orders", status_code=201)
async def place_order(order: Order, client: ClientDep) -> dict[str, str]:
    run = await client.start(process_order, order.order_id, order.items, run_id=order.order_id)
    return {"run_id": run.run_id, "status_url": f"/ledgerflow/runs/{run.run_id}"}
