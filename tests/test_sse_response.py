"""The SSE response as an ASGI app: eager writes, a slow client, a client that leaves."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest

from tokenwire.events import Finish, TextDelta
from tokenwire.log.memory import MemoryStreamLog
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.server.app import _App
from tokenwire.transports.sse import ON_DISCONNECT, EventStreamResponse, start_eagerly

pytestmark = pytest.mark.anyio


async def test_start_eagerly_runs_to_the_end_when_nothing_suspends() -> None:
    ran: list[str] = []

    async def write() -> None:
        ran.append("written")

    assert start_eagerly(write()) is None
    assert ran == ["written"]  # before any await of the caller

    async def fail() -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        start_eagerly(fail())


async def test_start_eagerly_hands_the_rest_to_a_task() -> None:
    writable = asyncio.get_running_loop().create_future()
    ran: list[str] = []

    async def write() -> None:
        ran.append("started")
        ran.append(await writable)

    rest = start_eagerly(write())
    assert rest is not None and ran == ["started"]
    writable.set_result("written")
    await rest
    assert ran == ["started", "written"]


async def test_start_eagerly_cancels_into_the_awaitable() -> None:
    seen: list[str] = []

    async def write() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    rest = start_eagerly(write())
    assert rest is not None
    await asyncio.sleep(0)  # the task starts waiting on the future
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest
    assert seen == ["cancelled"]


class Client:
    """An ASGI client: records the messages sent; ``slow`` makes every other body
    write wait for the next loop turn (as uvicorn's ``send`` does under flow control).

    With ``extension``, it is a server offering :data:`ON_DISCONNECT` (as ``tokenwire
    serve`` does): leaving calls the callback handed to it, and ``receive()`` must not
    be awaited."""

    def __init__(self, slow: bool = False, extension: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.slow = slow
        self.extension = extension
        self.left = asyncio.Event()
        self.started = asyncio.Event()
        self.on_left: Callable[[], object] | None = None

    def scope(self) -> dict[str, Any]:
        if not self.extension:
            return {"type": "http"}
        return {"type": "http", "extensions": {ON_DISCONNECT: self._on_disconnect}}

    def _on_disconnect(self, callback: Callable[[], object]) -> None:
        self.on_left = callback

    def leave(self) -> None:
        if self.extension:
            assert self.on_left is not None, "the response did not take the extension"
            self.on_left()
        else:
            self.left.set()

    async def send(self, message: dict[str, Any]) -> None:
        if self.slow and len(self.messages) % 2:
            await asyncio.sleep(0)
        self.messages.append(message)
        self.started.set()

    async def receive(self) -> dict[str, Any]:
        assert not self.extension, "receive() awaited although the server offers on_disconnect"
        await self.left.wait()
        return {"type": "http.disconnect"}

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def _respond(log: MemoryStreamLog, client: Client) -> asyncio.Task[None]:
    """Start the response; return once it follows the stream (it does so in the step
    that wrote the response head)."""
    response = EventStreamResponse(log, "s", heartbeat_interval=60)
    task = asyncio.ensure_future(response(client.scope(), client.receive, client.send))  # type: ignore[arg-type]
    await client.started.wait()
    return task


async def _reading_one_event(
    extension: bool,
) -> tuple[MemoryStreamLog, Client, asyncio.Task[None]]:
    """A response following stream ``s`` of a new log, which has handed it one event."""
    log = MemoryStreamLog()
    await log.create("s", {})
    client = Client(extension=extension)
    task = await _respond(log, client)
    await log.append("s", [TextDelta(part=0, delta="a")])
    assert (await log.readers("s"))[0] == 1
    return log, client, task


EXTENSION = pytest.mark.parametrize("extension", [False, True], ids=["receive", "on_disconnect"])
"""Both ways a response learns that its client left: awaiting ``http.disconnect``, or
the server's :data:`ON_DISCONNECT` callback."""


@EXTENSION
@pytest.mark.parametrize("slow", [False, True])
async def test_every_event_in_order_to_a_fast_or_slow_client(slow: bool, extension: bool) -> None:
    log = MemoryStreamLog()
    await log.create("s", {})
    client = Client(slow=slow, extension=extension)
    task = await _respond(log, client)
    for i in range(50):
        await log.append("s", [TextDelta(part=0, delta=f"{i},")])
    await log.append("s", [Finish(finish_reason="stop")])
    async with asyncio.timeout(5):
        await task
    events = SSEDecoder().decode(client.body())
    assert [e.id for e in events] == [str(i) for i in range(1, 52)]
    assert [e.event for e in events][-1] == "finish"
    assert client.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


@EXTENSION
async def test_a_client_that_leaves_stops_counting_as_a_reader(extension: bool) -> None:
    log, client, task = await _reading_one_event(extension)
    client.leave()
    async with asyncio.timeout(5):
        await task
    assert (await log.readers("s"))[0] == 0
    assert await log.append("s", [TextDelta(part=0, delta="b")])  # the generation goes on
    assert all(m.get("more_body", True) for m in client.messages)  # no end to a client gone


@EXTENSION
async def test_a_cancellation_from_outside_still_cancels_the_response(extension: bool) -> None:
    """The response waits for the client's disconnect in its own task, and the end of
    the stream interrupts that wait; a cancellation from elsewhere (server shutdown)
    must still end the task as cancelled, and stop following."""
    log, _client, task = await _reading_one_event(extension)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await log.readers("s"))[0] == 0


async def test_a_detached_body_runs_after_the_app_returned_in_the_request_context() -> None:
    """Behind ``server.app``'s outermost layer the SSE body runs once every inner
    layer has returned (no frame of FastAPI, Starlette or a middleware is held by a
    stream), with the server's ``send``, and still sees the request's context
    variables (its request id)."""
    log = MemoryStreamLog()
    await log.create("s", {})
    await log.append("s", [TextDelta(part=0, delta="a"), Finish(finish_reason="stop")])
    request_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("r", default=None)
    returned: list[bool] = []
    seen: list[tuple[str, str | None, bool]] = []
    last_write_callers: set[str] = set()

    class RequestVar:  # a middleware setting a context variable, as the request id's
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            token = request_var.set("r1")
            try:
                await self.app(scope, receive, send)
            finally:
                request_var.reset(token)
                returned.append(True)

    app = _App(cast(Any, None))
    app.add_middleware(RequestVar)
    app.add_api_route("/v1/chat", lambda: EventStreamResponse(log, "s"), methods=["POST"])

    async def send(message: dict[str, Any]) -> None:
        seen.append((message["type"], request_var.get(), bool(returned)))
        if message.get("more_body") is False:
            frame = sys._getframe(1)
            while frame is not None:
                last_write_callers.add(frame.f_globals["__name__"].partition(".")[0])
                frame = frame.f_back

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError

    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat", "raw_path": b"/v1/chat",
        "query_string": b"", "headers": [], "root_path": "", "scheme": "http",
        "http_version": "1.1", "server": ("test", 80), "client": ("test", 1),
    }  # fmt: skip
    async with asyncio.timeout(5):
        await app(scope, receive, send)
    assert seen[0] == ("http.response.start", "r1", False)
    assert len(seen) >= 3
    assert set(seen[1:]) == {("http.response.body", "r1", True)}
    assert request_var.get() is None
    assert "tokenwire" in last_write_callers
    assert not last_write_callers & {"fastapi", "starlette"}, last_write_callers
