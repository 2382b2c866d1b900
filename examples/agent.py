"""A support agent: it looks an order up, refunds it once a person approves, tells the customer.

Every model call and every tool call is a step: kill the worker in the middle of
``lookup_order`` and a new one finishes the run without asking the model again.
The model here is scripted (``support_script``), so it runs without a network;
swap in ``OpenAIChatModel`` (commented below) for a real one.

Run it by hand against running servers:

    ledgerflow worker examples.agent --with-scheduler &
    python -m examples.agent "Order A-17 arrived broken. Can I have my money back?"

or everything in this process, in memory: ``python -m examples.agent --embedded``.
The refund waits for a decision; this script approves it (``--reject`` to refuse), or
answer from anywhere: ``ledgerflow hooks resume TOKEN --payload '{"approved": true}'``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
from collections.abc import Sequence

import ledgerflow as lf
from ledgerflow.ai import Agent, Message, ScriptedModel, ToolCall, tool
from ledgerflow.ops.logs import configure_logging

LOOKUP_SECONDS = float(os.environ.get("SUPPORT_LOOKUP_SECONDS", "0.2"))
"""How long the order system takes to answer (the crash test makes it slow)."""

ORDERS = {
    "A-17": {"customer": "ada@example.com", "items": ["kettle"], "total_cents": 4999},
    "B-2": {"customer": "alan@example.com", "items": ["mug", "tea"], "total_cents": 1850},
}


@lf.step(timeout=30)
async def lookup_order(order_id: str) -> dict[str, object]:
    """Look an order up: the customer, its items, its total in cents and its status.

    Args:
        order_id: The order's id, as the customer wrote it (like A-17).
    """
    await asyncio.sleep(LOOKUP_SECONDS)  # the order system's API
    order = ORDERS.get(order_id.upper())
    if order is None:
        return {"order_id": order_id, "found": False}
    return {"order_id": order_id.upper(), "found": True, "status": "delivered", **order}


@lf.step
async def refund(order_id: str, amount_cents: int, reason: str) -> dict[str, object]:
    """Refund (part of) an order to the customer's card.

    Args:
        order_id: The order to refund.
        amount_cents: How much, in cents; at most the order's total.
        reason: Why, in a few words, for the accounts team.
    """
    # Stable across retries: the payment provider refunds once per key.
    key = lf.step_context().idempotency_key
    refund_id = "rf_" + hashlib.sha256(key.encode()).hexdigest()[:10]
    return {"refund_id": refund_id, "amount_cents": amount_cents}


@lf.step
async def notify_customer(order_id: str, message: str) -> str:
    """Email the order's customer.

    Args:
        order_id: Whose customer to write to.
        message: The email's text.
    """
    return f"sent to the customer of {order_id}"


def support_script(conversation: Sequence[Message]) -> str | ToolCall | list[str | ToolCall]:
    """What a model would do, scripted: decide from the conversation so far."""
    last = conversation[-1]
    if last.role == "user":
        found = re.search(r"\b([A-Z]-\d+)\b", last.content or "")
        if found is None:
            return "Which order is it about? Its id looks like A-17."
        order_id = found.group(1)
        return [f"Let me look order {order_id} up.", ToolCall.to("lookup_order", order_id=order_id)]
    result = last.content or ""
    called = _called(conversation)
    if result.startswith("error"):  # the tool failed for good, or was called wrong
        return "Something went wrong on our side. A colleague will email you today."
    if called == "lookup_order":
        order = json.loads(result)
        if not order["found"]:
            return f"I could not find order {order['order_id']}. Could you check the id?"
        return [
            f"I am asking for a refund of {order['total_cents'] / 100:.2f} EUR.",
            ToolCall.to(
                "refund",
                order_id=order["order_id"],
                amount_cents=order["total_cents"],
                reason="arrived damaged",
            ),
        ]
    if called == "refund":
        if result.startswith("rejected"):
            return "I am sorry: I could not refund this order. A colleague will email you today."
        refunded = json.loads(result)
        return ToolCall.to(
            "notify_customer",
            order_id=_argument(conversation, "refund", "order_id"),
            message=f"We refunded {refunded['amount_cents'] / 100:.2f} EUR to your card.",
        )
    return "Done: your refund is on its way, and we emailed you the details."


def _called(conversation: Sequence[Message]) -> str:
    """The tool the last assistant message called."""
    asked = next(m for m in reversed(conversation) if m.role == "assistant")
    return asked.tool_calls[0].name


def _argument(conversation: Sequence[Message], tool_name: str, name: str) -> object:
    for message in reversed(conversation):
        for call in message.tool_calls:
            if call.name == tool_name:
                return call.arguments[name]
    raise LookupError(f"no call of {tool_name}")


model = ScriptedModel(support_script, token_delay=0.01)
# A real model instead (pip install 'ledgerflow[ai]'; the key from OPENAI_API_KEY):
#   from ledgerflow.ai.openai import OpenAIChatModel
#   model = OpenAIChatModel("gpt-4o-mini")

support = Agent(
    "support",
    model=model,
    tools=[lookup_order, tool(refund, approval=True), notify_customer],
    instructions="You help customers with their orders. Refunds need a person's approval.",
    max_turns=8,
)


async def show_tokens(client: lf.Client, run_id: str) -> None:
    """The model's words as it writes them, one line per model call."""
    step = None
    async for chunk in client.stream(run_id, "tokens"):
        if chunk.step != step or chunk.restarted:  # a new call, or a call made again
            step = chunk.step
            print(f"\n  ({chunk.step}{' again' if chunk.restarted else ''}) ", end="")
        print(chunk.value, end="", flush=True)
    print()


async def converse(client: lf.Client, prompt: str, approve: bool) -> None:
    run = await client.start(support.workflow, prompt)
    print(f"run {run.run_id}")
    reading = asyncio.create_task(show_tokens(client, run.run_id))
    answered: set[str] = set()
    while True:
        try:
            result = await run.result(timeout=0.2)
            break
        except lf.ResultTimeoutError:
            pass
        for request in await lf.ai.pending_approvals(client, run.run_id):
            if request.token in answered:
                continue
            answered.add(request.token)
            verdict = "approving" if approve else "rejecting"
            print(f"\napproval asked: {request.tool}({request.arguments}); {verdict}", end="")
            if approve:
                await lf.ai.approve(client, request)
            else:
                await lf.ai.reject(client, request, "refunds over 20 EUR go to a manager")
    await reading  # the run's end ends the stream
    print("the conversation, as recorded:")
    for message in result.messages:
        calls = ", ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
        shown = " ".join(filter(None, [message.content, calls]))
        print(f"  {message.role:>9}: {shown}")
    print(f"{result.turns} model calls, {result.usage.total_tokens} tokens")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="Order A-17 arrived broken. Refund, please?")
    parser.add_argument("--embedded", action="store_true", help="in memory, no servers needed")
    parser.add_argument("--reject", action="store_true", help="refuse the refund")
    args = parser.parse_args()
    configure_logging("warning")
    if args.embedded:
        async with lf.embedded("agent-demo") as client:
            await converse(client, args.prompt, not args.reject)
    else:
        async with lf.Client.connect() as client:
            await converse(client, args.prompt, not args.reject)


if __name__ == "__main__":
    asyncio.run(main())
