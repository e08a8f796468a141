"""OpenAI-compatible ``POST /v1/chat/completions`` (DESIGN §8): the official ``openai``
SDKs are clients, and every answer is still a logged, resumable, cancellable stream.

Wire format: OpenAI API reference, "Chat → Create chat completion" and "Chat →
Streaming" (https://platform.openai.com/docs/api-reference/chat); the encoding is
:mod:`tokenwire.protocol.openai_compat` and the request parsing
:mod:`tokenwire.server.openai_request`; this module is their I/O shell.

- Each request starts a new tokenwire conversation (stateless, as OpenAI's
  endpoint is; a client-run tool loop sends the whole history, assistant
  ``tool_calls`` and ``tool`` results included, each time), owned by the caller
  (``Authorization: Bearer``, the SDK's ``api_key``:
  :mod:`tokenwire.engine.identity`); ``x-tokenwire-stream-id`` on every answer
  names the stream, to resume it (``GET /v1/streams/{id}/events``)
  or stop it (``POST /v1/streams/{id}/cancel``) through the native API, which
  answers 404 to anyone but its owner.
- 401 (code ``invalid_api_key``, ``WWW-Authenticate: Bearer``) without a valid
  identity where one is required; 415 for a body not sent as ``application/json``.
- ``stream: true``: ``chat.completion.chunk`` SSE frames, ``: ping`` comments
  while nothing happens, ``data: [DONE]`` at the end. The status line waits for the
  provider's first event, so a failure before it is an HTTP error status as for
  ``stream: false`` (429 with ``Retry-After``), as OpenAI answers; a failure after it
  is the in-band ``data: {"error": {…}}`` line, then the body ends.
  A client disconnect ends the response only; the generation goes on until the
  producer's ``orphan_timeout`` (DESIGN §5).
- ``stream: false``: waits for the terminal event; a failed generation is
  answered with OpenAI's error object and 400/429/502/503/504.
- Every error of this router, request validation included, has OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}`` (a route class scoped to
  this router, so the native API keeps its ``{"detail": …}`` format). A body over
  ``max_body_bytes`` is still refused by the app-wide 413 middleware.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    RateLimitedError,
    ShuttingDownError,
    StoreError,
    StreamExpiredError,
    StreamNotFoundError,
    UnknownModelError,
)
from tokenwire.events import Error, Event
from tokenwire.protocol.openai_compat import (
    ChunkEncoder,
    OpenAIRequestError,
    error_body,
    error_status,
)
from tokenwire.protocol.sse import EventEncoder
from tokenwire.providers.fallback import join_models
from tokenwire.server.identity import caller_dependency, require_json
from tokenwire.server.openai_request import parse_request
from tokenwire.server.routes import responses
from tokenwire.transports.first_event import failure_before_first_event
from tokenwire.transports.sse import EventStreamResponse

__all__ = ["OpenAIRoute", "answer", "build_openai_router", "failed_response"]

STREAM_ID_HEADER = "x-tokenwire-stream-id"


def _error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    body = error_body(message, type=kind, param=param, code=code)
    return JSONResponse(body, status_code=status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first: dict[str, Any] = next(iter(exc.errors()), {})
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request body"))
    if first.get("type") == "json_invalid":  # its loc is a character position
        message, param = "the request body is not valid JSON", None
    elif param is None:
        message = f"the request body must be a JSON object: {message}"
    return _error(400, message, param=param)


class OpenAIRoute(APIRoute):
    """A route answering its errors in OpenAI's shape, whatever the app-wide handlers do."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AuthenticationError as exc:
                response = _error(401, exc.message, code="invalid_api_key")
                response.headers["www-authenticate"] = exc.www_authenticate
                return response
            except RateLimitedError as exc:
                return _rate_limited(exc)
            except OpenAIRequestError as exc:
                return _error(exc.status, exc.message, param=exc.param, code=exc.code)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except UnknownModelError as exc:
                return _error(404, f"The model does not exist: {exc}", param="model", code=_NF)
            except InvalidRequestError as exc:
                return _error(400, str(exc), param=exc.field)
            except (StreamNotFoundError, StreamExpiredError):
                return _error(404, "stream not found", code=StreamNotFoundError.error_code)
            except (StoreError, ShuttingDownError) as exc:
                return _error(exc.http_status, exc.public_message or "", code=exc.error_code)
            except HTTPException as exc:
                return _error(exc.status_code, str(exc.detail))

        return route


