"""``tokenwire serve``'s HTTP protocol (uvicorn on a real socket): an SSE client that
leaves is noticed through the protocol's ``on_disconnect`` extension, with no write to
fail and no ``receive()`` pending; a trusted proxy's forwarded headers still apply."""

from __future__ import annotations

import sys
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import uvicorn_thread
from tokenwire.events import TextDelta
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.server.serving import header_timeout_protocol
from tokenwire.transports.sse import EventStreamResponse


def test_a_client_that_leaves_stops_following_at_once() -> None:
    log = MemoryStreamLog()
    responses: list[EventStreamResponse] = []

    async def stream(request: Request) -> EventStreamResponse:
        await log.create("s", {})
        await log.append("s", [TextDelta(part=0, delta="a")])
        responses.append(EventStreamResponse(log, "s", heartbeat_interval=3600))
        return responses[-1]

    async def readers(request: Request) -> JSONResponse:
        return JSONResponse((await log.readers("s"))[0])

    app = Starlette(routes=[Route("/stream", stream), Route("/readers", readers)])
    with uvicorn_thread(app, http=header_timeout_protocol(10.0)) as base:
        with httpx.Client(base_url=base) as client, client.stream("GET", "/stream") as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:")) == (
                'data: {"type":"text-delta","part":0,"delta":"a","seq":1}'
            )
            assert httpx.get(f"{base}/readers").json() == 1
        # The connection is closed; no event and no heartbeat will be written to it.
        deadline = time.monotonic() + 5
        while (count := httpx.get(f"{base}/readers").json()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count == 0
    assert responses[0].on_disconnect is not None  # the protocol's extension, not receive()


def test_a_trusted_proxys_headers_apply_with_no_frame_of_uvicorns_middleware_held() -> None:
    async def whoami(request: Request) -> JSONResponse:
        modules = set()
        frame = sys._getframe()
        while frame is not None:
            modules.add(frame.f_globals.get("__name__"))
            frame = frame.f_back  # type: ignore[assignment]
        assert request.client is not None
        return JSONResponse(
            {
                "client": request.client.host,
                "scheme": request.url.scheme,
                "proxy_frame": "uvicorn.middleware.proxy_headers" in modules,
            }
        )

    app = Starlette(routes=[Route("/whoami", whoami)])
    forwarded = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    with uvicorn_thread(app, http=header_timeout_protocol(10.0)) as base:
        for _ in range(2):  # the first connection replaces the middleware, later ones use it
            response = httpx.get(f"{base}/whoami", headers=forwarded)
            assert response.json() == {
                "client": "203.0.113.9", "scheme": "https", "proxy_frame": False
            }  # fmt: skip
