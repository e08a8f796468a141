"""Vercel AI SDK UI message stream endpoints, for ``useChat`` (DESIGN §8).

- ``POST /api/chat``: the body ``DefaultChatTransport`` sends; answers the UI
  message stream of a new tokenwire generation in the conversation whose id is
  the chat ``id`` (created on first use).
- ``GET /api/chat/{chat_id}/stream``: the transport's ``reconnectToStream``
  (``resume: true`` in ``useChat``): the chat's running generation replayed from
  its ``start`` (same ``messageId``), then followed live; ``204`` when none runs.
- ``POST /api/chat/{chat_id}/stop``: cancel the chat's running generation; every
  reader ends with ``abort``. (``useChat``'s own ``stop()`` only aborts the fetch,
  which is a disconnect, not a stop: DESIGN §5. Call this endpoint too, with
  ``Content-Type: application/json``.)

Ownership (:mod:`tokenwire.engine.identity`): a chat created by ``POST /api/chat``
is its caller's. Another owner's chat is treated as one that does not exist:
``POST /api/chat`` and ``/stop`` answer 404, ``/stream`` answers 204, and nothing
is read, deleted or cancelled. Without a valid identity where one is required:
401. ``POST /api/chat`` and ``/stop`` refuse a body not declared as JSON with 415,
so that another site's page cannot call them with a form.

Client-side tools: the body's ``tools`` objects (``{name, description,
inputSchema}``) are offered to the model; its tool calls end the answer
(``finish`` with ``tool-calls``); the client runs them and POSTs the chat again,
the last message being the assistant's with its tool parts in state
``output-available``/``output-error``; those results are the new turn, answered
in the same conversation (:mod:`tokenwire.server.aisdk_request`).

Choices: the model comes from the body field ``model``, else the
``x-tokenwire-model`` header, else the server's default model; the dialect from
the ``x-tokenwire-ai-sdk`` header (``5``, ``6`` or ``7``; default ``7``). Bad
requests answer ``400``/``404``/``422`` with ``{"detail": "<sentence>"}``:
``DefaultChatTransport`` throws ``new Error(await response.text())`` for any
non-2xx answer, so the sentence reaches ``useChat``'s ``error``. Over a limit:
``429`` with ``Retry-After`` and the same ``{"detail": …}`` (docs/api.md "Limits").

Protocol references: https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol and
https://ai-sdk.dev/docs/ai-sdk-ui/chatbot-resume-streams; the chunk encoding is
:mod:`tokenwire.protocol.aisdk`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from tokenwire.agent import DEFAULT_MAX_STEPS
from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    ConversationNotFoundError,
    InvalidRequestError,
    RateLimitedError,
    UnknownModelError,
)
from tokenwire.protocol.aisdk import (
    HEADERS,
    ChatRequestError,
    Dialect,
    UIMessageStreamEncoder,
    parse_dialect,
)
from tokenwire.providers import Message
from tokenwire.server.aisdk_request import ChatRequest, parse_chat_request
from tokenwire.server.errors import error_response
from tokenwire.server.identity import caller_dependency, require_json
from tokenwire.server.routes import responses
from tokenwire.server.turns import Turn, start_turn
from tokenwire.transports.sse import EventStreamResponse

__all__ = ["AISDKAPI", "build_aisdk_router"]

DIALECT_HEADER = "x-tokenwire-ai-sdk"
MODEL_HEADER = "x-tokenwire-model"


def _detail(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class AISDKAPI:
    """The ``/api/chat`` handlers, bound to one :class:`~tokenwire.engine.Tokenwire`
    (:func:`build_aisdk_router` makes each a route)."""

    def __init__(self, tw: Tokenwire) -> None:
        self.tw = tw

    async def chat(
        self,
        request: Request,
        x_tokenwire_ai_sdk: Annotated[str | None, Header()] = None,
        x_tokenwire_model: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Start a generation and answer its UI message stream."""
        owner = await self.tw.access.owner(request)
        require_json(request)
        try:
            dialect = parse_dialect(x_tokenwire_ai_sdk)
            body = parse_chat_request(json.loads(await request.body() or b"null"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return _detail(400, "the body must be JSON (UTF-8, nested at most ~1000 levels)")
        except ChatRequestError as exc:
            return _detail(400 if exc.header else exc.http_status, exc.message)
        model = body.model if body.model is not None else x_tokenwire_model
        try:
            stream = await start_turn(
                self.tw, request, _turn(body, model), self._known(body), owner=owner
            )
        except UnknownModelError as exc:
            return _detail(exc.http_status, f"model: {exc}")
        except InvalidRequestError as exc:
            return _detail(exc.http_status, str(exc))
        except RateLimitedError as exc:
            return error_response(exc)
        except ConversationNotFoundError as exc:
            return _detail(exc.http_status, "chat not found")
        return _response(self.tw, stream.stream_id, dialect, body.continued_id)

    def _known(self, body: ChatRequest) -> Callable[[], Awaitable[list[Message]]]:
        """What :func:`start_turn` stores as the new turn once the request is admitted:
        a regenerate first drops the answer it replaces, and answers the stored
        user message again rather than adding one."""
        regenerate = body.trigger == "regenerate-message"

        async def known() -> list[Message]:
            if regenerate and body.message_id is not None:  # drop the answer it replaces
                await self.tw.store.delete_messages_from(body.chat_id, body.message_id)
            answer_again = regenerate and await _ends_with_user(self.tw, body.chat_id)
            return [] if answer_again else body.turn

        return known

    async def resume(
        self,
        request: Request,
        chat_id: str,
        x_tokenwire_ai_sdk: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Replay the chat's running generation from ``start``; 204 when none runs
        (also for an unknown chat or another owner's)."""
        try:
            dialect = parse_dialect(x_tokenwire_ai_sdk)
        except ChatRequestError as exc:
            return _detail(400, exc.message)
        try:
            await self.tw.access.conversation(request, chat_id)
        except ConversationNotFoundError:
            return Response(status_code=204)
        stream_id = await _running_stream(self.tw, chat_id)
        if stream_id is None:
            return Response(status_code=204)
        return _response(self.tw, stream_id, dialect)

    async def stop(self, request: Request, chat_id: str) -> Response:
        """Cancel the chat's running generation (reason ``user``); idempotent. 404 for
        an unknown chat or another owner's."""
        try:
            await self.tw.access.conversation(request, chat_id)
        except ConversationNotFoundError as exc:
            return _detail(exc.http_status, "chat not found")
        stream_id = await _running_stream(self.tw, chat_id)
        stopped = stream_id is not None and await self.tw.cancel(stream_id, "user")
        return JSONResponse({"chat_id": chat_id, "stream_id": stream_id, "stopped": stopped})


def build_aisdk_router(tw: Tokenwire) -> APIRouter:
    """The ``/api/chat`` routes bound to ``tw`` (the handlers of :class:`AISDKAPI`)."""
    router = APIRouter()
    api = AISDKAPI(tw)
    router.post(
        "/api/chat",
        response_model=None,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "UI message stream"},
            **responses(400, 401, 404, 415, 422, 429, 503),
        },
    )(api.chat)
    router.get(
        "/api/chat/{chat_id}/stream",
        response_model=None,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "UI message stream"},
            **responses(204, 400, 401, 404, 503),
        },
    )(api.resume)
    router.post(
        "/api/chat/{chat_id}/stop",
        response_model=None,
        dependencies=[Depends(caller_dependency(tw.access)), Depends(require_json)],
        responses=responses(401, 404, 415, 503),
    )(api.stop)
    return router


