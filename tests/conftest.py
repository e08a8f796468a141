from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import tokenwire_process


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def mock_provider() -> Iterator[str]:
    """``tokenwire mock-provider`` serving its bundled recordings (the default
    ``--recordings``), as a real process."""
    with tokenwire_process("mock-provider", ready_path="/_mock/health") as url:
        yield url
