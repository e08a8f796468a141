"""Server-Sent Events framing, sans-I/O.

Encoding follows DESIGN §3 (a contract): every event is framed as
``id: <seq>\\nevent: <type>\\ndata: <json>\\n\\n``; a heartbeat is the comment
``: ping\\n\\n``.

Decoding follows the HTML Living Standard, "Server-sent events", section
"Interpreting an event stream": lines end in CRLF, LF or CR; a line starting with
``:`` is a comment; ``data`` lines are joined with ``\\n``; one leading space after
the colon is dropped; a blank line dispatches the event; an event with no ``data``
is not dispatched. One deliberate deviation: comments are reported as
:class:`ServerSentEvent` with ``comment`` set, so callers can observe keep-alives.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tokenwire.events import Event, encode_event

__all__ = [
    "DONE",
    "HEARTBEAT",
    "MAX_SEQ",
    "NATIVE",
    "RETRY_MS",
    "EventEncoder",
    "NativeEncoder",
    "SSEDecoder",
    "ServerSentEvent",
    "encode_retry",
    "encode_sse",
    "frame_events",
    "parse_last_event_id",
]

HEARTBEAT = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
"""The last frame of the OpenAI-compatible and AI SDK streams (``data: [DONE]``)."""
RETRY_MS = 1000
"""The reconnection time the native stream asks for, milliseconds (sent once, first)."""
MAX_SEQ = 2**53 - 1
"""Largest sequence number a client may name (``Last-Event-ID``, ``?after=``): the
largest integer JSON numbers carry exactly."""


def parse_last_event_id(value: str | None) -> int | None:
    """The sequence number a ``Last-Event-ID`` header names (the ``id:`` of the last
    event the client saw; events with ``seq >`` it are to be sent).

    Args:
        value: the header's value; ``None`` or blank = no header.

    Returns:
        The number, or ``None`` when there is no (or a blank) header.

    Raises:
        ValueError: not ASCII digits, or above :data:`MAX_SEQ` (our message, for a 400).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 16 or int(text) > MAX_SEQ:
        raise ValueError(f"Last-Event-ID must be a sequence number from 0 to {MAX_SEQ}")
    return int(text)


def encode_sse(
    data: bytes, *, event: str | bytes | None = None, id: int | str | None = None
) -> bytes:
    """Frame one event: the SSE framer of every tokenwire stream (native, AI SDK,
    OpenAI-compatible; :func:`frame_events` inlines its format for the native
    events). One ``%`` format per frame, no intermediate list.

    Args:
        data: the payload; must not contain a line break (compact JSON never does).
        event: the ``event:`` field (``str`` or ASCII ``bytes``), omitted when ``None``.
        id: the ``id:`` field, omitted when ``None``.

    Returns:
        The frame, ending in a blank line.

    Raises:
        ValueError: ``data``, ``event`` or ``id`` contains ``\\r`` or ``\\n``.
    """
    if 10 in data or 13 in data:  # LF, CR (an int membership test is the fast one)
        raise ValueError(_BREAKS)
    if event is None:
        if id is None:
            return b"data: %s\n\n" % data
        return b"id: %s\ndata: %s\n\n" % (_id(id), data)
    name = event if type(event) is bytes else str(event).encode()
    if 10 in name or 13 in name:
        raise ValueError(_BREAKS)
    if id is None:
        return b"event: %s\ndata: %s\n\n" % (name, data)
    if type(id) is int:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (id, name, data)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (_id(id), name, data)


_BREAKS = "SSE field values must not contain line breaks"


def encode_retry(milliseconds: int) -> bytes:
    """The ``retry: <ms>\\n\\n`` block: sets the client's reconnection time (HTML Living
    Standard, "Server-sent events", the ``retry`` field; ``EventSource`` defaults to a
    few seconds). The blank line dispatches no event (the data buffer is empty).

    Raises:
        ValueError: ``milliseconds`` is negative.
    """
    if milliseconds < 0:
        raise ValueError("retry must be a whole number of milliseconds >= 0")
    return b"retry: %d\n\n" % milliseconds


