"""The conversations' relays: each stream of a watched conversation, read from the log
and written to this node's subscribers of ``private-conversation.{id}``.

A node relays a stream while it has subscribers of the stream's conversation
channel, reading it from the stream log like any other reader, so the frames
arrive in order from whichever process runs the generation. A client that missed
some fetches them from ``GET /v1/streams/{id}/events?after=N``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from tokenwire.errors import TokenwireError
from tokenwire.events import Event, Start, StreamStatus, encode_event
from tokenwire.protocol.pusher import conversation_channel, encode_frame

if TYPE_CHECKING:
    from tokenwire.log.base import StreamLog

__all__ = ["Relays", "event_frame"]

logger = logging.getLogger("tokenwire.pusher")


class Relays:
    """This node's relay tasks, one per stream of a watched conversation.

    Args:
        log: the stream log the streams are read from.
        watched: whether this node has subscribers of a channel (name → bool).
        deliver: writes one encoded frame to this node's subscribers of a channel
            (``(channel, frame)``).
    """

    def __init__(
        self,
        log: StreamLog,
        *,
        watched: Callable[[str], bool],
        deliver: Callable[[str, str], object],
    ) -> None:
        self.log = log
        self._watched = watched
        self._deliver = deliver
        self._tasks: dict[str, dict[str, asyncio.Task[None]]] = {}
        """conversation id -> stream id -> the task relaying it to local subscribers."""

    def __len__(self) -> int:
        """How many streams are being relayed."""
        return sum(len(tasks) for tasks in self._tasks.values())

    def relay(self, conversation_id: str, stream_id: str, after: int) -> None:
        """Relay the stream's events with ``seq > after``, once, if the conversation
        has subscribers here."""
        channel = conversation_channel(conversation_id)
        if not self._watched(channel):
            return  # nobody here watches it
        tasks = self._tasks.setdefault(conversation_id, {})
        if stream_id not in tasks:
            tasks[stream_id] = asyncio.create_task(
                self._run(channel, conversation_id, stream_id, after),
                name=f"tokenwire-pusher-relay-{stream_id}",
            )

    async def watch(self, conversation_id: str) -> None:
        """First subscriber here: relay the conversation's running stream from now on."""
        try:
            info = await self.log.active_stream(conversation_id)
        except TokenwireError:
            return
        if info is not None:
            self.relay(conversation_id, info.stream_id, after=info.last_seq)

    def unwatch(self, conversation_id: str) -> None:
        """Last subscriber here gone: stop the conversation's relays."""
        for task in self._tasks.pop(conversation_id, {}).values():
            task.cancel()

    async def finish(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until the relays of the streams that have
        ended (their terminal event is in the log) have delivered it."""
        ended: list[asyncio.Task[None]] = []
        for tasks in list(self._tasks.values()):
            for stream_id, task in list(tasks.items()):
                try:
                    running = (await self.log.info(stream_id)).status == StreamStatus.RUNNING
                except TokenwireError:
                    running = False  # gone: the relay stops by itself
                if not running:
                    ended.append(task)
        if ended:
            await asyncio.wait(ended, timeout=timeout)

    def cancel_all(self) -> None:
        """Stop every relay."""
        for tasks in list(self._tasks.values()):
            for task in list(tasks.values()):
                task.cancel()

    async def _run(self, channel: str, conversation_id: str, stream_id: str, after: int) -> None:
        try:
            async for batch in self.log.read(stream_id, after=after):
                for event in batch:
                    self._deliver(channel, event_frame(channel, stream_id, event))
        except TokenwireError as exc:  # expired, unknown, log down: clients fill gaps over HTTP
            logger.warning("stopped relaying stream %s: %s", stream_id, exc)
        finally:
            tasks = self._tasks.get(conversation_id, {})
            tasks.pop(stream_id, None)
            if not tasks:
                self._tasks.pop(conversation_id, None)


def event_frame(channel: str, stream_id: str, event: Event) -> str:
    """A stream event as a frame: event name = its ``type``; ``data`` = its JSON with
    ``stream_id`` (``start`` has it already) and ``seq``."""
    body = encode_event(event)
    if type(event) is not Start:
        body = b'{"stream_id":' + msgspec.json.encode(stream_id) + b"," + body[1:]
    return encode_frame(str(event.__struct_config__.tag), body.decode(), channel)
