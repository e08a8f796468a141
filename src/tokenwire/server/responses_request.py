"""OpenAI Responses API requests, sans-I/O: a ``POST /v1/responses`` body in,
tokenwire's :meth:`~tokenwire.Tokenwire.start` arguments out. (Pure functions; in
``server/`` rather than ``protocol/`` because they build the providers'
:class:`~tokenwire.providers.base.Message` and ``ToolSpec``, a layer to the right
of ``protocol``.)

Wire format reference: OpenAI API reference, "Responses → Create a model response"
(https://platform.openai.com/docs/api-reference/responses/create), and the
``openai`` Python SDK's ``ResponseCreateParams`` / ``ResponseInputItemParam``
types. Errors are OpenAI's (``{"error": {"message", "type", "param", "code"}}``),
raised as :class:`~tokenwire.errors.OpenAIRequestError` naming the parameter;
an unknown top-level parameter is ``unknown_parameter``, as OpenAI answers it.

Provider parameters are mapped to their Chat Completions names and run through
:func:`tokenwire.server.openai_request.parse_request`, so every provider family
gets the same translation (and refusals) as ``/v1/chat/completions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenwire.errors import OpenAIRequestError
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec
from tokenwire.server import openai_request

__all__ = ["ResponsesRequest", "parse_responses_request"]


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A Responses API request, mapped to :meth:`tokenwire.Tokenwire.start` arguments.

    Attributes:
        model: the tokenwire ``provider:model`` name.
        messages: the conversation, oldest first (user, assistant with tool calls, tool).
        system: ``instructions`` then every ``system``/``developer`` message, joined
            with a blank line, or ``None``.
        tools: the function tools the model may call (none when ``tool_choice`` is ``none``).
        params: provider parameters (Chat Completions names, translated per family).
        stream: answer with Responses streaming events instead of one object.
        echo: request fields the response object repeats (``temperature``,
            ``top_p``, ``max_output_tokens``, ``metadata``, ``instructions``,
            ``tool_choice``, ``tools``, ``parallel_tool_calls``, ``store``, ``reasoning``,
            ``previous_response_id``).
        previous_response_id: the response whose conversation this one continues.
    """

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    params: dict[str, object] = field(default_factory=dict)
    stream: bool = False
    echo: dict[str, Any] = field(default_factory=dict)
    previous_response_id: str | None = None


_ACCEPTED = frozenset(
    {"model", "input", "instructions", "tools", "tool_choice", "stream", "store", "metadata"}
    | {"max_output_tokens", "temperature", "top_p", "reasoning", "parallel_tool_calls"}
    | {"previous_response_id", "user", "safety_identifier", "prompt_cache_key", "include"}
    | {"service_tier", "truncation", "text", "stream_options", "params"}
)
_UNSUPPORTED = {
    "background": "is not supported: every tokenwire response streams in the foreground",
    "conversation": "is not supported: send the whole conversation in 'input'",
    "prompt": "is not supported: prompt templates are not stored by tokenwire",
    "top_logprobs": "is not supported: tokenwire streams carry no log probabilities",
    "max_tool_calls": "is not supported: tokenwire relays function calls only",
    "context_management": "is not supported",
}
_RESERVED = frozenset({"model", "messages", "stream", "stream_options", "n"})
"""Chat Completions fields that ``params`` must not set."""
_CHAT_NAMES = {
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}
"""Chat Completions parameter names back to the Responses names, for errors."""


def _bad(message: str, param: str, code: str | None = None) -> OpenAIRequestError:
    return OpenAIRequestError(message, param=param, code=code)


