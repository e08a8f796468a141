"""The native API's answer to a tokenwire exception: the one place that maps the
exception tree (:mod:`tokenwire.errors`) to a response.

The status and code come from the exception's class (``http_status``,
``error_code``); the body is FastAPI's: ``{"detail": message}``, or the validation
list for the errors that name a request field. The Pusher HTTP endpoints' shape,
``{"error": message}``, is :func:`pusher_error_response`. The OpenAI-compatible
and AI SDK surfaces have their own shapes (:mod:`tokenwire.server.openai_compat`,
:mod:`tokenwire.server.aisdk`) and read the same class attributes.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from tokenwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    PusherRequestError,
    RateLimitedError,
    TokenwireError,
    UnknownModelError,
)

__all__ = ["error_response", "field_error", "pusher_error_response"]


def field_error(field: str, message: str, status: int = 422) -> JSONResponse:
    """422 in FastAPI's validation format; ``field`` may be dotted (``params.tokens``)."""
    loc = ["body", *field.split(".")]
    return JSONResponse(
        {"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=status
    )


def error_response(exc: TokenwireError) -> JSONResponse:
    """The native API's response to ``exc``: status from its class, its fixed
    ``public_message`` or its own message (written for the client), and the headers
    its kind needs (``WWW-Authenticate`` on 401, ``Retry-After`` on 429)."""
    status = exc.http_status
    if isinstance(exc, UnknownModelError):
        return field_error("model", str(exc), status)
    if isinstance(exc, InvalidRequestError):
        return field_error(exc.field, exc.message, status)
    headers: dict[str, str] = {}
    if isinstance(exc, AuthenticationError):
        headers["www-authenticate"] = exc.www_authenticate
    elif isinstance(exc, RateLimitedError):
        headers["retry-after"] = str(exc.retry_after)
    message = exc.public_message if exc.public_message is not None else str(exc)
    return JSONResponse({"detail": message}, status_code=status, headers=headers or None)


def pusher_error_response(exc: PusherRequestError | AuthenticationError) -> JSONResponse:
    """The Pusher auth endpoints' and HTTP API's response to ``exc``: ``{"error":
    message}`` with its ``status`` (401 with ``WWW-Authenticate`` for an
    :class:`~tokenwire.errors.AuthenticationError`)."""
    if isinstance(exc, AuthenticationError):
        headers = {"www-authenticate": exc.www_authenticate}
        return JSONResponse({"error": exc.message}, status_code=exc.http_status, headers=headers)
    return JSONResponse({"error": exc.message}, status_code=exc.status)
