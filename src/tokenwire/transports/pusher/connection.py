"""One WebSocket connection of the Pusher server, and how frames reach it.

A publish must not wait on any one subscriber. :meth:`Connection.send` runs the
ASGI server's ``send`` at once (it completes without suspending while the socket
drains, the usual case); only when it would wait does the connection get a writer
task and a backlog, behind which later frames queue in order. A backlog over
:data:`MAX_BACKLOG` frames or over the app's ``max_backlog_bytes`` closes the
connection with 4100 (reconnect after backing off); the client then fills the gap
from the stream log. So a client that never reads costs at most that much memory,
whatever it sends: the close is given :data:`CLOSE_TIMEOUT` seconds (it cannot be
written to a socket that does not drain), and the hub stops reading the connection.

A connection's :class:`ConnectionState` only moves forward, OPEN → CLOSING → CLOSED
(:meth:`Connection.advance` is the one place that changes it); frames are written
only while it is OPEN.

When the server offers the :data:`WRITE_FRAME` extension
(:mod:`tokenwire.server.serving`), :meth:`Connection.send_prepared` writes one
frame encoded once per publish, as ``websockets.broadcast()`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from enum import Enum
from typing import Any

from starlette.types import Send

from tokenwire.observability.metrics import SLOW_READERS_DROPPED
from tokenwire.protocol.pusher import ErrorCode, error_frame
from tokenwire.protocol.pusher_session import AppRules, PusherSession
from tokenwire.settings import PusherApp

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_BACKLOG",
    "WRITE_FRAME",
    "Connection",
    "ConnectionState",
    "app_rules",
]

MAX_BACKLOG = 1024
"""Frames a connection whose socket is not draining may have waiting before it is closed."""
CLOSE_TIMEOUT = 5.0
"""Seconds a close of an overflowing connection may wait for its socket to drain."""
WRITE_FRAME = "tokenwire.write_frame"
"""Key in ``scope["extensions"]`` a server may offer (:mod:`tokenwire.server.serving`):
``(frame: bytes) -> bool`` writes a complete, unmasked WebSocket frame at once, or
returns ``False`` having written nothing (compression, socket not draining, closing)."""


class ConnectionState(Enum):
    """Where a :class:`Connection` is in its life (it only moves forward, in this order).

    There is no CONNECTING: a connection exists once the hub accepted the WebSocket
    and chose its app."""

    OPEN = 0
    """Accepted: frames are written (or queued behind a socket that is not draining)."""
    CLOSING = 1
    """Closing with a code (an overflowing backlog, :meth:`Connection.close`): frames
    sent now are dropped; the close frame is on its way."""
    CLOSED = 2
    """Closed, or the client is gone: nothing more is written, and the hub stops
    reading it."""


_OPEN = ConnectionState.OPEN
"""The send path's check is ``state is _OPEN``: an identity comparison, no allocation."""


def _no_limit(socket_id: str) -> bool:
    return True


def app_rules(app: PusherApp, allow_client_event: Callable[[str], bool] = _no_limit) -> AppRules:
    """The :class:`AppRules` of ``app``'s connections (no client-event limit unless
    ``allow_client_event`` is given)."""
    return AppRules(
        app.key,
        app.secret,
        app.max_channels,
        app.max_message_size,
        app.client_event_rate,
        allow_client_event,
    )