_NF = "model_not_found"


def _rate_limited(exc: RateLimitedError) -> JSONResponse:
    """429 as OpenAI answers it: ``type`` ``requests`` or ``tokens``, ``code``
    ``rate_limit_exceeded``, ``Retry-After`` in seconds (the SDKs honour it)."""
    kind = "tokens" if exc.limit == "tokens_per_day" else "requests"
    body = error_body(exc.message, type=kind, param=None, code="rate_limit_exceeded")
    return JSONResponse(body, status_code=429, headers={"retry-after": str(exc.retry_after)})


def with_fallbacks(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with OpenRouter's ``models`` array folded into ``model``
    (:func:`~tokenwire.providers.fallback.join_models`)."""
    if "models" not in body:
        return body
    rest = {k: v for k, v in body.items() if k != "models"}
    return {**rest, "model": join_models(body.get("model"), body["models"])}


def failed_response(event: Error, headers: dict[str, str]) -> JSONResponse:
    """A failed generation as OpenAI's error: status by ``error.code``
    (:func:`error_status`), ``Retry-After`` the provider's (whole seconds, rounded up),
    1 s on a 429 without one."""
    status = error_status(event.code)
    response = _error(status, event.message, code=event.code)
    if event.retry_after is not None:
        response.headers["retry-after"] = str(math.ceil(event.retry_after))
    elif status == 429:
        response.headers["retry-after"] = "1"
    response.headers.update(headers)
    return response


class Folding(Protocol):
    """What folds a whole stream into one answer (:class:`ChunkEncoder`, the Responses
    API's ``ResponseEncoder``): fed every event (what ``feed`` returns is not
    used here), ``error`` set when it failed."""

    @property
    def error(self) -> Error | None: ...

    def feed(self, event: Event) -> object: ...


async def answer(
    tw: Tokenwire,
    stream_id: str,
    *,
    stream: bool,
    frames: EventEncoder,
    folding: Folding,
    whole: Callable[[], dict[str, Any]],
) -> Response:
    """The reply of an OpenAI-shaped endpoint to a started generation.

    Streamed (``stream``): waits for the first provider event, so a failure before
    it is a real HTTP status (:func:`failed_response`), then SSE framed by
    ``frames``. Otherwise: the whole stream fed to ``folding``, answered as
    ``whole()`` or, when it failed, :func:`failed_response`. Both carry the
    ``x-tokenwire-stream-id`` header."""
    headers = {STREAM_ID_HEADER: stream_id}
    if stream:
        failed = await failure_before_first_event(tw.log, stream_id)
        if failed is not None:  # no status line sent yet: a real HTTP error
            return failed_response(failed, headers)
        return EventStreamResponse(
            tw.log,
            stream_id,
            heartbeat_interval=tw.settings.heartbeat_interval,
            headers=headers,
            encoder=frames,
        )
    async for batch in tw.log.read(stream_id, 0):
        for event in batch:
            folding.feed(event)
    if folding.error is not None:
        return failed_response(folding.error, headers)
    return JSONResponse(whole(), headers=headers)


def build_openai_router(tw: Tokenwire) -> APIRouter:
    """The OpenAI-compatible routes bound to ``tw``."""
    router = APIRouter(route_class=OpenAIRoute)

    @router.post(
        "/v1/chat/completions",
        response_model=None,
        dependencies=[Depends(caller_dependency(tw.access)), Depends(require_json)],
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "A completion"},
            **responses(400, 401, 404, 415, 429, 502, 503, 504),
        },
    )
    async def chat_completions(
        request: Request, body: Annotated[dict[str, Any], Body()]
    ) -> Response:
        """Create a chat completion (streamed when ``stream`` is true), in a new
        conversation owned by the caller."""
        owner = await tw.access.owner(request)
        chat = parse_request(with_fallbacks(body))
        ticket = await tw.admit(request)
        stream = await tw.start(
            chat.model,
            chat.messages,
            system=chat.system,
            params=chat.params,
            owner=owner,
            source="openai",
            ticket=ticket,
            tools=chat.tools,
        )
        encoder = ChunkEncoder(chat.model, include_usage=chat.include_usage)
        return await answer(
            tw,
            stream.stream_id,
            stream=chat.stream,
            frames=encoder,
            folding=encoder,
            whole=encoder.completion,
        )

    return router
