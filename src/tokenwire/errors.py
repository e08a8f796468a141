"""The exception tree. Foreign exceptions (SDKs, httpx, SQLAlchemy) are translated
at one boundary with ``raise X(...) from exc``::

    TokenwireError
    ├── ProviderError          an upstream model API failed (carries an ErrorCode)
    ├── UnknownModelError      "provider:model" names no configured provider
    ├── StreamNotFoundError    no such stream (or not yours)
    ├── StreamExpiredError     the stream's events are past retention
    ├── StoreError             the conversation store failed
    ├── LogUnavailableError    the stream log's backend (Redis) cannot be reached
    └── ShuttingDownError      the server is shutting down: no new generation (HTTP 503)
"""

from __future__ import annotations

__all__ = [
    "LogUnavailableError",
    "ProviderError",
    "ShuttingDownError",
    "StoreError",
    "StreamExpiredError",
    "StreamNotFoundError",
    "TokenwireError",
    "UnknownModelError",
]


class TokenwireError(Exception):
    """Root of every exception tokenwire raises on purpose."""


class ProviderError(TokenwireError):
    """An upstream model API failed.

    Args:
        code: one of the ``error.code`` values of DESIGN §2 (``provider_error``,
            ``provider_overloaded``, ``provider_rate_limited``, ``provider_timeout``,
            ``invalid_request`` …).
        message: safe to show to users: the provider's own message or ours, never
            a stack trace.
        retryable: whether the same request may succeed later.
        status: the provider's HTTP status, when there was one.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


class UnknownModelError(TokenwireError):
    """The model name is not ``provider:model`` with a configured provider."""


class StreamNotFoundError(TokenwireError):
    """No stream with that id (HTTP 404)."""


class StreamExpiredError(TokenwireError):
    """The stream ended longer than ``retention`` seconds ago (HTTP 410)."""


class StoreError(TokenwireError):
    """The conversation store failed."""


class LogUnavailableError(TokenwireError):
    """The stream log's backend (Redis) cannot be reached or failed (HTTP 503)."""


class ShuttingDownError(TokenwireError):
    """The instance is shutting down (SIGTERM): it starts no new generation (HTTP 503)."""
