"""The start of a generation in a conversation whose id the client chooses: the AI
SDK's chat ``id`` (``POST /api/chat``) and AG-UI's ``threadId`` (``POST /api/agui``).

One sequence for both: check → admit → find → create (or continue) → start, so that
a bad request or one over a limit leaves nothing behind, and another owner's
conversation is never read or changed (:mod:`tokenwire.engine.identity`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from fastapi import Request

from tokenwire.agent import DEFAULT_MAX_STEPS
from tokenwire.engine import Stream, Tokenwire
from tokenwire.providers import Message
from tokenwire.providers.base import ToolSpec

__all__ = ["Turn", "start_turn"]


@dataclass(frozen=True)
class Turn:
    """What a client-named conversation's request asks for.

    Attributes:
        conversation_id: the client's id for the conversation (created on first use).
        source: the surface, recorded with a conversation it creates (``ai-sdk``…).
        messages: the request's whole history: checked, and a new conversation's.
        model, system, params: as :meth:`Tokenwire.start` takes them.
        tools: server-side tool names and client-side :class:`ToolSpec` s.
        max_steps: most model calls of the agent loop (1 to 50).
    """

    conversation_id: str
    source: str
    messages: Sequence[Message]
    model: str | None = None
    system: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    tools: Sequence[str | ToolSpec] = ()
    max_steps: int = DEFAULT_MAX_STEPS


async def start_turn(
    tw: Tokenwire,
    request: Request,
    turn: Turn,
    known: Callable[[], Awaitable[Sequence[Message]]],
    *,
    owner: str | None,
) -> Stream:
    """Start the turn's generation: check ``turn.messages`` (model, params, tools,
    limits), admit the caller, then create the conversation with ``turn.messages``
    or, when it exists (or a concurrent request created it first), continue it with
    ``await known()``: the new messages after its stored history (called after the
    checks, so it may change the store, e.g. drop an answer to regenerate).
    ``owner``: the caller's user id (``tw.access.owner``), ``None`` when anonymous.

    Raises:
        UnknownModelError, InvalidRequestError: before anything is created or read.
        RateLimitedError: over a limit (429), before anything is created.
        ConversationNotFoundError: it is another owner's (404); nothing is changed.
        ShuttingDownError: as :meth:`Tokenwire.start`.
    """
    tw.check(
        turn.model,
        turn.messages,
        system=turn.system,
        params=turn.params,
        tools=turn.tools,
        max_steps=turn.max_steps,
    )
    ticket = await tw.admit(request)
    try:
        existing = await tw.access.find_conversation(request, turn.conversation_id)
        created = existing is None and await tw.store.create_conversation_if_absent(
            turn.conversation_id, owner=owner, source=turn.source
        )
        messages = turn.messages if created else await known()
    except BaseException:
        tw.limits.finished(ticket)  # nothing started: the slot is free again
        raise
    return await tw.start(
        turn.model,
        messages,
        conversation_id=turn.conversation_id,
        system=turn.system,
        params=turn.params,
        owner=owner,
        ticket=ticket,
        tools=turn.tools,
        max_steps=turn.max_steps,
    )
