"""How ``tokenwire serve`` runs the app under uvicorn.

Two additions to plain ``uvicorn.run``:

- :class:`FanoutWebSocketProtocol`, uvicorn's websockets sans-I/O protocol that
  also offers ``scope["extensions"]["tokenwire.write_frame"]``. Its value is a
  callable that takes a complete WebSocket frame (unmasked, uncompressed) and
  writes it to the socket at once. The Pusher hub encodes a frame once per
  publish and writes the same bytes to every subscriber, as
  ``websockets.broadcast()`` does (``docs/performance.md``). Under any other ASGI
  server the hub sends each frame through ASGI instead.
- A shutdown that first closes the Pusher connections with 4200 (reconnect at
  once), before uvicorn closes every WebSocket with 1012.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tokenwire.settings import Settings
from tokenwire.transports.websocket import WRITE_FRAME

__all__ = ["FanoutWebSocketProtocol", "run"]


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
    hub = app.state.pusher
    settings: Settings = app.state.tokenwire.settings

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await hub.disconnect_all()
            await super().shutdown(sockets)

    defaults: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": FanoutWebSocketProtocol,
        "ws_per_message_deflate": settings.websocket_compression,
        "timeout_graceful_shutdown": 5,
    }
    Server(uvicorn.Config(app, **(defaults | options))).run()
