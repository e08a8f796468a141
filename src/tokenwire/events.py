"""The event union: every stream is an ordered list of these (DESIGN §2, a contract).

Each event is a frozen :class:`msgspec.Struct` tagged on ``type``; on the wire it is
a JSON object with ``type`` and ``seq`` (1, 2, 3 … per stream, no gaps). ``seq`` is
0 until the stream log assigns it on append.

Events are not tracked by the cyclic garbage collector (``gc=False``: they hold
only strings, numbers and JSON values, so they cannot form cycles); a log holding
millions of them then costs no collector time.

Exactly one *terminal* event (:class:`Finish`, :class:`Error` or :class:`Cancelled`)
ends every stream. New fields are always added with defaults (msgspec "Schema
Evolution"), so older readers keep decoding newer streams.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal

import msgspec

__all__ = [
    "TERMINAL_TYPES",
    "Cancelled",
    "Error",
    "ErrorCode",
    "Event",
    "Finish",
    "FinishReason",
    "MessageStatus",
    "ReasoningDelta",
    "Source",
    "Start",
    "StepFinish",
    "StepStart",
    "StreamStatus",
    "TextDelta",
    "TokenUsage",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolResult",
    "Usage",
    "decode_event",
    "encode_event",
    "is_terminal",
    "outcome",
    "with_seq",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
ErrorCode = Literal[
    "provider_error",
    "provider_overloaded",
    "provider_rate_limited",
    "provider_timeout",
    "producer_lost",
    "invalid_request",
    "stream_timeout",
    "internal_error",
]


class _Base(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    seq: int = 0
    """Position in the stream, assigned by the log: 1 for the first event."""


class Start(_Base, tag="start", frozen=True):
    """Always the first event of a stream."""

    stream_id: str
    message_id: str
    conversation_id: str
    model: str
    created_at: float
    """Unix time in seconds."""


class TextDelta(_Base, tag="text-delta", frozen=True):
    part: int
    delta: str
    refusal: bool | msgspec.UnsetType = msgspec.UNSET
    """``True`` on the text of a model's refusal (OpenAI's ``delta.refusal``, the
    Responses API's ``response.refusal.delta``); absent from the JSON otherwise. The
    text is still the message's text."""


class ReasoningDelta(_Base, tag="reasoning-delta", frozen=True):
    """Thinking, reasoning summary or ``reasoning_content``: whatever the provider calls it."""

    part: int
    delta: str


class ToolCallStart(_Base, tag="tool-call-start", frozen=True):
    part: int
    tool_call_id: str
    name: str
    provider_executed: bool = False


class ToolCallDelta(_Base, tag="tool-call-delta", frozen=True):
    """Raw argument text as it arrives; the concatenation is the JSON arguments."""

    part: int
    tool_call_id: str
    delta: str


class ToolCall(_Base, tag="tool-call", frozen=True):
    """A complete tool call.

    When the provider's argument text is not valid JSON (or not an object),
    ``arguments`` is ``None``, ``arguments_text`` holds the text and ``invalid`` is true.
    """

    part: int
    tool_call_id: str
    name: str
    arguments: dict[str, object] | None
    provider_executed: bool = False
    arguments_text: str | None = None
    invalid: bool = False


class ToolResult(_Base, tag="tool-result", frozen=True):
    """The output of a tool that tokenwire ran (a server-side tool, issue #13).

    ``tool_call_id`` names the :class:`ToolCall` it answers; ``output`` is the tool's
    return value as JSON; ``is_error`` is true when the tool raised or timed out, and
    ``output`` is then a message written for the model (never our exception text).
    """

    part: int
    tool_call_id: str
    output: object = None
    is_error: bool = False


class StepStart(_Base, tag="step-start", frozen=True):
    """One model call of an agent loop begins; ``step`` counts from 1.

    A stream without tools has no step events: its single model call is implied.
    """

    step: int = 1


class StepFinish(_Base, tag="step-finish", frozen=True):
    """One model call of an agent loop ended; ``usage`` is that step's own tokens."""

    step: int = 1
    finish_reason: FinishReason = "stop"
    usage: TokenUsage | None = None


