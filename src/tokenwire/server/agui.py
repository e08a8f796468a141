"""AG-UI endpoints (the Agent User Interaction protocol), for ``HttpAgent`` from
``@ag-ui/client`` and CopilotKit.

- ``POST /api/agui``: the ``RunAgentInput`` an AG-UI client POSTs; answers the AG-UI
  event stream (SSE, ``data: <json>`` frames) of a new tokenwire generation in the
  conversation whose id is the ``threadId`` (created on first use). The stream id is
  in the ``x-tokenwire-stream-id`` header, for the native API (resume with
  ``Last-Event-ID``, ``POST /v1/streams/{id}/cancel``).
- ``GET /api/agui/{thread_id}/stream``: reconnect: the thread's running generation
  replayed from ``RUN_STARTED``, then followed live (``?runId=`` is echoed, default:
  the stream id); ``204`` when none runs.

Ownership (:mod:`tokenwire.engine.identity`): a thread created here is its caller's;
another owner's thread answers 404 to ``POST`` and 204 to ``GET``, and nothing of it
is read or changed. Without a valid identity where one is required: 401. The body
must be declared as JSON (415 otherwise).

Choices travel in ``forwardedProps`` (``model``, ``system``, ``params``, and
``tools`` / ``max_steps`` for registered server-side tools: the agent loop); see
:func:`tokenwire.protocol.agui.parse_run_input`. Bad requests answer ``400`` (not
JSON) or ``422`` in FastAPI's validation shape naming the field; over a limit:
``429`` with ``Retry-After``. The event mapping is
:class:`tokenwire.protocol.agui.AguiEncoder`; every stream ends with exactly one
``RUN_FINISHED`` or ``RUN_ERROR``.

Protocol reference: https://docs.ag-ui.com/concepts/events and the ``ag-ui-protocol``
package (types and ``EventEncoder``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

from ag_ui.core import AssistantMessage, ToolMessage
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from tokenwire.agent import DEFAULT_MAX_STEPS
from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    ConversationNotFoundError,
    InvalidRequestError,
    TokenwireError,
    UnknownModelError,
)
from tokenwire.protocol.agui import (
    AguiEncoder,
    AguiRun,
    ChatMessage,
    parse_run_input,
    text_of,
)
from tokenwire.providers import Message
from tokenwire.providers.base import MessageToolCall, ToolSpec
from tokenwire.server.errors import error_response, field_error
from tokenwire.server.identity import require_json
from tokenwire.server.routes import responses
from tokenwire.server.turns import Turn, start_turn
from tokenwire.store.models import MessageRecord
from tokenwire.transports.sse import EventStreamResponse

__all__ = ["build_agui_router"]

SOURCE = "ag-ui"
"""The ``source`` recorded with a conversation this surface creates."""


def build_agui_router(tw: Tokenwire) -> APIRouter:
    """The ``/api/agui`` routes bound to ``tw``."""
    router = APIRouter()

    @router.post(
        "/api/agui",
        response_model=None,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "AG-UI event stream"},
            **responses(400, 401, 404, 415, 422, 429, 503),
        },
    )
    async def run(request: Request) -> Response:
        """Run the agent: start a generation and answer its AG-UI event stream."""
        owner = await tw.access.owner(request)
        require_json(request)
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return JSONResponse(
                {"detail": "the body must be JSON (UTF-8, nested at most ~1000 levels)"},
                status_code=400,
            )
        try:
            agui = parse_run_input(body)
            stream_id = await _start(tw, request, agui, owner)
        except UnknownModelError as exc:  # the model and params are forwarded props here
            return field_error("forwardedProps.model", str(exc), exc.http_status)
        except InvalidRequestError as exc:
            where = exc.field.replace("[", ".").replace("]", "")  # tools[0] -> tools.0
            if where.split(".")[0] in ("params", "tools", "max_steps"):
                where = f"forwardedProps.{where}"
            return field_error(where, exc.message, exc.http_status)
        except TokenwireError as exc:
            return error_response(exc)
        return _response(tw, stream_id, agui.thread_id, agui.run_id)

    @router.get(
        "/api/agui/{thread_id}/stream",
        response_model=None,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "AG-UI event stream"},
            **responses(204, 401, 503),
        },
    )
    async def reconnect(
        request: Request,
        thread_id: str,
        run_id: Annotated[str | None, Query(alias="runId")] = None,
    ) -> Response:
        """Replay the thread's running generation from ``RUN_STARTED``; 204 when none
        runs (also for an unknown thread or another owner's)."""
        try:
            await tw.access.conversation(request, thread_id)
        except ConversationNotFoundError:
            return Response(status_code=204)
        active = await tw.active_stream(thread_id)
        if active is None:
            return Response(status_code=204)
        return _response(tw, active[0], thread_id, run_id or active[0])

    return router


async def _start(tw: Tokenwire, request: Request, agui: AguiRun, owner: str | None) -> str:
    """Start the run's generation (:func:`~tokenwire.server.turns.start_turn`); the
    stream id.

    A thread tokenwire does not know is created with the request's whole history; a
    known one gets :attr:`AguiRun.new` after its stored history, without what it
    stores already (:func:`_unseen`).

    Raises:
        UnknownModelError, InvalidRequestError: before anything is created (checked
            against the request's whole history, as ``/api/chat`` does).
        RateLimitedError: over a limit (429), before anything is created.
        ConversationNotFoundError: the thread is another owner's.
    """

    async def known() -> list[Message]:
        stored = await tw.store.messages(agui.thread_id)
        return [_message(m) for m in _unseen(agui.new, stored)]

    turn = Turn(
        conversation_id=agui.thread_id,
        source=SOURCE,
        messages=[_message(m) for m in agui.history],
        model=agui.model,
        system=agui.system,
        params=agui.params,
        tools=[
            *agui.server_tools,
            *(
                ToolSpec(t.name, t.description, t.parameters or {"type": "object"})
                for t in agui.tools
            ),
        ],
        max_steps=DEFAULT_MAX_STEPS if agui.max_steps is None else agui.max_steps,
    )
    stream = await start_turn(tw, request, turn, known, owner=owner)
    return stream.stream_id


def _unseen(new: list[ChatMessage], stored: Sequence[MessageRecord]) -> list[ChatMessage]:
    """``new`` without what the thread already stores: an assistant message whose
    ``id`` is a stored message's (tokenwire's message id, which the client got as
    ``parentMessageId``) or whose tool calls are all stored (the client re-sends the
    call its tool results answer), and a tool message whose result is stored."""
    ids = {m.id for m in stored}
    parts = [p for m in stored for p in m.parts]
    calls = {p.get("tool_call_id") for p in parts if p.get("type") == "tool-call"}
    results = {p.get("tool_call_id") for p in parts if p.get("type") == "tool-result"}

    def seen(m: ChatMessage) -> bool:
        if isinstance(m, AssistantMessage):
            called = [c.id for c in m.tool_calls or ()]
            return m.id in ids or (bool(called) and all(c in calls for c in called))
        return isinstance(m, ToolMessage) and m.tool_call_id in results

    return [m for m in new if not seen(m)]


def _message(message: ChatMessage) -> Message:
    """An AG-UI message as tokenwire's: an assistant's ``toolCalls`` become
    ``tool_calls``, a tool message's ``error`` marks the result failed."""
    if isinstance(message, AssistantMessage):
        calls = tuple(
            MessageToolCall(c.id, c.function.name, c.function.arguments or "{}")
            for c in message.tool_calls or ()
        )
        return Message("assistant", message.content or "", tool_calls=calls)
    if isinstance(message, ToolMessage):
        return Message(
            "tool",
            text_of(message.content) or (message.error or ""),
            tool_call_id=message.tool_call_id,
            is_error=message.error is not None,
        )
    return Message("user", text_of(message.content))


def _response(tw: Tokenwire, stream_id: str, thread_id: str, run_id: str) -> EventStreamResponse:
    """The stream from ``seq`` 1 as AG-UI events: the native SSE response's reading,
    batching, heartbeats (SSE comments, which AG-UI clients skip) and disconnect
    handling, with this framing."""
    return EventStreamResponse(
        tw.log,
        stream_id,
        heartbeat_interval=tw.settings.heartbeat_interval,
        headers={"x-tokenwire-stream-id": stream_id},
        encoder=AguiEncoder(thread_id, run_id),
    )
