"""Polling transport: a stream's events after a point, or its message so far, as JSON.

The HTTP route (``GET /v1/streams/{id}``, :mod:`tokenwire.server.routes`) checks the
caller and the query; this module reads the log and writes the body (docs/api.md,
the ``GET /v1/streams/{id}`` row):

- events: ``{"events": [<event JSON>…], "last_seq": N, "status": "running"}``, the
  events with ``seq > after`` (each encoded once, as the SSE transport does), the
  log's last ``seq`` and the stream's status (the outcome of a terminal event
  among them, even if the log's status is read a moment before it);
- snapshot: the message so far (``text``, ``reasoning``, ``tool_calls``, ``usage``,
  ``cost``, ``finish_reason``, ``error``), folded from the log's events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse, Response

from tokenwire.accumulate import MessageState
from tokenwire.events import Event, encode_event, is_terminal, outcome
from tokenwire.log.base import StreamInfo, StreamLog
from tokenwire.observability.cost import price

__all__ = ["MAX_WAIT", "poll_events", "snapshot"]

MAX_WAIT = 30.0
"""Longest long-poll wait, seconds."""

WaitEvents = Callable[[str, int, float], Awaitable[list[Event]]]
"""``(stream_id, after, timeout) -> events``: waits up to ``timeout`` seconds for
events with ``seq > after`` (``Tokenwire.wait_events``)."""


async def poll_events(
    log: StreamLog, info: StreamInfo, after: int, wait: float, wait_events: WaitEvents
) -> Response:
    """The events with ``seq > after``, at once (``wait == 0``) or waiting up to
    ``wait`` seconds for at least one, as JSON.

    Raises:
        StreamNotFoundError, StreamExpiredError: as the log does.
    """
    stream_id = info.stream_id
    events = (
        await wait_events(stream_id, after, wait) if wait else await log.events(stream_id, after)
    )
    status = info.status
    if events and is_terminal(events[-1]):
        status = outcome(events[-1])
    body = b'{"events":[%s],"last_seq":%d,"status":"%s"}' % (
        b",".join(encode_event(e) for e in events),
        max(info.last_seq, events[-1].seq if events else 0),
        status.encode(),
    )
    return Response(body, media_type="application/json")


async def snapshot(log: StreamLog, info: StreamInfo) -> Response:
    """The message so far, folded from every event in the log, as JSON.

    Raises:
        StreamNotFoundError, StreamExpiredError: as the log does.
    """
    state = MessageState()
    for event in await log.events(info.stream_id):
        state.apply(event)
    usage = state.usage_dict()
    return JSONResponse(
        {
            "stream_id": info.stream_id,
            "status": info.status,
            "text": state.text,
            "reasoning": state.reasoning,
            "tool_calls": state.tool_calls,
            "usage": usage,
            "cost": await price(info.meta.get("model"), usage),
            "finish_reason": state.finish_reason,
            "error": state.error,
            "last_seq": info.last_seq,
        }
    )
