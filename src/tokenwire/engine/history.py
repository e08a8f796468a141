"""Chat messages as stored parts: tool calls and tool results included.

A :class:`~tokenwire.providers.base.Message` is stored as ``(role, parts)``
(:meth:`tokenwire.store.Store.plan_turn`):

- text: ``{"type": "text", "text"}`` (omitted when empty and the message has
  tool calls);
- an assistant's tool call: ``{"type": "tool-call", "tool_call_id", "name",
  "arguments_text"}``, the part shape the accumulator stores for streamed calls
  (:mod:`tokenwire.accumulate`, which adds ``arguments`` as an object);
- a tool message: ``{"type": "tool-result", "tool_call_id", "name", "output",
  "is_error"}``, the shape of the ``tool-result`` event (DESIGN §2).

:func:`tokenwire.agent.history` reads them back (a client's tool results, stored
as ``tool`` messages, answer the calls of the assistant message before them).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenwire.errors import InvalidRequestError
from tokenwire.providers.base import Message, Provider, ToolSpec

__all__ = ["check_tools", "parts_of"]

Parts = list[dict[str, object]]


def parts_of(message: Message) -> Parts:
    """The stored parts of ``message`` (see the module docstring)."""
    if message.role == "tool":
        result: dict[str, object] = {
            "type": "tool-result",
            "tool_call_id": message.tool_call_id or "",
            "output": message.content,
            "is_error": message.is_error,
        }
        if message.name is not None:
            result["name"] = message.name
        return [result]
    parts: Parts = []
    if message.content or not message.tool_calls:
        parts.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        parts.append(
            {
                "type": "tool-call",
                "tool_call_id": call.id,
                "name": call.name,
                "arguments_text": call.arguments,
            }
        )
    return parts


def check_tools(
    provider: Provider, name: str, messages: Sequence[Message], tools: Sequence[str | ToolSpec]
) -> None:
    r"""Refuse tools (server-side names or client :class:`ToolSpec`\ s), tool calls and
    tool results for a provider whose ``supports_tools`` attribute is false
    (``local:``); ``name`` is the ``provider:model`` name.

    Raises:
        InvalidRequestError: field ``tools`` (HTTP 422; 400 on the OpenAI surface).
    """
    if getattr(provider, "supports_tools", True):
        return
    if tools or any(m.role == "tool" or m.tool_calls for m in messages):
        family = name.partition(":")[0]
        raise InvalidRequestError("tools", f"{family!r} models cannot call tools")
