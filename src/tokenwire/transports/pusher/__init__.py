"""The Pusher-protocol WebSocket transport: the I/O around :mod:`tokenwire.protocol.pusher`.

- :mod:`~tokenwire.transports.pusher.hub`: :class:`PusherHub`, the ASGI WebSocket app on
  ``/app/{key}`` (subscriptions, presence, client events);
- :mod:`~tokenwire.transports.pusher.relay`: the conversations' relays (a watched
  conversation's streams, read from the log, written to this node's subscribers);
- :mod:`~tokenwire.transports.pusher.connection`: one connection's delivery (its
  :class:`Connection`, backlog and slow-reader policy);
- :mod:`~tokenwire.transports.pusher.bus`: what the nodes share (memory or Redis bus).

The auth endpoints and the HTTP publishing API are a server-level router
(:mod:`tokenwire.server.pusher_http`).
"""

from tokenwire.transports.pusher.hub import PusherHub

__all__ = ["PusherHub"]