def parse_responses_request(body: Mapping[str, Any]) -> ResponsesRequest:
    """Validate a Responses API request body and map it to tokenwire arguments.

    - ``input``: a string (one user message) or items: messages (``role`` user,
      assistant, system, developer; ``content`` a string or ``input_text`` /
      ``output_text`` parts), ``function_call`` (an assistant tool call) and
      ``function_call_output`` (a tool message) items; ``reasoning`` items are
      dropped (no provider can take them back).
    - ``tools``: ``function`` tools only; ``tool_choice`` ``auto``, ``required``,
      ``none`` or ``{"type": "function", "name": …}``.
    - ``previous_response_id``: a ``resp_…`` id (the server continues its
      conversation); ``background``, ``conversation``, ``prompt``, ``top_logprobs``,
      ``max_tool_calls`` are refused (``unsupported_parameter``);
      ``store``, ``metadata``, ``include``, ``user``, ``truncation`` … are accepted
      and not acted on; ``params`` (a tokenwire extension, an object) are provider
      parameters as in the native API.

    Raises:
        OpenAIRequestError: naming the offending parameter (400), or 404
            ``model_not_found`` for a model that is not ``provider:model``.
    """
    for key in body:
        if key in _UNSUPPORTED:
            raise _bad(f"'{key}' {_UNSUPPORTED[key]}", key, "unsupported_parameter")
        if key not in _ACCEPTED:
            raise _bad(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _bad("'previous_response_id' must be a response id", "previous_response_id")
    system, messages = _input(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("'instructions' must be a string", "instructions")
    if instructions:
        system.insert(0, instructions)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    chat = _chat_params(body, choice)
    offered = () if choice == "none" else tools
    params = _translated(body.get("model"), chat, offered)
    return ResponsesRequest(
        model=str(body["model"]),
        messages=tuple(messages),
        system="\n\n".join(system) if system else None,
        tools=offered,
        params=params,
        stream=stream is True,
        echo=_echo(body),
        previous_response_id=previous,
    )


def _echo(body: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("temperature", "top_p", "max_output_tokens", "metadata", "instructions")
    out = {key: body.get(key) for key in (*keys, "previous_response_id")}
    out["tool_choice"] = body.get("tool_choice") or "auto"
    out["tools"] = list(body.get("tools") or [])
    out["parallel_tool_calls"] = body.get("parallel_tool_calls", True)
    out["store"] = body.get("store", True)
    if body.get("reasoning") is not None:
        out["reasoning"] = body["reasoning"]
    return out


def _translated(
    model: object, chat: dict[str, object], tools: tuple[ToolSpec, ...]
) -> dict[str, object]:
    """The provider params for ``chat`` (Chat Completions names), per model family,
    as the Chat Completions parser makes them from the same request (``tools`` in
    its shape, so that ``tool_choice`` is checked and translated against them)."""
    functions = [
        {"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools
    ]
    probe = {
        "model": model,
        "messages": [{"role": "user", "content": ""}],
        **chat,
        **({"tools": [{"type": "function", "function": f} for f in functions]} if tools else {}),
    }
    try:
        params = openai_request.parse_request(probe).params
    except OpenAIRequestError as exc:
        param = _CHAT_NAMES.get(exc.param or "", exc.param)
        message = exc.message
        if exc.param in _CHAT_NAMES:
            message = message.replace(f"'{exc.param}'", f"'{param}'")
        raise OpenAIRequestError(message, param=param, status=exc.status, code=exc.code) from None
    if str(model).startswith("openai-responses:") and "reasoning_effort" in params:
        params["reasoning"] = {"effort": params.pop("reasoning_effort")}  # the Responses shape
    return params


def _chat_params(body: Mapping[str, Any], choice: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in ("temperature", "top_p"):  # checked by the Chat Completions parser
        if body.get(key) is not None:
            out[key] = body[key]
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise _bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
        out["max_completion_tokens"] = tokens
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if parallel is not None and body.get("tools"):
        out["parallel_tool_calls"] = parallel
    _check_object(body, "metadata", values=str)
    effort = _reasoning_effort(body.get("reasoning"))
    if effort is not None:
        out["reasoning_effort"] = effort
    fmt = _text_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    extra = _check_object(body, "params")
    for key in extra.keys() & _RESERVED:
        raise _bad(f"'params.{key}' is not a provider parameter", f"params.{key}")
    return {**extra, **out}


def _check_object(body: Mapping[str, Any], key: str, values: type | None = None) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or (
        values is not None and not all(isinstance(v, values) for v in value.values())
    ):
        kind = "an object" if values is None else "an object of strings"
        raise _bad(f"'{key}' must be {kind}", key)
    return dict(value)


def _reasoning_effort(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _bad("'reasoning' must be an object", "reasoning")
    effort = value.get("effort")
    if effort is not None and effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise _bad(
            "'reasoning.effort' must be one of none, minimal, low, medium, high, xhigh",
            "reasoning.effort",
        )
    return effort if isinstance(effort, str) else None


def _text_format(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = value.get("format") if isinstance(value, Mapping) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, Mapping):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("'text.format.type' must be 'text', 'json_object' or 'json_schema'", "text.format")


def _tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "function": {"name": name}}
    why = "must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}"
    raise _bad(f"'tool_choice' {why}", "tool_choice")


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("'tools' must be an array", "tools")
    out: list[ToolSpec] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            why = f"only 'function' tools are supported, got type {kind!r}"
            raise _bad(f"'{where}.type': {why}", f"{where}.type", "unsupported_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"'{where}.name' must be a non-empty string", f"{where}.name")
        description = tool.get("description") or ""
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(description, str) or not isinstance(parameters, Mapping):
            raise _bad(f"'{where}' has an invalid description or parameters", where)
        out.append(ToolSpec(name, description, dict(parameters)))
    return tuple(out)


# --- input ---------------------------------------------------------------------------


def _input(value: object) -> tuple[list[str], list[Message]]:
    if isinstance(value, str):
        return [], [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of items", "input")
    system: list[str] = []
    messages: list[Message] = []
    names: dict[str, str] = {}
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise _bad(f"'{where}' must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            text = _content(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                system.append(text)
            elif role in ("user", "assistant"):
                messages.append(Message(role, text))
            else:
                why = "must be 'user', 'assistant', 'system' or 'developer'"
                raise _bad(f"'{where}.role' {why}, got {role!r}", f"{where}.role")
        elif kind == "function_call":
            call = _function_call(item, where)
            names[call.id] = call.name
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                calls = (*last.tool_calls, call)
                messages[-1] = Message("assistant", last.content, tool_calls=calls)
            else:
                messages.append(Message("assistant", "", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            output = _content(item.get("output"), f"{where}.output")
            name = names.get(call_id)
            messages.append(Message("tool", output, tool_call_id=call_id, name=name))
        elif kind != "reasoning":
            why = "must be a message, function_call, function_call_output or reasoning item"
            raise _bad(f"'{where}.type' {why}, got {kind!r}", f"{where}.type")
    if not messages:
        raise _bad("'input' must contain at least one user or assistant item", "input")
    return system, messages


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"'{where}.{key}' must be a non-empty string", f"{where}.{key}")
    return value


def _function_call(item: Mapping[str, Any], where: str) -> MessageToolCall:
    arguments = item.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise _bad(f"'{where}.arguments' must be a string (JSON text)", f"{where}.arguments")
    return MessageToolCall(
        _string(item, "call_id", where), _string(item, "name", where), arguments or "{}"
    )


_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad(f"'{where}' must be a string or an array of text parts", where)
    texts: list[str] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if kind not in _TEXT_PARTS or not isinstance(text, str):
            why = f"must be an input_text or output_text part, got type {kind!r}"
            raise _bad(f"'{where}[{j}]' {why}", f"{where}[{j}]")
        texts.append(text)
    return "".join(texts)
