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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

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


def _frame(seq: int, event: str, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return f"id: {seq}\nevent: {event}\ndata: {data}\n\n".encode()


async def _bare_chat(request: Request) -> StreamingResponse:
    body = await request.json()
    workload = Workload.from_params(body.get("params") or {})

    async def frames() -> AsyncIterator[bytes]:
        seq = 1
        start = {"type": "start", "stream_id": uuid.uuid4().hex, "model": body.get("model")}
        yield _frame(seq, "start", {**start, "created_at": time.time(), "seq": seq})
        async for text in workload.texts():
            seq += 1
            delta = {"type": "text-delta", "part": 0, "delta": text, "seq": seq}
            yield _frame(seq, "text-delta", delta)
        seq += 1
        yield _frame(seq, "finish", {"type": "finish", "finish_reason": "stop", "seq": seq})

    headers = {"cache-control": "no-cache, no-transform", "x-accel-buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


async def _sse_starlette_chat(request: Request) -> Response:
    from sse_starlette import EventSourceResponse

    body = await request.json()
    workload = Workload.from_params(body.get("params") or {})

    async def events() -> AsyncIterator[dict[str, object]]:
        seq = 1
        start = {"type": "start", "stream_id": uuid.uuid4().hex, "model": body.get("model")}
        data = json.dumps({**start, "created_at": time.time(), "seq": seq}, separators=(",", ":"))
        yield {"id": str(seq), "event": "start", "data": data}
        async for text in workload.texts():
            seq += 1
            delta = {"type": "text-delta", "part": 0, "delta": text, "seq": seq}
            yield {
                "id": str(seq),
                "event": "text-delta",
                "data": json.dumps(delta, separators=(",", ":")),
            }
        seq += 1
        finish = {"type": "finish", "finish_reason": "stop", "seq": seq}
        yield {"id": str(seq), "event": "finish", "data": json.dumps(finish, separators=(",", ":"))}

    return EventSourceResponse(events(), headers={"x-accel-buffering": "no"}, sep="\n")


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def bare_app() -> Starlette:
    """A hand-written SSE endpoint: one ``yield`` (one socket write) per event."""
    return Starlette(
        routes=[
            Route("/v1/chat", _bare_chat, methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
        ]
    )


def sse_starlette_app() -> Starlette:
    """The same endpoint with sse-starlette's ``EventSourceResponse`` (its defaults)."""
    return Starlette(
        routes=[
            Route("/v1/chat", _sse_starlette_chat, methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
        ]
    )
