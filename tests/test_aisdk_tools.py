"""Client-side tools with the AI SDK (issue #13 item 2): the AI SDK's own code in Node
runs a client tool loop against a real ``tokenwire serve`` with ``fake:tools``, both
over ``/v1/chat/completions`` (``streamText`` + ``@ai-sdk/openai-compatible``) and
over ``/api/chat`` (``AbstractChat`` + ``DefaultChatTransport``, as ``useChat``);
UI message tool parts are parsed into tool calls and tool results."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.node import node_with
from tests.support.servers import fake_serve
from tokenwire.errors import ChatRequestError
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec
from tokenwire.server.aisdk_request import parse_chat_request

AISDK_DIR = Path(__file__).resolve().parent / "aisdk"
TOKENS = {"alice": "alice", "bob": "bob"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_serve(str(tmp_path_factory.mktemp("aisdk-tools")), TOKENS) as url:
        yield url


def _node(config: dict[str, Any]) -> dict[str, Any]:
    node = node_with(AISDK_DIR, "@ai-sdk/openai-compatible")
    done = subprocess.run(
        [node, str(AISDK_DIR / "tools.mjs"), json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=AISDK_DIR,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_stream_text_runs_a_client_tool_loop(server: str) -> None:
    config = {"base": server, "apiKey": "alice", "model": "fake:tools", "city": "Oslo"}
    out = _node({**config, "action": "streamText"})
    assert out["ran"] == ["Oslo"]
    assert out["text"] == "sunny in Oslo"
    assert out["steps"] == [
        {
            "finishReason": "tool-calls",
            "toolCalls": [{"name": "weather", "input": {"city": "Oslo"}}],
            "toolResults": ["sunny in Oslo"],
        },
        {"finishReason": "stop", "toolCalls": [], "toolResults": []},
    ]


def test_use_chat_transport_runs_a_client_tool_loop(server: str) -> None:
    config = {"base": server, "apiKey": "alice", "model": "fake:tools", "city": "Lima"}
    out = _node({**config, "action": "chat"})
    assert (out["errors"], out["ran"], out["status"]) == ([], ["Lima"], "ready")
    # The second request's last message is the assistant's, with the tool output.
    assert len(out["requests"]) == 2
    assert "tool-weather" in out["requests"][1][-1]
    [_, assistant] = out["messages"]
    tool = next(p for p in assistant["parts"] if p["type"] == "tool-weather")
    assert (tool["state"], tool["input"], tool["output"]) == (
        "output-available",
        {"city": "Lima"},
        "sunny in Lima",
    )
    text = "".join(p["text"] for p in assistant["parts"] if p["type"] == "text")
    assert text == "sunny in Lima"


def _chat(server: str, who: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {who}"}
    return httpx.post(server + "/api/chat", json=body, headers=headers, timeout=30)


def test_tool_results_continue_the_chat_and_another_user_gets_404(server: str) -> None:
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "time?"}]}
    tools = [{"name": "clock", "inputSchema": {"type": "object"}}]
    base = {"id": "chat-tools-owner", "model": "fake:tools", "tools": tools}
    first = _chat(server, "alice", {**base, "messages": [user]})
    assert first.status_code == 200, first.text
    chunks = [json.loads(line[6:]) for line in first.text.splitlines() if line[6:7] == "{"]
    call = next(c for c in chunks if c["type"] == "tool-input-available")
    part = {
        "type": "tool-clock",
        "toolCallId": call["toolCallId"],
        "state": "output-available",
        "input": {},
        "output": "noon",
    }
    answer = {"id": "a1", "role": "assistant", "parts": [{"type": "step-start"}, part]}
    body = {**base, "messages": [user, answer]}
    assert _chat(server, "bob", body).status_code == 404
    second = _chat(server, "alice", body)
    assert second.status_code == 200, second.text
    deltas = [json.loads(line[6:]) for line in second.text.splitlines() if line[6:7] == "{"]
    assert "".join(c["delta"] for c in deltas if c["type"] == "text-delta") == "noon"
    stored = httpx.get(
        f"{server}/v1/conversations/chat-tools-owner",
        headers={"authorization": "Bearer alice"},
    )
    assert stored.status_code == 200, stored.text
    roles = [m["role"] for m in stored.json()["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]


# --- UI message tool parts (sans-I/O) ---------------------------------------------------


def _tool(state: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "tool-clock",
        "toolCallId": "c1",
        "state": state,
        "input": {"tz": "UTC"},
        **extra,
    }


def test_tool_parts_become_tool_calls_and_results() -> None:
    body = {
        "id": "c",
        "tools": ["get_time", {"name": "clock", "description": "d", "parameters": {}}],
        "messages": [
            {"role": "user", "parts": [{"type": "text", "text": "a"}]},
            {
                "role": "assistant",
                "parts": [
                    {"type": "step-start"},
                    {"type": "text", "text": "checking"},
                    _tool("output-available", output={"time": "12:00"}),
                    {
                        "type": "dynamic-tool",
                        "toolName": "zone",
                        "toolCallId": "c2",
                        "state": "output-error",
                        "input": None,
                        "errorText": "boom",
                    },
                    {"type": "step-start"},
                    {"type": "text", "text": "it is noon"},
                ],
            },
            {"role": "user", "parts": [{"type": "text", "text": "thanks"}]},
        ],
    }
    got = parse_chat_request(body)
    assert got.history == [
        Message("user", "a"),
        Message(
            "assistant",
            "checking",
            tool_calls=(
                MessageToolCall("c1", "clock", '{"tz": "UTC"}'),
                MessageToolCall("c2", "zone", "{}"),
            ),
        ),
        Message("tool", '{"time": "12:00"}', tool_call_id="c1", name="clock"),
        Message("tool", "boom", tool_call_id="c2", name="zone", is_error=True),
        Message("assistant", "it is noon"),
    ]
    assert (got.text, got.tool_results, got.turn) == ("thanks", [], [Message("user", "thanks")])
    assert (got.client_tools, got.tools) == ([ToolSpec("clock", "d", {})], ["get_time"])


def test_an_assistant_message_ending_with_tool_results_is_the_turn() -> None:
    user = {"role": "user", "parts": [{"type": "text", "text": "a"}]}
    answer = {"role": "assistant", "parts": [_tool("output-available", output="noon")]}
    got = parse_chat_request({"id": "c", "messages": [user, answer]})
    call = MessageToolCall("c1", "clock", '{"tz": "UTC"}')
    assert got.history == [Message("user", "a"), Message("assistant", "", tool_calls=(call,))]
    assert got.turn == [Message("tool", "noon", tool_call_id="c1", name="clock")]


@pytest.mark.parametrize(
    ("part", "field"),
    [
        (_tool("input-available"), "ending with tool results"),
        (_tool("input-streaming"), "ending with tool results"),
        (_tool("output-available", providerExecuted=True, output=1), "ending with tool results"),
        (_tool("output-error"), r"parts\[0\].errorText"),
        ({**_tool("output-available", output=1), "toolCallId": ""}, r"parts\[0\].toolCallId"),
        ({**_tool("output-available", output=1), "type": "dynamic-tool"}, "toolName"),
    ],
)
def test_bad_tool_parts_are_refused(part: dict[str, Any], field: str) -> None:
    user = {"role": "user", "parts": [{"type": "text", "text": "a"}]}
    body = {"id": "c", "messages": [user, {"role": "assistant", "parts": [part]}]}
    with pytest.raises(ChatRequestError, match=field):
        parse_chat_request(body)


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ({}, "tools: must be a list"),
        ([1], r"tools\[0\]"),
        ([{"name": "a b"}], r"tools\[0\].name"),
        ([{"name": "f", "inputSchema": []}], r"tools\[0\].inputSchema"),
        ([{"name": "f", "description": 1}], r"tools\[0\].description"),
    ],
)
def test_bad_tools_are_refused(tools: object, field: str) -> None:
    user = {"role": "user", "parts": [{"type": "text", "text": "a"}]}
    with pytest.raises(ChatRequestError, match=field):
        parse_chat_request({"id": "c", "messages": [user], "tools": tools})


def test_local_model_refuses_client_tools(server: str) -> None:
    user = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "time?"}]}
    tools = [{"name": "clock", "inputSchema": {"type": "object"}}]
    body = {"id": "chat-local-tools", "model": "local:smollm2", "tools": tools, "messages": [user]}
    answer = _chat(server, "alice", body)
    if answer.status_code == 404:  # the bundled model is not installed here
        pytest.skip(answer.json()["detail"])
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("tools: ")
    # Nothing was created: the chat is still unknown.
    got = httpx.get(
        f"{server}/v1/conversations/chat-local-tools", headers={"authorization": "Bearer alice"}
    )
    assert got.status_code == 404
