"""The public surface and the layering rules of CONVENTIONS.md."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import anyio
import pytest

import tokenwire
from tokenwire import Message, ProviderRegistry, Settings, TextDelta, Tokenwire
from tokenwire.testing import ScriptedProvider, collect, parse_sse
from tokenwire.transports.sse import frame_events

SRC = Path(tokenwire.__file__).parent


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(tokenwire).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(tokenwire.__all__) == public
    assert tokenwire.__all__ == sorted(tokenwire.__all__)


LAYERS = [
    {"events", "errors", "settings", "protocol", "observability"},
    {"providers", "store", "accumulate"},
    {"log"},
    {"producer"},
    {"transports"},
    {"server", "mock_provider", "mock_provider_faults", "queue", "worker"},  # + scale-out
    {"cli", "testing", "__init__", "__main__"},
]
IO_LIBRARIES = {"asyncio", "anyio", "httpx", "httpx2", "socket", "starlette", "fastapi", "trio"}


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"tokenwire.{module} is in no layer: add it to LAYERS")


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_nothing_imports_to_its_right(path: Path) -> None:
    own = layer_of(".".join(path.relative_to(SRC).with_suffix("").parts))
    for name in imports(path):
        if name.startswith("tokenwire."):
            target = name.removeprefix("tokenwire.")
            assert layer_of(target) <= own, f"{path.name} imports {name}, a layer to its right"
    if path.relative_to(SRC).parts[0] == "protocol":
        assert not {n.split(".")[0] for n in imports(path)} & IO_LIBRARIES


@pytest.mark.anyio
async def test_library_api_with_a_scripted_provider(tmp_path: Path) -> None:
    provider = ScriptedProvider([TextDelta(part=0, delta="caf"), TextDelta(part=0, delta="é 👋")])
    registry = ProviderRegistry(fake=True)
    registry.register("script", provider)
    seen: list[str] = []
    async with Tokenwire(
        Settings(fake_provider=True, data_dir=tmp_path, coalesce_ms=0), registry=registry
    ) as tw:
        stream = await tw.start("script:any", [Message("user", "hi")], system="be brief")
        done: list[str] = []
        ended = anyio.Event()
        stream.on_event(lambda e: seen.append(e.__struct_config__.tag))  # type: ignore[func-returntype]
        stream.then(lambda s: done.append(s.text))  # type: ignore[func-returntype]
        stream.finally_(lambda s: ended.set())
        events = await collect(stream)
        with anyio.fail_after(5):
            await ended.wait()
        wire = frame_events(events)
        pieces = [wire[i : i + 3] for i in range(0, len(wire), 3)]
        assert parse_sse(pieces) == events
    assert stream.text == "café 👋" and stream.finish_reason == "stop"
    assert provider.requests[0].system == "be brief"
    assert provider.requests[0].messages == [Message("user", "hi")]
    assert seen == [type(e).__struct_config__.tag for e in events]
    assert done == ["café 👋"]


def test_router_embedded_in_a_users_app(tmp_path: Path) -> None:
    """The README's library example: the native API under a prefix of your own app."""
    import contextlib
    from collections.abc import AsyncIterator

    import httpx
    from fastapi import FastAPI

    from tests.support.servers import uvicorn_thread
    from tests.support.sse import read_sse, text_of

    tw = Tokenwire(Settings(fake_provider=True, data_dir=tmp_path, default_model="fake:echo"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with tw:
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(tw.router, prefix="/ai")
    with uvicorn_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        started = client.post("/ai/v1/chat", json={"messages": [{"role": "user", "content": "hi"}]})
        assert started.status_code == 202
        assert started.json()["events_url"].startswith(base + "/ai/v1/streams/")
        events, _ = read_sse(client, "GET", started.json()["events_url"])
    assert text_of(events) == "hi" and events[-1]["type"] == "finish"
