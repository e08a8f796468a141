"""Server-side tools in the library: schemas from type hints, ``load_tools``, the
``Tokenwire(tools=…)`` / ``@tw.tool`` API, sync tools in a thread, the next turn's
history, and a stop cancelling a running tool over HTTP (an in-process server)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest

from tests.support.servers import uvicorn_thread
from tests.support.sse import read_sse
from tokenwire import Settings, Tokenwire, create_app
from tokenwire.agent import Agent, history
from tokenwire.errors import ConfigurationError, InvalidRequestError
from tokenwire.events import Finish, TextDelta, ToolCall, ToolResult
from tokenwire.providers import Message
from tokenwire.providers.base import (
    GenerationRequest,
    MessageToolCall,
    ProviderEvent,
    ToolSpec,
    finish,
)
from tokenwire.testing import collect
from tokenwire.tools import Tool, ToolArgumentsError, ToolRegistry, load_tools


def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """The weather in a city.

    More text that is not the description."""
    return f"sunny in {city} ({unit})"


def test_schema_and_description_come_from_the_function() -> None:
    tool = Tool(weather)
    assert tool.name == "weather" and tool.description == "The weather in a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"title": "City", "type": "string"},
            "unit": {"title": "Unit", "enum": ["C", "F"], "type": "string", "default": "C"},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert tool.validate({"city": "Oslo"}) == {"city": "Oslo", "unit": "C"}
    with pytest.raises(ToolArgumentsError, match="unit: Input should be 'C' or 'F'"):
        tool.validate({"city": "Oslo", "unit": "K"})
    with pytest.raises(ToolArgumentsError, match="city: Field required"):
        tool.validate({})


def test_registry_and_loading() -> None:
    assert load_tools("tokenwire.testing:get_time").names() == ["get_time"]
    assert load_tools("tests.support.tools:TOOLS").names() == [
        "add",
        "explode",
        "get_time",
        "wait_forever",
    ]
    for bad in ("nothing", "tokenwire.nope:x", "tokenwire.testing:missing", "tokenwire:__doc__"):
        with pytest.raises(ConfigurationError):
            load_tools(bad)
    registry = ToolRegistry([weather])
    with pytest.raises(ConfigurationError, match="two tools"):
        registry.add(weather)
    with pytest.raises(InvalidRequestError, match=r"unknown tool 'nope' \(registered: weather\)"):
        registry.select(["weather", "nope"])

    def star(*args: int) -> None: ...

    with pytest.raises(ConfigurationError, match="named parameter"):
        Tool(star)


def test_history_keeps_answered_tool_calls_only() -> None:
    call = {
        "type": "tool-call",
        "tool_call_id": "c1",
        "name": "weather",
        "arguments": {"city": "A"},
    }
    stored = [
        Message("user", "hi"),
        _Stored(
            "assistant",
            [
                {"type": "text", "text": "let me look"},
                call,
                {
                    "type": "tool-result",
                    "tool_call_id": "c1",
                    "name": "weather",
                    "output": {"t": 3},
                },
                {"type": "text", "text": "3 degrees"},
            ],
        ),
        _Stored("assistant", [{**call, "tool_call_id": "c2"}, {"type": "text", "text": "stopped"}]),
        _Stored("tool", [{"type": "text", "text": "a tool message's text is not the assistant's"}]),
    ]
    assert history([_Stored("user", [{"type": "text", "text": "hi"}]), *stored[1:]]) == [
        Message("user", "hi"),
        Message(
            "assistant",
            "let me look",
            tool_calls=(MessageToolCall("c1", "weather", '{"city": "A"}'),),
        ),
        Message("tool", '{"t":3}', tool_call_id="c1", name="weather"),
        Message("assistant", "3 degrees"),
        Message("assistant", "stopped"),  # the unanswered call c2 is left out
    ]


class _Stored:
    def __init__(self, role: str, parts: list[dict[str, Any]]) -> None:
        self.role, self.parts = role, parts


@pytest.mark.anyio
async def test_library_decorator_runs_a_sync_tool_in_a_thread(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, fake_provider=True)
    threads: list[int] = []
    async with Tokenwire(settings) as tw:

        @tw.tool
        def where() -> str:
            """Which thread runs me."""
            threads.append(threading.get_ident())
            return "here"

        client_side = ToolSpec(name="client_side")  # offered only; the client would run it
        stream = await tw.start("fake:tools", [Message("user", "x")], tools=["where", client_side])
        events = await collect(stream)
    assert threads and threads[0] != threading.get_ident()
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.output == "here" and not result.is_error
    assert isinstance(events[-1], Finish)


class Blocker:
    """A tool that waits for an :class:`anyio.Event` the test controls, and notes
    (thread-safely) that it started and whether it was cancelled."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.release: anyio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def let_go(self) -> None:
        """Set the event, from the test's thread."""
        assert self.loop is not None and self.release is not None
        self.loop.call_soon_threadsafe(self.release.set)

    async def block(self) -> str:
        """Waits until released."""
        self.release = anyio.Event()
        self.loop = asyncio.get_running_loop()
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "released"


