"""OpenAI Responses API: ``POST /v1/responses`` and its retrieve/cancel routes, for
the official ``openai`` SDK (``client.responses.create``) and ``@ai-sdk/openai``
(whose default ``createOpenAI(...)(model)`` calls it).

Wire format: OpenAI API reference, "Responses" and "Responses → Streaming events";
the encoding is :mod:`tokenwire.server.responses_request` (requests, pure) and
:mod:`tokenwire.protocol.openai_responses_api` (events), this module is their I/O
shell, sharing everything else with ``/v1/chat/completions``
(:mod:`tokenwire.server.openai_compat`: identity, admission, errors in OpenAI's
shape through :class:`~tokenwire.server.openai_compat.OpenAIRoute`).

- ``POST /v1/responses``: each request starts a new conversation owned by the
  caller, or with ``previous_response_id`` continues that response's conversation
  (its stored history comes first; it must be the caller's latest answer there).
  The response id is ``resp_<stream_id>`` (also sent as ``x-tokenwire-stream-id``).
  ``stream: true`` answers Responses streaming events as SSE ending with exactly
  one of ``response.completed``, ``response.incomplete``, ``response.failed``;
  otherwise the ``response`` object once the stream ended (a failed generation:
  OpenAI's error object with 400/429/502/503/504, as Chat Completions).
- ``GET /v1/responses/{id}``: the response so far (``status`` ``in_progress``
  while it streams); ``?stream=true`` replays its events from the start (or after
  ``starting_after``, a ``sequence_number``) and follows them.
- ``POST /v1/responses/{id}/cancel``: stops it (every reader then receives the
  terminal ``response.incomplete`` with status ``cancelled``); answers the response.
- ``input`` items ``{"type": "item_reference", "id": …}`` (what ``@ai-sdk/openai``
  sends for earlier output items when ``store`` is on) are replaced by the output
  item they name, read from its stream.
- Another owner's response or item, an unknown or expired one: 404 (the ownership
  check of :meth:`tokenwire.engine.identity.Access.stream`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    ConversationNotFoundError,
    InvalidRequestError,
    OpenAIRequestError,
    StreamExpiredError,
    StreamNotFoundError,
)
from tokenwire.events import Event, StreamStatus
from tokenwire.protocol.openai_responses_api import ResponseEncoder, item_location, stream_id_of
from tokenwire.server.identity import caller_dependency, require_json
from tokenwire.server.openai_compat import (
    OpenAIRoute,
    answer,
)
from tokenwire.server.responses_request import ResponsesRequest, parse_responses_request
from tokenwire.server.routes import responses
from tokenwire.transports.sse import EventStreamResponse

__all__ = ["ResponsesAPI", "build_responses_router"]


class _Framer:
    """A :class:`ResponseEncoder` as an :class:`~tokenwire.protocol.sse.EventEncoder`:
    SSE bytes for a batch of events, leaving out ``sequence_number <= after``."""

    def __init__(self, encoder: ResponseEncoder, after: int = -1) -> None:
        self.encoder = encoder
        self.after = after

    def frame(self, events: Sequence[Event]) -> bytes:
        return b"".join([self.encoder.encode(event, self.after) for event in events])


_PARAMS = {"messages": "input", "system": "instructions"}
"""Where :meth:`Tokenwire.check <tokenwire.Tokenwire.check>` names a fault → the
Responses parameter that carried it."""


def _previous_not_found(response_id: object) -> OpenAIRequestError:
    message = f"Previous response with id {response_id!r} not found."
    return OpenAIRequestError(message, param="previous_response_id", status=404)


class ResponsesAPI:
    """The Responses API's handlers, bound to one :class:`~tokenwire.engine.Tokenwire`
    (:func:`build_responses_router` makes each a route)."""

    def __init__(self, tw: Tokenwire) -> None:
        self.tw = tw

    async def stream_of(self, request: Request, response_id: str) -> str:
        """The caller's stream behind ``response_id`` (404 for anyone else's)."""
        stream_id = stream_id_of(response_id)
        if stream_id is None:
            raise StreamNotFoundError(response_id)
        await self.tw.access.stream(request, stream_id)
        return stream_id

    async def folded(self, stream_id: str, *, follow: bool = False) -> dict[str, Any]:
        """The response object of the stream so far (``follow``: once it ended)."""
        info = await self.tw.log.info(stream_id)
        encoder = ResponseEncoder(str(info.meta.get("model", "")))
        if follow:
            async for batch in self.tw.log.read(stream_id, 0):
                for event in batch:
                    encoder.feed(event)
        else:
            for event in await self.tw.log.events(stream_id):
                encoder.feed(event)
        return encoder.response()

    async def referenced(self, request: Request, item_id: object, where: str) -> Any:
        """The output item an ``item_reference`` names, if it is the caller's.

        Raises:
            OpenAIRequestError: 404 naming ``where``: no such item, or another owner's.
        """
        location = item_location(item_id) if isinstance(item_id, str) else None
        missing = OpenAIRequestError(
            f"Item with id {item_id!r} not found.", param=where, status=404, code="item_not_found"
        )
        if location is None:
            raise missing
        stream_id, index = location
        try:
            await self.tw.access.stream(request, stream_id)
        except (StreamNotFoundError, StreamExpiredError):
            raise missing from None
        output = (await self.folded(stream_id))["output"]
        if index >= len(output):
            raise missing
        return output[index]

    async def continued(self, request: Request, response_id: str) -> str:
        """The conversation a new response continues: that of ``response_id``, which
        must be the caller's, ended, and the conversation's latest answer.

        Raises:
            OpenAIRequestError: naming ``previous_response_id``: 404 for no such
                response (or another owner's), 400 for one still running or not the
                latest of its conversation (tokenwire conversations do not branch).
        """
        try:
            info = await self.tw.access.stream(request, stream_id_of(response_id) or "")
        except (StreamNotFoundError, StreamExpiredError):
            raise _previous_not_found(response_id) from None
        param = "previous_response_id"
        if info.status == StreamStatus.RUNNING:
            raise OpenAIRequestError(f"Response {response_id!r} is still in progress.", param=param)
        conversation_id = info.meta["conversation_id"]
        stored = await self.tw.store.messages(conversation_id)
        answers = [m for m in stored if m.role == "assistant"]
        if not answers or answers[-1].id != info.meta.get("message_id"):
            why = "is not the latest response of its conversation; continue from the latest"
            raise OpenAIRequestError(f"Response {response_id!r} {why}.", param=param)
        return conversation_id

    async def resolved(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with each ``input`` item reference replaced by the item (the AI
        SDK refers to earlier output items this way when ``store`` is on)."""
        items = body.get("input")
        if not isinstance(items, list):
            return body
        out = [
            await self.referenced(request, item.get("id"), f"input[{i}].id")
            if isinstance(item, dict) and item.get("type") == "item_reference"
            else item
            for i, item in enumerate(items)
        ]
        return {**body, "input": out}

    async def started(self, request: Request, parsed: ResponsesRequest, owner: str | None) -> str:
        """The stream id of the generation ``parsed`` starts for the caller.

        Raises:
            OpenAIRequestError: 404 for a ``previous_response_id`` gone since, 400
                naming the Responses parameter of an invalid request.
            RateLimitedError: over a limit (before anything is created).
        """
        ticket = await self.tw.admit(request)
        conversation_id = None
        if parsed.previous_response_id is not None:
            conversation_id = await self.continued(request, parsed.previous_response_id)
        try:
            stream = await self.tw.start(
                parsed.model,
                parsed.messages,
                conversation_id=conversation_id,
                system=parsed.system,
                params=parsed.params,
                owner=owner,
                source="openai",
                ticket=ticket,
                tools=parsed.tools,
            )
        except ConversationNotFoundError:  # deleted since
            raise _previous_not_found(parsed.previous_response_id) from None
        except InvalidRequestError as exc:  # named as this request spells it
            param = _PARAMS.get(exc.field.partition("[")[0], exc.field)
            raise OpenAIRequestError(f"'{param}': {exc.message}", param=param) from None
        return stream.stream_id

    async def create_response(
        self, request: Request, body: Annotated[dict[str, Any], Body()]
    ) -> Response:
        """Create a model response (streamed when ``stream`` is true), in a new
        conversation owned by the caller."""
        owner = await self.tw.access.owner(request)
        parsed = parse_responses_request(await self.resolved(request, body))
        stream_id = await self.started(request, parsed, owner)
        encoder = ResponseEncoder(parsed.model, parsed.echo)
        return await answer(
            self.tw,
            stream_id,
            stream=parsed.stream,
            frames=_Framer(encoder),
            folding=encoder,
            whole=encoder.response,
        )

    async def retrieve_response(
        self,
        request: Request,
        response_id: str,
        stream: bool = False,
        starting_after: Annotated[int, Query(ge=-1)] = -1,
    ) -> Response:
        """The response so far, or with ``stream=true`` its events as SSE (after
        ``starting_after``), following it until its terminal event."""
        stream_id = await self.stream_of(request, response_id)
        if stream:
            info = await self.tw.log.info(stream_id)
            return EventStreamResponse(
                self.tw.log,
                stream_id,
                heartbeat_interval=self.tw.settings.heartbeat_interval,
                encoder=_Framer(ResponseEncoder(str(info.meta.get("model", ""))), starting_after),
            )
        return JSONResponse(await self.folded(stream_id))

    async def cancel_response(self, request: Request, response_id: str) -> Response:
        """Stop the response (idempotent) and answer it as it then is."""
        stream_id = await self.stream_of(request, response_id)
        await self.tw.cancel(stream_id, "user")
        return JSONResponse(await self.folded(stream_id, follow=True))


def build_responses_router(tw: Tokenwire) -> APIRouter:
    """The Responses API routes bound to ``tw`` (the handlers of :class:`ResponsesAPI`)."""
    router = APIRouter(
        route_class=OpenAIRoute, dependencies=[Depends(caller_dependency(tw.access))]
    )
    api = ResponsesAPI(tw)
    router.post(
        "/v1/responses",
        response_model=None,
        dependencies=[Depends(require_json)],
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "A response"},
            **responses(400, 401, 404, 415, 429, 502, 503, 504),
        },
    )(api.create_response)
    router.get(
        "/v1/responses/{response_id}", response_model=None, responses=responses(400, 401, 404, 503)
    )(api.retrieve_response)
    router.post(
        "/v1/responses/{response_id}/cancel",
        response_model=None,
        responses=responses(400, 401, 404, 503),
    )(api.cancel_response)
    return router
