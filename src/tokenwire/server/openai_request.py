"""OpenAI Chat Completions request bodies, sans-I/O: validated and mapped to tokenwire.

Wire format reference: OpenAI API reference, "Chat → Create chat completion"
(https://platform.openai.com/docs/api-reference/chat/create): ``messages`` of
roles ``system``/``developer``/``user``/``assistant``/``tool``; an assistant
message's ``tool_calls`` (``{id, type: "function", function: {name, arguments}}``,
``content`` then may be ``null``); a ``tool`` message answers one call by
``tool_call_id``; ``tools`` are ``{type: "function", function: {name,
description?, parameters?}}``; ``tool_choice`` is ``"auto"``, ``"none"``,
``"required"`` or ``{type: "function", function: {name}}``.

:func:`parse_request` returns a :class:`ChatRequest`; every refusal is an
:class:`~tokenwire.errors.OpenAIRequestError` naming the field (``param``), which
the endpoint answers as 400 in OpenAI's error shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenwire.errors import OpenAIRequestError
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec

__all__ = ["ChatRequest", "parse_request"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A Chat Completions request, mapped to :meth:`tokenwire.Tokenwire.start` arguments.

    Attributes:
        model: the tokenwire ``provider:model`` name.
        messages: the ``user``, ``assistant`` (with their ``tool_calls``) and
            ``tool`` messages, oldest first.
        system: every ``system``/``developer`` message joined with a blank line, or ``None``.
        params: provider parameters (see :func:`parse_request`).
        stream: answer with ``chat.completion.chunk`` SSE instead of one object.
        include_usage: ``stream_options.include_usage``.
        tools: the function tools the model may call (the client runs them).
    """

    model: str
    messages: tuple[Message, ...]
    system: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    tools: tuple[ToolSpec, ...] = ()


_CONTROL = frozenset({"model", "messages", "stream", "stream_options", "n", "tools"})
_IGNORED = frozenset(
    {"user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}
)
"""Informational parameters: passed to ``openai:``-family providers, dropped for others."""
_REJECTED = {
    "functions": "is deprecated and not supported; use 'tools'",
    "function_call": "is deprecated and not supported; use 'tool_choice'",
    "logprobs": "is not supported: tokenwire streams carry no log probabilities",
    "top_logprobs": "is not supported: tokenwire streams carry no log probabilities",
    "audio": "is not supported: tokenwire streams carry text only",
    "modalities": "is not supported: tokenwire streams carry text only",
    "prediction": "is not supported",
}
_NOT_FOR = {
    "anthropic": frozenset(
        {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "response_format"}
        | {"reasoning_effort", "verbosity", "web_search_options"}
    ),
    "openai-responses": frozenset(
        {"seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias"}
        | {"response_format", "web_search_options"}
    ),
}
"""Chat Completions parameters a provider family has no equivalent for."""
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for function names."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_stop(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(s, str) for s in value)
    )


