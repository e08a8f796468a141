"""``POST /api/chat`` request bodies, sans-I/O: AI SDK UI messages to chat messages.

The body is what the AI SDK's ``DefaultChatTransport`` POSTs: ``{id, messages:
[UIMessage…], trigger, messageId}`` or ``{id, message}`` (``packages/ai/src/ui/
http-chat-transport.ts``). A UI message is ``{id?, role, parts}``; the parts read
here (``packages/ai/src/ui/ui-messages.ts``, ``ai`` 5.0.277, 6.0.322, 7.0.173):

- ``{type: "text", text}``;
- a tool part: ``{type: "tool-<name>", toolCallId, state, input, output?,
  errorText?, providerExecuted?}``, or ``{type: "dynamic-tool", toolName, …}``,
  with ``state`` ``input-available`` (called, no result yet), ``output-available``
  (``output``), ``output-error`` (``errorText``), ``output-denied`` (AI SDK 6+,
  sent as an error result); ``input-streaming`` and provider-executed parts are
  left out. It becomes an assistant tool call and, with a result, a ``tool``
  message.

Other parts (``step-start``, ``reasoning``, ``file``, ``source-*``, ``data-*``) are
ignored. Tokenwire extensions: ``model``, ``system`` (strings), ``params``
(object), ``max_steps`` (integer; checked by the engine) and ``tools``: a list
whose strings name server-side tools registered with tokenwire (the agent loop,
docs/tools.md), and whose objects ``{name, description?, inputSchema |
parameters}`` define client-side tools (the client runs them and sends the
results back in the assistant message's tool parts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenwire.errors import ChatRequestError
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec

__all__ = ["ChatRequest", "parse_chat_request"]

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CALLED = frozenset({"input-available", "approval-requested", "approval-responded"})
_ANSWERED = frozenset({"output-available", "output-error", "output-denied"})


@dataclass(frozen=True)
class ChatRequest:
    """What a ``POST /api/chat`` asks for.

    Attributes:
        chat_id: the chat's ``id`` = the tokenwire conversation id.
        history: the messages before the new turn (tool calls and results
            included); used only to seed a conversation tokenwire does not know yet.
        text: the text of the last (user) message: the new turn; ``""`` when the
            turn is :attr:`tool_results`.
        trigger: ``submit-message`` or ``regenerate-message``.
        message_id: the ``messageId`` field (the message to regenerate), if sent.
        model: the body's ``model`` field (``"provider:model"``), if sent.
        system: the body's ``system`` field, if sent.
        params: the body's ``params`` field (provider parameters), if sent.
        tool_results: when the last message is the assistant's, the ``tool``
            messages that end it (the client ran its tools): the new turn.
        tools: the names of server-side tools of the ``tools`` field.
        client_tools: the client-side tools of the ``tools`` field.
        max_steps: the body's ``max_steps`` field, if sent.
        continued_id: with :attr:`tool_results`, the ``id`` of that last assistant
            message, when sent: the answer's ``start`` chunk carries it, so that
            the client goes on with the same message, as ``toUIMessageStreamResponse
            ({originalMessages})`` does (``handle-ui-message-stream-finish.ts``).
    """

    chat_id: str
    history: list[Message]
    text: str
    trigger: str = "submit-message"
    message_id: str | None = None
    model: str | None = None
    system: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    tool_results: list[Message] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    client_tools: list[ToolSpec] = field(default_factory=list)
    max_steps: int | None = None
    continued_id: str | None = None

    @property
    def turn(self) -> list[Message]:
        """The new messages: the user's text, or the tool results."""
        return self.tool_results or [Message("user", self.text)]


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a ``DefaultChatTransport`` request body (see the module docstring).

    The last message is a user message with text, or an assistant message ending
    with tool results (the AI SDK sends it so after ``addToolResult`` when
    ``sendAutomaticallyWhen`` says so).

    Raises:
        ChatRequestError: with a message naming the offending field.
    """
    if not isinstance(body, dict):
        raise ChatRequestError("the body must be a JSON object")
    chat_id = body.get("id")
    if not isinstance(chat_id, str) or not chat_id or len(chat_id) > 200:
        raise ChatRequestError("id: the chat id must be a non-empty string (at most 200 chars)")
    if "messages" in body:
        raw = body["messages"]
        if not isinstance(raw, list) or not raw:
            raise ChatRequestError("messages: must be a non-empty list of UI messages")
    elif "message" in body:
        raw = [body["message"]]
    else:
        raise ChatRequestError("messages: missing (send 'messages' or 'message')")
    messages = [_ui_message(m, f"messages[{i}]") for i, m in enumerate(raw)]
    history = [m for group in messages[:-1] for m in group if m.content or m.role != "user"]
    last = messages[-1]
    text, results = _turn(last)
    if results:
        history += last[: len(last) - len(results)]
    trigger = body.get("trigger", "submit-message")
    if trigger not in ("submit-message", "regenerate-message"):
        raise ChatRequestError("trigger: must be 'submit-message' or 'regenerate-message'")
    client_tools, tools = _tools(body.get("tools"))
    return ChatRequest(
        chat_id=chat_id,
        history=history,
        text=text,
        trigger=trigger,
        message_id=_optional_str(body, "messageId"),
        model=_optional_str(body, "model"),
        system=_optional_str(body, "system"),
        params=_params(body),
        tool_results=results,
        tools=tools,
        client_tools=client_tools,
        max_steps=_max_steps(body),
        continued_id=_optional_str(raw[-1], "id") if results else None,
    )


def _turn(last: list[Message]) -> tuple[str, list[Message]]:
    """``(text, tool results)`` of the last message's flattened chat messages."""
    if len(last) == 1 and last[0].role == "user":
        if not last[0].content:
            raise ChatRequestError("messages: the last message has no text part")
        return last[0].content, []
    count = 0
    while count < len(last) and last[len(last) - 1 - count].role == "tool":
        count += 1
    if not last or last[0].role != "assistant" or not count:
        why = "must be a user message, or an assistant message ending with tool results"
        raise ChatRequestError(f"messages: the last message {why}")
    return "", last[len(last) - count :]


