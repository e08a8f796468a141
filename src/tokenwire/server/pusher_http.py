"""HTTP side of the Pusher server: the auth endpoints clients call and the publishing
API servers call (Pusher "HTTP API reference"; the Python ``pusher`` library's paths).

- ``POST /broadcasting/auth`` (form ``socket_id``, ``channel_name``: Laravel Echo's
  and ``pusher-js``'s channel authorization request) → ``{"auth", "channel_data"?,
  "shared_secret"?}``; 401 without a valid identity where one is needed, 404 a
  conversation channel of a conversation that does not exist or is another
  owner's (:class:`~tokenwire.engine.identity.Access` decides), 403 refused by an
  authorizer or no authorizer for the channel. It stays a form POST (Pusher's and
  Echo's protocol); what it answers is a signature only the caller's own socket
  can use.
- ``POST /broadcasting/user-auth`` (form ``socket_id``: ``pusher.signin()``) →
  ``{"auth", "user_data"}``.
- ``POST /apps/{app_id}/events``, ``/batch_events``, ``GET /apps/{app_id}/channels``,
  ``/channels/{name}``, ``/channels/{name}/users``,
  ``POST /apps/{app_id}/users/{user_id}/terminate_connections``, signed with the
  app secret. Errors are JSON ``{"error": message}``: 400 bad request, 401 bad
  signature or ``auth_timestamp`` more than 600 s off, 404 unknown app, 413 event
  data over the app's ``max_message_size``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tokenwire.engine.identity import Access, Identity
from tokenwire.errors import AuthenticationError, ConversationNotFoundError, PusherRequestError
from tokenwire.protocol.pusher import (
    JSON_ERRORS,
    ChannelKind,
    channel_auth,
    channel_kind,
    check_event_name,
    check_socket_id,
    conversation_of_channel,
    shared_secret,
    user_auth,
    verify_api_request,
)
from tokenwire.server.errors import pusher_error_response
from tokenwire.server.routes import responses
from tokenwire.settings import PusherApp
from tokenwire.transports.pusher.hub import PusherHub

__all__ = ["build_pusher_router"]

MAX_CHANNELS = 100
"""Channels one ``events`` request may name (HTTP API reference)."""
MAX_BATCH = 10
"""Events one ``batch_events`` request may carry (HTTP API reference)."""


class PusherAPI:
    """The handlers of :func:`build_pusher_router`, bound to ``hub`` and ``access``."""

    def __init__(self, hub: PusherHub, access: Access) -> None:
        self.hub = hub
        self.access = access

    async def allowed(self, request: Request, identity: Identity | None, channel: str) -> None:
        conversation_id = conversation_of_channel(channel)
        if conversation_id is not None:
            try:
                await self.access.conversation(request, conversation_id)
            except ConversationNotFoundError:
                raise PusherRequestError("no such conversation", status=404) from None
            return
        for pattern, authorizer in self.hub.authorizers:
            found = pattern.fullmatch(channel)
            if found is not None:
                if not await authorizer(identity, found):
                    raise PusherRequestError(
                        f"not allowed on {channel}", status=403 if identity else 401
                    )
                return
        raise PusherRequestError(f"no authorizer for channel {channel}", status=403)

    async def broadcasting_auth(self, request: Request) -> JSONResponse:
        try:
            identity = await self.access.caller(request)
        except AuthenticationError as exc:
            return pusher_error_response(exc)
        form = await request.form()
        socket_id, channel = form.get("socket_id"), form.get("channel_name")
        try:
            check_socket_id(socket_id)
            kind = channel_kind(channel)
        except ValueError as exc:
            return pusher_error_response(PusherRequestError(str(exc)))
        assert isinstance(socket_id, str) and isinstance(channel, str)
        if not kind.needs_auth:
            return pusher_error_response(
                PusherRequestError(f"{channel} is not a private, encrypted or presence channel")
            )
        app = self.hub.broadcast_app
        try:
            if kind is ChannelKind.PRESENCE and identity is None:
                raise PusherRequestError("presence channels need an authenticated user", status=401)
            await self.allowed(request, identity, channel)
        except PusherRequestError as exc:
            return pusher_error_response(exc)
        body: dict[str, str] = {}
        channel_data = None
        if kind is ChannelKind.PRESENCE:
            assert identity is not None
            member = {"user_id": identity.id, "user_info": identity.info}
            channel_data = body["channel_data"] = msgspec.json.encode(member).decode()
        if kind is ChannelKind.ENCRYPTED:
            if app.encryption_master_key_base64 is None:
                return pusher_error_response(
                    PusherRequestError(
                        "encrypted channels need the app's encryption_master_key_base64"
                    )
                )
            master = base64.b64decode(app.encryption_master_key_base64)
            body["shared_secret"] = shared_secret(master, channel)
        body["auth"] = channel_auth(app.key, app.secret, socket_id, channel, channel_data)
        return JSONResponse(body)

    async def user_authentication(self, request: Request) -> JSONResponse:
        try:
            identity = await self.access.caller(request)
        except AuthenticationError as exc:
            return pusher_error_response(exc)
        if identity is None:
            return pusher_error_response(
                AuthenticationError("signing in needs an authenticated user")
            )
        form = await request.form()
        socket_id = form.get("socket_id")
        try:
            check_socket_id(socket_id)
        except ValueError as exc:
            return pusher_error_response(PusherRequestError(str(exc)))
        assert isinstance(socket_id, str)
        app = self.hub.broadcast_app
        user_data = msgspec.json.encode({"id": identity.id, "user_info": identity.info}).decode()
        return JSONResponse(
            {"auth": user_auth(app.key, app.secret, socket_id, user_data), "user_data": user_data}
        )

    async def signed(self, request: Request, app_id: str | None) -> tuple[PusherApp, bytes]:
        if app_id is None:  # a path without /apps/{app_id}: the app is the key's
            key = request.query_params.get("auth_key", "")
            app = self.hub.apps_by_key.get(key)
            if app is None:
                raise PusherRequestError("unknown auth_key", status=401)
        else:
            app = self.hub.apps_by_id.get(app_id)
        if app is None:
            raise PusherRequestError(f"unknown app_id {app_id}", status=404)
        body = await request.body()
        verify_api_request(
            key=app.key,
            secret=app.secret,
            method=request.method,
            path=request.url.path,
            params=dict(request.query_params),
            body=body,
            now=time.time(),
        )
        return app, body

    def signed_route(
        self,
        handler: Callable[[Request, PusherApp, bytes], Awaitable[dict[str, Any]]],
    ) -> Callable[[Request], Awaitable[JSONResponse]]:
        """An HTTP API route: the request's app, checked signature and body, then
        ``handler``'s answer as JSON; a refusal as ``{"error": …}`` with its status."""

        async def endpoint(request: Request) -> JSONResponse:
            try:
                app, body = await self.signed(request, request.path_params.get("app_id"))
                return JSONResponse(await handler(request, app, body))
            except PusherRequestError as exc:
                return pusher_error_response(exc)

        return endpoint

    async def trigger(
        self, app: PusherApp, item: dict[str, Any], channels: list[str]
    ) -> dict[str, Any]:
        """Publish one event (already validated) and return the requested ``info``."""
        for channel in channels:
            await self.hub.publish(
                app.id, channel, item["name"], item["data"], item.get("socket_id")
            )
        wanted = _info(item.get("info"))
        if not wanted:
            return {}
        counts = await self.hub.bus.channels(app.id)
        result = {}
        for channel in channels:
            result[channel] = await _channel_info(self.hub, app, channel, wanted, counts)
        return result

    async def events(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        item = _event(app, _json_object(body))
        channels = item.get("channels", [item["channel"]] if "channel" in item else None)
        if not isinstance(channels, list) or not channels:
            raise PusherRequestError("channels must be a non-empty list (or give channel)")
        if len(channels) > MAX_CHANNELS:
            raise PusherRequestError(f"at most {MAX_CHANNELS} channels per event")
        _check_channels(channels)
        info = await self.trigger(app, item, channels)
        return {"channels": info} if info else {}

    async def batch_events(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        batch = _json_object(body).get("batch")
        if not isinstance(batch, list) or not batch:
            raise PusherRequestError("batch must be a non-empty list of events")
        if len(batch) > MAX_BATCH:
            raise PusherRequestError(f"at most {MAX_BATCH} events per batch")
        items = [_event(app, item) for item in batch]
        for item in items:
            _check_channels([item.get("channel")])
        results = [
            (await self.trigger(app, item, [item["channel"]])).get(item["channel"], {})
            for item in items
        ]
        return {"batch": results} if any(results) else {}

    async def channels_index(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        prefix = request.query_params.get("filter_by_prefix", "")
        wanted = _info(request.query_params.get("info"))
        if "user_count" in wanted and not prefix.startswith("presence-"):
            raise PusherRequestError("info=user_count needs filter_by_prefix=presence-")
        counts = await self.hub.bus.channels(app.id)
        found = {}
        for channel in sorted(counts):
            if channel.startswith(prefix):
                found[channel] = await _channel_info(
                    self.hub, app, channel, wanted & {"user_count"}, counts
                )
        return {"channels": found}

    async def channel_show(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        channel = request.path_params["channel_name"]
        _check_channels([channel])
        wanted = _info(request.query_params.get("info"))
        if "user_count" in wanted and channel_kind(channel) is not ChannelKind.PRESENCE:
            raise PusherRequestError("user_count is only for presence channels")
        counts = await self.hub.bus.channels(app.id)
        return {
            "occupied": counts.get(channel, 0) > 0,
            **await _channel_info(self.hub, app, channel, wanted, counts),
        }

    async def channel_users(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        channel = request.path_params["channel_name"]
        _check_channels([channel])
        if channel_kind(channel) is not ChannelKind.PRESENCE:
            raise PusherRequestError("users are listed for presence channels only")
        return {
            "users": [{"id": user_id} for user_id in await self.hub.bus.members(app.id, channel)]
        }

    async def terminate(self, request: Request, app: PusherApp, body: bytes) -> dict[str, Any]:
        await self.hub.terminate(app.id, request.path_params["user_id"])
        return {}


def build_pusher_router(hub: PusherHub, access: Access) -> APIRouter:
    """The auth endpoints and the HTTP publishing API of ``hub``; ``access``
    (``Tokenwire.access``) says who is calling and decides the conversations' channels.

    ``private-conversation.{id}`` (also ``presence-`` and ``private-encrypted-``)
    only the conversation's owner may join (anyone, if it has no owner): ``access``
    decides, and another owner's conversation answers 404 like a missing one; other
    private and presence channels are decided by the authorizers registered with
    :meth:`PusherHub.channel`; a channel nobody decides is refused (403), as
    Laravel does.
    """
    router = APIRouter()
    api = PusherAPI(hub, access)
    router.post("/broadcasting/auth", tags=["pusher"], responses=responses(400, 401, 403))(
        api.broadcasting_auth
    )
    router.post("/broadcasting/user-auth", tags=["pusher"], responses=responses(400, 401))(
        api.user_authentication
    )
    routes: list[
        tuple[str, str, Callable[[Request, PusherApp, bytes], Awaitable[dict[str, Any]]]]
    ] = [
        ("POST", "/apps/{app_id}/events", api.events),
        ("POST", "/apps/{app_id}/batch_events", api.batch_events),
        ("GET", "/apps/{app_id}/channels", api.channels_index),
        ("GET", "/apps/{app_id}/channels/{channel_name}", api.channel_show),
        ("GET", "/apps/{app_id}/channels/{channel_name}/users", api.channel_users),
        ("POST", "/apps/{app_id}/users/{user_id}/terminate_connections", api.terminate),
        # the Python `pusher` library (3.3) posts here, without /apps/{app_id}
        ("POST", "/users/{user_id}/terminate_connections", api.terminate),
    ]
    for method, path, handler in routes:
        router.add_api_route(
            path,
            api.signed_route(handler),
            methods=[method],
            tags=["pusher"],
            response_model=None,
            responses=responses(400, 401, 404, 413),
        )
    return router


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        decoded = msgspec.json.decode(body)
    except JSON_ERRORS:
        raise PusherRequestError("the body is not JSON") from None
    if not isinstance(decoded, dict):
        raise PusherRequestError("the body must be a JSON object")
    return decoded


def _event(app: PusherApp, item: object) -> dict[str, Any]:
    """One event of ``events`` or ``batch_events``, checked; ``data`` stays a string."""
    if not isinstance(item, dict):
        raise PusherRequestError("an event must be a JSON object")
    try:
        check_event_name(item.get("name"))
        if "socket_id" in item:
            check_socket_id(item["socket_id"])
    except ValueError as exc:
        raise PusherRequestError(str(exc)) from None
    data = item.get("data")
    if not isinstance(data, str):
        raise PusherRequestError("data must be a string (JSON-encode objects first)")
    size = len(data.encode())
    if size > app.max_message_size:
        raise PusherRequestError(
            f"event data is {size} bytes; the limit is {app.max_message_size}", status=413
        )
    return item


def _check_channels(channels: list[Any]) -> None:
    for channel in channels:
        try:
            channel_kind(channel)
        except ValueError as exc:
            raise PusherRequestError(str(exc)) from None


def _info(value: object) -> set[str]:
    wanted = {part for part in str(value or "").split(",") if part}
    unknown = wanted - {"user_count", "subscription_count"}
    if unknown:
        raise PusherRequestError(f"unknown info attribute {sorted(unknown)[0]}")
    return wanted


async def _channel_info(
    hub: PusherHub, app: PusherApp, channel: str, wanted: set[str], counts: dict[str, int]
) -> dict[str, int]:
    info: dict[str, int] = {}
    if "subscription_count" in wanted:
        info["subscription_count"] = counts.get(channel, 0)
    if "user_count" in wanted and channel_kind(channel) is ChannelKind.PRESENCE:
        info["user_count"] = len(await hub.bus.members(app.id, channel))
    return info