@pytest.fixture
def blocker_server(tmp_path: Path) -> Iterator[tuple[str, Blocker]]:
    blocker = Blocker()
    settings = Settings(data_dir=tmp_path, fake_provider=True, default_model="fake:tools")
    tw = Tokenwire(settings, tools=[blocker.block])
    with uvicorn_thread(create_app(settings, tokenwire=tw)) as url:
        yield url, blocker


def test_cancel_stops_a_running_tool(blocker_server: tuple[str, Blocker]) -> None:
    base, blocker = blocker_server
    with httpx.Client(base_url=base, timeout=30) as client:
        body = {"messages": [{"role": "user", "content": "x"}], "tools": ["block"]}
        started = client.post("/v1/chat", json=body).json()
        assert blocker.started.wait(10)
        assert client.post(started["cancel_url"], json={}).status_code == 202
        assert blocker.cancelled.wait(10)
        events, _ = read_sse(client, "GET", started["events_url"])
        assert events[-1]["type"] == "cancelled"
        assert "tool-call" in [e["type"] for e in events]
        assert "tool-result" not in [e["type"] for e in events]
        conversation = client.get(f"/v1/conversations/{started['conversation_id']}").json()
        assert conversation["messages"][-1]["status"] == "cancelled"


class TwoSteps:
    """Step 1: the given tool calls; step 2: says how many tool messages it was sent."""

    def __init__(self, calls: list[ToolCall]) -> None:
        self.calls = calls
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        self.requests.append(request)
        if len(self.requests) == 1:
            for call in self.calls:
                yield call
            yield finish("tool_calls", None, None)
        else:
            tool_messages = [m for m in request.messages if m.role == "tool"]
            yield TextDelta(part=0, delta=f"{len(tool_messages)} results")
            yield finish("stop", None, None)


@pytest.mark.anyio
async def test_tools_run_in_parallel_and_bad_calls_are_error_results() -> None:
    """``ping`` and ``pong`` each wait for the other: they end only if they run at once."""
    ping_seen, pong_seen = anyio.Event(), anyio.Event()

    async def ping() -> str:
        ping_seen.set()
        await pong_seen.wait()
        return "ping"

    async def pong() -> str:
        pong_seen.set()
        await ping_seen.wait()
        return "pong"

    calls = [
        ToolCall(part=0, tool_call_id="a", name="ping", arguments={}),
        ToolCall(part=1, tool_call_id="b", name="pong", arguments={}),
        ToolCall(part=2, tool_call_id="c", name="secret", arguments={}),
        ToolCall(part=3, tool_call_id="d", name="ping", arguments=None, invalid=True),
    ]
    provider = TwoSteps(calls)
    registry = ToolRegistry([ping, pong, Tool(ping, name="secret")])
    agent = Agent(provider, registry, ["ping", "pong"], tool_timeout=10)
    with anyio.fail_after(10):  # a guard: a serial run would wait forever
        events = [e async for e in agent.stream(GenerationRequest(model="m", messages=[]))]
    outputs = [(e.tool_call_id, e.output, e.is_error) for e in events if isinstance(e, ToolResult)]
    assert outputs == [
        ("a", "ping", False),
        ("b", "pong", False),
        ("c", "unknown tool 'secret'", True),  # registered, but not offered by the request
        ("d", "the arguments for ping are not valid JSON", True),
    ]
    assert [e.part for e in events if isinstance(e, ToolResult)] == [4, 5, 6, 7]
    assert [e.part for e in events if isinstance(e, TextDelta)] == [8]
    assert [e.delta for e in events if isinstance(e, TextDelta)] == ["4 results"]
    second = provider.requests[1].messages
    assert [m.role for m in second] == ["assistant", "tool", "tool", "tool", "tool"]
    assert [c.id for c in second[0].tool_calls] == ["a", "b", "c", "d"]


def test_resume_in_the_middle_of_the_loop(blocker_server: tuple[str, Blocker]) -> None:
    """A reader that left while the tool ran resumes with ``Last-Event-ID`` and gets the
    rest of the loop: the tool's result, the second step and the one terminal event."""
    base, blocker = blocker_server
    with httpx.Client(base_url=base, timeout=30) as client:
        body = {"messages": [{"role": "user", "content": "x"}], "tools": ["block"]}
        started = client.post("/v1/chat", json=body).json()
        assert blocker.started.wait(10)
        seen: list[dict[str, Any]] = []
        with client.stream("GET", started["events_url"]) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["type"] == "tool-call":
                        break  # hang up while the tool runs
        blocker.let_go()
        last = str(seen[-1]["seq"])
        rest, _ = read_sse(client, "GET", started["events_url"], headers={"last-event-id": last})
    kinds = [e["type"] for e in rest if e["type"] != "usage"]
    assert kinds[:4] == ["tool-result", "step-finish", "step-start", "text-delta"]
    assert kinds[-2:] == ["step-finish", "finish"]
    assert next(e for e in rest if e["type"] == "tool-result")["output"] == "released"
    assert [e["seq"] for e in rest] == list(range(seen[-1]["seq"] + 1, rest[-1]["seq"] + 1))