def _ui_message(value: object, where: str) -> list[Message]:
    """The chat messages of one UI message (empty for a system message)."""
    if not isinstance(value, dict):
        raise ChatRequestError(f"{where}: must be an object")
    role = value.get("role")
    if role != "user" and role != "assistant" and role != "system":
        raise ChatRequestError(f"{where}.role: must be 'user', 'assistant' or 'system'")
    parts = value.get("parts")
    if not isinstance(parts, list):
        raise ChatRequestError(f"{where}.parts: must be a list of parts")
    speaker: Literal["user", "assistant"] = "assistant" if role == "assistant" else "user"
    out: list[Message] = []
    texts: list[str] = []
    calls: list[MessageToolCall] = []
    results: list[Message] = []
    for j, part in enumerate(parts):
        at = f"{where}.parts[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ChatRequestError(f"{at}: must be an object with a 'type'")
        kind = part["type"]
        step = None
        if kind == "text" and not isinstance(part.get("text"), str):
            raise ChatRequestError(f"{at}.text: must be a string")
        if (kind.startswith("tool-") or kind == "dynamic-tool") and role == "assistant":
            step = _tool_part(part, at)
        # A step ends with its tool results: what follows them is the next step's.
        if results and (kind in ("text", "step-start") or (step and step[1] is None)):
            out += [_said(speaker, texts, calls), *results]
            texts, calls, results = [], [], []
        if kind == "text":
            texts.append(part["text"])
        elif step is not None:
            calls.append(step[0])
            results += [step[1]] if step[1] is not None else []
    if role == "system":
        return []
    return [m for m in [*out, _said(speaker, texts, calls), *results] if _keep(m)]


def _said(
    role: Literal["user", "assistant"], texts: list[str], calls: list[MessageToolCall]
) -> Message:
    return Message(role, "".join(texts), tool_calls=tuple(calls))


def _keep(message: Message) -> bool:
    return message.role == "user" or bool(
        message.content or message.tool_calls or message.tool_call_id
    )


def _tool_part(part: dict[str, Any], at: str) -> tuple[MessageToolCall, Message | None] | None:
    """The call and (when answered) the result of one tool part; ``None`` for a part
    still streaming its input or run by the provider."""
    state = part.get("state")
    if part.get("providerExecuted") is True or state not in _CALLED | _ANSWERED:
        return None
    name = part["type"].removeprefix("tool-") if part["type"] != "dynamic-tool" else None
    name = part.get("toolName") if name is None else name
    call_id = part.get("toolCallId")
    if not isinstance(name, str) or not name:
        raise ChatRequestError(f"{at}.toolName: must be a non-empty string")
    if not isinstance(call_id, str) or not call_id:
        raise ChatRequestError(f"{at}.toolCallId: must be a non-empty string")
    arguments = json.dumps(part.get("input") or {}, ensure_ascii=False)
    call = MessageToolCall(call_id, name, arguments)
    if state in _CALLED:
        return call, None
    if state == "output-available":
        output = part.get("output")
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        return call, Message("tool", text, tool_call_id=call_id, name=name)
    error = part.get("errorText")
    if state == "output-denied":
        error = "the user denied this tool call"
    if not isinstance(error, str):
        raise ChatRequestError(f"{at}.errorText: must be a string (state output-error)")
    return call, Message("tool", error, tool_call_id=call_id, name=name, is_error=True)


def _tools(value: object) -> tuple[list[ToolSpec], list[str]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise ChatRequestError("tools: must be a list of tool names and tool definitions")
    tools: list[ToolSpec] = []
    names: list[str] = []
    for i, item in enumerate(value):
        where = f"tools[{i}]"
        if isinstance(item, str):
            names.append(item)
            continue
        if not isinstance(item, dict):
            raise ChatRequestError(f"{where}: must be a tool name or {{name, inputSchema}}")
        name, description = item.get("name"), item.get("description", "")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise ChatRequestError(f"{where}.name: must be 1-64 of a-z, A-Z, 0-9, _ and -")
        if not isinstance(description, str):
            raise ChatRequestError(f"{where}.description: must be a string")
        schema = item.get("inputSchema", item.get("parameters", {"type": "object"}))
        if not isinstance(schema, dict):
            raise ChatRequestError(f"{where}.inputSchema: must be a JSON Schema object")
        tools.append(ToolSpec(name, description, schema))
    return tools, names


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ChatRequestError(f"{key}: must be a string")
    return value


def _params(body: dict[str, Any]) -> dict[str, object]:
    value = body.get("params")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ChatRequestError("params: must be an object")
    return dict(value)


def _max_steps(body: dict[str, Any]) -> int | None:
    value = body.get("max_steps")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ChatRequestError("max_steps: must be an integer")
    return value
