"""The HTTP side of identity: what only an HTTP server needs (who may call and
what is recognised is :mod:`tokenwire.engine.identity`).

Cross-site requests: a page of another site may send a form or ``text/plain`` POST
without a CORS preflight, and the browser may add cookies to it.
:func:`require_json` refuses such bodies (415) on the JSON endpoints, so only a
page allowed by CORS can call them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from tokenwire.engine.identity import Access, Identity

__all__ = ["caller_dependency", "is_loopback", "require_json"]


def caller_dependency(access: Access) -> Callable[[HTTPConnection], Awaitable[Identity | None]]:
    """:meth:`Access.caller` as a FastAPI dependency (FastAPI hands a parameter the
    request by its type, which the engine's :class:`~tokenwire.engine.identity.HTTPRequest`
    protocol is not).

    Raises:
        AuthenticationError: as :meth:`Access.caller` (401).
    """

    async def caller(request: HTTPConnection) -> Identity | None:
        return await access.caller(request)

    return caller


def require_json(request: HTTPConnection) -> None:
    """A FastAPI dependency (or a plain call) refusing a body that is not declared
    as JSON (``application/json`` or ``application/*+json``) with 415.

    A form or ``text/plain`` POST, or one with no ``Content-Type``, needs no CORS
    preflight, so any web page could send it with the user's cookies; requiring
    JSON leaves such requests to the pages CORS allows.

    Raises:
        HTTPException: 415.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    if main != "application" or not (sub == "json" or sub.endswith("+json")):
        shown = media_type or "none"
        raise HTTPException(
            415, f"the body must be JSON, sent with Content-Type: application/json (got {shown})"
        )


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (``127.0.0.0/8``,
    ``::1``, ``localhost``); any other name or address may be reachable by others."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
