"""Named OpenAI-compatible providers: Chat Completions at another base URL, with
the key variable each service documents.

| prefix | base URL (override: ``<NAME>_BASE_URL``) | key variable |
|---|---|---|
| ``groq:`` | ``https://api.groq.com/openai/v1`` | ``GROQ_API_KEY`` |
| ``deepseek:`` | ``https://api.deepseek.com`` | ``DEEPSEEK_API_KEY`` |
| ``mistral:`` | ``https://api.mistral.ai/v1`` | ``MISTRAL_API_KEY`` |
| ``openrouter:`` | ``https://openrouter.ai/api/v1`` | ``OPENROUTER_API_KEY`` |

Sources: each service's OpenAI-compatibility page (console.groq.com/docs/openai,
api-docs.deepseek.com, docs.mistral.ai/api, openrouter.ai/docs/quickstart). The
stream is read by :class:`~tokenwire.providers.openai_chat.ChatCompletionsParser`,
which knows their quirks (``reasoning``/``reasoning_content``, ``x_groq.usage``,
Mistral's typed content parts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx2
import openai

from tokenwire.errors import ProviderError
from tokenwire.providers.openai_chat import OpenAIChatProvider, make_openai_client

__all__ = ["PRESETS", "OpenAIPreset", "Preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """One service: its prefix, default base URL and key variable."""

    name: str
    base_url: str
    key_variable: str

    @property
    def url_variable(self) -> str:
        """``<NAME>_BASE_URL``, which overrides :attr:`base_url`."""
        return f"{self.name.upper()}_BASE_URL"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        Preset("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
        Preset("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        Preset("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    )
}


class OpenAIPreset(OpenAIChatProvider):
    """Chat Completions for one :class:`Preset`; the variables are read when the
    first request for its models is checked (so setting them later still works).

    Args:
        preset: the service.
        http_client: an ``httpx2.AsyncClient`` to send requests with; ``None`` lets
            the SDK make its own.
    """

    def __init__(self, preset: Preset, *, http_client: httpx2.AsyncClient | None = None) -> None:
        super().__init__(http_client=http_client)
        self.preset = preset

    def _make_client(self) -> openai.AsyncOpenAI:
        preset = self.preset
        key = os.environ.get(preset.key_variable)
        if not key:
            message = f"{preset.name}: models need an API key: set {preset.key_variable}"
            raise ProviderError("invalid_request", message)
        base = (os.environ.get(preset.url_variable) or preset.base_url).rstrip("/")
        return make_openai_client(key, base, self._http_client)

    @property
    def base_url(self) -> str:
        """The base URL a client made now would use (the variable, else the default);
        the client is made once, on the first request for the preset's models."""
        return (os.environ.get(self.preset.url_variable) or self.preset.base_url).rstrip("/")
