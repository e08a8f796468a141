"""Server-side tools for the agent tests, loaded by ``tokenwire serve --tools
tests.support.tools:TOOLS`` (the server's working directory is the repository)."""

from __future__ import annotations

import anyio

from tokenwire.testing import get_time


def explode() -> str:
    """Always fails (a tool exception must become an error result, not a crash)."""
    raise RuntimeError("secret internal detail")


def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


async def wait_forever() -> str:
    """Never returns by itself (the tool timeout must end it)."""
    await anyio.Event().wait()
    return "unreachable"


TOOLS = [get_time, explode, add, wait_forever]
