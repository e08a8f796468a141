"""Who is calling: :class:`Identity` and the :data:`Identify` hook that finds it.

tokenwire does not log people in; the embedding app does. An ``identify``
callable turns a request into an :class:`Identity` (or ``None`` for an anonymous
caller). The server's default reads ``Authorization: Bearer <token>`` and looks
the token up in ``Settings.auth_tokens`` (token → user id).

What identity decides (docs/websockets.md, docs/api.md):

- ``POST /v1/chat`` by an identified caller makes the conversation theirs; one
  started anonymously has no owner and anyone who knows its id may read it.
- ``POST /broadcasting/auth`` lets a caller subscribe to
  ``private-conversation.{id}`` only when the conversation is theirs (or has no
  owner); presence channels and ``pusher:signin`` need an identity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from starlette.requests import HTTPConnection

__all__ = ["Identify", "Identity", "bearer_tokens"]


class Identity(msgspec.Struct, frozen=True):
    """A caller: ``id`` (owner of conversations, Pusher ``user_id``) and ``info``
    (shown to other members of presence channels as ``user_info``)."""

    id: str
    info: dict[str, Any] = msgspec.field(default_factory=dict)


Identify = Callable[[HTTPConnection], Awaitable[Identity | None]]
"""``async (request) -> Identity | None``; ``None`` = anonymous."""


def bearer_tokens(tokens: Mapping[str, str]) -> Identify:
    """An :data:`Identify` reading ``Authorization: Bearer <token>`` and mapping the
    token to a user id through ``tokens`` (an unknown token is anonymous)."""

    async def identify(request: HTTPConnection) -> Identity | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in tokens:
            return None
        user_id = tokens[token.strip()]
        return Identity(user_id, {"name": user_id})

    return identify
