"""Log lines that carry request and stream ids; JSON with ``TOKENWIRE_LOG_FORMAT=json``.

Two context variables follow the work: :data:`request_id` (set by
:class:`RequestIdMiddleware` for each HTTP request, from its
``x-request-id`` header or a new one) and :data:`stream_id` (set where a stream
starts and where a producer runs it). A generation's task is created inside the
request that started it, so its log lines carry that request's id too. A
:class:`ContextFilter` on the handler copies both onto every record.

``TOKENWIRE_LOG_FORMAT=json`` (``tokenwire serve``, ``tokenwire worker``) writes one
JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
``request_id`` and ``stream_id`` (when known), ``exception`` (the traceback text,
when there is one), and for uvicorn's access log ``client``, ``method``, ``path``,
``status``. The default ``text`` format is the usual
``LEVEL logger: message`` with ``[request_id stream_id]`` when known.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # annotations only: the engine imports this module
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "RequestIdMiddleware",
    "configure",
    "request_id",
    "stream_id",
    "uvicorn_log_config",
]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokenwire_request_id", default=None
)
"""The id of the HTTP request (or WebSocket) being served, or ``None``."""
stream_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokenwire_stream_id", default=None
)
"""The stream being started or produced, or ``None``."""

_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
"""What an incoming ``x-request-id`` may be; anything else is replaced by a new id."""
_HEADER = b"x-request-id"


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``stream_id`` (or ``None``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "stream_id"):
            record.stream_id = stream_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [request_id stream_id]``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [getattr(record, "request_id", None), getattr(record, "stream_id", None)]
        if any(ids):
            text += " [" + " ".join(i or "-" for i in ids) + "]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record (fields in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "stream_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            args = record.args
            if len(args) == 5:
                entry.update(client=args[0], method=args[1], path=args[2], status=args[4])
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exception"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(fmt: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: Literal["text", "json"]) -> None:
    """Log to stderr at ``level`` in format ``fmt``, with the ids (replaces the root
    logger's handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_log_config(fmt: Literal["text", "json"]) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: ``None`` for text (uvicorn's own colours), else its
    loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) through the root
    logger's JSON handler."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }


class RequestIdMiddleware:
    """ASGI middleware: the request's id from ``x-request-id`` (when it is 1-128 of
    ``A-Za-z0-9._:/+=-``) or a new one (32 hex digits), set in :data:`request_id`
    for everything the request does and echoed in the response's ``x-request-id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # WebSockets: no extra frame per connection
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(_HEADER, b"").decode("latin-1")
        rid = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        header = (_HEADER, rid.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