class Source(_Base, tag="source", frozen=True):
    """A citation (web search result)."""

    part: int
    url: str
    title: str | None = None


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts, cumulative for the generation."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0


class Usage(_Base, tag="usage", frozen=True):
    """Cumulative token counts; may repeat, the last one wins."""

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0

    def as_token_usage(self) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cached_input_tokens=self.cached_input_tokens,
        )


class Finish(_Base, tag="finish", frozen=True):
    """Terminal: the model finished."""

    finish_reason: FinishReason
    provider_finish_reason: str | None = None
    usage: TokenUsage | None = None
    model: str | msgspec.UnsetType = msgspec.UNSET
    """The ``provider:model`` that answered, set only when the request named fallback
    models (:mod:`tokenwire.providers.fallback`); absent from the JSON otherwise."""


class Error(_Base, tag="error", frozen=True):
    """Terminal: the generation failed. ``message`` never carries our exception text."""

    code: ErrorCode
    message: str
    retryable: bool = False
    retry_after: float | None = None
    """Seconds the provider asked to wait before a retry (its ``Retry-After``), or
    ``None`` when it said nothing."""


class Cancelled(_Base, tag="cancelled", frozen=True):
    """Terminal: stopped by a user (``user``), a newer message (``superseded``) or
    because no reader was left (``abandoned``)."""

    reason: str


Event = (
    Start
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | ToolCall
    | ToolResult
    | StepStart
    | StepFinish
    | Source
    | Usage
    | Finish
    | Error
    | Cancelled
)

TERMINAL_TYPES = frozenset({"finish", "error", "cancelled"})

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Return the event as compact JSON bytes (``type`` first)."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Decode one event from JSON.

    Raises:
        msgspec.ValidationError: the JSON is not a known event.
        msgspec.DecodeError: the input is not JSON.
    """
    return _decoder.decode(data)


class StreamStatus(StrEnum):
    """A stream's lifecycle in the log: ``running`` until its terminal event is
    appended, then the outcome that event names (JSON: the plain string)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class MessageStatus(StrEnum):
    """An assistant message's lifecycle (``messages.status``): ``pending`` until the
    stream's ``start``, ``streaming`` until its terminal event, then the outcome.

    The allowed transitions are checked in one place, :meth:`then`.
    """

    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """``completed``, ``failed`` or ``cancelled``: no transition leaves it."""
        return self not in (MessageStatus.PENDING, MessageStatus.STREAMING)

    def then(self, new: MessageStatus) -> MessageStatus:
        """The status after a transition to ``new``: forward only, ``pending`` ->
        ``streaming`` -> an outcome. A status may repeat (an event applied twice), and
        an outcome may be replaced by another: the log keeps the first terminal event,
        and a local fold (the producer's) may have seen its own first.

        Raises:
            ValueError: ``new`` goes back (to ``pending``, or from an outcome to
                ``streaming``).
        """
        if new is self or new.is_final or (new is MessageStatus.STREAMING and not self.is_final):
            return new
        raise ValueError(f"a message cannot go from {self.value} to {new.value}")


_OUTCOMES: Final[dict[type[Event], StreamStatus]] = {
    Finish: StreamStatus.COMPLETED,
    Error: StreamStatus.FAILED,
    Cancelled: StreamStatus.CANCELLED,
}


def outcome(event: Event) -> StreamStatus:
    """The status a terminal event ends its stream (and message) with.

    Raises:
        KeyError: ``event`` is not terminal.
    """
    return _OUTCOMES[type(event)]


def is_terminal(event: Event) -> bool:
    """True for :class:`Finish`, :class:`Error` and :class:`Cancelled`.

    A lookup of the event's class (the union is closed: no event class has
    subclasses): ``isinstance`` against the three classes cost a text delta about
    0.6 us, three failed checks through msgspec's ``StructMeta``, and the log asks
    this once per appended event."""
    return type(event) in _OUTCOMES


def with_seq(event: Event, seq: int) -> Event:
    """Return a copy of ``event`` numbered ``seq`` (events are frozen)."""
    return msgspec.structs.replace(event, seq=seq)
