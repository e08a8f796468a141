"""Native SSE transport: replay a stream from the log, then follow it live (DESIGN §3).

Framing (a contract): ``id: <seq>\\nevent: <type>\\ndata: <json>\\n\\n`` per event,
``: ping\\n\\n`` after ``heartbeat_interval`` seconds of silence; the native stream
first sends ``retry: 1000\\n\\n`` once (``retry_ms``), so a browser's ``EventSource``
reconnects within 1 s (its default is a few seconds). Every event that
is ready is written in one ASGI ``send`` (one socket write), never one write per
event when several are waiting. The response ends after the terminal event; the
browser's ``EventSource`` would reconnect on its own, so clients close it on a
terminal event (HTML Living Standard, "Server-sent events").

A client disconnect only ends this response: the generation goes on (DESIGN §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenwire.errors import LogUnavailableError, StreamExpiredError, StreamNotFoundError
from tokenwire.events import Event
from tokenwire.log.base import StreamInfo, StreamLog
from tokenwire.protocol.sse import (
    HEARTBEAT,
    NATIVE,
    RETRY_MS,
    EventEncoder,
    encode_retry,
    frame_events,
)

__all__ = [
    "DETACH",
    "ON_DISCONNECT",
    "RETRY_MS",
    "SSE_HEADERS",
    "Body",
    "EventStreamResponse",
    "frame_events",
    "resume_point",
    "run_in_context",
]

DETACH = "tokenwire.detach"
"""Scope key of a callable set by the application's outermost middleware
(``server.app``) that takes a response's body, ``body(send, receive)``, and runs it
once the application has returned, with that middleware's ``send`` and ``receive``.
The head goes through every layer (request id, CORS); the body, which lasts as long
as the stream, then holds no route, dependency or middleware frame, nor the parsed
request (12 KB less per held connection), and skips the inner ``send`` wrappers
(docs/performance.md). Absent (a router mounted in another application, whose
middleware may rewrite bodies): the body runs in place."""

ON_DISCONNECT = "tokenwire.on_disconnect"
"""``scope["extensions"]`` key a server may offer (``tokenwire serve`` does,
:mod:`tokenwire.server.serving`): a callable taking a callback without arguments,
which it calls once, from the event loop, when the client disconnects before the
response is complete (at once if it already has). A response then learns of the
disconnect without awaiting ``receive()``; under other servers it awaits
``http.disconnect`` (ASGI HTTP spec)."""

Body = Callable[[Send, Receive], Coroutine[Any, Any, None]]
"""The rest of a response after its head: ``body(send, receive)``."""

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
logger = logging.getLogger("tokenwire.sse")


def resume_point(info: StreamInfo, after: int) -> int:
    """Where a reader resuming after ``after`` starts (events with ``seq >`` the result).

    A resume point past the stream's last event would read nothing: it is moved
    back to the last event, and for a finished stream to just before its terminal
    event, so the reader always ends with the terminal event (replayed), never
    with an empty body.
    """
    last = info.last_seq if info.status == "running" else info.last_seq - 1
    return max(0, min(after, last))


class EventStreamResponse(Response):
    """An ASGI response streaming one stream's events with ``seq > after``.

    Args:
        log: the stream log to read.
        stream_id: the stream; it must exist (check before, to answer 404/410).
        after: resume point: events with ``seq > after`` are sent.
        heartbeat_interval: seconds of silence before a ``: ping`` comment.
        headers: extra response headers.
        encoder: the wire format (:class:`~tokenwire.protocol.sse.EventEncoder`):
            the native SSE framing by default; the AI SDK and OpenAI surfaces pass
            theirs, which also write a trailer such as ``data: [DONE]``.
        retry_ms: when not ``None``, ``retry: <retry_ms>`` is the first thing written,
            once, right after the headers (the native stream passes
            :data:`~tokenwire.protocol.sse.RETRY_MS`).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        log: StreamLog,
        stream_id: str,
        *,
        after: int = 0,
        heartbeat_interval: float = 10.0,
        headers: dict[str, str] | None = None,
        encoder: EventEncoder = NATIVE,
        retry_ms: int | None = None,
    ) -> None:
        self.preamble = b"" if retry_ms is None else encode_retry(retry_ms)
        self.log = log
        self.frame = encoder.frame
        self.stream_id = stream_id
        self.after = after
        self.heartbeat_interval = heartbeat_interval
        self.status_code = 200
        self.background = None
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        self.raw_headers = SSE_HEADERS + extra
        self.on_disconnect: Callable[[Callable[[], object]], None] | None = None
        """The server's :data:`ON_DISCONNECT`, from the scope once called."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        self.on_disconnect = (scope.get("extensions") or {}).get(ON_DISCONNECT)
        detach = scope.get(DETACH)
        if detach is None:
            await self.stream_body(send, receive)
        else:
            detach(self.stream_body)

    async def stream_body(self, send: Send, receive: Receive) -> None:
        """Write the body (after the head): the preamble, every event with ``seq >
        after`` as it comes, and the end after the terminal event; return early when
        the client leaves."""
        if self.preamble:
            await send({"type": "http.response.body", "body": self.preamble, "more_body": True})
        writer = _BodyWriter(send, self.frame)
        exc: BaseException | None
        try:
            follower = self.log.follow(
                self.stream_id, self.after, writer, idle=self.heartbeat_interval
            )
        except _LOG_LOST as lost:
            exc = lost
        else:
            done = follower.done
            try:
                if self.on_disconnect is None:
                    ended = await _done_before_disconnect(done, receive)
                else:  # no coroutine between this one and ``done``
                    self.on_disconnect(done.cancel)  # the client left: ``done`` is cancelled
                    try:
                        await done
                    except asyncio.CancelledError:
                        if _cancelling():  # from outside (server shutdown)
                            raise
                    except Exception:  # done's own error, read below
                        pass
                    ended = not done.cancelled()
            finally:
                follower.close()
                writer.cancel()
            if not ended or done.cancelled():
                return  # the client left first
            exc = done.exception()
        if isinstance(exc, _LOG_LOST):
            # The log lost the stream (a Redis restart without persistence): end the
            # body; a reconnect with Last-Event-ID then gets its 404 or 410.
            logger.warning("stream %s ended without its terminal event: %r", self.stream_id, exc)
        elif isinstance(exc, OSError):
            return  # the client left mid-write
        elif exc is not None:
            raise exc
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


_LOG_LOST = (StreamNotFoundError, StreamExpiredError, LogUnavailableError)


class _BodyWriter:
    """The response's :data:`~tokenwire.log.follow.Sink`: frames a batch and starts
    its write at once, in the step that hands it over (for the memory log, the
    follower's callback at the event loop's next turn after an append).

    ``send`` finishes without suspending while the socket takes the bytes (uvicorn
    only waits when the transport paused writing), so no task wakes per event. When
    the write does suspend, the rest of it runs in a task, returned so that the
    follower hands over nothing until it is done.
    """

    __slots__ = ("frame", "in_flight", "send")

    def __init__(self, send: Send, frame: Callable[[list[Event]], bytes]) -> None:
        self.send = send
        self.frame = frame
        self.in_flight: asyncio.Future[None] | None = None

    def __call__(self, batch: list[Event]) -> asyncio.Future[None] | None:
        body = self.frame(batch) if batch else HEARTBEAT
        if not body:
            return None
        self.in_flight = start_eagerly(
            self.send({"type": "http.response.body", "body": body, "more_body": True})
        )
        return self.in_flight

    def cancel(self) -> None:
        if self.in_flight is not None:
            self.in_flight.cancel()


def start_eagerly(awaitable: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``awaitable`` now, in the caller's step, up to its first suspension.

    Returns ``None`` when it finished without suspending (its exception, if any, is
    raised here), else a task running the rest. This is what Python 3.12's eager
    tasks do (``asyncio.eager_task_factory``), for one awaitable, on 3.11 too.
    """
    rest = _first_step(awaitable.__await__(), None)
    return None if rest is None else asyncio.ensure_future(_rest(rest))


