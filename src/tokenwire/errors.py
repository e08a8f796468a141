"""The exception tree. Foreign exceptions (SDKs, httpx, SQLAlchemy) are translated
at one boundary with ``raise X(...) from exc``::

    TokenwireError                 HTTP  error_code
    ├── ProviderError              502   provider_error (instance: the event's ErrorCode)
    ├── UnknownModelError          422   unknown_model: "provider:model" names no provider
    ├── InvalidRequestError        422   invalid_request: a start is invalid (field, message)
    ├── OpenAIRequestError         400   invalid_request: refused by /v1 (OpenAI's shape)
    ├── ChatRequestError           422   invalid_request: refused by /api/chat (also a ValueError)
    ├── StreamNotFoundError        404   stream_not_found: no such stream (or not yours)
    ├── ConversationNotFoundError  404   conversation_not_found (or not yours)
    ├── AuthenticationError        401   unauthenticated: no valid identity where one is needed
    ├── RateLimitedError           429   rate_limited: a limit refused a start (Retry-After)
    ├── StreamExpiredError         410   stream_expired: the events are past retention
    ├── StoreError                 503   store_error: the conversation store failed
    ├── LogUnavailableError        503   log_unavailable: the stream log's backend failed
    ├── ConfigurationError         422   configuration_error: a setting names something
    │                                    tokenwire cannot use (also a ValueError)
    ├── ShuttingDownError          503   shutting_down: no new generation
    ├── RequestTooLargeError       413   request_too_large: a request body over the limit
    ├── PusherRequestError         400   pusher_request: refused by the Pusher auth endpoints
    │   │                                or HTTP API (``status``: 400/401/403/404/413)
    │   └── ApiAuthError           401   pusher_signature: an HTTP API request's signature
    │                                    does not hold
    └── PusherError                400   pusher_error: a client's frame broke the Pusher
                                         protocol (a ``pusher:error`` frame, not HTTP)

Each class carries ``http_status`` and ``error_code`` (class attributes) and, where the
answer is fixed, ``public_message``: the sentence a client sees. The native API maps an
exception to its response in one place (:func:`tokenwire.server.errors.error_response`);
the OpenAI-compatible and AI SDK surfaces keep their own error shapes but read status
and code from the class, and the Pusher HTTP endpoints answer ``{"error": message}``
(:func:`tokenwire.server.errors.pusher_error_response`). :class:`PusherError` is the
sans-I/O Pusher session's signal (:mod:`tokenwire.protocol.pusher_session`), answered
on the WebSocket as a ``pusher:error`` frame carrying its Pusher ``code``.
An exception's own text reaches a client only when it was written for one
(``message`` of the classes that take one).
"""

from __future__ import annotations

from typing import ClassVar

from tokenwire.events import Error, ErrorCode

__all__ = [
    "ApiAuthError",
    "AuthenticationError",
    "BusUnavailableError",
    "ChatRequestError",
    "ConfigurationError",
    "ConversationNotFoundError",
    "InvalidRequestError",
    "LogUnavailableError",
    "OpenAIRequestError",
    "ProviderError",
    "PusherError",
    "PusherRequestError",
    "QueueUnavailableError",
    "RateLimitedError",
    "RequestTooLargeError",
    "ShuttingDownError",
    "StoreError",
    "StreamExpiredError",
    "StreamNotFoundError",
    "TokenwireError",
    "UnknownModelError",
]


