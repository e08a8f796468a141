"""The Gemini ``GenerateContentRequest`` body built from a :class:`GenerationRequest`.

Protocol reference: https://ai.google.dev/api/generate-content#request-body and
https://ai.google.dev/gemini-api/docs/function-calling. Roles are ``user`` and
``model``; ``system`` messages and ``request.system`` become ``systemInstruction``;
an assistant message's tool calls become ``functionCall`` parts (with the
``thoughtSignature`` carried in tokenwire's call id, see
:mod:`tokenwire.providers.gemini`), tool messages ``functionResponse`` parts
(``{"output": …}``, or ``{"error": …}`` when ``is_error``) in one ``user`` turn;
consecutive turns of one role are merged, as Gemini expects alternating roles.

``params`` (tokenwire's names → Gemini's ``generationConfig``): ``max_tokens`` or
``max_output_tokens`` → ``maxOutputTokens``; ``temperature``; ``top_p`` → ``topP``;
``top_k`` → ``topK``; ``stop`` → ``stopSequences``; ``seed``; ``include_thoughts``
(bool), ``reasoning_effort`` (any value but ``"none"``) or ``thinking`` (true) →
``thinkingConfig.includeThoughts``; ``thinking_budget`` →
``thinkingConfig.thinkingBudget``. Other keys are sent as they are, at the top
level of the body (``safetySettings``, ``cachedContent`` …).
"""

from __future__ import annotations

from typing import Any

from tokenwire.providers.base import GenerationRequest, Message, parse_arguments

__all__ = ["build_request", "split_call_id"]

_CONFIG = {
    "max_tokens": "maxOutputTokens",
    "max_output_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
}
_THINKING = ("include_thoughts", "reasoning_effort", "thinking", "thinking_budget")


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """``(Gemini's own id or tokenwire's ``gc_<n>``, thought signature or None)``."""
    base, sep, signature = call_id.partition("~")
    return base, (signature if sep and signature else None)


def build_request(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body for ``streamGenerateContent``.

    Returns:
        A JSON-serialisable dict (``contents``, and when set ``systemInstruction``,
        ``generationConfig``, ``tools``, extra params).
    """
    params = dict(request.params)
    body: dict[str, Any] = {"contents": _contents(request.messages)}
    system = [m.content for m in request.messages if m.role == "system" and m.content]
    if request.system:
        system.insert(0, request.system)
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = _generation_config(params)
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in request.tools
        ]
        body["tools"] = [{"functionDeclarations": declarations}]
    body.update(params)  # what is left: Gemini's own fields
    return body


def _generation_config(params: dict[str, object]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, gemini in _CONFIG.items():
        if name in params:
            config[gemini] = params.pop(name)
    if "stop" in params:
        stop = params.pop("stop")
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    thinking = {name: params.pop(name) for name in _THINKING if name in params}
    thinking_config: dict[str, Any] = {}
    include = thinking.get("include_thoughts", thinking.get("thinking"))
    effort = thinking.get("reasoning_effort")
    if include is True or (effort is not None and effort != "none"):
        thinking_config["includeThoughts"] = True
    if "thinking_budget" in thinking:
        thinking_config["thinkingBudget"] = thinking["thinking_budget"]
    if thinking_config:
        config["thinkingConfig"] = thinking_config
    extra = params.pop("generationConfig", None)
    if isinstance(extra, dict):
        config.update(extra)
    return config


def _contents(messages: list[Message]) -> list[dict[str, Any]]:
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    contents: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "model" if message.role == "assistant" else "user"
        parts = _parts(message, names)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _parts(message: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role == "tool":
        call_id = message.tool_call_id or ""
        base, _ = split_call_id(call_id)
        key = "error" if message.is_error else "output"
        response: dict[str, Any] = {
            "name": message.name or names.get(call_id, ""),
            "response": {key: message.content},
        }
        if base and not base.startswith("gc_"):
            response["id"] = base
        return [{"functionResponse": response}]
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"text": message.content})
    for call in message.tool_calls:
        base, signature = split_call_id(call.id)
        function: dict[str, Any] = {
            "name": call.name,
            "args": parse_arguments(call.arguments)[0] or {},
        }
        if base and not base.startswith("gc_"):
            function["id"] = base
        part: dict[str, Any] = {"functionCall": function}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts
