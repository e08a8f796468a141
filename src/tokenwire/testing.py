"""Helpers for testing code that uses tokenwire.

- :class:`FakeProvider`: the scripted ``fake:`` models (see :mod:`tokenwire.providers.fake`),
  served by a :class:`~tokenwire.Tokenwire` only with ``Settings(fake_provider=True)``
  (``TOKENWIRE_FAKE_PROVIDER=1``) or ``ProviderRegistry(fake=True)``.
- :class:`ScriptedProvider`: yields exactly the events you give it.
- :func:`parse_sse`: turn SSE bytes (from any client, in any pieces) back into events.
- :func:`collect`: read a :class:`~tokenwire.Stream` to its terminal event.
- :func:`get_time`: an example server-side tool (``tokenwire serve --tools
  tokenwire.testing:get_time``, docs/tools.md).

::

    registry = ProviderRegistry()
    registry.register("script", ScriptedProvider([TextDelta(part=0, delta="hi")]))
    tw = Tokenwire(settings, registry=registry)
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterable, Sequence

from tokenwire.engine import Stream
from tokenwire.events import Event, decode_event
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.providers.base import GenerationRequest, ProviderEvent, finish
from tokenwire.providers.fake import FakeProvider

__all__ = ["FakeProvider", "ScriptedProvider", "collect", "get_time", "parse_sse"]


class ScriptedProvider:
    """A provider that yields ``events``, then ``finish(stop)`` unless they end with one.

    Attributes:
        requests: every request received, in order.
    """

    def __init__(self, events: Sequence[ProviderEvent]) -> None:
        self.events = list(events)
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        self.requests.append(request)
        for event in self.events:
            yield event
        if not self.events or self.events[-1].__struct_config__.tag != "finish":
            yield finish("stop", None, None)


def parse_sse(chunks: bytes | Iterable[bytes]) -> list[Event]:
    """Decode tokenwire SSE bytes into events; comments (heartbeats) are skipped.

    Multi-byte safe: ``chunks`` may split the bytes anywhere.
    """
    decoder = SSEDecoder()
    pieces = [chunks] if isinstance(chunks, bytes) else chunks
    out = [sse for piece in pieces for sse in decoder.decode(piece)] + decoder.flush()
    return [decode_event(sse.data) for sse in out if sse.comment is None]


async def collect(stream: Stream) -> list[Event]:
    """All events of ``stream`` from ``seq`` 1 through the terminal event."""
    return [event async for event in stream]


def get_time() -> str:
    """The current time in UTC, ISO 8601 to the second: ``2026-01-31T12:00:00Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
