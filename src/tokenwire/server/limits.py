"""The HTTP answer to a refused start (the limits themselves:
:mod:`tokenwire.engine.limits`)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from tokenwire.engine.limits import RateLimitedError

__all__ = ["rate_limited_response"]


def rate_limited_response(exc: RateLimitedError) -> JSONResponse:
    """The native API's and the AI SDK route's 429: ``{"detail": message}`` with
    ``Retry-After`` (the OpenAI-compatible route has OpenAI's shape instead)."""
    headers = {"retry-after": str(exc.retry_after)}
    return JSONResponse({"detail": exc.message}, status_code=429, headers=headers)
