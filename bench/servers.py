"""The two ASGI apps the SSE benchmark compares, each served by uvicorn in a subprocess.

Both answer ``POST /v1/chat`` with an SSE stream of text deltas whose shape is set by
the request's ``params`` (read by :class:`Workload`):

- ``n`` (int): how many text deltas to send.
- ``interval_ms`` (float): 0 = as fast as possible; otherwise one delta every
  ``interval_ms`` milliseconds on absolute deadlines ``start_at + k * interval``.
- ``start_at`` (float): Unix time in seconds of the first paced delta (the client
  chooses it, so both servers get the same staggered phases).

Unpaced deltas carry the text ``"tok "``; paced deltas carry
``"s=<scheduled> e=<emitted> "`` (Unix seconds, 6 decimals) so the client can
measure lateness.

``tokenwire_app`` is the full tokenwire server (log, seq, producer, SQLite store)
with a ``bench:`` provider registered; ``bare_app`` is a hand-written Starlette
``StreamingResponse`` endpoint yielding one frame per event with the same framing
(``id: N\\nevent: text-delta\\ndata: {json}\\n\\n``). Configuration comes from
environment variables, because uvicorn's ``--factory`` takes no arguments:
``BENCH_COALESCE_MS`` (default 0; ``default``: every setting as ``tokenwire serve``
has it, but for the per-caller stream limit, since every stream comes from one
client address), ``BENCH_DATA_DIR`` (required for tokenwire) and ``BENCH_GC_STATS``
(set: tokenwire prints the time spent in garbage collection). ``sse_starlette_app``
is the same endpoint written with sse-starlette's ``EventSourceResponse``, a second
anchor.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["BenchProvider", "Workload", "bare_app", "sse_starlette_app", "tokenwire_app"]

UNPACED_TOKEN = "tok "
"""Text of every unpaced delta; the client counts its occurrences to count tokens."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What one stream sends. See the module docstring for the fields."""

    n: int
    interval_ms: float = 0.0
    start_at: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Workload:
        def number(key: str, default: float) -> float:
            value = params.get(key, default)
            return float(value) if isinstance(value, int | float) else default

        return cls(
            n=int(number("n", 100)),
            interval_ms=number("interval_ms", 0.0),
            start_at=number("start_at", 0.0),
        )

    async def texts(self) -> AsyncIterator[str]:
        """The delta texts, paced when ``interval_ms`` > 0.

        Deadlines are absolute (``start_at + k * interval``), converted once from
        Unix time to the monotonic clock, so lateness never accumulates.
        """
        if self.interval_ms <= 0:
            for _ in range(self.n):
                yield UNPACED_TOKEN
            return
        interval = self.interval_ms / 1000
        origin = time.monotonic() + (self.start_at - time.time())
        for k in range(self.n):
            deadline = origin + k * interval
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield f"s={self.start_at + k * interval:.6f} e={time.time():.6f} "


class BenchProvider:
    """A tokenwire provider (``bench:<anything>``) that yields :class:`Workload` deltas."""

    async def stream(self, request: object) -> AsyncIterator[object]:
        from tokenwire.events import TextDelta, Usage
        from tokenwire.providers.base import GenerationRequest, finish

        assert isinstance(request, GenerationRequest)
        workload = Workload.from_params(request.params)
        async for text in workload.texts():
            yield TextDelta(part=0, delta=text)
        usage = Usage(input_tokens=1, output_tokens=workload.n)
        yield finish("stop", None, usage)


def _report_gc_time() -> None:
    """With ``BENCH_GC_STATS=1``: print the time spent in garbage collection every 2 s."""
    import gc
    import sys

    spent = [0.0, 0.0, 0.0]
    counts = [0, 0, 0]
    marks = [0.0, time.perf_counter()]
    """When the current collection began; when the last report was printed."""

    def callback(phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            marks[0] = now
            return
        spent[info["generation"]] += now - marks[0]
        counts[info["generation"]] += 1
        if now - marks[1] >= 2.0:
            marks[1] = now
            summary = ", ".join(f"gen{g} {counts[g]}x {spent[g]:.3f}s" for g in range(3))
            print(f"gc so far: {summary}", file=sys.stderr, flush=True)

    gc.callbacks.append(callback)


def tokenwire_app() -> object:
    """The tokenwire server (``create_app``) with the ``bench:`` provider registered."""
    if os.environ.get("BENCH_GC_STATS"):
        _report_gc_time()
    from pathlib import Path

    from tokenwire import Tokenwire
    from tokenwire.providers import ProviderRegistry
    from tokenwire.server.app import create_app
    from tokenwire.settings import Settings

    registry = ProviderRegistry()
    registry.register("bench", BenchProvider())  # type: ignore[arg-type]
    coalesce = os.environ.get("BENCH_COALESCE_MS", "0")
    tuned = (
        {} if coalesce == "default" else {"coalesce_ms": float(coalesce), "orphan_timeout": None}
    )
    settings = Settings(
        data_dir=Path(os.environ["BENCH_DATA_DIR"]),
        limit_concurrent_streams=0,  # every stream comes from one client address
        default_model="bench:default",
        models=["bench:default"],
        **tuned,  # type: ignore[arg-type]
    )
    return create_app(tokenwire=Tokenwire(settings, registry=registry), freeze_gc=True)


async def _events(body: dict[str, Any]) -> AsyncIterator[tuple[int, str, str]]:
    """The anchors' stream for a request body: ``(seq, event type, JSON data)`` per
    event (``start``, the workload's text deltas, ``finish``), JSON via ``json.dumps``.
    The handlers read the body first: once a streaming response runs, Starlette reads
    ``receive`` for the disconnect."""
    workload = Workload.from_params(body.get("params") or {})
    seq = 1
    start = {"type": "start", "stream_id": uuid.uuid4().hex, "model": body.get("model")}
    yield seq, "start", _json({**start, "created_at": time.time(), "seq": seq})
    async for text in workload.texts():
        seq += 1
        yield seq, "text-delta", _json({"type": "text-delta", "part": 0, "delta": text, "seq": seq})
    seq += 1
    yield seq, "finish", _json({"type": "finish", "finish_reason": "stop", "seq": seq})


def _json(payload: dict[str, object]) -> str:
    return json.dumps(payload, separators=(",", ":"))


async def _bare_chat(request: Request) -> StreamingResponse:
    body = await request.json()

    async def frames() -> AsyncIterator[bytes]:
        async for seq, event, data in _events(body):
            yield f"id: {seq}\nevent: {event}\ndata: {data}\n\n".encode()

    headers = {"cache-control": "no-cache, no-transform", "x-accel-buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


async def _sse_starlette_chat(request: Request) -> Response:
    from sse_starlette import EventSourceResponse

    body = await request.json()

    async def events() -> AsyncIterator[dict[str, str]]:
        async for seq, event, data in _events(body):
            yield {"id": str(seq), "event": event, "data": data}

    return EventSourceResponse(events(), headers={"x-accel-buffering": "no"}, sep="\n")


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _app(chat: Callable[[Request], Awaitable[Response]]) -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/chat", chat, methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
        ]
    )


def bare_app() -> Starlette:
    """A hand-written SSE endpoint: one ``yield`` (one socket write) per event."""
    return _app(_bare_chat)


def sse_starlette_app() -> Starlette:
    """The same endpoint with sse-starlette's ``EventSourceResponse`` (its defaults
    but for ``sep``: ``\\n`` like the others)."""
    return _app(_sse_starlette_chat)