def _first_step(
    steps: Generator[Any, None, None] | Coroutine[Any, Any, None],
    context: contextvars.Context | None,
) -> _Resume | None:
    """Take ``steps``' first step (inside ``context`` when one is given): ``None`` when
    that finished it (its exception, if any, is raised here), else the rest to await."""
    try:
        blocked_on = steps.send(None) if context is None else context.run(steps.send, None)
    except StopIteration:
        return None
    return _Resume(steps, blocked_on, context)


class _Resume:
    """Awaitable going on with ``steps`` (an ``__await__`` iterator) that suspended on
    ``blocked_on``: the task awaiting it waits for that future, then steps on, each
    step inside ``context`` when one is given."""

    __slots__ = ("blocked_on", "context", "steps")

    def __init__(
        self,
        steps: Generator[Any, None, None] | Coroutine[Any, Any, None],
        blocked_on: Any,
        context: contextvars.Context | None = None,
    ) -> None:
        self.steps = steps
        self.blocked_on = blocked_on
        self.context = context

    def __await__(self) -> Generator[Any, None, None]:
        steps, blocked_on, context = self.steps, self.blocked_on, self.context
        step: Callable[..., Any]
        arg: Any
        while True:
            try:
                yield blocked_on
            except BaseException as exc:  # cancellation: into the awaitable
                step, arg = steps.throw, exc
            else:
                step, arg = steps.send, None
            try:
                blocked_on = step(arg) if context is None else context.run(step, arg)
            except StopIteration:
                return


def run_in_context(
    coro: Coroutine[Any, Any, None], context: contextvars.Context
) -> Awaitable[None] | None:
    """Run ``coro`` now, in ``context`` (:meth:`contextvars.Context.run`), up to its
    first suspension, like :func:`start_eagerly`: ``None`` when it finished, else
    what the calling task awaits for the rest, each step again in ``context``.
    Another context without a task of its own, nor a coroutine frame between the
    caller's and ``coro``'s."""
    return _first_step(coro, context)


def _cancelling() -> int:
    """How many cancellations of the current task are pending
    (:meth:`asyncio.Task.cancelling`)."""
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


async def _rest(resume: _Resume) -> None:
    await resume


async def _done_before_disconnect(done: asyncio.Future[None], receive: Receive) -> bool:
    """Wait for ``done`` or the client's ``http.disconnect``, whichever comes first;
    ``True`` when ``done`` did.

    The calling task waits on ``receive`` itself, and ``done`` cancels that wait
    (taken back with :meth:`asyncio.Task.uncancel`, so a cancellation from outside
    still propagates): one task per response, not a watcher task beside it.
    """
    if done.done():
        return True
    task = asyncio.current_task()
    assert task is not None
    waiting, woke = True, False

    def wake(_: asyncio.Future[None]) -> None:
        nonlocal woke
        if waiting:  # not after the wait ended: the cancel would hit a later await
            woke = True
            task.cancel()

    done.add_done_callback(wake)
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
        return False
    except asyncio.CancelledError:
        if woke and task.uncancel() == 0:
            return True
        raise
    finally:
        waiting = False
        done.remove_done_callback(wake)
