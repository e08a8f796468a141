"""The thin I/O shell of the adapters that speak HTTP themselves (no official SDK):
:mod:`tokenwire.providers.gemini` and :mod:`tokenwire.providers.ollama`.

The ``httpx2`` client is made on first use, without retries (the producer retries,
and only before the first event, DESIGN §5). Failures become
:class:`~tokenwire.errors.ProviderError` exactly as for the SDK-based adapters:
an HTTP error status follows :func:`~tokenwire.providers.base.error_for_status`
with the provider's own message (:func:`~tokenwire.providers.openai_chat.body_error`),
timeouts are ``provider_timeout`` and broken connections ``provider_error``, both
retryable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import msgspec

from tokenwire.errors import ProviderError
from tokenwire.providers.base import connection_error, error_for_status
from tokenwire.providers.openai_chat import body_error

__all__ = ["HTTPProvider", "count", "decode_json", "env_url"]

DEFAULT_TIMEOUT = httpx2.Timeout(300.0, connect=10.0)
"""Seconds: connect 10, and 300 for each read (thinking models pause long)."""


def env_url(value: str | None, default: str) -> str:
    """A base URL from a variable's ``value`` (``None`` or empty = ``default``),
    without a trailing ``/``; a bare ``host:port`` gets ``http://``."""
    url = (value or default).strip().rstrip("/")
    return url if "://" in url else "http://" + url


class HTTPProvider:
    """Holds one lazily made ``httpx2.AsyncClient`` and opens streamed POSTs.

    Args:
        base_url: the API's base URL, without a trailing ``/``.
        http_client: the client to send requests with (tests inject one with a
            ``MockTransport`` or fault headers); ``None`` = one of tokenwire's own,
            closed by :meth:`aclose`.
    """

    def __init__(self, *, base_url: str, http_client: httpx2.AsyncClient | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._http_client = http_client
        self._own_client: httpx2.AsyncClient | None = None

    def _client(self) -> httpx2.AsyncClient:
        if self._http_client is not None:
            return self._http_client
        if self._own_client is None:
            self._own_client = httpx2.AsyncClient(timeout=DEFAULT_TIMEOUT)
        return self._own_client

    @asynccontextmanager
    async def _post(
        self, path: str, body: Mapping[str, object], headers: Mapping[str, str]
    ) -> AsyncIterator[httpx2.Response]:
        """POST ``body`` as JSON to ``base_url + path`` and yield the streamed
        response (status < 400); closing the context closes the connection.

        Raises:
            ProviderError: an HTTP error status, a timeout or a broken connection,
                also while the caller reads the body inside the context.
        """
        try:
            async with self._client().stream(
                "POST", self._base_url + path, json=dict(body), headers=dict(headers)
            ) as response:
                if response.status_code >= 400:
                    raise _status_error(response.status_code, await response.aread())
                yield response
        except httpx2.HTTPError as exc:
            raise connection_error(isinstance(exc, httpx2.TimeoutException)) from exc

    async def aclose(self) -> None:
        """Close the client and its connections (an injected one too)."""
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()
        if self._http_client is not None:
            await self._http_client.aclose()


def count(value: object) -> int:
    """A token count from a provider's JSON: an integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def decode_json(data: str | bytes) -> Any:
    """One JSON value of a streamed body (an SSE ``data:`` field, an NDJSON line).

    Raises:
        ProviderError: ``provider_error`` (retryable) when it is not JSON.
    """
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        message = "the provider sent a chunk that is not JSON"
        raise ProviderError("provider_error", message, retryable=True) from None


def _status_error(status: int, raw: bytes) -> ProviderError:
    text = raw.decode("utf-8", errors="replace")
    try:
        body: object = json.loads(text)
    except ValueError:
        body = text
    _, message = body_error(body)
    return error_for_status(status, message or f"the provider answered HTTP {status}")
