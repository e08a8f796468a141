"""Provider adapters, chosen by the ``provider:`` prefix of a model name (DESIGN §3).

- ``openai:`` Chat Completions and compatible servers
  (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``);
- ``openai-responses:`` the Responses API (the same variables);
- ``anthropic:`` the Messages API (``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``);
- ``gemini:`` the Gemini API (``GEMINI_API_KEY``, ``GEMINI_BASE_URL``);
- ``ollama:`` Ollama's native ``/api/chat`` (``OLLAMA_BASE_URL`` or ``OLLAMA_HOST``,
  default ``http://127.0.0.1:11434``);
- ``groq:``, ``deepseek:``, ``mistral:``, ``openrouter:`` Chat Completions at each
  service (``<NAME>_API_KEY``, ``<NAME>_BASE_URL``; :mod:`tokenwire.providers.presets`);
- ``local:`` the bundled SmolLM2-135M on the CPU;
- ``fake:`` scripted, for tests, benchmarks and demos: only when asked
  (``ProviderRegistry(fake=True)``; the server's ``TOKENWIRE_FAKE_PROVIDER=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tokenwire.errors import UnknownModelError
from tokenwire.providers.base import (
    CheckedProvider,
    GenerationRequest,
    Message,
    Provider,
    ProviderEvent,
)
from tokenwire.providers.fallback import SEPARATOR as FALLBACK_SEPARATOR
from tokenwire.providers.fallback import fallback_provider

__all__ = [
    "GenerationRequest",
    "Message",
    "Provider",
    "ProviderEvent",
    "ProviderRegistry",
    "split_model",
]

if TYPE_CHECKING:
    from tokenwire.settings import Settings


def split_model(name: str) -> tuple[str, str]:
    """Split ``"provider:model"``.

    Raises:
        UnknownModelError: no ``:`` or an empty side.
    """
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise UnknownModelError(f"model must be named 'provider:model', got {name!r}")
    return provider, model


def _openai() -> Provider:
    from tokenwire.providers.openai_chat import OpenAIChatProvider

    return OpenAIChatProvider()


def _openai_responses() -> Provider:
    from tokenwire.providers.openai_responses import OpenAIResponsesProvider

    return OpenAIResponsesProvider()


def _anthropic() -> Provider:
    from tokenwire.providers.anthropic import AnthropicProvider

    return AnthropicProvider()


def _gemini() -> Provider:
    from tokenwire.providers.gemini import GeminiProvider

    return GeminiProvider()


def _ollama() -> Provider:
    from tokenwire.providers.ollama import OllamaProvider

    return OllamaProvider()


def _preset(name: str) -> Callable[[], Provider]:
    def make() -> Provider:
        from tokenwire.providers.presets import PRESETS, OpenAIPreset

        return OpenAIPreset(PRESETS[name])

    return make


def _local(threads: int | None = None) -> Provider:
    from tokenwire.providers.local import LocalProvider

    return LocalProvider(threads=threads)


def _fake() -> Provider:
    from tokenwire.providers.fake import FakeProvider

    return FakeProvider()


_FACTORIES: dict[str, Callable[[], Provider]] = {
    "openai": _openai,
    "openai-responses": _openai_responses,
    "anthropic": _anthropic,
    "gemini": _gemini,
    "ollama": _ollama,
    **{name: _preset(name) for name in ("groq", "deepseek", "mistral", "openrouter")},
    "local": _local,
    "fake": _fake,
}


class ProviderRegistry:
    """Builds each provider once, on first use; extra providers can be registered.

    Args:
        settings: where provider options of tokenwire's own come from
            (``local_threads`` for ``local:``, ``fake_provider``); ``None`` = each
            provider's defaults.
        fake: serve the scripted ``fake:`` models (:mod:`tokenwire.providers.fake`);
            ``None`` = ``settings.fake_provider`` (off without settings). Off,
            ``fake:`` is an unknown provider unless registered explicitly.
    """

    def __init__(self, settings: Settings | None = None, *, fake: bool | None = None) -> None:
        self._factories = dict(_FACTORIES)
        if settings is not None and settings.local_threads is not None:
            threads = settings.local_threads
            self._factories["local"] = lambda: _local(threads)
        if fake is None:
            fake = settings is not None and settings.fake_provider
        if not fake:
            del self._factories["fake"]
        self._built: dict[str, Provider] = {}

    def register(self, prefix: str, provider: Provider) -> None:
        """Serve models named ``prefix:…`` with ``provider`` (replacing a built-in)."""
        self._built[prefix] = provider
        self._factories.setdefault(prefix, lambda: provider)

    def resolve(
        self, name: str, params: Mapping[str, object] | None = None
    ) -> tuple[Provider, str]:
        """Return the provider for ``"provider:model"`` and the provider's model name;
        a :class:`~tokenwire.providers.base.CheckedProvider` checks the model and
        ``params`` first (``None`` = no params).

        Raises:
            UnknownModelError: malformed name, unknown provider prefix, or a model
                the provider cannot serve (unknown to it, or its API key is not set).
            InvalidRequestError: ``params`` the provider refuses.
        """
        if FALLBACK_SEPARATOR in name:  # several models: try each before its first event
            return fallback_provider(name, lambda one: self.resolve(one, params))
        prefix, model = split_model(name)
        provider = self._built.get(prefix)
        if provider is None:
            factory = self._factories.get(prefix)
            if factory is None:
                known = ", ".join(sorted(self._factories))
                hint = " ('fake:' needs TOKENWIRE_FAKE_PROVIDER=1)" if prefix == "fake" else ""
                raise UnknownModelError(f"unknown provider {prefix!r} (known: {known}){hint}")
            provider = self._built[prefix] = factory()
        if isinstance(provider, CheckedProvider):
            provider.check(model, params or {})
        return provider, model

    async def aclose(self) -> None:
        """Close every built provider that holds connections (has ``aclose()``)."""
        for provider in self._built.values():
            aclose = getattr(provider, "aclose", None)
            if aclose is not None:
                await aclose()
