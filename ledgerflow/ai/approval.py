"""A person's yes or no before a tool runs: a hook per call, and the helpers to answer it.

The agent creates an ordinary hook (``lf.create_hook``) whose metadata says which
tool, with which arguments, for which run, and waits on it durably: the wait costs
nothing while nobody answers, and survives every restart. Anyone with a client
finds the open requests (``pending_approvals``) and answers (``approve``/``reject``),
or resumes the hook by its token from anywhere else (the CLI, ``POST /hooks/{token}``
of the FastAPI router) with ``{"approved": true}`` or ``{"approved": false, "reason": "..."}``.

Only ``{"approved": true}`` approves. Whatever else arrives (the payload is the
sender's, so hostile) is a rejection, which the model is told about: a malformed
answer can never run a tool nobody approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ledgerflow.eventlog.errors import InvalidArgumentError
from ledgerflow.eventlog.kinds import HookStatus
from ledgerflow.eventlog.text import MAX_MESSAGE, clip, safe_str
from ledgerflow.scheduler.client import Client

MARKER: Final = "ledgerflow.ai"
"""The metadata key that marks a hook as an agent's approval request."""
KIND: Final = "approval"


@dataclass(frozen=True)
class Approval:
    """An open request for a decision: resume ``token`` (or pass this to approve/reject)."""

    token: str
    run_id: str
    agent: str
    tool: str
    arguments: dict[str, Any]
    tool_call_id: str


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str = ""


def request_metadata(agent: str, tool: str, arguments: dict[str, Any], call_id: str) -> Any:
    """The hook metadata of one request: plain data, so any tool can show it."""
    return {
        MARKER: KIND,
        "agent": agent,
        "tool": tool,
        "arguments": arguments,
        "tool_call_id": call_id,
    }


def read_decision(payload: Any) -> Decision:
    """A hook payload as a decision: approved only by ``{"approved": True}`` exactly."""
    if not isinstance(payload, dict) or not isinstance(payload.get("approved"), bool):
        shown = clip(safe_str(payload), 200)
        return Decision(False, f"the answer was not {{'approved': true|false}}: {shown}")
    reason = payload.get("reason", "")
    reason = clip(reason, MAX_MESSAGE) if isinstance(reason, str) else ""
    return Decision(payload["approved"], reason)


async def pending_approvals(client: Client, run_id: str) -> list[Approval]:
    """The run's approval requests nobody has answered yet, oldest first."""
    state = await client.state(run_id)
    if state.finished:
        return []  # a run that ended takes no answers, whatever its hooks say
    found = []
    for hook in state.hooks.values():
        meta = hook.metadata
        if (
            hook.status != HookStatus.CREATED
            or hook.received
            or hook.conflict is not None
            or not isinstance(meta, dict)
            or meta.get(MARKER) != KIND
        ):
            continue
        arguments = meta.get("arguments")
        found.append(
            Approval(
                token=hook.token,
                run_id=run_id,
                agent=str(meta.get("agent", "")),
                tool=str(meta.get("tool", "")),
                arguments=arguments if isinstance(arguments, dict) else {},
                tool_call_id=str(meta.get("tool_call_id", "")),
            )
        )
    return found


async def approve(client: Client, request: Approval | str) -> str:
    """Let the tool run; returns the run id.

    ``lf.HookNotFoundError`` once the agent has taken an answer (its hook is disposed);
    an answer sent before that, while another is on its way, is recorded and ignored:
    the first one in the run's log decides.
    """
    return await client.resume_hook(_token(request), {"approved": True})


async def reject(client: Client, request: Approval | str, reason: str = "") -> str:
    """Refuse the call; the model is told so, with ``reason``. Returns the run id."""
    payload = {"approved": False, "reason": clip(safe_str(reason), MAX_MESSAGE)}
    return await client.resume_hook(_token(request), payload)


def _token(request: Approval | str) -> str:
    token = request.token if isinstance(request, Approval) else request
    if not isinstance(token, str):
        raise InvalidArgumentError("approve/reject want an Approval or a hook token")
    return token