_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "max_tokens": (_is_int, "an integer"),
    "max_completion_tokens": (_is_int, "an integer"),
    "seed": (_is_int, "an integer"),
    "stop": (_is_stop, "a string or an array of strings"),
}


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """Validate a Chat Completions request body and map it to tokenwire arguments.

    Parameters are handled one by one:

    - ``model`` must be ``provider:model``; ``messages`` roles ``system``,
      ``developer`` (both become ``system``), ``user``, ``assistant`` (optionally
      with ``tool_calls``), ``tool`` (answering an earlier call's id), with content
      a string or an array of ``{"type": "text", "text": …}`` parts;
    - ``tools`` become :class:`~tokenwire.providers.base.ToolSpec`\\ s;
      ``tool_choice`` must name one of them when it names a function;
    - ``n`` may be 1 only; ``functions``, ``function_call``, ``logprobs``,
      ``top_logprobs``, ``audio``, ``modalities``, ``prediction`` are refused;
    - every other key becomes a tokenwire param, passed to the provider as extra
      body fields (provider-specific extras such as the ``fake:`` script's
      ``stall_after`` arrive this way, through the SDK's ``extra_body``), translated
      for ``anthropic:`` (``max_completion_tokens``→``max_tokens``,
      ``stop``→``stop_sequences``, ``tool_choice`` to Anthropic's shape)
      and ``openai-responses:`` (``max_*tokens``→``max_output_tokens``, flat
      ``tool_choice``); a parameter the family has no equivalent for is refused.

    Raises:
        OpenAIRequestError: naming the offending parameter; status 404 for a model
            that is not ``provider:model``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("you must provide a model parameter", param="model")
    family, sep, rest = model.partition(":")
    if not sep or not family or not rest:
        message = f"The model {model!r} does not exist: tokenwire models are named 'provider:model'"
        raise OpenAIRequestError(message, param="model", status=404, code="model_not_found")
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n", "must be 1: tokenwire streams one choice per request")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise OpenAIRequestError("'stream_options' must be an object", param="stream_options")
    system, messages = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    _check_choice(body.get("tool_choice"), tools)
    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        params=_params(body, family),
        stream=body.get("stream") is True,
        include_usage=bool(options and options.get("include_usage") is True),
        tools=tools,
    )


def _unsupported(param: str, why: str) -> OpenAIRequestError:
    return OpenAIRequestError(f"'{param}' {why}", param=param, code="unsupported_parameter")


def _invalid(param: str, why: str) -> OpenAIRequestError:
    return OpenAIRequestError(f"'{param}' {why}", param=param)


def _messages(value: object) -> tuple[str | None, tuple[Message, ...]]:
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "must be a non-empty array")
    system: list[str] = []
    out: list[Message] = []
    calls: set[str] = set()
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _invalid(where, "must be an object")
        if message.get("function_call"):
            raise _unsupported(f"{where}.function_call", "is deprecated; use 'tool_calls'")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_content(message.get("content"), f"{where}.content"))
        elif role == "user":
            out.append(Message("user", _content(message.get("content"), f"{where}.content")))
        elif role == "assistant":
            out.append(_assistant(message, where))
            calls.update(call.id for call in out[-1].tool_calls)
        elif role == "tool":
            out.append(_tool_message(message, where, calls))
        else:
            why = "must be 'system', 'developer', 'user', 'assistant' or 'tool'"
            raise _invalid(f"{where}.role", f"{why}, got {role!r}")
    if not out:
        raise _invalid("messages", "must contain at least one user or assistant message")
    return ("\n\n".join(system) if system else None), tuple(out)


def _assistant(message: Mapping[str, Any], where: str) -> Message:
    raw = message.get("tool_calls")
    if raw is None or raw == []:
        return Message("assistant", _content(message.get("content"), f"{where}.content"))
    if not isinstance(raw, list):
        raise _invalid(f"{where}.tool_calls", "must be an array of tool calls")
    content = message.get("content")
    text = "" if content is None else _content(content, f"{where}.content")
    calls = tuple(_tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(raw))
    return Message("assistant", text, tool_calls=calls)


def _tool_call(value: object, where: str) -> MessageToolCall:
    fn = value.get("function") if isinstance(value, Mapping) else None
    if not isinstance(value, Mapping) or value.get("type", "function") != "function":
        raise _invalid(where, "must be a {'type': 'function', 'id', 'function': {...}} tool call")
    call_id = value.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.id", "must be a non-empty string")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise _invalid(f"{where}.function.name", "must be a non-empty string")
    arguments = fn.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise _invalid(f"{where}.function.arguments", "must be a string (JSON text)")
    return MessageToolCall(call_id, fn["name"], arguments)


def _tool_message(message: Mapping[str, Any], where: str, calls: set[str]) -> Message:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"{where}.tool_call_id", "must be a non-empty string")
    if call_id not in calls:
        why = f"{call_id!r} answers no tool call of an earlier assistant message"
        raise _invalid(f"{where}.tool_call_id", why)
    text = _content(message.get("content"), f"{where}.content")
    name = message.get("name")
    return Message("tool", text, tool_call_id=call_id, name=name if isinstance(name, str) else None)


def _content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid(where, "must be a string or an array of text parts")
    texts: list[str] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(text, str):
            why = f"must be a {{'type': 'text', 'text': ...}} part, got type {kind!r}"
            raise _invalid(f"{where}[{j}]", why)
        texts.append(text)
    return "".join(texts)


def _tools(value: object) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid("tools", "must be an array")
    out: list[ToolSpec] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not fn:
            raise _invalid(where, "must be a {'type': 'function', 'function': {...}} tool")
        if not isinstance(fn, Mapping):
            raise _invalid(f"{where}.function", "must be an object")
        name, description = fn.get("name"), fn.get("description", "")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _invalid(f"{where}.function.name", "must be 1-64 of a-z, A-Z, 0-9, _ and -")
        if not isinstance(description, str):
            raise _invalid(f"{where}.function.description", "must be a string")
        parameters = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise _invalid(f"{where}.function.parameters", "must be a JSON Schema object")
        out.append(ToolSpec(name, description, dict(parameters)))
    return tuple(out)


def _check_choice(choice: object, tools: tuple[ToolSpec, ...]) -> None:
    if choice is None or choice in ("auto", "none"):
        return
    if choice == "required":
        if not tools:
            raise _invalid("tool_choice", "is 'required' but no 'tools' are given")
        return
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        why = "must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name'}}"
        raise _invalid("tool_choice", why)
    if fn["name"] not in {t.name for t in tools}:
        raise _invalid("tool_choice", f"names {fn['name']!r}, which is not in 'tools'")


def _params(body: Mapping[str, Any], family: str) -> dict[str, object]:
    params: dict[str, object] = {}
    not_for = _NOT_FOR.get(family, frozenset())
    for key, value in body.items():
        if key in _CONTROL or value is None:
            continue
        if key in _REJECTED:
            raise _unsupported(key, _REJECTED[key])
        if key in not_for:
            raise _unsupported(key, f"is not supported for '{family}:' models")
        check = _CHECKS.get(key)
        if check is not None and not check[0](value):
            raise OpenAIRequestError(f"'{key}' must be {check[1]}", param=key)
        if key in _IGNORED and family in _NOT_FOR:
            continue
        params[key] = value
    if family == "anthropic":
        return _for_anthropic(params)
    if family == "openai-responses":
        return _for_responses(params)
    return params


def _for_anthropic(params: dict[str, object]) -> dict[str, object]:
    out = dict(params)
    if "max_completion_tokens" in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    if "stop" in out:
        stop = out.pop("stop")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    out.pop("parallel_tool_calls", None)
    if "tool_choice" in out:
        out["tool_choice"] = _anthropic_choice(out["tool_choice"])
    return out


def _anthropic_choice(choice: object) -> dict[str, object]:
    simple = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    assert isinstance(choice, Mapping)  # checked by _check_choice
    return {"type": "tool", "name": choice["function"]["name"]}


def _for_responses(params: dict[str, object]) -> dict[str, object]:
    out = dict(params)
    for key in ("max_tokens", "max_completion_tokens"):
        if key in out:
            out["max_output_tokens"] = out.pop(key)
    choice = out.get("tool_choice")
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        out["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
    return out
