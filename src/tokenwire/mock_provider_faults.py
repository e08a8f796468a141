"""Faults of the mock provider: selection, provider error shapes, and replay.

The header contract itself is documented in :mod:`tokenwire.mock_provider`. This
module turns request headers into a :class:`Faults` value (sans-I/O), builds the
error bodies each provider API uses so the official SDKs raise their usual
exceptions, and sends a recorded body with the faults applied
(:class:`ReplayResponse`), keeping a :class:`RequestRecord` of how it ended.

Error shapes:

- OpenAI (Chat Completions and Responses), per the OpenAI API reference "Error
  codes": ``{"error": {"message", "type", "param", "code"}}``.
- Anthropic Messages, per the Anthropic API reference "Errors":
  ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
- Gemini, per the Gemini API "Troubleshooting" page (Google's ``google.rpc.Status``):
  ``{"error": {"code", "message", "status"}}`` (``RESOURCE_EXHAUSTED`` for 429 …).
- Ollama, per its API docs "Errors": ``{"error": "message"}``.

In-band errors (a failure after the 200 status line) follow each API's streaming
reference: a Chat Completions chunk ``data: {"error": {...}}`` (what the OpenAI SDK
checks for), the Responses ``error`` event, the Anthropic ``event: error``, a Gemini
``data: {"error": {...}}`` event, and an Ollama NDJSON line ``{"error": "…"}``.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenwire.protocol.sse import encode_sse

__all__ = [
    "ANTHROPIC_MESSAGES",
    "GEMINI",
    "OLLAMA_GENERATE",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "SERVED_APIS",
    "FaultHeaderError",
    "Faults",
    "Outcome",
    "ReplayResponse",
    "RequestRecord",
    "error_body",
    "error_headers",
    "inband_error_event",
    "parse_faults",
]

OPENAI_CHAT = "openai-chat"
OPENAI_RESPONSES = "openai-responses"
ANTHROPIC_MESSAGES = "anthropic-messages"
GEMINI = "gemini"
OLLAMA_GENERATE = "ollama-generate"
SERVED_APIS = (OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC_MESSAGES, GEMINI, OLLAMA_GENERATE)

# google.rpc.Code names Gemini answers with: HTTP status -> error.status.
_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Anthropic API reference, "Errors": HTTP status -> error.type.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# OpenAI API reference, "Error codes": HTTP status -> (error.type, error.code).
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "overloaded"),
    529: ("server_error", "overloaded"),
}

_STATUS_HEADER = "x-mock-status"
_CUT_HEADER = "x-mock-cut-after"
_STALL_HEADER = "x-mock-stall-after"
_INBAND_HEADER = "x-mock-inband-error"
_PACE_HEADER = "x-mock-pace-ms"
_TIMING_HEADER = "x-mock-timing"
_TAG_HEADER = "x-mock-tag"


class FaultHeaderError(ValueError):
    """An ``x-mock-*`` request header has an invalid value; answered with HTTP 400."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What one request asked the mock provider to do, parsed from its headers.

    Attributes:
        status: HTTP status (400-599) to answer instead of the stream; ``None``
            replays the recording.
        cut_after: events to send before closing the connection without ending the
            chunked body; ``None`` never cuts.
        stall_after: events to send before sending nothing more until the client
            goes away; ``None`` never stalls.
        inband_error_after: events to send before the API's in-band error event,
            after which the body ends cleanly; ``None`` sends no error.
        pace_ms: milliseconds between two events; ``None`` uses the app default.
        recorded_timing: replay the ``.reads.json`` timing of the recording.
        tag: the caller's free-form ``x-mock-tag``, ``None`` when absent.
    """

    status: int | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    inband_error_after: int | None = None
    pace_ms: float | None = None
    recorded_timing: bool = False
    tag: str | None = None

    @property
    def stop_after(self) -> int | None:
        """Events sent before the selected cut, stall or in-band error, if any."""
        for value in (self.cut_after, self.stall_after, self.inband_error_after):
            if value is not None:
                return value
        return None


def parse_faults(headers: Mapping[str, str]) -> Faults:
    """Read the ``x-mock-*`` headers of one request.

    Args:
        headers: request headers with lower-case names (Starlette's ``Headers`` is
            case-insensitive and fits).

    Returns:
        The selected faults; an empty :class:`Faults` when no header is set.

    Raises:
        FaultHeaderError: a value is not a number in its range, more than one of
            cut, stall and in-band error is selected, ``x-mock-timing`` is not
            ``recorded``, or it is set together with ``x-mock-pace-ms``.
    """
    status = _int_header(headers, _STATUS_HEADER)
    if status is not None and not 400 <= status <= 599:
        raise FaultHeaderError(f"{_STATUS_HEADER} must be an HTTP status from 400 to 599")
    stops = {
        name: _int_header(headers, name) for name in (_CUT_HEADER, _STALL_HEADER, _INBAND_HEADER)
    }
    if sum(value is not None for value in stops.values()) > 1:
        raise FaultHeaderError(f"at most one of {', '.join(stops)} may be set")
    pace_ms: float | None = None
    raw_pace = headers.get(_PACE_HEADER)
    if raw_pace is not None:
        try:
            pace_ms = float(raw_pace)
        except ValueError:
            pace_ms = math.nan
        if not (math.isfinite(pace_ms) and pace_ms >= 0):
            raise FaultHeaderError(f"{_PACE_HEADER} must be a number of milliseconds >= 0")
    timing = headers.get(_TIMING_HEADER)
    if timing is not None and timing.strip().lower() != "recorded":
        raise FaultHeaderError(f"{_TIMING_HEADER} accepts only the value 'recorded'")
    if timing is not None and pace_ms is not None:
        raise FaultHeaderError(f"{_PACE_HEADER} and {_TIMING_HEADER} exclude each other")
    return Faults(
        status=status,
        cut_after=stops[_CUT_HEADER],
        stall_after=stops[_STALL_HEADER],
        inband_error_after=stops[_INBAND_HEADER],
        pace_ms=pace_ms,
        recorded_timing=timing is not None,
        tag=headers.get(_TAG_HEADER),
    )


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise FaultHeaderError(f"{name} must be a whole number >= 0") from None
    if value < 0:
        raise FaultHeaderError(f"{name} must be a whole number >= 0")
    return value


def error_body(api: str, status: int, message: str, *, request_id: str) -> dict[str, object]:
    """The JSON error body an API answers with an HTTP error status.

    Args:
        api: one of :data:`SERVED_APIS`; anything else gets the OpenAI shape.
        status: the HTTP status of the answer.
        message: the human-readable ``error.message``.
        request_id: the mock's request id, echoed as Anthropic's ``request_id``.

    Returns:
        A JSON-serialisable dict.
    """
    if api == ANTHROPIC_MESSAGES:
        kind = _ANTHROPIC_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }
    if api == GEMINI:
        name = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": name}}
    if api == OLLAMA_GENERATE:
        return {"error": message}
    kind, code = _OPENAI_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_headers(status: int) -> dict[str, str]:
    """Extra response headers for an HTTP error status: ``retry-after: 1`` on 429."""
    return {"retry-after": "1"} if status == 429 else {}


def inband_error_event(api: str, *, sequence_number: int) -> bytes:
    """One SSE event reporting a failure in the API's own streaming format.

    Args:
        api: one of :data:`SERVED_APIS`.
        sequence_number: the Responses event's ``sequence_number`` (the number of
            events sent before it); ignored by the other APIs.

    Returns:
        The event's bytes, ending in a blank line.
    """
    message = "Overloaded (injected by x-mock-inband-error)"
    payload: dict[str, object]
    if api == ANTHROPIC_MESSAGES:
        payload = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return encode_sse(_compact(payload), event="error")
    if api == OPENAI_RESPONSES:
        payload = {
            "type": "error",
            "code": "server_error",
            "message": message,
            "param": None,
            "sequence_number": sequence_number,
        }
        return encode_sse(_compact(payload), event="error")
    if api == GEMINI:
        payload = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
        return encode_sse(_compact(payload))
    if api == OLLAMA_GENERATE:
        return _compact({"error": message}) + b"\n"
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return encode_sse(_compact(payload))


def _compact(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class Outcome(enum.StrEnum):
    """How a request ended; transitions are checked in :meth:`RequestRecord.move`."""

    RECEIVED = "received"  # being validated, nothing answered yet
    REJECTED = "rejected"  # answered with an HTTP error status (``status``), no stream
    STREAMING = "streaming"  # status line sent, events being sent
    STALLING = "stalling"  # x-mock-stall-after reached, waiting for the client to leave
    COMPLETED = "completed"  # every event sent and the body ended
    INBAND_ERROR = "inband_error"  # the in-band error sent and the body ended
    CUT = "cut"  # x-mock-cut-after: connection closed in the middle of the body
    CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the end


_TRANSITIONS: dict[Outcome, frozenset[Outcome]] = {
    Outcome.RECEIVED: frozenset({Outcome.REJECTED, Outcome.STREAMING}),
    Outcome.STREAMING: frozenset(
        {
            Outcome.STALLING,
            Outcome.COMPLETED,
            Outcome.INBAND_ERROR,
            Outcome.CUT,
            Outcome.CLIENT_DISCONNECTED,
        }
    ),
    Outcome.STALLING: frozenset({Outcome.CLIENT_DISCONNECTED}),
}


@dataclass(slots=True)
class RequestRecord:
    """What the mock provider did with one API request (see ``GET /_mock/requests``)."""

    id: int
    path: str
    api: str
    headers: dict[str, str]
    tag: str | None = None
    model: str | None = None
    status: int | None = None
    outcome: Outcome = Outcome.RECEIVED
    events_sent: int = 0
    events_total: int = 0
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    def move(self, outcome: Outcome) -> bool:
        """Change ``outcome`` if the lifecycle allows it.

        Args:
            outcome: the new state.

        Returns:
            Whether it changed: a request that already ended keeps its outcome.
        """
        if outcome not in _TRANSITIONS.get(self.outcome, frozenset()):
            return False
        self.outcome = outcome
        if outcome not in _TRANSITIONS:
            self.ended_at = time.time()
        return True

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object ``GET /_mock/requests`` lists."""
        return {
            "id": self.id,
            "tag": self.tag,
            "path": self.path,
            "api": self.api,
            "model": self.model,
            "status": self.status,
            "outcome": self.outcome.value,
            "events_sent": self.events_sent,
            "events_total": self.events_total,
            "headers": self.headers,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class _Cut(Exception):
    """Raised by the body iterator to close the connection mid-body."""


class ReplayResponse(StreamingResponse):
    """A recorded body sent one network write per chunk, with the faults applied.

    The outcome and the number of chunks sent go to ``record``; a task watches
    ``receive`` for the client leaving, which cancels pacing and stalls at once.

    Args:
        chunks: the units to send (events, or recorded reads).
        gaps: seconds to wait before each chunk; 0 yields to the event loop only.
        faults: the request's faults; ``status`` is ignored here.
        record: the request's record (its ``api`` selects the in-band error).
        status: the HTTP status of the answer.
        headers: response headers, including ``content-type``.
    """

    def __init__(
        self,
        *,
        chunks: tuple[bytes, ...],
        gaps: tuple[float, ...],
        faults: Faults,
        record: RequestRecord,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self._chunks, self._gaps, self._faults, self._record = chunks, gaps, faults, record
        stop = faults.stop_after
        self._stop = len(chunks) if stop is None else min(stop, len(chunks))
        super().__init__(self._paced(), status_code=status, headers=headers)

    async def _paced(self) -> AsyncIterator[bytes]:
        for chunk, gap in zip(self._chunks[: self._stop], self._gaps, strict=False):
            if gap > 0:
                await anyio.sleep(gap)
            else:
                await anyio.lowlevel.checkpoint()
            yield chunk
        if self._faults.cut_after is not None:
            raise _Cut
        if self._faults.stall_after is not None:
            self._record.move(Outcome.STALLING)
            await anyio.sleep_forever()
        if self._faults.inband_error_after is not None:
            yield inband_error_event(self._record.api, sequence_number=self._stop)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            assert isinstance(chunk, bytes)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self._record.events_sent < self._stop:
                self._record.events_sent += 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self._record
        record.move(Outcome.STREAMING)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch_disconnect, receive, tasks.cancel_scope)
            try:
                await self.stream_response(send)
            except _Cut:
                # Returning without the last chunk makes the server drop the connection.
                record.move(Outcome.CUT)
            except OSError:  # ASGI spec 2.4 servers raise on a send after a disconnect
                record.move(Outcome.CLIENT_DISCONNECTED)
            else:
                ended = (
                    Outcome.INBAND_ERROR
                    if self._faults.inband_error_after is not None
                    else Outcome.COMPLETED
                )
                record.move(ended)
            tasks.cancel_scope.cancel()

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # A no-op after a normal end: the outcome was set right after the last send.
        self._record.move(Outcome.CLIENT_DISCONNECTED)
        scope.cancel()