class Connection:
    """One client connection: its ``socket_id``, its protocol state (``session``, a
    sans-I/O :class:`~tokenwire.protocol.pusher_session.PusherSession`) and outgoing
    frames."""

    __slots__ = (
        "_backlog",
        "_backlog_bytes",
        "_send",
        "_writer",
        "app",
        "last_seen",
        "pinged",
        "session",
        "socket_id",
        "state",
        "write_frame",
    )

    def __init__(
        self,
        app: PusherApp,
        socket_id: str,
        send: Send,
        now: float,
        write_frame: Callable[[bytes], bool] | None = None,
        rules: AppRules | None = None,
    ) -> None:
        self.app = app
        self.write_frame = write_frame
        """The server's ``tokenwire.write_frame`` extension, if it has one
        (:mod:`tokenwire.server.serving`)."""
        self.socket_id = socket_id
        self.session = PusherSession(socket_id, rules or app_rules(app))
        """Its subscriptions, presence memberships and signed-in user."""
        self.last_seen = now
        self.pinged = False
        self.state = _OPEN
        """Changed only by :meth:`advance`."""
        self._send = send
        self._backlog: deque[str] | None = None
        self._backlog_bytes = 0
        """UTF-8 bytes of the frames in ``_backlog``."""
        self._writer: asyncio.Task[None] | None = None

    def send_prepared(self, text: str, frame: bytes) -> None:
        """Send ``text`` whose whole WebSocket frame is ``frame``: written as it is when
        the server allows (nothing waiting before it), else as :meth:`send` does."""
        write = self.write_frame
        if (
            write is None
            or self._backlog is not None
            or self.state is not _OPEN
            or not write(frame)
        ):
            self.send(text)

    def send(self, text: str) -> None:
        """Write a frame without waiting: at once when the socket takes it (the usual
        case), else behind the frames already waiting, in order."""
        if self.state is not _OPEN:
            return
        if self._backlog is not None:
            size = len(text.encode())
            if (
                len(self._backlog) >= MAX_BACKLOG
                or self._backlog_bytes + size > self.app.max_backlog_bytes
            ):
                self.advance(ConnectionState.CLOSING)
                SLOW_READERS_DROPPED.labels("websocket").inc()
                self._backlog.clear()  # what it has not read is dropped; it reconnects
                self._backlog_bytes = 0
                self._writer = asyncio.create_task(
                    self._close_now(ErrorCode.OVER_CAPACITY, "too slow to read", CLOSE_TIMEOUT)
                )
                return
            self._backlog.append(text)
            self._backlog_bytes += size
            return
        coro = _coroutine(self._send({"type": "websocket.send", "text": text}))
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception:  # the client is gone: the receive loop ends the connection
            self.advance(ConnectionState.CLOSED)
            return
        # The server's send is waiting for the socket to drain: finish it in a task.
        self._backlog = deque()
        self._writer = asyncio.create_task(self._drain(coro, waiting))

    async def _drain(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        try:
            await _resume(coro, waiting)
            while self._backlog:
                text = self._backlog.popleft()
                self._backlog_bytes -= len(text.encode())
                await self._send({"type": "websocket.send", "text": text})
        except Exception:
            self.advance(ConnectionState.CLOSED)
        finally:
            self._backlog = None
            self._backlog_bytes = 0

    async def flush(self) -> None:
        """Wait until every frame sent so far has been handed to the server."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer

    async def close(self, code: int, reason: str) -> None:
        """Send ``pusher:error`` with ``code`` and close the WebSocket with it."""
        self.send(error_frame(code, reason))
        self.advance(ConnectionState.CLOSING)
        await self.flush()
        await self._close_now(code, reason)

    def advance(self, state: ConnectionState) -> None:
        """Move to ``state`` if it is later than the current one (OPEN → CLOSING →
        CLOSED); an earlier or equal one changes nothing (closing twice, a client
        gone while closing)."""
        if state.value > self.state.value:
            self.state = state

    async def _close_now(self, code: int, reason: str, timeout: float | None = None) -> None:
        self.advance(ConnectionState.CLOSING)
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    close = {"type": "websocket.close", "code": code, "reason": reason[:120]}
                    await self._send(close)
        finally:
            self.advance(ConnectionState.CLOSED)

    def statistics(self) -> dict[str, int]:
        """``backlog_frames`` and ``backlog_bytes`` waiting for the socket to drain."""
        backlog = self._backlog
        return {
            "backlog_frames": len(backlog) if backlog is not None else 0,
            "backlog_bytes": self._backlog_bytes,
        }


def _coroutine(awaitable: Awaitable[None]) -> Coroutine[Any, Any, None]:
    if inspect.iscoroutine(awaitable):
        return awaitable

    async def wrapper() -> None:
        await awaitable

    return wrapper()


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run a coroutine that was started with ``coro.send(None)`` and suspended on
    ``waiting`` (what it yielded) to its end, as a task would (Python 3.12's eager
    tasks do this for every new task)."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await _Yield(waiting)
        except BaseException as exc:
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


class _Yield:
    """Awaitable that re-yields a future another coroutine yielded, to this task."""

    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        if not self._future.done():
            self._future._asyncio_future_blocking = True
            yield self._future
