"""The native HTTP API (DESIGN §3, a contract for its paths and SSE framing).

Errors are JSON ``{"detail": …}``: 401 no valid identity where one is needed
(``WWW-Authenticate: Bearer``), 404 unknown stream or conversation (or another
owner's: :mod:`tokenwire.engine.identity`), 410 stream past retention, 415 a
``POST /v1/chat`` body not sent as ``application/json``, 422 invalid body or query
naming the field (FastAPI's validation format, or ``{"detail": [{"loc": ["body",
"model"], "msg": …}]}`` for an unknown model, too many messages, a content too
long), 400 malformed ``Last-Event-ID``, 413 body too large, 429 over a limit
(``Retry-After``; docs/api.md "Limits"). Each route lists its statuses in the
OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tokenwire.agent import DEFAULT_MAX_STEPS, MAX_STEPS_LIMIT
from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    ConversationNotFoundError,
    InvalidRequestError,
    RateLimitedError,
    UnknownModelError,
)
from tokenwire.protocol.sse import MAX_SEQ, parse_last_event_id
from tokenwire.providers import Message, split_model
from tokenwire.providers.fallback import join_models
from tokenwire.server.errors import error_response, field_error
from tokenwire.server.identity import caller_dependency, require_json
from tokenwire.transports.polling import MAX_WAIT, poll_events, snapshot
from tokenwire.transports.sse import RETRY_MS, EventStreamResponse, resume_point

__all__ = ["build_router"]

MAX_UNIX = 253_402_300_799.0
"""Largest Unix time a query may name (9999-12-31T23:59:59Z), seconds."""

_DESCRIPTIONS = {
    204: "Nothing to send",
    400: "Malformed request: body not JSON, or a malformed header",
    401: "Authentication required or invalid",
    403: "Not allowed",
    404: "Unknown stream, conversation, model or app (or not yours)",
    408: "Request body not received in time",
    410: "The stream's events have expired; the message is in the store",
    413: "Request body too large",
    415: "Body not sent as application/json",
    422: "Invalid body or query, naming the field",
    429: "Rate-limited (Retry-After)",
    502: "The model provider failed",
    503: "The store, the stream log or the provider is unavailable",
    504: "The model provider timed out",
}

EVERY_ROUTE = (408, 413)
"""What any route may answer before it runs (the body middleware of ``create_app``)."""


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route answers, for the
    document to list every status an operation really returns (schemathesis checks it)."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system"]
    content: str


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(
        None, min_length=1, description="'provider:model'; default: the server's default"
    )
    models: list[str] | None = Field(
        None,
        min_length=1,
        description="fallback models, tried in order after 'model' when the previous one "
        "failed before its first event (OpenRouter's convention)",
    )
    messages: list[ChatMessage] = Field(
        description="the new messages; empty only with from_message_id (regenerate)"
    )
    system: str | None = None
    conversation_id: str | None = None
    params: dict[str, Any] | None = None
    source: str = Field(
        "api",
        pattern=r"^[a-z0-9-]{1,32}$",
        description="the surface starting a new conversation: 'page', 'api' …",
    )
    from_message_id: str | None = Field(
        None,
        description="edit or regenerate: delete this message of the conversation and "
        "every later one (a running answer is superseded), then start",
    )
    tools: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="names of the server's registered tools the model may call (agent loop)",
    )
    max_steps: int = Field(
        DEFAULT_MAX_STEPS, ge=1, le=MAX_STEPS_LIMIT, description="most model calls with tools"
    )


class ConversationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)


class NativeAPI:
    """The native API's handlers, bound to one :class:`~tokenwire.engine.Tokenwire`
    (:func:`build_router` makes each a route).

    Every handler asks ``tw.access`` who is calling (401 without a valid identity
    where one is required) and whether they may touch the stream or conversation:
    what a caller starts is theirs; another owner's answers 404, as if it did not exist.
    """

    def __init__(self, tw: Tokenwire) -> None:
        self.tw = tw
        self.access = tw.access

    async def drop_from(self, request: Request, body: ChatBody, message_id: str) -> Response | None:
        """Delete ``message_id`` and every later message of ``body.conversation_id``
        (cancelling its running answer as ``superseded``), or the 4xx answer that
        refuses it; nothing is deleted for a request that could not start."""
        if body.conversation_id is None:
            return field_error("conversation_id", "from_message_id needs conversation_id")
        try:
            self.tw.registry.resolve(body.model or self.tw.settings.resolved_default_model())
        except UnknownModelError as exc:
            return error_response(exc)
        await self.access.conversation(request, body.conversation_id)
        active = await self.tw.active_stream(body.conversation_id)
        if active is not None:
            await self.tw.cancel(active[0], "superseded")
        if not await self.tw.store.delete_messages_from(body.conversation_id, message_id):
            return field_error("from_message_id", "no such message in the conversation")
        return None

    async def chat(
        self, body: ChatBody, request: Request, accept: Annotated[str, Header()] = ""
    ) -> Response | dict[str, str]:
        """Start a generation: SSE when ``Accept: text/event-stream``, else 202 with URLs.

        With ``from_message_id`` (needs ``conversation_id``), that message and every
        later one are deleted first (the running answer, if any, is cancelled as
        ``superseded``): edit-and-resend and regenerate."""
        if not body.messages and body.from_message_id is None:
            return field_error("messages", "List should have at least 1 item")
        messages = [Message(m.role, m.content) for m in body.messages]
        try:  # before anything is deleted or created
            model = join_models(body.model, body.models)
            self.tw.check(model, messages, system=body.system, params=body.params, tools=body.tools)
        except (UnknownModelError, InvalidRequestError) as exc:
            return error_response(exc)
        if body.from_message_id is not None:
            refused = await self.drop_from(request, body, body.from_message_id)
            if refused is not None:
                return refused
        try:  # 429 before anything is created
            ticket = await self.tw.admit(request)
        except RateLimitedError as exc:
            return error_response(exc)
        try:
            stream = await self.tw.start(
                model,
                messages,
                conversation_id=body.conversation_id,
                system=body.system,
                params=body.params,
                owner=await self.access.owner(request),
                source=body.source,
                ticket=ticket,
                tools=body.tools,
                max_steps=body.max_steps,
            )
        except (UnknownModelError, InvalidRequestError) as exc:
            return error_response(exc)
        except ConversationNotFoundError as exc:
            return error_response(exc)
        if "text/event-stream" in accept:
            return stream.sse_response(headers={"x-tokenwire-stream-id": stream.stream_id})
        base = str(request.url_for("stream_events", stream_id=stream.stream_id))
        return {
            "stream_id": stream.stream_id,
            "message_id": stream.message_id or "",
            "conversation_id": stream.conversation_id or "",
            "events_url": base,
            "cancel_url": str(request.url_for("cancel_stream", stream_id=stream.stream_id)),
        }

    async def stream_events(
        self,
        request: Request,
        stream_id: str,
        after: Annotated[
            int, Query(ge=0, le=MAX_SEQ, description="send events with seq > after")
        ] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Any:
        """SSE: replay events with ``seq > N`` (``Last-Event-ID`` or ``?after=N``), then
        follow. A resume point at or past the end of a finished stream replays its
        terminal event (:func:`~tokenwire.transports.sse.resume_point`)."""
        try:
            seq = parse_last_event_id(last_event_id)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        info = await self.access.stream(request, stream_id)
        return EventStreamResponse(
            self.tw.log,
            stream_id,
            after=resume_point(info, after if seq is None else seq),
            heartbeat_interval=self.tw.settings.heartbeat_interval,
            retry_ms=RETRY_MS,
        )

    async def stream_snapshot(
        self,
        request: Request,
        stream_id: str,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False, description="seconds")
        ] = 0.0,
    ) -> Response:
        """Polling: the message so far, or with ``after``, events with ``seq > after``
        (waiting up to ``wait`` seconds for at least one)."""
        info = await self.access.stream(request, stream_id)
        if after is not None or wait:
            return await poll_events(self.tw.log, info, after or 0, wait, self.tw.wait_events)
        return await snapshot(self.tw.log, info)

    async def cancel_stream(self, request: Request, stream_id: str) -> dict[str, Any]:
        """Stop the stream; idempotent. Every reader then receives ``cancelled``."""
        await self.access.stream(request, stream_id)
        requested = await self.tw.cancel(stream_id, "user")
        info = await self.tw.log.info(stream_id)
        return {"stream_id": stream_id, "cancel_requested": requested, "status": info.status}

    async def list_conversations(
        self,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[
            float | None,
            Query(ge=0, le=MAX_UNIX, allow_inf_nan=False, description="updated_at, Unix seconds"),
        ] = None,
        source: Annotated[
            str | None, Query(max_length=32, description="only those started from it: page …")
        ] = None,
        q: Annotated[str | None, Query(max_length=200, description="text in the title")] = None,
    ) -> dict[str, Any]:
        """The caller's conversations, newest first (anonymous: those nobody owns);
        the next page is ``?before=<updated_at of the last one>``."""
        records = await self.access.conversations(
            request, limit=limit, before=before, source=source, query=q
        )
        return {"data": [_conversation(r) for r in records]}

    async def get_conversation(self, request: Request, conversation_id: str) -> dict[str, Any]:
        record = await self.access.conversation(request, conversation_id)
        active = await self.tw.active_stream(conversation_id)
        messages = []
        for m in await self.tw.store.messages(conversation_id):
            item = {
                "id": m.id,
                "role": m.role,
                "parts": m.parts,
                "status": m.status,
                "model": m.model,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "cost": m.cost,
                "error": m.error,
                "created_at": m.created_at,
            }
            if active is not None and active[1] == m.id:
                item["stream_id"] = active[0]
            messages.append(item)
        return {**_conversation(record), "messages": messages}

    async def rename_conversation(
        self, request: Request, conversation_id: str, body: ConversationPatch
    ) -> Response | dict[str, Any]:
        """Rename: ``{"title": "…"}``; 404 for a conversation the caller may not see."""
        await self.access.conversation(request, conversation_id)
        if not body.title.strip():
            return field_error("title", "title must not be blank")
        record = await self.tw.store.rename_conversation(conversation_id, body.title)
        if record is None:
            raise ConversationNotFoundError(conversation_id)
        return _conversation(record)

    async def delete_conversation(self, request: Request, conversation_id: str) -> Response:
        await self.access.conversation(request, conversation_id)
        active = await self.tw.active_stream(conversation_id)
        if active is not None:
            await self.tw.cancel(active[0], "deleted")
        if not await self.tw.store.delete_conversation(conversation_id):
            raise ConversationNotFoundError(conversation_id)
        return Response(status_code=204)

    async def models(self, request: Request) -> dict[str, Any]:
        await self.access.caller(request)
        names = self.tw.settings.resolved_models()
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "owned_by": split_model(n)[0], "created": 0}
                for n in names
            ],
            "default": self.tw.settings.resolved_default_model(),
        }


def build_router(tw: Tokenwire) -> APIRouter:
    """The native API routes, bound to ``tw`` (the handlers of :class:`NativeAPI`)."""
    router = APIRouter()
    api = NativeAPI(tw)
    access = tw.access
    router.post(
        "/v1/chat",
        status_code=202,
        response_model=None,
        dependencies=[Depends(caller_dependency(access)), Depends(require_json)],
        responses=responses(400, 401, 404, 413, 415, 422, 429, 503),
    )(api.chat)
    router.get(
        "/v1/streams/{stream_id}/events",
        name="stream_events",
        response_model=None,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The events, as SSE"},
            **responses(400, 401, 404, 410, 422, 503),
        },
    )(api.stream_events)
    router.get("/v1/streams/{stream_id}", responses=responses(401, 404, 410, 422, 503))(
        api.stream_snapshot
    )
    router.post(
        "/v1/streams/{stream_id}/cancel",
        name="cancel_stream",
        status_code=202,
        responses=responses(401, 404, 410, 503),
    )(api.cancel_stream)
    router.get("/v1/conversations", responses=responses(401, 422, 503))(api.list_conversations)
    router.get("/v1/conversations/{conversation_id}", responses=responses(401, 404, 503))(
        api.get_conversation
    )
    router.patch(
        "/v1/conversations/{conversation_id}",
        response_model=None,
        responses=responses(400, 401, 404, 415, 422, 503),
    )(api.rename_conversation)
    router.delete(
        "/v1/conversations/{conversation_id}", status_code=204, responses=responses(401, 404, 503)
    )(api.delete_conversation)
    router.get("/v1/models", responses=responses(401))(api.models)
    return router


def _conversation(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "title": record.title,
        "source": record.source,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