class EventEncoder(Protocol):
    """One wire format's framing of a stream's events, for one response: the native
    SSE format (:class:`NativeEncoder`), the AI SDK's UI message stream
    (:class:`~tokenwire.protocol.aisdk.UIMessageStreamEncoder`) and OpenAI's chat
    completion chunks (:class:`~tokenwire.protocol.openai_compat.ChunkEncoder`).
    An encoder may keep state across calls (open parts, tool calls)."""

    def frame(self, events: Sequence[Event]) -> bytes:
        """The bytes to send for ``events``, the next ones of the stream (possibly
        empty); after the terminal event, the format's trailer (``[DONE]``) too."""
        ...


class NativeEncoder:
    """The native format (DESIGN §3): :func:`frame_events`; it keeps no state."""

    def frame(self, events: Sequence[Event]) -> bytes:
        """:func:`frame_events` of ``events``."""
        return frame_events(events)


NATIVE = NativeEncoder()
"""The native encoder (stateless, shared)."""
_TAGS: dict[type, bytes] = {}


def frame_events(events: Sequence[Event]) -> bytes:
    """SSE frames for ``events``, concatenated (byte-exact to DESIGN §3): ``id: <seq>``,
    ``event: <type>``, ``data: <event JSON>``, the frames :func:`encode_sse` makes.

    One ``%`` format per event, inlined rather than a call to :func:`encode_sse`
    (this is the per-event hot path, issue #11): its line-break checks cannot fail
    here, since ``seq`` is an int, the type tags are our own names, and msgspec's
    compact JSON escapes every control character inside strings.
    """
    tags = _TAGS
    return b"".join(
        [
            b"id: %d\nevent: %s\ndata: %s\n\n"
            % (e.seq, tags.get(type(e)) or _tag(type(e)), encode_event(e))
            for e in events
        ]
    )


def _tag(cls: type) -> bytes:
    tag = _TAGS[cls] = str(cls.__struct_config__.tag).encode()  # type: ignore[attr-defined]
    return tag


def _id(id: int | str) -> bytes:
    return b"%d" % id if isinstance(id, int) else _field(id.encode())


def _field(value: bytes) -> bytes:
    if 10 in value or 13 in value:  # LF, CR: byte membership by int is ~10x faster
        raise ValueError(_BREAKS)
    return value


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event, or a comment line when ``comment`` is not ``None``."""

    data: str = ""
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    comment: str | None = None


class SSEDecoder:
    """Incremental decoder: ``decode(chunk) -> list[ServerSentEvent]`` plus ``flush()``.

    Survives any split of the input, including a CRLF pair or a multi-byte UTF-8
    character across two chunks. ``last_event_id`` keeps the last ``id`` seen, as a
    browser's ``EventSource`` does.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id: str | None = None

    def decode(self, chunk: bytes) -> list[ServerSentEvent]:
        """Feed bytes; return the events completed by them."""
        return self._feed(self._utf8.decode(chunk))

    def flush(self) -> list[ServerSentEvent]:
        """End of input: a trailing event without its blank line is discarded (spec)."""
        out = self._feed(self._utf8.decode(b"", final=True))
        if self._buffer:
            out.extend(self._line(self._buffer))
            self._buffer = ""
        self._data, self._event, self._id, self._retry = [], "", None, None
        return out

    def _feed(self, text: str) -> list[ServerSentEvent]:
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        out: list[ServerSentEvent] = []
        buffer = self._buffer + text
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 or (lf != -1 and lf < cr) else cr
            out.extend(self._line(buffer[start:end]))
            if buffer[end] == "\r":
                if end + 1 == length:
                    self._pending_cr = True
                elif buffer[end + 1] == "\n":
                    end += 1
            start = end + 1
        self._buffer = buffer[start:]
        return out

    def _line(self, line: str) -> list[ServerSentEvent]:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return [ServerSentEvent(comment=line[1:].removeprefix(" "))]
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return []

    def _dispatch(self) -> list[ServerSentEvent]:
        if not self._data:
            self._event, self._retry = "", None
            return []
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._data, self._event, self._retry = [], "", None
        return [event]
