"""tokenwire: one LLM generation becomes one durable, numbered, resumable,
cancellable event stream, served over SSE and more (see DESIGN.md)."""

import importlib as _importlib
import typing as _typing

from tokenwire.errors import (
    AuthenticationError,
    ConversationNotFoundError,
    InvalidRequestError,
    LogUnavailableError,
    ProviderError,
    ShuttingDownError,
    StoreError,
    StreamExpiredError,
    StreamNotFoundError,
    TokenwireError,
    UnknownModelError,
)
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Source,
    Start,
    StepFinish,
    StepStart,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
    decode_event,
    encode_event,
)

if _typing.TYPE_CHECKING:
    from tokenwire.engine import Identity, Stream, Tokenwire
    from tokenwire.providers import GenerationRequest, Message, Provider, ProviderRegistry
    from tokenwire.server.app import create_app
    from tokenwire.settings import Settings
    from tokenwire.tools import Tool, ToolRegistry

_LAZY = {
    "GenerationRequest": "tokenwire.providers",
    "Identity": "tokenwire.engine",
    "Message": "tokenwire.providers",
    "Provider": "tokenwire.providers",
    "ProviderRegistry": "tokenwire.providers",
    "Settings": "tokenwire.settings",
    "Stream": "tokenwire.engine",
    "Tokenwire": "tokenwire.engine",
    "Tool": "tokenwire.tools",
    "ToolRegistry": "tokenwire.tools",
    "create_app": "tokenwire.server.app",
}
"""Names imported on first use (PEP 562), so that ``import tokenwire.events`` or
``tokenwire.protocol.*`` loads no web framework, database driver, Redis client or
provider SDK (``tests/test_public_api.py`` checks it)."""


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenwire' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AuthenticationError",
    "Cancelled",
    "ConversationNotFoundError",
    "Error",
    "Event",
    "Finish",
    "GenerationRequest",
    "Identity",
    "InvalidRequestError",
    "LogUnavailableError",
    "Message",
    "Provider",
    "ProviderError",
    "ProviderRegistry",
    "ReasoningDelta",
    "Settings",
    "ShuttingDownError",
    "Source",
    "Start",
    "StepFinish",
    "StepStart",
    "StoreError",
    "Stream",
    "StreamExpiredError",
    "StreamNotFoundError",
    "TextDelta",
    "TokenUsage",
    "Tokenwire",
    "TokenwireError",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolRegistry",
    "ToolResult",
    "UnknownModelError",
    "Usage",
    "create_app",
    "decode_event",
    "encode_event",
]
