"""``fake:tools``: the scripted agent step that server- and client-side tool tests drive."""

from __future__ import annotations

import pytest

from tokenwire.errors import InvalidRequestError
from tokenwire.events import TextDelta, ToolCall
from tokenwire.providers.base import GenerationRequest, Message, MessageToolCall, ToolSpec
from tokenwire.providers.fake import FakeProvider

pytestmark = pytest.mark.anyio


async def _events(request: GenerationRequest) -> list[object]:
    return [event async for event in FakeProvider().stream(request)]


async def test_calls_the_first_offered_tool_with_tool_args() -> None:
    request = GenerationRequest(
        model="tools",
        messages=[Message("user", "what time is it?")],
        tools=[ToolSpec("get_time"), ToolSpec("get_weather")],
        params={"tool_args": {"timezone": "UTC"}},
    )
    events = await _events(request)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.tool_call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "get_time", {"timezone": "UTC"})
    ]
    assert events[-1].finish_reason == "tool_calls"  # type: ignore[attr-defined]


async def test_answers_with_the_tool_results_that_end_the_history() -> None:
    history = [
        Message("user", "what time is it?"),
        Message("assistant", "", tool_calls=(MessageToolCall("call_1", "get_time"),)),
        Message("tool", "12:00 UTC", tool_call_id="call_1", name="get_time"),
    ]
    request = GenerationRequest(model="tools", messages=history, tools=[ToolSpec("get_time")])
    events = await _events(request)
    assert "".join(e.delta for e in events if isinstance(e, TextDelta)) == "12:00 UTC"
    assert events[-1].finish_reason == "stop"  # type: ignore[attr-defined]


async def test_echoes_when_no_tool_is_offered() -> None:
    request = GenerationRequest(model="tools", messages=[Message("user", "hello there")])
    events = await _events(request)
    assert "".join(e.delta for e in events if isinstance(e, TextDelta)) == "hello there"


def test_tool_args_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError, match=r"params\.tool_args"):
        FakeProvider().check("tools", {"tool_args": [1]})
