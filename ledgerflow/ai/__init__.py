"""``ledgerflow.ai``: durable AI agents, with every model call and tool call a step.

::

    import ledgerflow as lf
    from ledgerflow.ai import Agent, ScriptedModel, tool

    @lf.step
    async def lookup_order(order_id: str) -> dict[str, str]:
        "Find an order's status."
        ...

    support = Agent("support", model=ScriptedModel([...]), tools=[lookup_order],
                    instructions="You help customers with their orders.")

    run = await client.start(support.workflow, "Where is order A-17?")
    print((await run.result()).output)

A real model: ``ledgerflow.ai.openai.OpenAIChatModel`` (any OpenAI-compatible
chat-completions API; ``pip install 'ledgerflow[ai]'``).
"""

from ledgerflow.eventlog.errors import (
    MaxTurnsError,
    ModelError,
    ModelRefusedError,
    ModelUnavailableError,
)

from .agent import Agent
from .approval import Approval, approve, pending_approvals, reject
from .messages import AgentResult, Message, ModelReply, ToolCall, Usage
from .model import Model, TokenCallback, ToolSpec
from .scripted import ScriptedModel
from .tools import Tool, tool

__all__ = [
    "Agent",
    "AgentResult",
    "Approval",
    "MaxTurnsError",
    "Message",
    "Model",
    "ModelError",
    "ModelRefusedError",
    "ModelReply",
    "ModelUnavailableError",
    "ScriptedModel",
    "TokenCallback",
    "Tool",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "approve",
    "pending_approvals",
    "reject",
    "tool",
]