def _turn(body: ChatRequest, model: str | None) -> Turn:
    """The turn ``body`` asks for (``model``: the body's, else the header's)."""
    return Turn(
        conversation_id=body.chat_id,
        source="ai-sdk",
        messages=[*body.history, *body.turn],
        model=model,
        system=body.system,
        params=body.params,
        tools=[*body.tools, *body.client_tools],
        max_steps=DEFAULT_MAX_STEPS if body.max_steps is None else body.max_steps,
    )


async def _ends_with_user(tw: Tokenwire, chat_id: str) -> bool:
    stored = await tw.store.messages(chat_id)
    return bool(stored) and stored[-1].role == "user"


async def _running_stream(tw: Tokenwire, chat_id: str) -> str | None:
    """The chat's generation if it has not logged its terminal event yet."""
    active = await tw.active_stream(chat_id)
    return None if active is None else active[0]


def _response(
    tw: Tokenwire, stream_id: str, dialect: Dialect, message_id: str | None = None
) -> EventStreamResponse:
    """The stream from ``seq`` 1 as the UI message stream, ending with ``[DONE]``: the
    native SSE response's reading, batching, heartbeats (which the SDK's parser
    ignores) and disconnect handling, with this framing. ``message_id``, when given,
    is the ``start`` chunk's ``messageId`` (the client's message this answer continues)."""
    return EventStreamResponse(
        tw.log,
        stream_id,
        heartbeat_interval=tw.settings.heartbeat_interval,
        headers={**HEADERS, "x-tokenwire-stream-id": stream_id},
        encoder=UIMessageStreamEncoder(dialect, message_id=message_id),
    )
