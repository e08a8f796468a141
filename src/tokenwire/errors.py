"""The exception tree. Foreign exceptions (SDKs, httpx, SQLAlchemy) are translated
at one boundary with ``raise X(...) from exc``::

    TokenwireError
    ├── ProviderError          an upstream model API failed (carries an ErrorCode)
    ├── UnknownModelError      "provider:model" names no configured provider
    ├── InvalidRequestError    a request to start a generation is invalid (field, message)
    ├── StreamNotFoundError    no such stream (or not yours)
    ├── ConversationNotFoundError  no such conversation (or not yours)
    ├── AuthenticationError    no valid identity where one is needed (HTTP 401)
    ├── StreamExpiredError     the stream's events are past retention
    ├── StoreError             the conversation store failed
    ├── LogUnavailableError    the stream log's backend (Redis) cannot be reached
    ├── ConfigurationError     a setting names something tokenwire cannot use (also a ValueError)
    └── ShuttingDownError      the server is shutting down: no new generation (HTTP 503)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConversationNotFoundError",
    "InvalidRequestError",
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


class InvalidRequestError(TokenwireError):
    """A request to start a generation is invalid (HTTP 422 naming the field).

    Args:
        field: where, as the request spells it (``messages``, ``params.tokens``).
        message: what is wrong, for the caller (never an exception's text).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StreamNotFoundError(TokenwireError):
    """No stream with that id (HTTP 404)."""


class ConversationNotFoundError(TokenwireError):
    """No such conversation, or not the caller's (HTTP 404)."""


class AuthenticationError(TokenwireError):
    """The request carries no valid identity where one is needed (HTTP 401).

    Args:
        message: what is wrong, safe to show to the caller ("the bearer token has
            expired"); never a library's exception text.
        invalid_token: the request carried credentials and they are not valid
            (``WWW-Authenticate: Bearer error="invalid_token"``, RFC 6750 §3.1),
            as opposed to carrying none.
    """

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.invalid_token = invalid_token

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header value of the 401 answer (RFC 6750 §3)."""
        return 'Bearer error="invalid_token"' if self.invalid_token else "Bearer"


class StreamExpiredError(TokenwireError):
    """The stream ended longer than ``retention`` seconds ago (HTTP 410)."""


class StoreError(TokenwireError):
    """The conversation store failed."""


class LogUnavailableError(TokenwireError):
    """The stream log's backend (Redis) cannot be reached or failed (HTTP 503)."""


class ConfigurationError(TokenwireError, ValueError):
    """A setting names something tokenwire cannot use (an unsupported log URL, a
    queue without Redis …); the message names the setting."""


class ShuttingDownError(TokenwireError):
    """The instance is shutting down (SIGTERM): it starts no new generation (HTTP 503)."""
