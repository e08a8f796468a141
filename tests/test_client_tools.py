"""Client-side tools (issue #13 item 2): client-run agent loops through tokenwire.

The official ``openai`` SDK and pydantic-ai run a two-step tool loop against a real
``tokenwire serve`` process with ``fake:tools`` (step 1 calls the tool, step 2
answers with the tool's text); the provider adapters' request builders carry the
tools and the tool history; ``local:`` refuses tools with a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import openai
import pytest

import tokenwire
from tests.support.servers import fake_serve
from tokenwire.agent import history
from tokenwire.engine.history import parts_of
from tokenwire.providers.anthropic import AnthropicProvider, anthropic_messages, anthropic_tools
from tokenwire.providers.base import GenerationRequest, Message, MessageToolCall, ToolSpec
from tokenwire.providers.openai_chat import OpenAIChatProvider, chat_messages, chat_tools
from tokenwire.providers.openai_responses import (
    OpenAIResponsesProvider,
    responses_input,
    responses_tools,
)

TOKENS = {"alice": "alice", "bob": "bob"}
USER = {"role": "user", "content": "hi"}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_serve(str(tmp_path_factory.mktemp("client-tools")), TOKENS) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key="alice", max_retries=0) as client:
        yield client


# --- the official openai SDK ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
def test_openai_sdk_two_step_tool_loop(sdk: openai.OpenAI, stream: bool) -> None:
    messages: list[Any] = [{"role": "user", "content": "What time is it in Paris?"}]
    args: dict[str, Any] = {
        "model": "fake:tools",
        "tools": [CLOCK],
        "tool_choice": "auto",
        "extra_body": {"tool_args": {"timezone": "Europe/Paris"}},
    }
    first = _complete(sdk, messages, args, stream)
    assert first["finish_reason"] == "tool_calls"
    assert first["content"] in (None, "")
    [call] = first["tool_calls"]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {"timezone": "Europe/Paris"}
    # The client runs the tool and sends the whole history back.
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": "12:00 CET"})
    second = _complete(sdk, messages, args, stream)
    assert (second["content"], second["finish_reason"], second["tool_calls"]) == (
        "12:00 CET",
        "stop",
        [],
    )


def _complete(
    sdk: openai.OpenAI, messages: list[Any], args: dict[str, Any], stream: bool
) -> dict[str, Any]:
    """The assistant message of one step, as the SDK hands it over."""
    if not stream:
        done = sdk.chat.completions.create(messages=messages, **args)
        choice = done.choices[0]
        calls = [c.model_dump(exclude_none=True) for c in choice.message.tool_calls or ()]
        return {
            "content": choice.message.content,
            "tool_calls": calls,
            "finish_reason": choice.finish_reason,
        }
    text, reason = "", None
    calls_by_index: dict[int, dict[str, Any]] = {}
    for chunk in sdk.chat.completions.create(messages=messages, stream=True, **args):
        delta = chunk.choices[0].delta
        text += delta.content or ""
        reason = chunk.choices[0].finish_reason or reason
        for piece in delta.tool_calls or ():
            entry = calls_by_index.setdefault(
                piece.index, {"type": "function", "function": {"name": "", "arguments": ""}}
            )
            if piece.id:
                entry["id"] = piece.id
            if piece.function and piece.function.name:
                entry["function"]["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                entry["function"]["arguments"] += piece.function.arguments
    calls = [calls_by_index[i] for i in sorted(calls_by_index)]
    return {"content": text, "tool_calls": calls, "finish_reason": reason}


def test_bad_tool_history_is_a_400_naming_the_field(sdk: openai.OpenAI) -> None:
    bad = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="fake:tools", messages=bad)  # type: ignore[arg-type]
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "messages[1].tool_calls[0].function.name"


CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_time"}}],
}


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [CLOCK]},
        {"messages": [USER, CALLED, {"role": "tool", "tool_call_id": "c1", "content": "noon"}]},
    ],
    ids=["tools", "tool-history"],
)
def test_local_model_refuses_tools(server: str, extra: dict[str, Any]) -> None:
    body = {"model": "local:smollm2", "messages": [USER], **extra}
    headers = {"authorization": "Bearer alice"}
    answer = httpx.post(server + "/v1/chat/completions", json=body, headers=headers)
    if answer.status_code == 404:  # the bundled model is not installed here
        pytest.skip(answer.json()["error"]["message"])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "tools"


def test_another_user_gets_404_on_the_tool_loop_stream(sdk: openai.OpenAI, server: str) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake:tools",
        messages=[{"role": "user", "content": "time?"}],
        tools=[CLOCK],  # type: ignore[list-item]
    )
    stream_id = raw.headers["x-tokenwire-stream-id"]
    for who, status in (("bob", 404), ("alice", 200)):
        got = httpx.get(
            f"{server}/v1/streams/{stream_id}", headers={"authorization": f"Bearer {who}"}
        )
        assert got.status_code == status, (who, got.text)
    assert got.json()["tool_calls"][0]["name"] == "get_time"


# --- pydantic-ai ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pydantic_ai_two_step_agent(server: str) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    seen: list[str] = []
    async with openai.AsyncOpenAI(base_url=server + "/v1", api_key="alice") as client:
        model = OpenAIChatModel("fake:tools", provider=OpenAIProvider(openai_client=client))
        settings = {"extra_body": {"tool_args": {"city": "Oslo"}}}
        agent = pydantic_ai.Agent(model, model_settings=settings)

        @agent.tool_plain
        def weather(city: str) -> str:
            """The weather in a city."""
            seen.append(city)
            return f"sunny in {city}"

        result = await agent.run("How is the weather in Oslo?")
    assert seen == ["Oslo"]
    assert result.output == "sunny in Oslo"
    kinds = [part.part_kind for message in result.all_messages() for part in message.parts]
    assert kinds.count("tool-call") == 1 and kinds.count("tool-return") == 1


# --- provider request builders ----------------------------------------------------------

HISTORY = GenerationRequest(
    model="m",
    system="be brief",
    messages=[
        Message("user", "time in Paris and Oslo?"),
        Message(
            "assistant",
            "Looking.",
            tool_calls=(
                MessageToolCall("c1", "get_time", '{"tz":"Europe/Paris"}'),
                MessageToolCall("c2", "get_time", "not json"),
            ),
        ),
        Message("tool", "12:00", tool_call_id="c1", name="get_time"),
        Message("tool", "no such zone", tool_call_id="c2", is_error=True),
        Message("user", "thanks"),
    ],
    tools=[ToolSpec("get_time", "The time", {"type": "object"}), ToolSpec("noop")],
)


def test_openai_chat_request_carries_tools_and_history() -> None:
    assert chat_messages(HISTORY) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "time in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "not json"},
                },
            ],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "c1"},
        {"role": "tool", "content": "no such zone", "tool_call_id": "c2"},
        {"role": "user", "content": "thanks"},
    ]
    assert chat_tools(HISTORY.tools) == [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object"},
                "description": "The time",
            },
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]


def test_anthropic_request_carries_tools_and_history() -> None:
    assert anthropic_messages(HISTORY.messages) == [
        {"role": "user", "content": "time in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "c1",
                    "name": "get_time",
                    "input": {"tz": "Europe/Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "c2",
                    "name": "get_time",
                    "input": {"arguments": "not json"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "12:00"},
                {
                    "type": "tool_result",
                    "tool_use_id": "c2",
                    "content": "no such zone",
                    "is_error": True,
                },
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert anthropic_tools(HISTORY.tools) == [
        {"name": "get_time", "input_schema": {"type": "object"}, "description": "The time"},
        {"name": "noop", "input_schema": {"type": "object"}},
    ]


def test_responses_request_carries_tools_and_history() -> None:
    assert responses_input(HISTORY.messages) == [
        {"role": "user", "content": "time in Paris and Oslo?"},
        {"role": "assistant", "content": "Looking."},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_time",
            "arguments": '{"tz":"Europe/Paris"}',
        },
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "not json"},
        {"type": "function_call_output", "call_id": "c1", "output": "12:00"},
        {"type": "function_call_output", "call_id": "c2", "output": "no such zone"},
        {"role": "user", "content": "thanks"},
    ]
    assert responses_tools(HISTORY.tools) == [
        {
            "type": "function",
            "name": "get_time",
            "description": "The time",
            "parameters": {"type": "object"},
        },
        {"type": "function", "name": "noop", "parameters": {"type": "object"}},
    ]


# --- stored history (engine.history.parts_of, agent.history) ----------------------------


def _stored(messages: list[Message]) -> list[SimpleNamespace]:
    return [SimpleNamespace(role=m.role, parts=parts_of(m)) for m in messages]


def test_stored_client_tool_steps_come_back_as_the_history() -> None:
    assert history(_stored(HISTORY.messages)) == HISTORY.messages


def test_a_stored_call_answered_by_the_new_turn_is_kept() -> None:
    user, called, *_ = HISTORY.messages
    results = [m for m in HISTORY.messages if m.role == "tool"]
    assert history(_stored([user, called]), results) == [user, called]
    unanswered = Message("assistant", called.content)  # its calls are left out
    assert history(_stored([user, called])) == [user, unanswered]


# --- the official SDKs send them (request bodies on the wire) ---------------------------

RECORDINGS = Path(tokenwire.__file__).parent / "recordings"
WIRE = [
    (OpenAIChatProvider, "/v1", "openai-chat/gpt-4o_tool_call_include_usage.sse"),
    (AnthropicProvider, "", "anthropic-messages/claude_tool_use_input_json_delta.sse"),
    (OpenAIResponsesProvider, "/v1", "openai-responses/gpt-4o_function_call.sse"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "prefix", "recording"), WIRE, ids=["chat", "anthropic", "responses"]
)
async def test_sdk_request_bodies_carry_tools_and_history(
    kind: Any, prefix: str, recording: str
) -> None:
    sent: list[dict[str, Any]] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        body = (RECORDINGS / recording).read_bytes()
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(respond)) as http:
        provider = kind(api_key="k", base_url="http://provider.test" + prefix, http_client=http)
        events = [event async for event in provider.stream(HISTORY)]
    assert events
    [body] = sent
    if kind is OpenAIChatProvider:
        assert (body["messages"], body["tools"]) == (
            chat_messages(HISTORY),
            chat_tools(HISTORY.tools),
        )
    elif kind is AnthropicProvider:
        want = anthropic_messages(HISTORY.messages), anthropic_tools(HISTORY.tools)
        assert (body["messages"], body["tools"], body["system"]) == (*want, "be brief")
    else:
        want = responses_input(HISTORY.messages), responses_tools(HISTORY.tools)
        assert (body["input"], body["tools"], body["instructions"]) == (*want, "be brief")
