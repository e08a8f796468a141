"""A handle on one stream: :class:`Stream` reads it, replayed then live, and
follows it with callbacks; :meth:`Stream.sse_response` serves it over SSE."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tokenwire.accumulate import MessageState
from tokenwire.events import Event, MessageStatus, Start, TokenUsage, is_terminal
from tokenwire.log.base import StreamLog
from tokenwire.protocol.sse import parse_last_event_id

if TYPE_CHECKING:
    from tokenwire.engine.identity import HTTPRequest
    from tokenwire.transports.sse import EventStreamResponse

__all__ = ["EventCallback", "Stream", "StreamCallback"]

logger = logging.getLogger("tokenwire")

EventCallback = Callable[[Event], Awaitable[None] | None]
StreamCallback = Callable[["Stream"], Awaitable[None] | None]


class Stream:
    """One stream, readable by any number of consumers, each from ``seq`` 1.

    Made by :meth:`Tokenwire.start` and :meth:`Tokenwire.stream`: it reads ``log``;
    ``heartbeat_interval`` (seconds) is the SSE comment interval of
    :meth:`sse_response`.

    Iterating yields typed events until the terminal one. ``text``, ``reasoning``,
    ``tool_calls``, ``usage`` and ``finish_reason`` reflect the events read so far
    through this handle (after :meth:`wait`, the whole message).
    """

    def __init__(
        self,
        log: StreamLog,
        stream_id: str,
        *,
        heartbeat_interval: float,
        start: Start | None = None,
    ) -> None:
        self._log = log
        self._heartbeat_interval = heartbeat_interval
        self.stream_id = stream_id
        self.state = MessageState()
        self._on_event: list[EventCallback] = []
        self._then: list[StreamCallback] = []
        self._finally: list[StreamCallback] = []
        self._follower: asyncio.Task[None] | None = None
        if start is not None:
            self.state.apply(start)

    @property
    def message_id(self) -> str | None:
        return self.state.start.message_id if self.state.start else None

    @property
    def conversation_id(self) -> str | None:
        return self.state.start.conversation_id if self.state.start else None

    @property
    def text(self) -> str:
        """All text so far."""
        return self.state.text

    @property
    def reasoning(self) -> str:
        """All reasoning so far."""
        return self.state.reasoning

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool-call parts so far."""
        return self.state.tool_calls

    @property
    def usage(self) -> TokenUsage | None:
        """Last token usage, or None."""
        return self.state.usage

    @property
    def finish_reason(self) -> str | None:
        """Set after finish."""
        return self.state.finish_reason

    @property
    def status(self) -> MessageStatus:
        """``pending`` … ``completed``/``failed``/``cancelled``."""
        return self.state.status

    async def events(self, after: int = 0) -> AsyncIterator[Event]:
        """Events with ``seq > after``, replayed then live, ending with the terminal one."""
        async for batch in self._log.read(self.stream_id, after):
            for event in batch:
                if event.seq > self.state.last_seq:
                    self.state.apply(event)
                yield event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def wait(self) -> Stream:
        """Read to the terminal event; return ``self`` with the whole message."""
        async for _ in self.events(self.state.last_seq):
            pass
        return self

    async def cancel(self, reason: str = "user") -> bool:
        """Stop the generation (see :meth:`Tokenwire.cancel`)."""
        return await self._log.request_cancel(self.stream_id, reason)

    def on_event(self, callback: EventCallback) -> Stream:
        """Call ``callback(event)`` for every event (from a background reader)."""
        self._on_event.append(callback)
        return self._follow()

    def then(self, callback: StreamCallback) -> Stream:
        """Call ``callback(stream)`` when the stream finishes successfully."""
        self._then.append(callback)
        return self._follow()

    def finally_(self, callback: StreamCallback) -> Stream:
        """Call ``callback(stream)`` when the stream ends, however it ends."""
        self._finally.append(callback)
        return self._follow()

    def _follow(self) -> Stream:
        if self._follower is None:
            self._follower = asyncio.create_task(self._run_callbacks())
        return self

    async def _run_callbacks(self) -> None:
        state = MessageState()
        async for batch in self._log.read(self.stream_id):
            for event in batch:
                state.apply(event)
                for callback in list(self._on_event):
                    await _call(callback, event)
                if is_terminal(event):
                    self.state = state
                    targets = (self._then if state.status == "completed" else []) + self._finally
                    for done in targets:
                        await _call(done, self)

    def sse_response(
        self,
        request: HTTPRequest | None = None,
        *,
        after: int = 0,
        headers: dict[str, str] | None = None,
    ) -> EventStreamResponse:
        """An SSE response for this stream from ``seq > after``, or after the request's
        ``Last-Event-ID`` when it has one; ``headers`` are added to the response.

        The bridge to the SSE transport (imported here, so the engine loads no web
        framework until a response is asked for)."""
        from tokenwire.transports.sse import RETRY_MS, EventStreamResponse

        if request is not None:
            after = _last_event_id(request, after)
        return EventStreamResponse(
            self._log,
            self.stream_id,
            after=after,
            heartbeat_interval=self._heartbeat_interval,
            headers=headers,
            retry_ms=RETRY_MS,
        )


async def _call(callback: Callable[[Any], Awaitable[None] | None], arg: Any) -> None:
    try:
        result = callback(arg)
        if result is not None:
            await result
    except Exception:
        logger.exception("stream callback failed")


def _last_event_id(request: HTTPRequest, default: int) -> int:
    """The request's ``Last-Event-ID``, or ``default`` without one or with a malformed
    one (the native API's route answers 400 to a malformed one instead)."""
    try:
        seq = parse_last_event_id(request.headers.get("last-event-id"))
    except ValueError:
        return default
    return default if seq is None else seq
