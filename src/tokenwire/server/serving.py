"""How ``tokenwire serve`` runs the app under uvicorn.

Two additions to plain ``uvicorn.run``:

- :class:`FanoutWebSocketProtocol`, uvicorn's websockets sans-I/O protocol that
  also offers ``scope["extensions"]["tokenwire.write_frame"]``. Its value is a
  callable that takes a complete WebSocket frame (unmasked, uncompressed) and
  writes it to the socket at once. The Pusher hub encodes a frame once per
  publish and writes the same bytes to every subscriber, as
  ``websockets.broadcast()`` does (``docs/performance.md``). Under any other ASGI
  server the hub sends each frame through ASGI instead.
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
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tokenwire.settings import Settings
from tokenwire.transports.websocket import WRITE_FRAME

if TYPE_CHECKING:
    from tokenwire.server.pusher import PusherHub
    from tokenwire.server.tokenwire import Tokenwire

__all__ = ["FanoutWebSocketProtocol", "run"]

logger = logging.getLogger("tokenwire.server")
_RELAY_TIMEOUT = 2.0
"""Seconds the Pusher relays get to deliver the terminal events before 4200."""


class FanoutWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with the :data:`WRITE_FRAME` extension."""

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
    return type(connection).__module__.startswith("uvicorn.protocols.http.")
