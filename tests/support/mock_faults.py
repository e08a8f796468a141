"""tokenwire in-process with one ``openai:``-family provider per fault of the real
``mock_provider`` process: model ``<fault>:<recording>`` hits the mock with that
fault's ``x-mock-*`` headers and a ``x-mock-tag`` that counts its requests there."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import pytest

from tests.support.servers import uvicorn_thread
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
from tokenwire.providers.openai_chat import OpenAIChatProvider

FAULTS: dict[str, dict[str, str]] = {
    "ok": {},
    "r429": {"x-mock-status": "429"},
    "r500": {"x-mock-status": "500"},
    "r400": {"x-mock-status": "400"},
    "inband": {"x-mock-inband-error": "20"},  # fails after its first tokens
}
"""Provider prefix → the ``x-mock-*`` headers of its requests."""
_RUN = uuid.uuid4().hex[:8]


def tag(name: str) -> str:
    """The ``x-mock-tag`` of fault ``name``'s requests (unique to this test run)."""
    return f"faults-{_RUN}-{name}"


@contextlib.contextmanager
def fault_server(mock_provider: str, data_dir: Path) -> Iterator[str]:
    """Serve tokenwire (no retries of its own) on a free port; yield its base URL.

    Args:
        mock_provider: the mock provider's base URL.
        data_dir: tokenwire's data directory.
    """
    registry = ProviderRegistry()
    for name, headers in FAULTS.items():
        client = httpx2.AsyncClient(
            headers={**headers, "x-mock-tag": tag(name)}, timeout=httpx2.Timeout(10.0)
        )
        registry.register(
            name,
            OpenAIChatProvider(base_url=mock_provider + "/v1", api_key="k", http_client=client),
        )
    settings = Settings(data_dir=data_dir, max_retries=0, provider_timeout=10.0)
    with uvicorn_thread(create_app(tokenwire=Tokenwire(settings, registry=registry))) as url:
        yield url


def asked(mock_provider: str) -> dict[str, int]:
    """How many API requests the mock provider received so far, per fault."""
    counts = {}
    for name in FAULTS:
        response = httpx.get(f"{mock_provider}/_mock/requests", params={"tag": tag(name)})
        counts[name] = len(response.json())
    return counts


@contextlib.contextmanager
def fault_base(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """:func:`fault_server` in a fresh data directory of pytest's ``tmp_path_factory``."""
    with fault_server(mock_provider, tmp_path_factory.mktemp("faults")) as url:
        yield url
