"""``create_app(settings) -> FastAPI``: the server ``tokenwire serve`` runs.

Mounts the native API, the AI SDK and OpenAI-compatible adapters, the Pusher
protocol server (WebSocket ``/app/{key}``, ``/broadcasting/auth``, ``/apps/…``),
operations endpoints (``/healthz``, ``/readyz``, ``/metrics`` in the Prometheus
text format, ``docs/observability.md``) and the chat page at ``/``. Every HTTP
response carries ``x-request-id`` (:class:`~tokenwire.observability.logs.RequestIdMiddleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenwire.engine import Tokenwire
from tokenwire.errors import (
    RequestTooLargeError,
    StoreError,
    TokenwireError,
)
from tokenwire.observability import metrics as obs_metrics
from tokenwire.observability.logs import RequestIdMiddleware
from tokenwire.server.agui import build_agui_router
from tokenwire.server.aisdk import build_aisdk_router
from tokenwire.server.errors import error_response
from tokenwire.server.openai_compat import build_openai_router
from tokenwire.server.pusher_http import build_pusher_router
from tokenwire.server.responses import build_responses_router
from tokenwire.server.routes import EVERY_ROUTE, responses
from tokenwire.settings import Settings
from tokenwire.transports.pusher.hub import PusherHub
from tokenwire.transports.sse import DETACH, Body, run_in_context

__all__ = ["create_app"]

logger = logging.getLogger("tokenwire.server")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(
    settings: Settings | None = None,
    *,
    tokenwire: Tokenwire | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """Build the ASGI app. Its lifespan opens and closes the :class:`Tokenwire` instance.

    Args:
        settings: configuration (``None``: from the environment).
        tokenwire: an instance to serve instead of a new one built from ``settings``.
        freeze_gc: after start-up, move every object alive then (modules, the app)
            out of the garbage collector's reach (:func:`gc.freeze`), so full
            collections stop scanning them; for a process that only serves this app.
    """
    tw = tokenwire or Tokenwire(settings)
    hub = PusherHub(tw.log, tw.settings, tw.settings.pusher_apps, stream_started=tw.stream_started)

    app = _App(hub, title="tokenwire", lifespan=_lifespan(tw, hub, freeze_gc))
    app.state.tokenwire = tw
    app.state.pusher = hub
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=tw.settings.max_body_bytes,
        timeout=tw.settings.body_timeout,
    )
    every = responses(*EVERY_ROUTE)
    app.include_router(tw.router, responses=every)
    app.include_router(build_openai_router(tw), responses=every)
    app.include_router(build_responses_router(tw), responses=every)
    app.include_router(build_aisdk_router(tw), responses=every)
    app.include_router(build_agui_router(tw), responses=every)
    app.include_router(build_pusher_router(hub, tw.access), responses=every)
    if tw.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=tw.settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-tokenwire-stream-id"],
        )
    app.add_middleware(RequestIdMiddleware)
    _exception_handlers(app)
    _operations(app, tw, hub)
    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def _lifespan(
    tw: Tokenwire, hub: PusherHub, freeze_gc: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: opens ``tw`` and ``hub`` (then :func:`gc.freeze` when
    ``freeze_gc``), and closes them in the reverse order."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await tw.open()
        await hub.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await hub.close()
            await tw.aclose()

    return lifespan


def _exception_handlers(app: FastAPI) -> None:
    async def tokenwire_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TokenwireError)
        return error_response(exc)  # status, code and message from the class

    async def python_value_error(request: Request, exc: Exception) -> JSONResponse:
        # A ValueError that escaped a route: its text is Python's (``invalid literal
        # for int()``), not a message for the caller.
        logger.info("invalid value in %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse({"detail": "invalid value in the request"}, status_code=422)

    app.add_exception_handler(ValueError, python_value_error)
    app.add_exception_handler(TokenwireError, tokenwire_error)


def _operations(app: FastAPI, tw: Tokenwire, hub: PusherHub) -> None:
    registry = CollectorRegistry()
    gauges = {
        name: Gauge(f"tokenwire_log_{name}", f"stream log: {name}", registry=registry)
        for name in ("streams", "running", "events", "readers", "packed_bytes")
    }
    pusher_gauges = {
        name: Gauge(f"tokenwire_pusher_{name}", f"this node's Pusher {name}", registry=registry)
        for name in ("connections", "channels", "relays")
    }
    active = Gauge(
        "tokenwire_generations_active",
        "Generations running in this process (producers=local, or a worker's).",
        registry=registry,
    )
    readers = Gauge(
        "tokenwire_readers_active",
        "Live readers of this process: SSE, long poll and adapter responses following "
        "a stream, plus Pusher WebSocket connections.",
        registry=registry,
    )
    queue_depth = Gauge(
        "tokenwire_queue_depth",
        "Generations waiting in the job queue for a worker (producers=queue; -1 when "
        "the queue's Redis does not answer).",
        registry=registry,
    )
    rate_limited = Counter(
        "tokenwire_rate_limited", "starts refused with 429, by limit", ["limit"], registry=registry
    )
    for limit in ("requests", "concurrent_streams", "tokens_per_day"):
        rate_limited.labels(limit)  # shown at 0 before the first refusal
    tw.limits.on_refused.append(lambda limit: rate_limited.labels(limit).inc())

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        down = await _unreachable(tw)
        if down:
            return JSONResponse({"status": "unavailable", **down}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        log_statistics = tw.log.statistics()
        for name, value in log_statistics.items():
            if name in gauges:
                gauges[name].set(value)
        hub_statistics = hub.statistics()
        for name, value in hub_statistics.items():
            pusher_gauges[name].set(value)
        active.set(tw.producer.running())
        readers.set(log_statistics.get("readers", 0) + hub_statistics.get("connections", 0))
        if tw.queue is not None:
            queue_depth.set(await _queue_depth(tw))
        body = generate_latest(registry) + generate_latest(obs_metrics.REGISTRY)
        return Response(body, media_type="text/plain; version=0.0.4")


_PING_TIMEOUT = 3.0
"""Seconds ``/readyz`` waits for the stream log's and the job queue's Redis."""


async def _queue_depth(tw: Tokenwire) -> int:
    """Jobs queued and not yet taken by a worker; -1 when Redis does not answer."""
    assert tw.queue is not None
    try:
        async with asyncio.timeout(_PING_TIMEOUT):
            return int(await tw.queue.saq.count("queued"))
    except Exception:  # any client error or the timeout
        return -1


async def _unreachable(tw: Tokenwire) -> dict[str, str]:
    """``{"store" | "log" | "queue": "unreachable"}`` for each dependency that does not
    answer (the log and the queue only when they have a ``ping()``: Redis)."""
    down: dict[str, str] = {}
    try:
        await tw.store.ping()
    except (StoreError, RuntimeError):
        down["store"] = "unreachable"
    pings = {"log": getattr(tw.log, "ping", None), "queue": getattr(tw.queue, "ping", None)}
    for name, ping in pings.items():
        if ping is None:
            continue
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await ping()
        except Exception:  # any client error or the timeout: not ready
            down[name] = "unreachable"
    return down


class _App(FastAPI):
    """FastAPI whose own ``__call__`` is the application's outermost layer, outside
    FastAPI's and Starlette's calls and all of the middleware stack, so that a
    long-lived connection keeps no suspended frame of the other layers (5.7 KB per
    WebSocket, 12 KB per SSE response with the route's, measured in
    docs/performance.md; FastAPI's and Starlette's ``__call__`` two more since
    2026-12-05):

    - a WebSocket on ``/app/{key}`` goes to the Pusher hub before the middleware
      and the router;
    - an HTTP response may detach its body (:data:`~tokenwire.transports.sse.DETACH`):
      the body runs here once the application returned, with the server's ``send``
      and ``receive`` (no middleware's wrappers), in a copy of the request's context
      (its request id).
    """

    def __init__(self, hub: PusherHub, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith("/app/"):
            scope["path_params"] = {"key": scope["path"][len("/app/") :]}
            await self.hub(scope, receive, send)
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        detached: list[tuple[Body, contextvars.Context]] = []
        # A copy, so that what the inner layers add (FastAPI's exit stacks, the
        # route) goes with them.
        inner = {**scope, DETACH: lambda body: detached.append((body, contextvars.copy_context()))}
        await super().__call__(inner, receive, send)
        del inner
        if detached:
            body, context = detached.pop()
            del detached  # its cell would hold the list for as long as the body runs
            rest = run_in_context(body(send, receive), context)
            if rest is not None:
                await rest


class BodyLimitMiddleware:
    """Answer 413 to request bodies over ``max_bytes``, declared (``Content-Length``)
    or sent chunked.

    The body is read here, before the route runs (at most ``max_bytes`` are held),
    and handed on in one message: a body found too large halfway can then still
    be answered 413, which a route's own body parsing would turn into a 400. A body
    still incomplete ``timeout`` seconds after the headers is answered 408 (a
    slowloris sending its body byte by byte).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(RequestTooLargeError(self.max_bytes))(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except RequestTooLargeError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except TimeoutError:
            message = f"request body not received within {self.timeout:g} s"
            await JSONResponse({"detail": message}, status_code=408)(scope, receive, send)
            return
        if body is None:  # http.disconnect: nobody to answer
            return
        pending: Message | None = {"type": "http.request", "body": body}

        async def replay() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` when the client left.

        Raises:
            RequestTooLargeError: more than ``max_bytes``.
        """
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                raise RequestTooLargeError(self.max_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
