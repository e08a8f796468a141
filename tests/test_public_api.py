"""The public surface and the layering rules of CONVENTIONS.md."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path
from typing import NamedTuple

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
        for name in dir(tokenwire)  # with the names imported on first use (PEP 562)
        if not name.startswith("_") and not isinstance(getattr(tokenwire, name), types.ModuleType)
    }
    assert set(tokenwire.__all__) == public
    assert tokenwire.__all__ == sorted(tokenwire.__all__)


# -- a light core --------------------------------------------------------------------

HEAVY = ["fastapi", "starlette", "sqlalchemy", "redis", "openai", "anthropic", "httpx", "uvicorn"]
"""Web frameworks, database drivers, the Redis client, provider SDKs, HTTP clients."""
LIGHT = [
    "tokenwire.events",
    *sorted(f"tokenwire.protocol.{p.stem}" for p in SRC.glob("protocol/[!_]*.py")),
]
WEB = ["fastapi", "starlette", "uvicorn"]


def loaded_after(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter holds after importing ``modules``."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(*sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_events_and_protocol_load_no_heavy_library() -> None:
    assert len(LIGHT) > 4  # events and every protocol module
    assert not loaded_after(LIGHT) & set(HEAVY)


def test_the_engine_and_the_worker_load_no_web_framework() -> None:
    assert not loaded_after(["tokenwire.engine", "tokenwire.worker"]) & set(WEB)


def test_the_heavy_check_can_fail() -> None:
    assert {"fastapi", "starlette"} <= loaded_after(["tokenwire.server.app"])


# -- the layers (CONVENTIONS.md 14, docs/architecture.md) ------------------------------

LAYERS = [
    {"events", "errors", "settings", "protocol", "observability"},
    {"providers", "store", "accumulate", "tools", "agent"},  # agent: the loop around a provider
    {"log"},
    {"producer", "queue"},  # the queue carries generations to producers elsewhere
    {"engine"},
    {"transports"},
    {"server", "worker", "mock_provider", "mock_provider_faults"},  # processes
    {"cli", "testing", "__init__", "__main__"},
]
IO_LIBRARIES = {"asyncio", "anyio", "httpx", "httpx2", "socket", "starlette", "fastapi", "trio"}
BRIDGES = {
    "engine.core": {"tokenwire.server.routes", "fastapi"},  # Tokenwire.router
    "engine.stream": {"tokenwire.transports.sse"},  # Stream.sse_response
}
"""The only imports to the right: inside the bridge method (or for its return type)."""
NEVER = {
    "engine": {"tokenwire.server", *WEB},
    "worker": {"tokenwire.server", *WEB},
    "transports": {"tokenwire.server"},
    "protocol": IO_LIBRARIES,
}
"""Module (prefix) -> what it never imports, at any time (same layer or not)."""


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"tokenwire.{module} is in no layer: add it to LAYERS")


class Import(NamedTuple):
    name: str
    when: str
    """``load``: at import time; ``call``: inside a function; ``type``: under TYPE_CHECKING."""


def imports(path: Path) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, when: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = when
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "type")
                for stmt in child.orelse:
                    visit_stmt(stmt, when)
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "call" if when == "load" else when
            visit_stmt(child, inner)

    def visit_stmt(node: ast.AST, when: str) -> None:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(Import(node.module, when))
            found.extend(Import(f"{node.module}.{a.name}", when) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend(Import(a.name, when) for a in node.names)
        else:
            visit(node, when)

    visit(ast.parse(path.read_text()), "load")
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


NAMES = {"tokenwire." + module_name(p) for p in MODULES}


def own_imports(path: Path) -> list[Import]:
    """The tokenwire modules ``path`` imports (a ``from m import name`` of a submodule
    counts as importing the submodule)."""
    return [i for i in imports(path) if i.name in NAMES]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_nothing_imports_to_its_right(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    bridges = BRIDGES.get(module, set())
    for found in imports(path):
        target = found.name
        if any(target == b or target.startswith(b + ".") for b in bridges):
            assert found.when != "load", f"{module} imports its bridge {target} at import time"
            continue
        if target in NAMES:
            assert layer_of(target.removeprefix("tokenwire.")) <= own, (
                f"{module} imports {target}, a layer to its right"
            )
        for prefix, banned in NEVER.items():
            if module == prefix or module.startswith(prefix + "."):
                assert not any(target == b or target.startswith(b + ".") for b in banned), (
                    f"{module} imports {target}"
                )


def import_graph() -> dict[str, set[str]]:
    """Module -> the tokenwire modules it imports when run (at import time or inside a
    function), less the bridges."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        module = "tokenwire." + module_name(path)
        bridges = BRIDGES.get(module.removeprefix("tokenwire."), set())
        graph[module] = {
            i.name for i in own_imports(path) if i.when != "type" and i.name not in bridges
        } - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = import_graph()
    graph["tokenwire.events"] = {"tokenwire.engine.core"}  # events -> engine -> ... -> events
    assert any("tokenwire.events" in c and "tokenwire.engine.core" in c for c in cycles(graph))


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
