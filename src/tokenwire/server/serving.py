"""How ``tokenwire serve`` runs the app under uvicorn.

Three additions to plain ``uvicorn.run``:

- :class:`FanoutWebSocketProtocol`, uvicorn's websockets sans-I/O protocol that
  also offers ``scope["extensions"]["tokenwire.write_frame"]``. Its value is a
  callable that takes a complete WebSocket frame (unmasked, uncompressed) and
  writes it to the socket at once. The Pusher hub encodes a frame once per
  publish and writes the same bytes to every subscriber, as
  ``websockets.broadcast()`` does (``docs/performance.md``). Under any other ASGI
  server the hub sends each frame through ASGI instead. Its inbox (the ASGI
  ``receive`` queue) and its ``writable`` flag are :class:`_Inbox` and
  :class:`_Flag`, not :class:`asyncio.Queue` and :class:`asyncio.Event`: those
  hold four and one :class:`collections.deque` (760 bytes each, allocated when
  created), ~3.8 KB of a subscriber's ~21 KB (``bench/ws_bench.py``); and it lets
  go of the handshake's request and response once the 101 is written.
- A graceful shutdown (SIGTERM, SIGINT), in this order: (1) stop accepting: close
  the listening sockets and let each HTTP connection close after its current
  response; (2) let this process's running generations finish for
  ``shutdown_grace`` seconds; (3) end the rest with ``cancelled{reason:
  "shutdown"}``, appended and stored (:meth:`Tokenwire.drain`); (4) every reader
  receives its terminal event: the HTTP responses (SSE, AI SDK, OpenAI chunks,
  long polls) end by themselves once it is written, the Pusher relays deliver it,
  then the Pusher connections are closed with 4200 (reconnect at once), before
  uvicorn closes any other WebSocket with 1012; (5) uvicorn waits up to
  ``timeout_graceful_shutdown`` seconds for the open responses (those following
  streams produced elsewhere, on a gateway) and runs the lifespan shutdown.
  A second SIGINT skips what is left of the grace.
- :class:`HeaderTimeoutProtocol`, uvicorn's httptools HTTP protocol with a
  deadline for the request head: a connection that has not sent a request's
  complete headers ``header_timeout`` seconds after it opened, or after the first
  byte of a request on a kept-alive connection, is closed (slowloris). uvicorn
  has no such deadline: its ``timeout_keep_alive`` (5 s, idle time between
  requests, which stays in charge there) is disarmed by the first byte of a
  request, and ``h11_max_incomplete_event_size`` bounds size, not time. The
  body is bounded separately, by ``body_timeout`` in
  :class:`~tokenwire.server.app.BodyLimitMiddleware` (under any server).
  Limits: it covers HTTP/1.1 through httptools (what ``tokenwire serve`` runs);
  the WebSocket handshake is an HTTP request and is covered too; a client that
  sends its headers in time and then reads the response slowly is not (the
  SSE/Pusher buffers are bounded elsewhere). Its flow control's ``writable``
  event and each request's ``message_event`` are :class:`_Flag` objects, not
  :class:`asyncio.Event` objects, and its queue of pipelined requests is a
  :class:`_Pipeline`, not a :class:`collections.deque` (760 bytes each, held as
  long as an SSE response is). Each request's scope offers
  ``scope["extensions"]["tokenwire.on_disconnect"]``
  (:data:`~tokenwire.transports.sse.ON_DISCONNECT`), which an SSE response uses
  to learn that its client left without a pending ``receive()`` (~0.8 KB per held
  response: three coroutines, a future and a closure; docs/performance.md). And
  uvicorn's ``proxy_headers`` rewrite (on by default) runs as :class:`_ProxyHeaders`,
  which keeps no frame under a held connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tokenwire.settings import Settings
from tokenwire.transports.pusher.connection import WRITE_FRAME
from tokenwire.transports.sse import ON_DISCONNECT

if TYPE_CHECKING:
    from tokenwire.engine import Tokenwire
    from tokenwire.transports.pusher.hub import PusherHub

__all__ = ["FanoutWebSocketProtocol", "HeaderTimeoutProtocol", "run"]

logger = logging.getLogger("tokenwire.server")
_RELAY_TIMEOUT = 2.0
"""Seconds the Pusher relays get to deliver the terminal events before 4200."""


class _Flag:
    """What uvicorn's protocol uses of :class:`asyncio.Event` (``set``, ``clear``,
    ``is_set``, ``wait``), its waiters in a list made at the first wait (most flags
    of a held connection are never waited on)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)
        return True


class _ProxyHeaders:
    """uvicorn's :class:`ProxyHeadersMiddleware` (``proxy_headers``, on by default)
    without a coroutine frame of its own under every connection (~0.3 KB per held
    SSE response or WebSocket): the call rewrites ``client`` and ``scheme`` through
    uvicorn's middleware, whose inner application here returns at once, then hands
    back the application's coroutine instead of awaiting it."""

    def __init__(self, proxy: ProxyHeadersMiddleware) -> None:
        self.app = proxy.app
        proxy.app = _return
        self.rewrite = proxy

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        rewrite = self.rewrite(scope, receive, send)
        try:
            rewrite.send(None)
        except StopIteration:
            return self.app(scope, receive, send)
        rewrite.close()
        raise RuntimeError("uvicorn's ProxyHeadersMiddleware suspended: not supported")


