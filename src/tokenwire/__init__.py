"""tokenwire: one LLM generation becomes one durable, numbered, resumable,
cancellable event stream, served over SSE and more (see DESIGN.md)."""

from tokenwire.errors import (
    AuthenticationError,
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
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    decode_event,
    encode_event,
)
from tokenwire.providers import GenerationRequest, Message, Provider, ProviderRegistry
from tokenwire.server.app import create_app
from tokenwire.server.identity import Identity
from tokenwire.server.tokenwire import ConversationNotFoundError, Stream, Tokenwire
from tokenwire.settings import Settings

__all__ = [
    "AuthenticationError",
    "Cancelled",
    "ConversationNotFoundError",
    "Error",
    "Event",
    "Finish",
    "GenerationRequest",
    "Identity",
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
    "StoreError",
    "Stream",
    "StreamExpiredError",
    "StreamNotFoundError",
    "TextDelta",
    "TokenUsage",
    "Tokenwire",
    "TokenwireError",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStart",
    "UnknownModelError",
    "Usage",
    "create_app",
    "decode_event",
    "encode_event",
]
