"""The native HTTP API (DESIGN §3, a contract for its paths and SSE framing).

Errors are JSON ``{"detail": …}``: 404 unknown stream or conversation, 410 stream
past retention, 422 invalid body naming the field (FastAPI's validation format,
or ``{"detail": [{"loc": ["body", "model"], "msg": …}]}`` for an unknown model),
413 body too large, 429 over a limit (``Retry-After``; docs/api.md "Limits").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tokenwire.accumulate import MessageState
from tokenwire.errors import StreamNotFoundError, UnknownModelError
from tokenwire.events import encode_event, is_terminal
from tokenwire.log.base import StreamInfo
from tokenwire.providers import Message, split_model
from tokenwire.server.limits import RateLimitedError, rate_limited_response
from tokenwire.server.tokenwire import ConversationNotFoundError, Tokenwire
from tokenwire.transports.sse import EventStreamResponse

__all__ = ["build_router"]

_OUTCOME = {"finish": "completed", "error": "failed", "cancelled": "cancelled"}
MAX_WAIT = 30.0
"""Longest long-poll wait, seconds."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant", "system"]
    content: str


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="'provider:model'; default: the server's default")
    messages: list[ChatMessage] = Field(min_length=1)
    system: str | None = None
    conversation_id: str | None = None
    params: dict[str, Any] | None = None


def _field_error(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def build_router(tw: Tokenwire) -> APIRouter:
    """The native API routes, bound to ``tw``.

    Ownership: what an identified caller (``tw.identify``) starts is theirs; a stream
    or conversation with an owner answers 404 to anyone else, as if it did not exist.
    """
    router = APIRouter()

    async def caller(request: Request) -> str | None:
        identity = await tw.identify(request)
        return identity.id if identity is not None else None

    async def visible_stream(request: Request, stream_id: str) -> StreamInfo:
        info = await tw.log.info(stream_id)
        owner = info.meta.get("owner")
        if owner is not None and owner != await caller(request):
            raise StreamNotFoundError(stream_id)
        return info

    async def visible_conversation(request: Request, conversation_id: str) -> Any:
        record = await tw.store.get_conversation(conversation_id)
        if record is None or (record.owner is not None and record.owner != await caller(request)):
            raise ConversationNotFoundError(conversation_id)
        return record

    @router.post("/v1/chat", status_code=202, response_model=None)
    async def chat(
        body: ChatBody, request: Request, accept: Annotated[str, Header()] = ""
    ) -> Response | dict[str, str]:
        """Start a generation: SSE when ``Accept: text/event-stream``, else 202 with URLs."""
        try:  # 429 before anything is created
            ticket = await tw.admit(request)
        except RateLimitedError as exc:
            return rate_limited_response(exc)
        try:
            stream = await tw.start(
                body.model,
                [Message(m.role, m.content) for m in body.messages],
                conversation_id=body.conversation_id,
                system=body.system,
                params=body.params,
                owner=await caller(request),
                ticket=ticket,
            )
        except UnknownModelError as exc:
            return _field_error("model", str(exc))
        except ConversationNotFoundError:
            return JSONResponse({"detail": "conversation not found"}, status_code=404)
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

    @router.get("/v1/streams/{stream_id}/events", name="stream_events", response_model=None)
    async def stream_events(
        request: Request,
        stream_id: str,
        after: Annotated[int, Query(ge=0, description="send events with seq > after")] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> Any:
        """SSE: replay events with ``seq > N`` (``Last-Event-ID`` or ``?after=N``), then follow."""
        if last_event_id is not None and last_event_id.strip():
            if not last_event_id.strip().isdigit():
                return JSONResponse({"detail": "Last-Event-ID must be a sequence number"}, 422)
            after = int(last_event_id)
        await visible_stream(request, stream_id)
        return EventStreamResponse(
            tw.log, stream_id, after=after, heartbeat_interval=tw.settings.heartbeat_interval
        )

    @router.get("/v1/streams/{stream_id}")
    async def stream_snapshot(
        request: Request,
        stream_id: str,
        after: Annotated[int | None, Query(ge=0)] = None,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="seconds")] = 0.0,
    ) -> Response:
        """Polling: the message so far, or with ``after``, events with ``seq > after``
        (waiting up to ``wait`` seconds for at least one)."""
        info = await visible_stream(request, stream_id)
        if after is not None or wait:
            since = after or 0
            if wait:
                events = await tw.log.wait(stream_id, since, wait)
            else:
                events = await tw.log.events(stream_id, since)
            status = info.status
            if events and is_terminal(events[-1]):
                status = _OUTCOME[str(events[-1].__struct_config__.tag)]
            body = b'{"events":[%s],"last_seq":%d,"status":"%s"}' % (
                b",".join(encode_event(e) for e in events),
                max(info.last_seq, events[-1].seq if events else 0),
                status.encode(),
            )
            return Response(body, media_type="application/json")
        state = MessageState()
        for event in await tw.log.events(stream_id):
            state.apply(event)
        return JSONResponse(
            {
                "stream_id": stream_id,
                "status": info.status,
                "text": state.text,
                "reasoning": state.reasoning,
                "tool_calls": state.tool_calls,
                "usage": state.usage_dict(),
                "finish_reason": state.finish_reason,
                "error": state.error,
                "last_seq": info.last_seq,
            }
        )

    @router.post("/v1/streams/{stream_id}/cancel", name="cancel_stream", status_code=202)
    async def cancel_stream(request: Request, stream_id: str) -> dict[str, Any]:
        """Stop the stream; idempotent. Every reader then receives ``cancelled``."""
        await visible_stream(request, stream_id)
        requested = await tw.cancel(stream_id, "user")
        info = await tw.log.info(stream_id)
        return {"stream_id": stream_id, "cancel_requested": requested, "status": info.status}

    @router.get("/v1/conversations")
    async def list_conversations(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[float | None, Query(description="updated_at, Unix seconds")] = None,
    ) -> dict[str, Any]:
        owner = await caller(request)
        records = await tw.store.list_conversations(owner=owner, limit=limit, before=before)
        if owner is None:  # an anonymous caller sees only conversations nobody owns
            records = [r for r in records if r.owner is None]
        return {"data": [_conversation(r) for r in records]}

    @router.get("/v1/conversations/{conversation_id}")
    async def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
        record = await visible_conversation(request, conversation_id)
        active = await tw.active_stream(conversation_id)
        messages = []
        for m in await tw.store.messages(conversation_id):
            item = {
                "id": m.id,
                "role": m.role,
                "parts": m.parts,
                "status": m.status,
                "model": m.model,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "error": m.error,
                "created_at": m.created_at,
            }
            if active is not None and active[1] == m.id:
                item["stream_id"] = active[0]
            messages.append(item)
        return {**_conversation(record), "messages": messages}

    @router.delete("/v1/conversations/{conversation_id}", status_code=204)
    async def delete_conversation(request: Request, conversation_id: str) -> Response:
        await visible_conversation(request, conversation_id)
        active = await tw.active_stream(conversation_id)
        if active is not None:
            await tw.cancel(active[0], "deleted")
        if not await tw.store.delete_conversation(conversation_id):
            raise ConversationNotFoundError(conversation_id)
        return Response(status_code=204)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = tw.settings.resolved_models()
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "owned_by": split_model(n)[0], "created": 0}
                for n in names
            ],
            "default": tw.settings.resolved_default_model(),
        }

    return router


def _conversation(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "title": record.title,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
