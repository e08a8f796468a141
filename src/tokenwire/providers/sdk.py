"""The shell shared by the adapters built on an official SDK client.

The SDK client is made on first use (so a missing key fails the first request
for the provider's models, not start-up) with the SDK's own retries off: the
producer retries, and only before the first event (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

import httpx2

from tokenwire.errors import ProviderError, UnknownModelError

__all__ = ["SDKProvider"]


class _Closable(Protocol):
    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_Closable)


class SDKProvider(Generic[ClientT]):
    """Holds one lazily made SDK client.

    Args:
        api_key: the key; ``None`` lets the SDK read its own variable.
        base_url: the API's base URL; ``None`` lets the SDK read its own variable.
        http_client: an ``httpx2.AsyncClient`` to send requests with (tests inject
            a ``MockTransport`` or fault headers); ``None`` lets the SDK make its own.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self._http_client = http_client
        self._client: ClientT | None = None

    def _make_client(self) -> ClientT:
        """The SDK client.

        Raises:
            ProviderError: ``invalid_request`` naming the variable to set when the
                SDK cannot be configured (no key).
        """
        raise NotImplementedError

    def check(self, model: str, params: Mapping[str, object]) -> None:
        """Make the SDK client now, so a missing key is refused before anything is
        created (any model name is passed on: only the provider knows its models).

        Raises:
            UnknownModelError: the SDK is not configured; the message names the variable.
        """
        try:
            self._sdk()
        except ProviderError as exc:
            raise UnknownModelError(exc.message) from exc

    def _sdk(self) -> ClientT:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def aclose(self) -> None:
        """Close the SDK client and its connections (and an injected ``http_client``)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._http_client is not None:
            await self._http_client.aclose()