async def _return(scope: Any, receive: Any, send: Any) -> None:
    return


class _RequestEvent(_Flag):
    """A request's ``message_event`` that also serves its :data:`ON_DISCONNECT`
    extension: the callback given is called once, from the protocol's
    ``connection_lost``, when the client disconnects before the response is complete
    (at once if it already has)."""

    __slots__ = ("_callback", "_gone")

    def __init__(self) -> None:
        super().__init__(False)
        self._gone = False
        self._callback: Callable[[], object] | None = None

    def on_disconnect(self, callback: Callable[[], object]) -> None:
        if self._gone:
            callback()
        else:
            self._callback = callback

    def disconnected(self) -> None:
        self._gone = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class _Inbox:
    """What uvicorn's protocol uses of :class:`asyncio.Queue` (``put_nowait``, ``get``,
    ``empty``; unbounded, first in first out), in two lists. As in
    :class:`asyncio.Queue`, each item wakes one waiting ``get``, and a ``get``
    cancelled after it was woken passes the wake-up on."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] = []

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake_next()

    def _wake_next(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._items and not waiter.cancelled():  # woken, then cancelled
                    self._wake_next()
                raise
            finally:
                self._waiters.remove(waiter)
        return self._items.pop(0)


class _Pipeline(list[Any]):
    """What uvicorn's HTTP protocol uses of the :class:`collections.deque` of its
    pipelined requests (``appendleft``, ``pop``, truth): a list, 56 bytes against a
    deque's 760, for requests that seldom come."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class FanoutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with the :data:`WRITE_FRAME` extension,
    and a lighter inbox and ``writable`` flag (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag(True)  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response, with their headers (~2.5 KB), are
            # not read once the 101 is written; uvicorn would keep them to the end.
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: dict[str, Any] | None = getattr(self, "scope", None)
        if scope is not None:  # absent when the handshake failed
            scope["extensions"][WRITE_FRAME] = self._write_frame

    def _write_frame(self, frame: bytes) -> bool:
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.conn.extensions  # permessage-deflate: a zlib context per connection
            or not self.writable.is_set()
        ):
            return False
        self.transport.write(frame)
        return True


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol closing connections whose request head takes
    longer than :attr:`header_timeout` seconds (module docstring)."""

    header_timeout: float = 10.0
    """Seconds from the connection's start, or from the first byte of a later
    request, to the end of the request's headers; a subclass sets it (:func:`run`)."""

    _head_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        if isinstance(self.app, ProxyHeadersMiddleware):  # the first connection
            self.config.loaded_app = self.app = _ProxyHeaders(self.app)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = _Flag(True)  # type: ignore[assignment]
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a request's cycle, its task not started yet
            event = self.cycle.message_event = _RequestEvent()  # type: ignore[assignment]
            extensions: dict[str, Any] = self.cycle.scope.setdefault("extensions", {})
            extensions[ON_DISCONNECT] = event.on_disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            event = cycle.message_event
            if isinstance(event, _RequestEvent):
                event.disconnected()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """:class:`HeaderTimeoutProtocol` with ``header_timeout = seconds`` (uvicorn's
    ``http=`` option takes a class)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


def run(app: FastAPI, **options: Any) -> None:
    """Serve ``app`` (from :func:`~tokenwire.server.app.create_app`) until SIGINT or
    SIGTERM, on its settings' ``host``, ``port`` and ``websocket_compression``.
    ``options`` go to ``uvicorn.Config`` and win (``log_level``, ``port`` …)."""
    hub: PusherHub = app.state.pusher
    tw: Tokenwire = app.state.tokenwire
    settings: Settings = tw.settings

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await _stop_gracefully(self, tw, hub)
            await super().shutdown(sockets)

    defaults: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": FanoutWebSocketProtocol,
        "http": header_timeout_protocol(settings.header_timeout),
        "ws_per_message_deflate": settings.websocket_compression,
        "timeout_graceful_shutdown": 5,
    }
    Server(uvicorn.Config(app, **(defaults | options))).run()


async def _stop_gracefully(server: uvicorn.Server, tw: Tokenwire, hub: PusherHub) -> None:
    """Steps (1) to (4) of the module docstring; a second SIGINT (uvicorn's
    ``force_exit``) cuts the grace short."""
    logger.info("shutting down: generations may run for %s s", tw.settings.shutdown_grace)
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        if _is_http(connection):
            connection.shutdown()  # idle: closed now; busy: after its response
    drain = asyncio.create_task(tw.drain())
    while not drain.done():
        await asyncio.wait({drain}, timeout=0.1)
        if server.force_exit:
            drain.cancel()
            return
    await hub.finish_relays(_RELAY_TIMEOUT)
    await hub.disconnect_all()


def _is_http(connection: object) -> bool:
    """An HTTP/1.1 connection of uvicorn (h11 or httptools), not a WebSocket: shutting
    a WebSocket down would close it with 1012 before its terminal broadcast."""
    if isinstance(connection, HttpToolsProtocol):  # HeaderTimeoutProtocol too
        return True
    return type(connection).__module__.startswith("uvicorn.protocols.http.")