class TokenwireError(Exception):
    """Root of every exception tokenwire raises on purpose."""

    http_status: ClassVar[int] = 422
    """The HTTP status the native API answers it with."""
    error_code: ClassVar[str] = "invalid_request"
    """A machine-readable code for the class (snake_case)."""
    public_message: ClassVar[str | None] = None
    """The fixed sentence a client sees, or ``None`` when the instance's own message
    (written for the client) is shown."""


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
        retry_after: seconds the provider asked to wait (its ``Retry-After``), or
            ``None``.
    """

    http_status = 502
    error_code = "provider_error"

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def event(self) -> Error:
        """The terminal ``error`` event that ends a stream this failure ends."""
        return Error(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            retry_after=self.retry_after,
        )


class UnknownModelError(TokenwireError):
    """The model name is not ``provider:model`` with a configured provider."""

    http_status = 422
    error_code = "unknown_model"


class InvalidRequestError(TokenwireError):
    """A request to start a generation is invalid (HTTP 422 naming the field; 400 on
    the OpenAI-compatible surface).

    Args:
        field: where, as the request spells it (``messages``, ``params.tokens``).
        message: what is wrong, for the caller (never an exception's text).
    """

    http_status = 422
    error_code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StreamNotFoundError(TokenwireError):
    """No stream with that id (HTTP 404)."""

    http_status = 404
    error_code = "stream_not_found"
    public_message = "stream not found"


class ConversationNotFoundError(TokenwireError):
    """No such conversation, or not the caller's (HTTP 404)."""

    http_status = 404
    error_code = "conversation_not_found"
    public_message = "conversation not found"


class AuthenticationError(TokenwireError):
    """The request carries no valid identity where one is needed (HTTP 401).

    Args:
        message: what is wrong, safe to show to the caller ("the bearer token has
            expired"); never a library's exception text.
        invalid_token: the request carried credentials and they are not valid
            (``WWW-Authenticate: Bearer error="invalid_token"``, RFC 6750 §3.1),
            as opposed to carrying none.
    """

    http_status = 401
    error_code = "unauthenticated"

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

    http_status = 410
    error_code = "stream_expired"
    public_message = "the stream's events have expired; the message is in the store"


class StoreError(TokenwireError):
    """The conversation store failed."""

    http_status = 503
    error_code = "store_error"
    public_message = "the conversation store is unavailable"


class LogUnavailableError(TokenwireError):
    """The stream log's backend (Redis) cannot be reached or failed (HTTP 503)."""

    http_status = 503
    error_code = "log_unavailable"
    public_message = "the stream log is unavailable"


class QueueUnavailableError(TokenwireError):
    """The job queue's Redis cannot be reached or failed (HTTP 503)."""

    http_status = 503
    error_code = "queue_unavailable"
    public_message = "the job queue is unavailable"


class BusUnavailableError(TokenwireError):
    """The Pusher nodes' bus (Redis) cannot be reached or failed (HTTP 503)."""

    http_status = 503
    error_code = "bus_unavailable"
    public_message = "the Pusher bus is unavailable"


class ConfigurationError(TokenwireError, ValueError):
    """A setting names something tokenwire cannot use (an unsupported log URL, a
    queue without Redis …); the message names the setting."""

    http_status = 422
    error_code = "configuration_error"


class ShuttingDownError(TokenwireError):
    """The instance is shutting down (SIGTERM): it starts no new generation (HTTP 503)."""

    http_status = 503
    error_code = "shutting_down"
    public_message = "the server is shutting down; try again"


class RateLimitedError(TokenwireError):
    """A limit refused a start (HTTP 429 with ``Retry-After``).

    Attributes:
        limit: which limit (:data:`tokenwire.engine.limits.Limit`; the ``limit`` label
            of ``tokenwire_rate_limited_total``).
        retry_after: whole seconds after which a retry may succeed (≥ 1).
        message: a sentence for the client.
    """

    http_status = 429
    error_code = "rate_limited"

    def __init__(self, limit: str, retry_after: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after = max(1, retry_after)
        self.message = message


class OpenAIRequestError(TokenwireError):
    """A request the OpenAI-compatible endpoint refuses (answered in OpenAI's error shape).

    Args:
        message: names the problem and the offending field.
        param: the request field at fault (``messages[1].content``), or ``None``.
        status: HTTP status: 400 (:attr:`http_status`), or 404 for an unknown model.
        code: OpenAI-style machine code (``model_not_found``, ``unsupported_parameter``…).
    """

    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = self.http_status if status is None else status
        self.code = code


class ChatRequestError(TokenwireError, ValueError):
    """The request body is not what the AI SDK's ``DefaultChatTransport`` sends (HTTP 422;
    a bad ``x-tokenwire-ai-sdk`` header is 400: :attr:`header`). The message names the
    field and is written for the client.
    """

    http_status = 422

    def __init__(self, message: str, *, header: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.header = header


class RequestTooLargeError(TokenwireError):
    """A request body larger than the server's ``max_request_bytes`` (HTTP 413).

    Args:
        limit: the limit, in bytes (named in the message).
    """

    http_status = 413
    error_code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class PusherRequestError(TokenwireError):
    """A request the Pusher auth endpoints or HTTP API refuse, answered
    ``{"error": message}`` with :attr:`status` (Pusher "HTTP API reference").

    Args:
        message: what is wrong, for the caller.
        status: HTTP status: 400 (:attr:`http_status`), 401 unauthenticated or a bad
            signature, 403 refused by an authorizer, 404 unknown app or conversation,
            413 event data over the app's ``max_message_size``.
    """

    http_status = 400
    error_code = "pusher_request"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = self.http_status if status is None else status


class ApiAuthError(PusherRequestError):
    """A Pusher HTTP API request whose signature, key, timestamp or ``body_md5`` does
    not hold (HTTP ``status``, 401); raised by
    :func:`tokenwire.protocol.pusher.verify_api_request`."""

    http_status = 401
    error_code = "pusher_signature"

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message, status=status)


class PusherError(TokenwireError):
    """A Pusher protocol error, reported to the client as a ``pusher:error`` frame
    (Pusher "Channels protocol", "Error codes"); never an HTTP answer (the 400 of
    the tree is nominal).

    Args:
        code: a :class:`tokenwire.protocol.pusher.ErrorCode` (4000-4399), or ``None``
            (the protocol makes it optional).
        message: human-readable text sent to the client.
        close: close the connection with ``code`` after the error frame.
    """

    http_status = 400
    error_code = "pusher_error"

    def __init__(self, code: int | None, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
