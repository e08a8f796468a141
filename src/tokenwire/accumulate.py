"""Fold a stream's events into the message they describe (sans-I/O).

Used for polling snapshots, for the stored message's ``parts`` and by
``Stream.text`` and friends. Parts keep the order of their ``part`` index.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import msgspec

from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    MessageStatus,
    ReasoningDelta,
    Source,
    Start,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
)

__all__ = ["MessageSink", "MessageState", "PartsGrowth"]


class PartsGrowth(msgspec.Struct, frozen=True):
    """A streaming message's content as it grew since it was last written
    (:meth:`MessageState.take_growth`), for a store that keeps what was written
    before: the producer then never holds the whole text of an answer.

    Attributes:
        parts: every part in order (as :meth:`MessageState.parts_list`), except that
            in a continued part the growing field holds only the text that came after
            the written one.
        continued: position in ``parts`` → ``(position in the written parts, field)``:
            that part continues the written one, its ``field`` (``text``, or a tool
            call's ``arguments_text``) to be appended to the written field's text.
            Empty: ``parts`` is the whole content.
    """

    parts: list[dict[str, Any]]
    continued: dict[int, tuple[int, str]] = {}

    def onto(self, written: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The whole content: ``parts`` with each continued field prefixed by that
        field of ``written`` (the parts stored at the last write; a missing part or
        field counts as empty text). ``parts`` itself is left as it is."""
        parts = list(self.parts)
        for i, (j, field) in self.continued.items():
            before = written[j].get(field, "") if j < len(written) else ""
            parts[i] = {
                **parts[i],
                field: (before if isinstance(before, str) else "") + parts[i].get(field, ""),
            }
        return parts


class MessageSink(Protocol):
    """Where the producer writes assistant messages (the store)."""

    async def update_message(
        self,
        message_id: str,
        *,
        parts: list[dict[str, object]] | None = None,
        grown: PartsGrowth | None = None,
        status: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        error: dict[str, object] | None = None,
        cost: dict[str, object] | None = None,
    ) -> None: ...

    async def checkpoint_messages(self, grown_by_id: dict[str, PartsGrowth]) -> None: ...


_JOIN_EVERY = 64
"""Held deltas of a part joined into one block (a delta's text is copied into its
block, then once at each read of the part)."""


class MessageState:
    """The message as known after the events applied so far.

    Attributes:
        status: ``pending`` before ``start``, ``streaming``, then ``completed``,
            ``failed`` or ``cancelled`` after the terminal event.
        last_seq: ``seq`` of the last event applied (0 before any).
    """

    _taken: dict[int, tuple[int, dict[str, Any], str]] = {}
    """Parts whose growing field :meth:`take_growth` emptied: part index → its position
    in the taken parts, its entry, the field (this empty class default, never changed
    in place, until the first take: most states never take)."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, Any]] = {}
        self._pieces: dict[int, tuple[dict[str, Any], str, list[str], list[str]]] = {}
        """Parts as they grow: the part's entry, the field that grows (``text``, or a
        tool call's ``arguments_text``), its blocks (every ``_JOIN_EVERY`` deltas
        joined into one) and its deltas since, joined into the field only when read
        (``+=`` on a dict value copies the whole string each time: quadratic in the
        length of an answer or of a tool call's arguments)."""
        self.usage: TokenUsage | None = None
        self.finish_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.cancel_reason: str | None = None
        self.status = MessageStatus.PENDING
        self.last_seq = 0
        self.start: Start | None = None

    def apply(self, event: Event) -> None:
        """Fold one event in."""
        if event.seq > self.last_seq:
            self.last_seq = event.seq
        # The many first, without a ``match``: its class patterns made a text delta
        # cost 1.46 us to fold instead of 0.42 (docs/performance.md, "Stalls").
        if isinstance(event, TextDelta):
            self._append(event.part, "text", event.delta)
            return
        if isinstance(event, ReasoningDelta):
            self._append(event.part, "reasoning", event.delta)
            return
        if isinstance(event, ToolCallDelta):
            part = event.part
            if part not in self.parts:
                self.parts[part] = _tool_part(event.tool_call_id, "", event)
            self._grow(part, "arguments_text", event.delta)
            return
        match event:
            case Start():
                self.start = event
                self.status = self.status.then(MessageStatus.STREAMING)
            case ToolCallStart():
                self.parts[event.part] = _tool_part(event.tool_call_id, event.name, event)
            case ToolCall():
                entry = _tool_part(event.tool_call_id, event.name, event)
                entry["arguments"] = event.arguments
                if event.invalid:
                    entry["arguments_text"] = event.arguments_text
                    entry["invalid"] = True
                self.parts[event.part] = entry
            case ToolResult():
                self.parts[event.part] = self._tool_result(event)
            case Source():
                self.parts[event.part] = {"type": "source", "url": event.url, "title": event.title}
            case Usage():
                self.usage = event.as_token_usage()
            case Finish():
                self.status = self.status.then(MessageStatus.COMPLETED)
                self.finish_reason = event.finish_reason
                if event.usage is not None:
                    self.usage = event.usage
            case Error():
                self.status = self.status.then(MessageStatus.FAILED)
                self.error = {"code": event.code, "message": event.message}
            case Cancelled():
                self.status = self.status.then(MessageStatus.CANCELLED)
                self.cancel_reason = event.reason

    def _tool_result(self, event: ToolResult) -> dict[str, Any]:
        """``{type: "tool-result", tool_call_id, name, output, is_error}`` (``name``
        from the call it answers)."""
        call = next((p for p in self.tool_calls if p["tool_call_id"] == event.tool_call_id), {})
        return {
            "type": "tool-result",
            "tool_call_id": event.tool_call_id,
            "name": call.get("name", ""),
            "output": event.output,
            "is_error": event.is_error,
        }

    def stop_error(self) -> dict[str, object] | None:
        """What the store keeps of a stop in the message's ``error`` field: ``{"code":
        "cancelled", "reason": …, "message": …}`` (``reason`` as in the ``cancelled``
        event: ``user``, ``superseded``, ``abandoned``, ``shutdown`` …); ``None`` unless
        the message was cancelled."""
        if self.status != "cancelled":
            return None
        reason = self.cancel_reason or "user"
        message = f"the generation was stopped ({reason})"
        return {"code": "cancelled", "reason": reason, "message": message}

    def _append(self, part: int, kind: str, delta: str) -> None:
        if part not in self.parts:
            self.parts[part] = {"type": kind, "text": ""}
        self._grow(part, "text", delta)

    def _grow(self, part: int, field: str, delta: str) -> None:
        """Hold ``delta`` for ``self.parts[part][field]``: a string object per delta
        costs ~50 bytes besides its text (and the log no longer keeps them once it
        packed its old events), so every ``_JOIN_EVERY`` deltas become one block. A
        block is never joined into a longer one before a read: a text that grows by
        reallocation leaves holes behind in the heap of a process holding many."""
        held = self._pieces.get(part)
        entry = self.parts[part]
        if held is None or entry is not held[0] or field != held[1]:
            held = self._pieces[part] = (entry, field, [entry.get(field, "")], [])
        pieces = held[3]
        pieces.append(delta)
        if len(pieces) >= _JOIN_EVERY:
            held[2].append("".join(pieces))
            pieces.clear()

    def copy(self) -> MessageState:
        """A deep copy (the held deltas joined first: a list of thousands of deltas
        is slow to deep-copy)."""
        self._settle()
        return copy.deepcopy(self)

    def _settle(self) -> None:
        """Join the deltas held since the last read into their parts' ``text``."""
        for entry, field, blocks, pieces in self._pieces.values():
            if pieces or len(blocks) > 1:
                blocks[:] = ["".join([*blocks, *pieces])]
                pieces.clear()
                entry[field] = blocks[0]

    def _joined(self, kind: str) -> str:
        self._settle()
        return "".join(p["text"] for _, p in sorted(self.parts.items()) if p["type"] == kind)

    @property
    def text(self) -> str:
        """All text parts, concatenated."""
        return self._joined("text")

    @property
    def reasoning(self) -> str:
        """All reasoning parts, concatenated."""
        return self._joined("reasoning")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool-call parts: ``{type, tool_call_id, name, arguments?, arguments_text?, …}``."""
        self._settle()
        return [p for _, p in sorted(self.parts.items()) if p["type"] == "tool-call"]

    def parts_list(self) -> list[dict[str, Any]]:
        """The parts in order, as stored with the message (copies)."""
        self._settle()
        return [dict(p) for _, p in sorted(self.parts.items())]

    def take_growth(self) -> PartsGrowth:
        """The parts as they grew since the last call (the first call: the whole
        content), then forget the grown text: afterwards ``text``, ``reasoning`` and
        the parts hold only what comes next (the producer's state, whose store keeps
        the rest; see :meth:`PartsGrowth.onto`)."""
        self._settle()
        order = sorted(self.parts)
        parts, continued = [], {}
        for position, index in enumerate(order):
            entry = self.parts[index]
            last = self._taken.get(index)
            if last is not None and last[1] is entry:  # not replaced since (a tool call's end)
                continued[position] = (last[0], last[2])
            parts.append(dict(entry))
        at = {index: position for position, index in enumerate(order)}
        taken: dict[int, tuple[int, dict[str, Any], str]] = {}
        self._taken = taken
        for index, (entry, field, blocks, pieces) in list(self._pieces.items()):
            if self.parts.get(index) is not entry:  # replaced: its text is in the new entry
                del self._pieces[index]
                continue
            entry[field] = ""
            blocks[:] = [""]
            pieces.clear()
            taken[index] = (at[index], entry, field)
        return PartsGrowth(parts, continued)

    def usage_dict(self) -> dict[str, int] | None:
        u = self.usage
        if u is None:
            return None
        return {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "reasoning_tokens": u.reasoning_tokens,
            "cached_input_tokens": u.cached_input_tokens,
        }


def _tool_part(
    tool_call_id: str, name: str, event: ToolCallStart | ToolCallDelta | ToolCall
) -> dict[str, Any]:
    executed = getattr(event, "provider_executed", False)
    return {
        "type": "tool-call",
        "tool_call_id": tool_call_id,
        "name": name,
        "provider_executed": executed,
    }
